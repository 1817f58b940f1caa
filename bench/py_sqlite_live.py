#!/usr/bin/env python3
"""The course brief's stack under a live stream, for bench/live: a paho-mqtt
subscriber storing every reading in SQLite (WAL, synchronous=FULL: durable at
each commit, as aggregatord is at each fsync), committing every 100 ms. Exits
after N readings and prints what it cost itself: bytes written to disk
(/proc/self/io write_bytes) and CPU seconds.
usage: py_sqlite_live.py PORT PKI_DIR DB N"""
import json, os, sqlite3, sys, time
import paho.mqtt.client as mqtt

port, pki, db_path, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
db = sqlite3.connect(db_path)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=FULL")
db.execute("""CREATE TABLE IF NOT EXISTS readings (topic TEXT, sensor_id TEXT, sensor_type TEXT,
  value REAL, unit TEXT, timestamp TEXT, seq INTEGER, received_at TEXT, qos INTEGER,
  PRIMARY KEY (topic, timestamp, seq)) WITHOUT ROWID""")
db.commit()
batch, count, last_commit, done = [], 0, time.monotonic(), False

def flush():
    global batch, last_commit
    db.executemany("INSERT OR IGNORE INTO readings VALUES (?,?,?,?,?,?,?,?,?)", batch)
    db.commit()
    batch, last_commit = [], time.monotonic()

def on_connect(client, userdata, flags, rc, props=None):
    client.subscribe("building/#", qos=1)

def on_subscribe(client, *args):
    print("subscribed", flush=True)

def on_message(client, userdata, msg):
    global count, done
    try:
        r = json.loads(msg.payload)
        now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        batch.append((msg.topic, r["sensor_id"], r["sensor_type"], r["value"], r["unit"],
                      r["timestamp"], r.get("seq"), now, msg.qos))
    except Exception:
        return
    count += 1
    if time.monotonic() - last_commit > 0.1:
        flush()
    if count >= n and not done:
        done = True
        flush()
        client.disconnect()

c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="live-python", clean_session=True)
c.tls_set(ca_certs=f"{pki}/ca.crt", certfile=f"{pki}/observer-sqlite.crt", keyfile=f"{pki}/observer-sqlite.key")
c.max_inflight_messages_set(1000)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("localhost", port, 30)
c.loop_forever()
db.close()
io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
t = os.times()
print(f"python written={int(io['write_bytes'])} cpu={t.user + t.system:.2f} received={count}", flush=True)
