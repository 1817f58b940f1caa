//! Hostile and heavy input from inside the trust boundary: an authorised node
//! certificate, a local user, an HTTP client on loopback. Each test is one way
//! of trying to take aggregatord down or make it lose data.

use crate::harness::*;
use std::process::Command;

struct Agg {
    _pki: Pki,
    _broker: Broker,
    _storage: tempfile::TempDir,
    config: ConfigFile,
    agg: Proc,
    addr: String,
}

fn aggregatord(extra: &str) -> Agg {
    let pki = Pki::new(&["room101", "aggregatord"]);
    let broker = Broker::start(&pki);
    let storage = tempfile::tempdir().unwrap();
    let config = write_config(&aggregatord_yaml_with(
        &broker,
        &pki,
        storage.path(),
        1,
        extra,
    ));
    let agg = start_daemon(AGGREGATORD, &config.path);
    let addr = dashboard_addr(&agg.log);
    agg.log.wait_for(&["subscribed"]);
    Agg {
        _pki: pki,
        _broker: broker,
        _storage: storage,
        config,
        agg,
        addr,
    }
}

#[test]
fn times_from_a_query_string_or_a_command_line_are_refused_never_a_panic() {
    let a = aggregatord("");
    for q in [
        "since=300000y",
        "until=300000y",
        "since=300000y&until=1h",
        "since=9999999999999999999999s",
        "since=0001-01-01T00:00:00Z&until=9999-12-31T23:59:59Z",
        "since=262143-12-31T23:59:59Z",
    ] {
        let path = format!("/api/history?sensor=x&{q}");
        let (status, body) = http_get(&a.addr, &path);
        // 400 with a reason, or an empty history: an answer either way.
        assert!(
            status == 400 && !body.trim().is_empty() || status == 200,
            "{path}: {status} {body:?}"
        );
    }
    assert_eq!(http_get(&a.addr, "/healthz").0, 200);
    assert_eq!(a.agg.log.count(&["panicked"]), 0, "{}", a.agg.log.text());

    // The same text on the command line: a usage error naming it, not exit 101.
    let out = Command::new(AGGREGATORD)
        .arg("--config")
        .arg(&a.config.path)
        .args(["dump", "--since", "300000y"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("too long ago"), "{stderr}");
}

/// The load generator example, next to the daemons (scripts/test builds it).
fn loadgen() -> std::path::PathBuf {
    std::path::Path::new(AGGREGATORD)
        .parent()
        .expect("target dir")
        .join("examples/loadgen")
}

/// Per reading of `topic` in the dump: from its own timestamp to its arrival
/// at aggregatord, in milliseconds.
fn delays_ms(config: &ConfigFile, topic: &str) -> Vec<i64> {
    let ms = |v: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    dump(&config.path, &["--format", "jsonl"])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["topic"] == topic)
        .map(|r| ms(&r["received_at"]) - ms(&r["timestamp"]))
        .collect()
}

#[test]
fn a_node_inventing_50000_sensor_ids_slows_down_no_one_else() {
    const INVENTED: u64 = 50_000;
    let pki = Pki::new(&["room101", "room102", "aggregatord"]);
    let broker = Broker::start(&pki);
    let storage = tempfile::tempdir().unwrap();
    // Caps raised past the flood, and rules that keep state for every sensor:
    // what is measured is the alert engine and ingest, not the cap.
    let extra = "ingest: { max_sensors_per_room: 100000, max_sensors: 100000 }\n\
        alerts:\n  - { name: stale, type: temperature, stale_after: 1h }\n  \
        - { name: hot, type: temperature, above: 40, for: 1m }\n";
    let config = write_config(&aggregatord_yaml_with(&broker, &pki, storage.path(), 1, extra));
    let mut agg = start_daemon(AGGREGATORD, &config.path);
    agg.log.wait_for(&["subscribed"]);
    let legit_prefix = "building/floor1/room102";
    let legit = format!("{legit_prefix}/temperature/temp_001");
    let node_config = write_config(&sensord_yaml(
        &broker,
        &pki,
        "room102",
        legit_prefix,
        &[("temp_001", "temperature", "100ms", 1)],
    ));
    let mut node = start_daemon(SENSORD, &node_config.path);
    agg.log
        .wait_for(&["stored reading", &format!("topic={legit} "), "seq=Some(3)"]);

    let flood = Proc::spawn(
        "loadgen",
        Command::new(loadgen())
            .args(["--port", &broker.port.to_string(), "--pki"])
            .arg(pki.dir.path())
            .args(["--node", "room101", "--qos", "1"])
            .args(["--count", &INVENTED.to_string()])
            .args(["--sensors", &INVENTED.to_string()]),
    );
    // Bounded by the flood's own pace, not ours: a debug build on a busy CI
    // machine. The old engine needed minutes for this (7.6 in a release build).
    let long = std::time::Duration::from_secs(180);
    flood
        .log
        .wait_for_nth_within(|l| l.contains("published"), 1, "published", long);
    let invented = |l: &str| l.contains("stored reading") && l.contains("room101/temperature/t");
    agg.log
        .wait_for_nth_within(invented, INVENTED as usize, "stored invented", long);
    assert!(node.terminate().success());
    let made = node.log.wait_for(&["sensord stopped"]);
    let published: usize = made
        .split("published=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    agg.log.wait_for_nth(
        &["stored reading", &format!("topic={legit} ")],
        published,
    );
    let reconnects = agg.log.count(&["MQTT connection failed"]);
    assert!(agg.terminate().success(), "stops on the first SIGTERM");

    let mut delays = delays_ms(&config, &legit);
    delays.sort_unstable();
    let p99 = delays[delays.len() * 99 / 100];
    let max = *delays.last().unwrap();
    record(
        "hostile_invented_sensors",
        "One node publishes 50,000 distinct sensor ids (QoS 1, as fast as it can) while another node's sensor reports every 100 ms; two rules keep state per sensor",
        serde_json::json!({
            "invented_sensors": INVENTED,
            "legit_readings": delays.len(),
            "legit_lost": published - delays.len(),
            "legit_p99_ms": p99,
            "legit_max_ms": max,
            "aggregatord_reconnects": reconnects,
        }),
    );
    assert_eq!(delays.len(), published, "every legitimate reading stored");
    assert_eq!(reconnects, 0, "no keep-alive missed:\n{}", agg.log.text());
    drop(flood);
}
