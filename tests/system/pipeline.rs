//! sensord → Mosquitto → aggregatord → sled → `aggregatord dump`.

use crate::harness::*;
use std::collections::BTreeMap;

const PREFIX: &str = "building/floor1/room101";

fn topic(kind: &str, id: &str) -> String {
    format!("{PREFIX}/{kind}/{id}")
}

/// Start aggregatord and wait until its subscription is in place.
fn start_aggregatord(broker: &Broker, pki: &Pki, storage: &std::path::Path) -> (ConfigFile, Proc) {
    let config = write_config(&aggregatord_yaml(broker, pki, storage));
    let agg = start_daemon(AGGREGATORD, &config.path);
    agg.log.wait_for(&["subscribed", "Success(AtLeastOnce)"]);
    (config, agg)
}

#[test]
fn readings_of_every_type_are_stored_and_dumped_with_every_field() {
    let pki = Pki::new(&["room101", "aggregatord", "observer"]);
    let broker = Broker::start(&pki);
    let storage = tempfile::tempdir().unwrap();
    let (agg_config, mut agg) = start_aggregatord(&broker, &pki, storage.path());
    let watcher = Watcher::connect(&broker, &pki, "observer");
    watcher.subscribe("building/#", 2);

    let sensors = [
        ("temp_001", "temperature", "150ms", 0),
        ("hum_001", "humidity", "200ms", 0),
        ("motion_001", "motion", "100ms", 1),
        ("energy_001", "energy", "250ms", 2),
    ];
    let config = write_config(&sensord_yaml(&broker, &pki, "room101", PREFIX, &sensors));
    let mut sensord = start_daemon(SENSORD, &config.path);

    // Three readings of each sensor, as seen on the wire by an independent client.
    let per_sensor = 3;
    watcher.wait_until(|all| {
        sensors.iter().all(|(id, kind, ..)| {
            all.iter().filter(|s| s.topic == topic(kind, id)).count() >= per_sensor
        })
    });
    let seen = watcher.messages();
    // Every reading seen must also have been stored: wait for aggregatord to say so.
    let readings: Vec<&Seen> = seen
        .iter()
        .filter(|s| !s.topic.ends_with("/status"))
        .collect();
    for s in &readings {
        let seq = s.json()["seq"].as_u64().expect("seq is a number");
        agg.log.wait_for(&[
            "stored reading",
            &format!("topic={}", s.topic),
            &format!("seq=Some({seq})"),
        ]);
    }
    assert!(sensord.terminate().success(), "sensord exit status");
    assert!(agg.terminate().success(), "aggregatord exit status");

    let dumped = dump(&agg_config.path, &["--format", "jsonl"]);
    let rows: BTreeMap<(String, u64), serde_json::Value> = dumped
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).expect("jsonl line");
            let key = (
                row["topic"].as_str().unwrap().to_owned(),
                row["seq"].as_u64().unwrap(),
            );
            (key, row)
        })
        .collect();
    for s in readings {
        let sent = s.json();
        let key = (s.topic.clone(), sent["seq"].as_u64().unwrap());
        let row = rows
            .get(&key)
            .unwrap_or_else(|| panic!("{key:?} not in dump:\n{dumped}"));
        for field in [
            "sensor_id",
            "sensor_type",
            "value",
            "unit",
            "timestamp",
            "seq",
        ] {
            assert_eq!(row[field], sent[field], "{field} of {key:?}");
        }
        // Delivered to aggregatord at min(publish QoS, subscription QoS 1).
        assert_eq!(
            row["qos"].as_u64(),
            Some(u64::from(s.qos.min(1))),
            "qos of {key:?}"
        );
        let received = row["received_at"].as_str().expect("received_at");
        assert!(
            received >= sent["timestamp"].as_str().unwrap(),
            "received_at {received} before timestamp"
        );
    }
    // Sanity of the formats people read: a header, then one line per row.
    let csv = dump(&agg_config.path, &["--format", "csv"]);
    assert_eq!(
        csv.lines().next(),
        Some("topic,sensor_id,sensor_type,value,unit,timestamp,seq,received_at,qos")
    );
    assert_eq!(csv.lines().count(), rows.len() + 1);
    let table = dump(&agg_config.path, &[]);
    assert!(table.starts_with("TOPIC"), "table header: {table}");
    assert_eq!(table.lines().count(), rows.len() + 1);
}

#[test]
fn each_stream_arrives_with_its_configured_qos() {
    let pki = Pki::new(&["room101", "observer"]);
    let broker = Broker::start(&pki);
    let watcher = Watcher::connect(&broker, &pki, "observer");
    // Subscribing at QoS 2 means each message arrives at the QoS it was published with.
    watcher.subscribe("building/#", 2);
    let sensors = [
        ("temp_001", "temperature", "100ms", 0),
        ("motion_001", "motion", "100ms", 1),
        ("energy_001", "energy", "100ms", 2),
    ];
    let config = write_config(&sensord_yaml(&broker, &pki, "room101", PREFIX, &sensors));
    let _sensord = start_daemon(SENSORD, &config.path);
    watcher.wait_until(|all| {
        sensors
            .iter()
            .all(|(id, kind, ..)| all.iter().filter(|s| s.topic == topic(kind, id)).count() >= 3)
    });
    let seen = watcher.messages();
    for (id, kind, _, qos) in sensors {
        for s in seen.iter().filter(|s| s.topic == topic(kind, id)) {
            assert_eq!(s.qos, qos, "{} arrived at QoS {}", s.topic, s.qos);
            assert!(!s.retain, "{} is a live reading, not retained", s.topic);
        }
    }
}

#[test]
fn a_malformed_payload_is_rejected_and_counted_while_valid_readings_keep_flowing() {
    let pki = Pki::new(&["room101", "aggregatord"]);
    let broker = Broker::start(&pki);
    let storage = tempfile::tempdir().unwrap();
    let (agg_config, mut agg) = start_aggregatord(&broker, &pki, storage.path());
    let sensors = [("temp_001", "temperature", "100ms", 1)];
    let config = write_config(&sensord_yaml(&broker, &pki, "room101", PREFIX, &sensors));
    let _sensord = start_daemon(SENSORD, &config.path);
    agg.log.wait_for(&["stored reading", "seq=Some(1)"]);

    // A client with room101's certificate may publish there, so can send anything.
    let rogue = Watcher::connect(&broker, &pki, "room101");
    let t = topic("temperature", "temp_001");
    rogue.publish(&t, b"{this is not json", 1);
    rogue.publish(&t, br#"{"sensor_id":"temp_001","sensor_type":"temperature","value":999,"unit":"celsius","timestamp":"2026-01-24T10:00:00Z"}"#, 1);
    agg.log.wait_for(&["rejected message", "reason=malformed"]);
    agg.log
        .wait_for(&["rejected message", "reason=out_of_range"]);

    // Valid readings are still stored after the bad ones.
    let stored_before = count_lines(&agg.log.text(), "stored reading");
    agg.log.wait_for_nth(&["stored reading"], stored_before + 3);
    assert!(agg.terminate().success());
    agg.log.wait_for(&[
        "aggregatord stopped",
        "rejected=2",
        "malformed=1,out_of_range=1",
    ]);

    let rejected = dump(&agg_config.path, &["--rejected", "--format", "jsonl"]);
    let reasons: Vec<String> = rejected
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["reason"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        reasons,
        ["malformed", "out_of_range"],
        "rejected tree:\n{rejected}"
    );
    assert!(
        rejected.contains("{this is not json"),
        "payload kept for inspection:\n{rejected}"
    );
    let stored = dump(&agg_config.path, &["--format", "jsonl"]);
    let values: Vec<f64> = stored
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["value"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert!(
        !values.contains(&999.0),
        "the out-of-range reading must not be stored"
    );
    assert!(stored.lines().count() >= stored_before + 3);
}

fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}
