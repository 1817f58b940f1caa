#!/usr/bin/env python3
"""Subscribes to every room's alerts and prints each as "RECEIPT_UNIX_TIME PAYLOAD";
prints "ready" once the broker has confirmed the subscription.
usage: py_alert_sub.py PORT PKI_DIR"""
import sys, time
import paho.mqtt.client as mqtt

port, pki = int(sys.argv[1]), sys.argv[2]

def on_connect(client, userdata, flags, rc, props=None):
    client.subscribe("building/+/+/alerts/#", qos=2)

def on_subscribe(client, *args):
    print("ready", flush=True)

def on_message(client, userdata, msg):
    if not msg.retain:  # retained ones are old news
        print(f"{time.time():.6f} {msg.payload.decode()}", flush=True)

c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-alerts")
c.tls_set(ca_certs=f"{pki}/ca.crt", certfile=f"{pki}/observer.crt", keyfile=f"{pki}/observer.key")
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("localhost", port, 30)
c.loop_forever()
