#!/usr/bin/env python3
# Repro: Aedes 1.2.0 cluster (aedes-persistence-redis 11.2.2, mqemitter-redis 7.2.1)
# loses live delivery of one filter when a persistent (clean_session=false)
# client sends ONE SUBSCRIBE packet with several filters.
#
# Starts its own redis + 3 broker.mjs nodes on free loopback ports, a dev PKI in
# a temp dir, then: client SUB (clean=false) on node 1 subscribes to
# building/floor1/# and building/floor3/# (one SUBSCRIBE), a publisher sends
# --count QoS 1 messages to each floor (floor N via node N unless --pub-node),
# and counts what SUB receives per floor. Everything it starts is killed at exit.
#
#   python3 missing_filter.py [--count 200] [--filters 1,3] [--clean] [--separate]
#                             [--pub-node 1] [--reconnect]
#   --clean     clean_session=true (control: no loss expected)
#   --separate  one SUBSCRIBE packet per filter (workaround)
#   --nodes 1   start only node 1 (publishers then all use node 1)
#   --reconnect after counting, reconnect SUB (clean=false) and count the backlog
# Exit status 1 if any floor is short.
#
# Result (every run): no SUBACK ever; the FIRST filter of the SUBSCRIBE gets
# nothing live (0/N), the others get N/N. Needs neither an earlier session,
# another node, nor volume (--count 5, --nodes 1 also lose). The lost messages
# are queued in Redis and arrive on the next session_present=true connect.
# Cause: aedes lib/handlers/subscribe.js:134 calls persistence.addSubscriptions
# once PER filter with the WHOLE filter list; aedes-persistence
# broadcastPersistence.js:71/82 parks each call's resolver in a Map keyed by
# clientId + subs[0].topic, so the 2nd call overwrites the 1st; the 1st never
# resolves, so its addSubs (mq.on -> PSUBSCRIBE) never runs and SUBACK is never
# written (runParallel waits for it).
import argparse, os, shutil, signal, socket, subprocess, sys, tempfile, threading, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

HERE = os.path.dirname(os.path.abspath(__file__))
BROKER = os.path.join(HERE, '..', 'broker.mjs')
GEN = os.path.join(HERE, '..', '..', '..', 'deploy', 'pki', 'gen-dev-pki.sh')

ap = argparse.ArgumentParser()
ap.add_argument('--count', type=int, default=200)
ap.add_argument('--filters', default='1,3')
ap.add_argument('--clean', action='store_true')
ap.add_argument('--separate', action='store_true')
ap.add_argument('--pub-node', type=int, default=0, help='publish every floor via this node (0: floor N via node N)')
ap.add_argument('--sub-node', type=int, default=1)
ap.add_argument('--reconnect', action='store_true')
ap.add_argument('--nodes', type=int, default=3, help='number of aedes nodes to start (1..3)')
ap.add_argument('--wait', type=float, default=5.0)
a = ap.parse_args()
floors = [int(f) for f in a.filters.split(',')]

procs = []
work = tempfile.mkdtemp(prefix='aedes-repro-')


def free_port():
    s = socket.socket(); s.bind(('127.0.0.1', 0)); p = s.getsockname()[1]; s.close(); return p


def cleanup(*_):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
    shutil.rmtree(work, ignore_errors=True)


signal.signal(signal.SIGTERM, lambda *_: sys.exit(2))
try:
    pki = os.path.join(work, 'pki')
    subprocess.run([GEN, pki, 'sub', 'pub'], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rport = free_port()
    procs.append(subprocess.Popen(['redis-server', '--port', str(rport), '--bind', '127.0.0.1', '--save', '',
                                   '--appendonly', 'yes', '--appendfsync', 'always', '--dir', work],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(0.5)
    ports = {}
    for n in range(1, a.nodes + 1):
        ports[n] = free_port()
        log = open(os.path.join(work, f'node{n}.log'), 'w+')
        procs.append(subprocess.Popen(['node', BROKER, '--id', str(n), '--port', str(ports[n]), '--redis', str(rport),
                                       '--ca', f'{pki}/ca.crt', '--cert', f'{pki}/broker.crt', '--key', f'{pki}/broker.key'],
                                      stdout=subprocess.DEVNULL, stderr=log))
        for _ in range(100):
            log.seek(0)
            if f'aedes node {n} ready' in log.read():
                break
            time.sleep(0.1)
        else:
            sys.exit(f'node {n} not ready')

    def client(cid, name, clean):
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, clean_session=clean)
        c.tls_set(ca_certs=f'{pki}/ca.crt', certfile=f'{pki}/{name}.crt', keyfile=f'{pki}/{name}.key')
        return c

    got = {f: set() for f in (1, 2, 3)}
    lock = threading.Lock()
    subacked = threading.Event()
    acks = []

    def on_message(c, u, m):
        f = int(m.topic.split('/')[1][-1])
        with lock:
            got[f].add(int(m.payload))

    def on_subscribe(c, u, mid, rcs, props):
        acks.append([int(r.value) if hasattr(r, 'value') else r for r in rcs])
        if len(acks) == (len(floors) if a.separate else 1):
            subacked.set()

    def on_connect(c, u, flags, rc, props):
        print(f'SUB connected rc={rc} session_present={flags.session_present}')

    sub = client('SUB', 'sub', a.clean)
    sub.on_message = on_message
    sub.on_subscribe = on_subscribe
    sub.on_connect = on_connect
    # What the brokers send Redis while SUB subscribes: the $SYS/sub/add broadcasts
    # (aedes-persistence) and the PSUBSCRIBEs (mqemitter-redis = live delivery).
    mon = subprocess.Popen(['stdbuf', '-oL', 'redis-cli', '-p', str(rport), 'monitor'], stdout=subprocess.PIPE, text=True)
    procs.append(mon)
    sub.connect('localhost', ports[a.sub_node], keepalive=30)
    sub.loop_start()
    time.sleep(0.5)
    topics = [(f'building/floor{f}/#', 1) for f in floors]
    if a.separate:
        for t in topics:
            sub.subscribe([t])
    else:
        sub.subscribe(topics)
    if not subacked.wait(10):
        print('NO SUBACK within 10 s')
    print(f'SUBACK return codes: {acks}')
    time.sleep(1); mon.terminate(); out = mon.communicate()[0]
    for line in out.splitlines():
        if '"psubscribe" "building' in line or ('"publish" "$SYS/sub/add"' in line):
            print('  redis:', line.split(']', 1)[1].strip()[:140])

    # publishers: one per floor, QoS 1, wait for every PUBACK
    pubs = []
    for f in (1, 2, 3):
        node = a.pub_node or (f if f in ports else 1)
        p = client(f'PUB{f}', 'pub', True)
        p.max_inflight_messages_set(100)
        p.connect('localhost', ports[node], keepalive=30)
        p.loop_start()
        pubs.append((f, p))
    time.sleep(0.5)
    infos = []
    for i in range(a.count):
        for f, p in pubs:
            infos.append(p.publish(f'building/floor{f}/room{f}01/temperature/temp_001', str(i), qos=1))
    for inf in infos:
        inf.wait_for_publish(60)
    print(f'published {a.count} QoS1 per floor, all PUBACKed: {all(i.is_published() for i in infos)}')
    for _, p in pubs:
        p.disconnect(); p.loop_stop()
    time.sleep(a.wait)
    short = False
    for f in floors:
        n = len(got[f])
        print(f'floor{f}: received {n}/{a.count} (via node {a.pub_node or (f if f in ports else 1)})')
        short |= n < a.count
    sub.disconnect(); sub.loop_stop()
    if a.reconnect:
        time.sleep(0.5)
        for f in got:
            got[f].clear()
        sub2 = client('SUB', 'sub', False)
        sub2.on_message = on_message
        sub2.on_connect = on_connect
        sub2.connect('localhost', ports[a.sub_node], keepalive=30)
        sub2.loop_start()
        time.sleep(a.wait)
        for f in floors:
            print(f'after reconnect floor{f}: received {len(got[f])} queued')
        sub2.disconnect(); sub2.loop_stop()
    print('RESULT:', 'LOST MESSAGES' if short else 'all delivered')
    code = 1 if short else 0
finally:
    cleanup()
sys.exit(code)
