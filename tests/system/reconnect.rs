//! Broker restarts: both daemons reconnect by themselves, and aggregatord
//! resubscribes when the broker has forgotten its session.

use crate::harness::*;
use std::collections::BTreeSet;

const PREFIX: &str = "building/floor1/room101";

struct Rig {
    pki: Pki,
    broker: Broker,
    _storage: tempfile::TempDir,
    agg_config: ConfigFile,
    agg: Proc,
    _sensord_config: ConfigFile,
    sensord: Proc,
}

fn rig() -> Rig {
    let Agg {
        pki,
        broker,
        _storage: storage,
        config: agg_config,
        agg,
        ..
    } = Site::new(&["room101"]).start();
    let sensors = [("motion_001", "motion", "50ms", 1)];
    let sensord_config = write_config(&sensord_yaml(&broker, &pki, "room101", PREFIX, &sensors));
    let sensord = start_daemon(SENSORD, &sensord_config.path);
    agg.log.wait_for(&["stored reading", "seq=Some(5)"]);
    Rig {
        pki,
        broker,
        _storage: storage,
        agg_config,
        agg,
        _sensord_config: sensord_config,
        sensord,
    }
}

fn stored_lines(log: &Log) -> usize {
    log.text()
        .lines()
        .filter(|l| l.contains("stored reading"))
        .count()
}

#[test]
fn a_broker_that_lost_our_session_gets_our_subscription_again() {
    let mut rig = rig();
    rig.broker.restart(&rig.pki, false);

    // Both reconnect on their own; the broker reports no session for aggregatord…
    rig.sensord.log.wait_for_nth(&["connected broker="], 2);
    let line = rig.agg.log.wait_for_nth(&[INGEST_CONNECTED], 2);
    assert!(line.contains("session_present=false"), "{line}");
    // …so it subscribes again, and readings are stored again.
    rig.agg.log.wait_for_nth(&["subscribed", "Success"], 2);
    let stored = stored_lines(&rig.agg.log);
    rig.agg.log.wait_for_nth(&["stored reading"], stored + 5);
}

#[test]
fn across_a_broker_restart_with_persistence_no_qos1_reading_is_lost() {
    let mut rig = rig();
    rig.broker.restart(&rig.pki, true);
    let line = rig.agg.log.wait_for_nth(&[INGEST_CONNECTED], 2);
    assert!(line.contains("session_present=true"), "{line}");
    rig.sensord.log.wait_for_nth(&["connected broker="], 2);
    let stored = stored_lines(&rig.agg.log);
    rig.agg.log.wait_for_nth(&["stored reading"], stored + 10);

    assert!(rig.sensord.terminate().success());
    // sensord waited for the broker to confirm every reading before it exited; the
    // last one reaches aggregatord after that.
    let last = rig.sensord.log.wait_for(&["sensord stopped"]);
    let published: u64 = field(&last, "published=");
    rig.agg
        .log
        .wait_for(&["stored reading", &format!("seq=Some({published})")]);
    assert!(rig.agg.terminate().success());

    let rows = stored_seqs(&rig.agg_config.path);
    let seqs: BTreeSet<u64> = rows.iter().copied().collect();
    let missing: Vec<u64> = (1..=published).filter(|s| !seqs.contains(s)).collect();
    let duplicated_rows = rows.len() - seqs.len();
    record(
        "broker_restart_persistent",
        "Mosquitto restarted (persistence on) under a QoS 1 stream from sensord to aggregatord",
        serde_json::json!({ "readings": published, "lost": missing.len(), "duplicated_rows": duplicated_rows }),
    );
    assert!(
        missing.is_empty(),
        "QoS 1 readings lost across the restart: {missing:?}"
    );
    assert_eq!(duplicated_rows, 0, "a reading was stored twice");
}

fn field(line: &str, name: &str) -> u64 {
    let at = line
        .find(name)
        .unwrap_or_else(|| panic!("{name} not in {line}"))
        + name.len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn with_no_broker_at_start_sensord_retries_quietly_and_connects_when_it_appears() {
    let pki = Pki::new(&["room101", "observer"]);
    let port = free_port();
    let sensors = [("m", "motion", "100ms", 1)];
    let yaml = sensord_yaml_on(port, &pki, "room101", PREFIX, &sensors, "");
    let config = write_config(&yaml);
    let sensord = start_daemon(SENSORD, &config.path);

    // Several attempts (backoff 100ms doubling to 400ms), but one warning: the
    // failure did not change, so it is not repeated.
    sensord
        .log
        .wait_for_nth(&["waiting before reconnecting"], 4);
    let warnings = sensord
        .log
        .text()
        .lines()
        .filter(|l| l.contains("MQTT connection failed"))
        .count();
    assert_eq!(
        warnings,
        1,
        "one warning per state change:\n{}",
        sensord.log.text()
    );

    let broker = Broker::start_on(&pki, port);
    let appeared = std::time::Instant::now();
    sensord.log.wait_for(&["connected broker="]);
    let connected_after = appeared.elapsed();
    let watcher = Watcher::connect(&broker, &pki, "observer");
    watcher.subscribe(&format!("{PREFIX}/#"), 1);
    watcher.wait_for(&format!("{PREFIX}/status"), |s| {
        s.json()["status"] == "online"
    });
    watcher.wait_for(&format!("{PREFIX}/motion/m"), |_| true);
    record(
        "broker_absent_at_start",
        "sensord started before the broker exists; broker appears later",
        serde_json::json!({ "warnings_logged": warnings, "connected_s_after_broker_started": connected_after.as_secs_f64() }),
    );
}

/// `broker.hosts` (issue 17): both daemons rotate through the list after each
/// failed or lost connection, and each broker's certificate is checked against
/// its own entry's host. The brokers' certificate names `localhost` only, so
/// `127.0.0.1` (the same broker!) is refused by name; an entry with nothing
/// listening is passed over; when the broker in use dies, the next takes over
/// and readings keep being stored. Two independent Mosquittos, not a cluster:
/// what the dead one held is its own (scripts/cluster-test covers sessions
/// that survive a member).
#[test]
fn with_several_brokers_both_daemons_move_on_when_theirs_dies() {
    let pki = Pki::with_env(
        &["room101", "aggregatord"],
        &[("BROKER_NAMES", "DNS:localhost")],
    );
    let a = Broker::start(&pki);
    let b_port = free_port();
    let hosts = format!(
        "  hosts: [{{ host: 127.0.0.1, port: {a} }}, {{ host: localhost, port: {b_port} }}, {{ host: localhost, port: {a} }}]\n",
        a = a.port
    );
    let single = format!("  host: localhost\n  port: {}\n", a.port);
    let storage = tempfile::tempdir().unwrap();
    let agg_yaml = aggregatord_yaml(&a, &pki, storage.path());
    assert!(agg_yaml.contains(&single), "{agg_yaml}");
    let agg_config = write_config(&agg_yaml.replace(&single, &hosts));
    let agg = start_daemon(AGGREGATORD, &agg_config.path);
    let sensors = [("temp_001", "temperature", "50ms", 1)];
    let node_yaml = sensord_yaml(&a, &pki, "room101", PREFIX, &sensors).replace(&single, &hosts);
    let node_config = write_config(&node_yaml);
    let sensord = start_daemon(SENSORD, &node_config.path);

    let first = format!("connected broker=localhost:{}", a.port);
    for log in [&agg.log, &sensord.log] {
        log.wait_for(&[&first]);
        let text = log.text();
        let refused = format!("broker=127.0.0.1:{}", a.port);
        assert!(
            text.lines()
                .any(|l| l.contains(&refused) && l.contains("not valid for name")),
            "127.0.0.1 refused by name:\n{text}"
        );
        assert!(!text.contains("connected broker=127.0.0.1"), "{text}");
    }
    agg.log.wait_for(&["subscribed"]);
    agg.log.wait_for_nth(&["stored reading"], 5);

    let b = Broker::start_on(&pki, b_port);
    let mut a = a;
    a.proc.kill9();
    let second = format!("connected broker=localhost:{}", b.port);
    for log in [&agg.log, &sensord.log] {
        log.wait_for(&[&second]);
    }
    // A fresh broker: aggregatord subscribes again, and readings flow through it.
    agg.log.wait_for_nth(&["subscribed"], 2);
    let before = stored_lines(&agg.log);
    agg.log.wait_for_nth(&["stored reading"], before + 5);
    record(
        "broker_failover",
        "Three broker entries: one refused by certificate name, one with nothing listening, one up; the one in use is killed (kill -9) and the next takes over",
        serde_json::json!({
            "connected_first": first,
            "connected_after_kill": second,
            "stored_after_failover": stored_lines(&agg.log) - before,
        }),
    );
}
