#!/usr/bin/env python3
"""Does a broker lose QoS 1 messages when a persistent subscriber is killed
and resumes its session?

MQTT 3.1.1 section 4.4 [MQTT-4.4.0-1]: when a client reconnects with
CleanSession=0, the server MUST resend any unacknowledged PUBLISH packets
with DUP=1; and messages that match the session's subscriptions while the
client is away are part of the session state (section 3.1.2.4). Brokers:

  mosquitto       Mosquitto, one process (the reference)
  rmqtt-single    one RMQTT node, no cluster plugin
  rmqtt-cluster   three RMQTT nodes (rmqtt-cluster-raft); the subscriber
                  resumes its session on a different member (node 2)

Each broker runs on free 127.0.0.1 ports, plain MQTT over TCP, in a temp
dir, and is stopped afterwards (also on failure). Scenarios, each on a fresh
broker:

  burst   "repro-sub" (clean_session=False, "repro/#" at QoS 1) runs in a
          child process and never PUBACKs (paho manual_ack=True). A publisher
          sends 50 QoS 1 messages "0".."49" and gets every PUBACK. Once the
          subscriber holds >= 10 of them (and its count has settled) it is
          killed with SIGKILL. A new "repro-sub" (clean_session=False, no new
          SUBSCRIBE: the session must carry it) connects, acks normally and
          collects until 5 s pass with nothing new. All 50 must arrive: the
          ones the dead subscriber held as DUP=1 resends, the rest queued.
  stream  the same, but the publisher sends 100 messages/s without pause
          from before the kill until 2 s after the resumed CONNACK: every
          message it got a PUBACK for must reach the resumed subscriber.

Output: one JSON line per broker and scenario. "published" counts the
messages sent (all PUBACKed); "timeline" (stream) says how many had been
published when the subscriber was killed, when the new one sent CONNECT and
when its CONNACK came, to place "missing" in time. Exit status 1 if any
broker lost a message, 2 if a broker could not be set up.

  inflight_redelivery.py [--broker mosquitto|rmqtt-single|rmqtt-cluster]...
                         [--scenario burst|stream]... [--same-member]
                         [--rmqtt-bin PATH] [--keep]

--rmqtt-bin (or $RMQTT_BIN): an RMQTT 0.24 server binary taking
`-f rmqtt.toml --id N`, with the rmqtt-cluster-raft and rmqtt-http-api
plugins (rmqttd from rmqtt-bin, or roomsense's tests/cluster-broker build,
the default). --same-member: resume on node 1 too (rmqtt-cluster). --keep:
leave the temp dirs (configs, broker logs) and print their paths. RUST_LOG
is passed to RMQTT, e.g. RUST_LOG=info,rmqtt::shared=debug,rmqtt::v3=debug
logs the session transfer ("offline_info: ... inflight_messages: N") and
each message dropped during it ("forwards_to failed ... the client has
disconnected"). Needs python3, paho-mqtt >= 2.0, mosquitto.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt

HOST = "127.0.0.1"
TOPIC = "repro/t"
CLIENT_ID = "repro-sub"
BURST_N = 50          # burst: messages published before the kill
STREAM_RATE = 100     # stream: messages per second
KILL_AFTER = 10       # unacked messages the first subscriber must hold
GAP = 1.0             # kill -> reconnect: the broker sees the drop first
IDLE = 5.0            # collecting ends after this long without a message
DEFAULT_RMQTT_BIN = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "../../../target/cluster-broker/release/cluster-broker"))


class SetupError(Exception):
    """The broker or the test clients could not be brought up."""


# --------------------------------------------------------------------------
# Child process: the first subscriber. A separate process, so that SIGKILL
# drops its TCP connection exactly as a crash does (no DISCONNECT).
# --------------------------------------------------------------------------
def run_subscriber_child(port):
    def on_connect(c, _u, flags, rc, _p):
        print(f"CONNACK rc={rc} session_present={int(flags.session_present)}", flush=True)
        c.subscribe("repro/#", qos=1)

    def on_subscribe(_c, _u, _mid, rcs, _p):
        print(f"SUBACK {[int(r.value) for r in rcs]}", flush=True)

    def on_message(_c, _u, m):
        # manual_ack=True and no client.ack(): this PUBLISH stays unacked.
        print(f"MSG {m.payload.decode()} dup={int(m.dup)} mid={m.mid}", flush=True)

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=CLIENT_ID,
                    clean_session=False, protocol=mqtt.MQTTv311, manual_ack=True)
    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.connect(HOST, port, keepalive=60)
    c.loop_forever()


# --------------------------------------------------------------------------
# Processes and ports
# --------------------------------------------------------------------------
STARTED = []  # every process started; cleanup() kills them


def spawn(cmd, log_path=None, **kw):
    """Popen, remembered for cleanup(); output to log_path if given."""
    if log_path:
        with open(log_path, "wb") as out:
            p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **kw)
    else:
        p = subprocess.Popen(cmd, **kw)
    STARTED.append(p)
    return p


def cleanup():
    while STARTED:
        p = STARTED.pop()
        if p.poll() is None:
            p.kill()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def free_ports(n):
    """n distinct free loopback ports (bound to 0, then released)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind((HOST, 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def wait_port(port, proc, log_path, timeout=120):
    """Until the MQTT port accepts TCP connections. RMQTT opens its
    listeners only once the cluster plugin has joined the raft cluster.
    (RMQTT logs each probe as "MQTT version detection failed".)"""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SetupError(f"broker exited ({proc.returncode}):\n{tail(log_path)}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SetupError(f"port {port} not open in {timeout} s:\n{tail(log_path)}")


# --------------------------------------------------------------------------
# Brokers. Each returns (port of the first subscriber and the publisher,
# port the subscriber resumes on).
# --------------------------------------------------------------------------
def start_mosquitto(work, _args):
    if not shutil.which("mosquitto"):
        raise SetupError("mosquitto not found on PATH")
    (port,) = free_ports(1)
    conf = os.path.join(work, "mosquitto.conf")
    with open(conf, "w") as f:
        # Otherwise defaults: max_inflight_messages 20, max_queued_messages 1000.
        f.write(f"listener {port} {HOST}\nallow_anonymous true\n"
                "persistence false\nlog_dest stderr\nlog_type all\n")
    log = os.path.join(work, "mosquitto.log")
    p = spawn(["mosquitto", "-c", conf], log)
    wait_port(port, p, log)
    return port, port


def rmqtt_node_config(d, node_id, mqtt_port, grpc_port, http_port, cluster=None):
    """rmqtt.toml and plugin configs for one node (keys: rmqtt-conf 0.5.0
    src/lib.rs, src/listener.rs). The listener keeps RMQTT's defaults:
    max_inflight 16, max_mqueue_len 1000, message_retry_interval 30 s."""
    plugins = os.path.join(d, "plugins")
    os.makedirs(plugins)
    with open(os.path.join(d, "rmqtt.toml"), "w") as f:
        f.write(f"""node.id = {node_id}
# The default load check refuses connections on a busy small machine.
node.busy.check_enable = false
rpc.server_addr = "{HOST}:{grpc_port}"
log.to = "console"
log.level = "info"
plugins.dir = "{plugins}/"
plugins.default_startups = [{'"rmqtt-cluster-raft"' if cluster else ""}]
listener.tcp.external.addr = "{HOST}:{mqtt_port}"
listener.tcp.external.allow_anonymous = true
""")
    # rmqtt-http-api starts by default; a free port instead of 0.0.0.0:6060.
    with open(os.path.join(plugins, "rmqtt-http-api.toml"), "w") as f:
        f.write(f'http_laddr = "{HOST}:{http_port}"\n')
    if cluster:
        with open(os.path.join(plugins, "rmqtt-cluster-raft.toml"), "w") as f:
            f.write(cluster)


def check_rmqtt_bin(path):
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise SetupError(f"RMQTT binary not found: {path} (--rmqtt-bin or $RMQTT_BIN)")


def start_rmqtt_node(work, args, n):
    d = os.path.join(work, f"node{n}")
    log = os.path.join(work, f"node{n}.log")
    # cwd=work: rmqtt-conf would also read a ./rmqtt.toml.
    return spawn([args.rmqtt_bin, "-f", os.path.join(d, "rmqtt.toml"), "--id", str(n)],
                 log, cwd=work), log


def start_rmqtt_single(work, args):
    check_rmqtt_bin(args.rmqtt_bin)
    mqtt_port, grpc_port, http_port = free_ports(3)
    rmqtt_node_config(os.path.join(work, "node1"), 1, mqtt_port, grpc_port, http_port)
    p, log = start_rmqtt_node(work, args, 1)
    wait_port(mqtt_port, p, log)
    return mqtt_port, mqtt_port


def start_rmqtt_cluster(work, args):
    check_rmqtt_bin(args.rmqtt_bin)
    ports = free_ports(12)
    mqtt_p, grpc_p, raft_p, http_p = ports[0:3], ports[3:6], ports[6:9], ports[9:12]
    grpc_addrs = ", ".join(f'"{n + 1}@{HOST}:{grpc_p[n]}"' for n in range(3))
    raft_addrs = ", ".join(f'"{n + 1}@{HOST}:{raft_p[n]}"' for n in range(3))
    # leader_id = 1: node 1 founds the cluster and 2, 3 join it (without it,
    # nodes that find no leader each found their own one-node cluster).
    cluster = f"node_grpc_addrs = [{grpc_addrs}]\nraft_peer_addrs = [{raft_addrs}]\nleader_id = 1\n"
    for n in range(3):  # node 1 first; each up before the next starts
        rmqtt_node_config(os.path.join(work, f"node{n + 1}"), n + 1,
                          mqtt_p[n], grpc_p[n], http_p[n], cluster)
        p, log = start_rmqtt_node(work, args, n + 1)
        wait_port(mqtt_p[n], p, log)
    # One cluster of three running members? (rmqtt-http-api health check)
    url = f"http://{HOST}:{http_p[0]}/api/v1/health/check"
    h = None
    for _ in range(100):
        try:
            h = json.load(urllib.request.urlopen(url, timeout=2))
            nodes = h.get("nodes", [])
            if h.get("running") and len(nodes) == 3 and all(x.get("running") for x in nodes):
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    else:
        raise SetupError(f"no 3-node cluster; {url} says: {h}")
    return mqtt_p[0], mqtt_p[0 if args.same_member else 1]


BROKERS = {"mosquitto": start_mosquitto,
           "rmqtt-single": start_rmqtt_single,
           "rmqtt-cluster": start_rmqtt_cluster}


# --------------------------------------------------------------------------
# The scenario
# --------------------------------------------------------------------------
def scenario(kind, first_port, resume_port):
    # The first subscriber, in a child process; its stdout read in a thread.
    sub = spawn([sys.executable, os.path.abspath(__file__), "--_subscriber", str(first_port)],
                stdout=subprocess.PIPE, text=True)
    got1, suback = [], threading.Event()

    def reader():
        for line in sub.stdout:
            if line.startswith("SUBACK"):
                suback.set()
            elif line.startswith("MSG "):
                got1.append(line.split()[1])
    threading.Thread(target=reader, daemon=True).start()
    if not suback.wait(15):
        raise SetupError("first subscriber got no SUBACK")

    # The publisher, on the first subscriber's broker / member.
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="repro-pub",
                      clean_session=True, protocol=mqtt.MQTTv311)
    pub.connect(HOST, first_port, keepalive=60)
    pub.loop_start()
    infos, stop = [], threading.Event()
    if kind == "burst":
        infos = [pub.publish(TOPIC, str(i), qos=1) for i in range(BURST_N)]
        for i in infos:
            i.wait_for_publish(timeout=30)
    else:
        def stream():
            while not stop.is_set():
                infos.append(pub.publish(TOPIC, str(len(infos)), qos=1))
                time.sleep(1 / STREAM_RATE)
        streamer = threading.Thread(target=stream, daemon=True)
        streamer.start()

    # Kill the subscriber once it holds >= KILL_AFTER unacked messages (in
    # burst, once its count has also settled: the broker's window is full).
    deadline = time.time() + 30
    while len(got1) < KILL_AFTER and time.time() < deadline:
        time.sleep(0.02)
    if len(got1) < KILL_AFTER:
        raise SetupError(f"first subscriber got only {len(got1)} messages")
    n = len(got1) if kind == "stream" else -1
    while n != len(got1):
        n = len(got1)
        time.sleep(0.5)
    os.kill(sub.pid, signal.SIGKILL)
    sub.wait()
    timeline = {"killed": len(infos)}
    unacked = set(got1)
    time.sleep(GAP)

    # Resume the session (same client id, clean_session=False), acking
    # normally; no SUBSCRIBE, the resumed session has the subscription.
    got2, last = [], [time.time()]
    session_present, connected = [None], threading.Event()

    def on_connect(_c, _u, flags, _rc, _p):
        timeline["connack"] = len(infos)
        session_present[0] = bool(flags.session_present)
        connected.set()

    def on_message(_c, _u, m):
        got2.append((m.payload.decode(), bool(m.dup)))
        last[0] = time.time()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=CLIENT_ID,
                    clean_session=False, protocol=mqtt.MQTTv311)
    c.on_connect, c.on_message = on_connect, on_message
    timeline["connect"] = len(infos)
    c.connect(HOST, resume_port, keepalive=60)
    c.loop_start()
    if not connected.wait(15):
        raise SetupError("resumed subscriber got no CONNACK")
    if kind == "stream":
        time.sleep(2)
        stop.set()
        streamer.join()
        for i in infos:
            i.wait_for_publish(timeout=30)
    if not all(i.is_published() for i in infos):
        raise SetupError("publisher: not every PUBACK came")
    pub.disconnect()
    pub.loop_stop()
    last[0] = time.time()
    hard_stop = time.time() + 120
    while time.time() - last[0] < IDLE and time.time() < hard_stop:
        time.sleep(0.1)
    c.disconnect()
    c.loop_stop()

    expected = {str(i) for i in range(len(infos))}
    seen = {p for p, _ in got2}
    missing = expected - seen
    result = {
        "session_present": session_present[0],
        "published": len(infos),
        "received_unique": len(seen & expected),
        "missing": sorted(missing, key=int),
        "dup_flagged": sum(1 for _, d in got2 if d),
        # what the killed subscriber held unacked, and how many of those are lost
        "unacked_at_kill": len(unacked),
        "missing_that_were_unacked": len(missing & unacked),
    }
    if kind == "stream":
        result["timeline"] = timeline
    return result


def run_one(name, kind, args):
    work = tempfile.mkdtemp(prefix=f"inflight-repro-{name}-{kind}-")
    try:
        first, resume = BROKERS[name](work, args)
        return {"broker": name, "scenario": kind, **scenario(kind, first, resume)}
    finally:
        cleanup()  # brokers and subscriber, also on failure
        if args.keep:
            print(f"{name}/{kind}: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--_subscriber":
        return run_subscriber_child(int(sys.argv[2]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--broker", action="append", choices=list(BROKERS),
                    help="repeatable; default: all three")
    ap.add_argument("--scenario", action="append", choices=["burst", "stream"],
                    help="repeatable; default: both")
    ap.add_argument("--same-member", action="store_true",
                    help="rmqtt-cluster: resume on node 1, where the subscriber was")
    ap.add_argument("--rmqtt-bin", default=os.environ.get("RMQTT_BIN", DEFAULT_RMQTT_BIN))
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (configs, logs)")
    args = ap.parse_args()
    # SIGTERM/SIGHUP -> normal exit, so that the finally blocks stop the brokers.
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, lambda *_: sys.exit(130))

    lost = failed = False
    for name in args.broker or list(BROKERS):
        for kind in args.scenario or ["burst", "stream"]:
            try:
                r = run_one(name, kind, args)
            except SetupError as e:
                print(json.dumps({"broker": name, "scenario": kind, "error": str(e)}), flush=True)
                failed = True
                continue
            print(json.dumps(r), flush=True)
            lost |= bool(r["missing"])
    sys.exit(2 if failed else 1 if lost else 0)


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
