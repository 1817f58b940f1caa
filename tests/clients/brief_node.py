"""The course brief's own sensor node (../shared/reference, "MQTT_PUBLISHER"),
as written there, with only what our broker needs added: mutual TLS and the
port. Its payloads are the brief's: naive local timestamps, no seq, a status
without a node, a Last Will with a client_id.

    python3 brief_node.py PORT CA CERT KEY READINGS

Publishes its online status and READINGS temperature readings (QoS 0) and
motion readings (QoS 1), prints PUBLISHED (on stderr), then stays connected until killed
(kill -9 makes the broker publish its Last Will).
"""
import json
import ssl
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime

import paho.mqtt.client as mqtt

BASE_TOPIC = "building/floor1/room101"


@dataclass
class SensorReading:
    sensor_id: str
    sensor_type: str
    value: float
    unit: str
    timestamp: str


class IoTPublisher:
    def __init__(self, client_id, broker_host, broker_port):
        # paho 2 asks which callback signatures to use; the brief's are version 1.
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, client_id=client_id)
        self.broker_host = broker_host
        self.broker_port = broker_port
        self.connected = False
        self.client.on_connect = self._on_connect
        self.client.will_set(
            topic=f"{BASE_TOPIC}/status",
            payload=json.dumps({"status": "offline", "client_id": client_id}),
            qos=1,
            retain=True,
        )

    def _on_connect(self, client, userdata, flags, rc):
        if rc == 0:
            self.connected = True
            self.client.publish(
                f"{BASE_TOPIC}/status", json.dumps({"status": "online"}), qos=1, retain=True
            )

    def connect(self):
        self.client.connect(self.broker_host, self.broker_port, keepalive=60)
        self.client.loop_start()

    def publish_reading(self, reading, qos=0):
        topic = f"{BASE_TOPIC}/{reading.sensor_type}/{reading.sensor_id}"
        return self.client.publish(topic, json.dumps(asdict(reading)), qos=qos)


def main():
    port, ca, cert, key, n = sys.argv[1:6]
    publisher = IoTPublisher("sensor_node_1", "localhost", int(port))
    # Added for our broker: mutual TLS (the brief's runs plain on 1883).
    publisher.client.tls_set(ca_certs=ca, certfile=cert, keyfile=key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    publisher.connect()
    while not publisher.connected:
        time.sleep(0.05)
    sent = []
    for i in range(int(n)):
        temp = SensorReading("temp_001", "temperature", round(22.0 + i / 10, 2), "celsius", datetime.now().isoformat())
        sent.append(publisher.publish_reading(temp, qos=0))
        motion = SensorReading("motion_001", "motion", 1.0, "boolean", datetime.now().isoformat())
        sent.append(publisher.publish_reading(motion, qos=1))
        time.sleep(0.01)
    for info in sent:
        info.wait_for_publish(10)
    print("PUBLISHED", file=sys.stderr, flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
