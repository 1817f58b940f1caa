#!/usr/bin/env python3
"""The course brief's stack, for comparison: paho-mqtt subscriber that stores
readings in SQLite, committing in batches. Drains N messages from a persistent
session, then exits.  usage: py_sqlite_drain.py PORT PKI_DIR DB N [--register]"""
import json, os, sqlite3, ssl, sys, time
import paho.mqtt.client as mqtt

port, pki, db_path, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
register = "--register" in sys.argv
db = sqlite3.connect(db_path)
db.execute("""CREATE TABLE IF NOT EXISTS readings (topic TEXT, sensor_id TEXT, sensor_type TEXT,
  value REAL, unit TEXT, timestamp TEXT, seq INTEGER, PRIMARY KEY (topic, timestamp, seq))""")
batch, count, last_commit = [], 0, time.monotonic()
done = False

def flush():
    global batch, last_commit
    db.executemany("INSERT OR IGNORE INTO readings VALUES (?,?,?,?,?,?,?)", batch)
    db.commit()
    batch, last_commit = [], time.monotonic()

def on_connect(client, userdata, flags, rc, props=None):
    client.subscribe("building/#", qos=int(os.environ.get("QOS", "1")))

def on_subscribe(client, *args):
    if register:
        client.disconnect()

def on_message(client, userdata, msg):
    global count, done
    try:
        r = json.loads(msg.payload)
        batch.append((msg.topic, r["sensor_id"], r["sensor_type"], r["value"], r["unit"], r["timestamp"], r.get("seq")))
    except Exception:
        return
    count += 1
    if len(batch) >= 500 or time.monotonic() - last_commit > 0.1:
        flush()
    if count >= n and not done:
        done = True
        flush()
        client.disconnect()

c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="drain-python", clean_session=False)
c.tls_set(ca_certs=f"{pki}/ca.crt", certfile=f"{pki}/observer-sqlite.crt", keyfile=f"{pki}/observer-sqlite.key")
c.max_inflight_messages_set(1000)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("localhost", port, 30)
c.loop_forever()
