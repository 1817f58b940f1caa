//! The dashboard, its API, metrics and health checks, against a running
//! aggregatord fed by sensord through the broker; and the page itself in a real
//! headless Chromium.

use crate::harness::*;
use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

/// Chromium start plus one step of the script (each bounded to 20 s there).
const BROWSER_PATIENCE: Duration = Duration::from_secs(90);
const ROOM: &str = "building/floor1/room101";
const TEMP: &str = "building/floor1/room101/temperature/temp_001";

/// A plain HTTP/1.1 GET (no client library needed for loopback tests).
fn get(addr: &str, path: &str) -> (u16, String) {
    http_get(addr, path)
}

fn json(addr: &str, path: &str) -> serde_json::Value {
    let (status, body) = get(addr, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

struct Dash {
    pki: Pki,
    broker: Broker,
    _storage: tempfile::TempDir,
    _agg_config: ConfigFile,
    agg: Proc,
    addr: String,
    _config: ConfigFile,
    sensord: Proc,
}

fn site(sensor_yaml_extra: &str, rules: &str) -> Dash {
    let Agg {
        pki,
        broker,
        _storage: storage,
        config: agg_config,
        agg,
        addr,
    } = Site::new(&["room101"]).extra(rules).start();
    let sensors = [
        ("temp_001", "temperature", "200ms", 0),
        ("motion_001", "motion", "200ms", 1),
    ];
    let yaml = sensord_yaml(&broker, &pki, "room101", ROOM, &sensors).replace(
        "type: temperature, interval: 200ms, qos: 0",
        &format!("type: temperature, interval: 200ms, qos: 0{sensor_yaml_extra}"),
    );
    let config = write_config(&yaml);
    let sensord = start_daemon(SENSORD, &config.path);
    agg.log
        .wait_for(&["stored reading", "temp_001", "seq=Some(3)"]);
    Dash {
        pki,
        broker,
        _storage: storage,
        _agg_config: agg_config,
        agg,
        addr,
        _config: config,
        sensord,
    }
}

#[test]
fn api_state_history_alerts_metrics_and_health() {
    let rules = "alerts:\n  - { name: too_hot, type: temperature, above: 40 }\n";
    let mut s = site(", faults: [ { kind: spike, value: 45, after: 1s } ]", rules);
    let a = s.addr.clone();

    let state = json(&a, "/api/state");
    let temp = state["sensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["topic"] == TEMP)
        .expect("temp in state");
    assert_eq!(temp["unit"], "celsius");
    assert!(temp["spark"].as_array().is_some_and(|p| !p.is_empty()));
    let motion = state["sensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["sensor_type"] == "motion");
    if let Some(m) = motion {
        assert_eq!(m["qos"], 1, "the QoS the node declares");
    }
    assert_eq!(state["nodes"][0]["status"], "online");

    s.agg.log.wait_for(&["alert", "state=raised"]);
    let alerts = json(&a, "/api/alerts");
    assert_eq!(alerts["active"][0]["rule"], "too_hot");
    assert_eq!(alerts["recent"][0]["state"], "raised");

    // History: never more buckets than asked for, each with mean/min/max.
    let stored = s.agg.log.text().matches("stored reading").count();
    s.agg.log.wait_for_nth(&["stored reading"], stored + 10);
    let h = json(
        &a,
        &format!("/api/history?sensor={TEMP}&since=10m&points=3"),
    );
    let points = h["points"].as_array().unwrap();
    assert!(!points.is_empty() && points.len() <= 3, "{h}");
    let n: u64 = points.iter().map(|p| p["n"].as_u64().unwrap()).sum();
    assert!(n >= 5, "{h}");
    for p in points {
        assert!(p["min"].as_f64() <= p["mean"].as_f64() && p["mean"].as_f64() <= p["max"].as_f64());
    }

    // Bad parameters: 400 with a message, never a crash.
    for bad in [
        "/api/history",
        "/api/history?sensor=x&since=banana",
        "/api/history?sensor=x&points=0",
        "/api/history?sensor=x&points=many",
        "/api/history?sensor=x&since=1h&until=2h",
    ] {
        let (status, body) = get(&a, bad);
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(!body.trim().is_empty(), "{bad}: a message");
    }

    // Odd bytes in a sensor name are just an unknown sensor.
    assert_eq!(
        json(&a, "/api/history?sensor=%ff%fe")["points"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );

    let (status, metrics) = get(&a, "/metrics");
    assert_eq!(status, 200);
    for line in [
        "roomsense_readings_stored_total ",
        "roomsense_mqtt_connected 1",
        "roomsense_alerts_raised_total 1",
        "roomsense_storage_flush_seconds_bucket{le=\"+Inf\"}",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    assert_eq!(get(&a, "/healthz").0, 200);
    assert_eq!(get(&a, "/readyz").0, 200);

    // Broker gone: alive, but not ready.
    let _ = &s.pki;
    let stopped = std::mem::replace(&mut s.broker, Broker::start(&Pki::new(&["x"]))).stop();
    s.agg.log.wait_for(&["MQTT connection failed"]);
    let (status, body) = get(&a, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("broker: not ready"));
    assert_eq!(get(&a, "/healthz").0, 200);
    drop(stopped);
    s.sensord.kill9();
}

fn require_browser() -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(std::path::Path::new(&chromium).exists(), "no Chromium at {chromium}. Install it with: sudo apt-get install -y chromium\n(scripts/test does)");
    assert!(
        std::path::Path::new(&format!("{REPO}/tests/browser/node_modules/playwright-core")).exists(),
        "playwright-core is not installed. Install it with: npm ci --prefix tests/browser\n(scripts/test does)"
    );
    chromium
}

#[test]
fn in_a_real_browser_values_change_live_alerts_appear_and_a_lost_node_goes_offline() {
    let chromium = require_browser();
    let rules = "alerts:\n  - { name: too_hot, type: temperature, above: 40 }\n";
    let mut s = site(", faults: [ { kind: spike, value: 45, after: 3s } ]", rules);
    let artefacts = format!("{REPO}/target/test-artifacts");
    std::fs::create_dir_all(&artefacts).unwrap();
    let shot = format!("{artefacts}/dashboard.png");
    let mut browser = Proc::spawn(
        "browser",
        Command::new("node")
            .arg(format!("{REPO}/tests/browser/dashboard.mjs"))
            .args([&format!("http://{}/", s.addr), &shot, TEMP, ROOM, "too_hot"])
            .env("CHROMIUM", chromium),
    );
    // The script bounds each step itself (20 s after chromium is up); chromium's
    // own start, with the rest of the suite on both cores, once took over 20 s.
    let verdict = |marker| {
        let line = browser.log.wait_for_nth_within(
            |l| l.contains(marker) || l.contains("FAILED"),
            1,
            marker,
            BROWSER_PATIENCE,
        );
        assert!(line.contains(marker), "browser: {line}");
    };
    verdict("LIVE_OK");
    verdict("ALERT_OK");
    verdict("ALERT_ROW_OK");
    verdict("STOP_NODE");
    s.sensord.kill9();
    // Its last line, written once the steps after the kill have passed or failed.
    browser.log.wait_for_nth_within(
        |l| l.contains("screenshot:"),
        1,
        "screenshot:",
        BROWSER_PATIENCE,
    );
    let status = browser.wait();
    assert!(
        status.success(),
        "browser test failed:\n{}",
        browser.log.text()
    );
    // Waited for, not read at once: the exit can overtake the log reader.
    browser.log.wait_for(&["OFFLINE_OK"]);
    browser.log.wait_for(&["HISTORY_OK"]);
    browser.log.wait_for(&["screenshot:"]);
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
        "screenshot saved at {shot}"
    );
    let _ = &s.broker;
}

/// Reads Server-Sent Events from `/events` until `n` data lines have arrived.
fn events(addr: &str, n: usize) -> Vec<serde_json::Value> {
    use std::io::BufRead;
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        s,
        "GET /events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    for line in std::io::BufReader::new(s).lines() {
        let line = line.expect("event stream line");
        if let Some(data) = line.strip_prefix("data:") {
            out.push(serde_json::from_str(data.trim()).expect("event JSON"));
            if out.len() == n {
                break;
            }
        }
    }
    out
}

#[test]
fn a_browser_that_connects_gets_one_snapshot_then_small_changes() {
    let s = site("", "");
    let wanted = 6;
    for attempt in 0..2 {
        // Connecting twice is reconnecting: each time a snapshot first, then deltas.
        let got = events(&s.addr, wanted);
        assert_eq!(
            got[0]["type"], "snapshot",
            "attempt {attempt}: {:?}",
            got[0]
        );
        let temp = got[0]["data"]["sensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["topic"] == TEMP)
            .cloned();
        assert!(
            temp.is_some_and(|t| t["spark"].as_array().is_some_and(|p| !p.is_empty())),
            "the snapshot carries sparklines"
        );
        let deltas = &got[1..];
        assert!(deltas.iter().any(|e| e["type"] == "reading"), "{deltas:?}");
        for e in deltas.iter().filter(|e| e["type"] == "reading") {
            // One new point, never the series again.
            assert!(e["data"].get("spark").is_none(), "{e}");
            assert_eq!(e["data"]["point"].as_array().map(Vec::len), Some(2), "{e}");
        }
    }
}
