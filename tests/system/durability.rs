//! aggregatord's promise: what it acknowledged is on disk, stored exactly once,
//! whatever happens to it or to the broker.

use crate::harness::*;
use std::collections::BTreeSet;

const TOPIC: &str = "building/floor1/room101/temperature/temp_001";

// kill -9 during a stream: see reliability.rs (ten kills over 20,000 readings).

/// Subscription QoS: measured with QoS 2 (see README, "Why aggregatord subscribes at
/// QoS 1"), a broker restart mid-stream left aggregatord reconnecting for ever on
/// "unsolicited ack" (rumqtt#664), so QoS 2 subscriptions are refused by config.
/// QoS 1 must come through the same restart with nothing lost.
#[test]
fn subscription_qos_1_survives_a_broker_restart_mid_stream() {
    const N: u64 = 2000;
    let pki = Pki::new(&["room101", "aggregatord"]);
    let mut broker = Broker::start(&pki);
    let storage = tempfile::tempdir().unwrap();
    let config = write_config(&aggregatord_yaml(&broker, &pki, storage.path()));
    let mut agg = start_daemon(AGGREGATORD, &config.path);
    agg.log.wait_for(&["subscribed"]);
    let node = Watcher::connect(&broker, &pki, "room101");
    // QoS 2 from the node: the broker then holds a QoS 2 flow for each message.
    for seq in 1..=N / 2 {
        node.publish(TOPIC, &reading_payload(seq), 2);
    }
    // The broker has every one of them (so the publisher is not what loses any)…
    node.wait_confirmed(N as usize / 2);
    drop(node);
    // …and aggregatord is part-way through its queue when the broker restarts.
    agg.log.wait_for_nth(&["stored reading"], 200);
    broker.restart(&pki, true);
    let node = Watcher::connect(&broker, &pki, "room101");
    for seq in N / 2 + 1..=N {
        node.publish(TOPIC, &reading_payload(seq), 2);
    }
    agg.log
        .wait_for(&["stored reading", &format!("seq=Some({N})")]);
    let connects = agg
        .log
        .text()
        .lines()
        .filter(|l| l.contains(INGEST_CONNECTED))
        .count();
    assert_eq!(connects, 2, "one reconnect, no loop");
    assert!(agg.terminate().success());
    let seqs: BTreeSet<u64> = stored_seqs(&config.path).into_iter().collect();
    let missing = (1..=N).filter(|s| !seqs.contains(s)).count();
    assert_eq!(missing, 0, "readings lost across the restart");
    record(
        "broker_restart_mid_backlog",
        "Mosquitto restarted while aggregatord drains a 1,000-reading QoS 2 backlog (subscription QoS 1)",
        serde_json::json!({ "readings": N, "lost": missing, "reconnects": connects - 1 }),
    );
}

#[test]
fn a_qos_2_subscription_is_refused_with_the_reason() {
    let pki = Pki::new(&["aggregatord"]);
    let broker = Broker::start(&pki);
    let storage = tempfile::tempdir().unwrap();
    let config = write_config(&aggregatord_yaml_with(&broker, &pki, storage.path(), 2, ""));
    let out = std::process::Command::new(AGGREGATORD)
        .arg("--config")
        .arg(&config.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("subscriptions[0].qos") && err.contains("rumqtt#664"),
        "{err}"
    );
}
