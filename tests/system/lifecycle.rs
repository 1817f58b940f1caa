//! Running as a service: reload on SIGHUP, clean stop, and the systemd notify
//! protocol, seen from a socket the test owns.

use crate::harness::*;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

const PREFIX: &str = "building/floor1/room101";

fn sensord_config(broker: &Broker, pki: &Pki, sensors: &[(&str, &str, &str, u8)]) -> ConfigFile {
    write_config(&sensord_yaml(broker, pki, "room101", PREFIX, sensors))
}

#[test]
fn sighup_applies_sensor_changes_live_without_reconnecting() {
    let pki = Pki::new(&["room101", "observer"]);
    let broker = Broker::start(&pki);
    // QoS 1: the hourly schedule's one reading is made at start, and may be
    // made before sensord is connected (CI, under load): QoS 0 would drop it.
    let config = sensord_config(&broker, &pki, &[("temp_001", "temperature", "1h", 1)]);
    // Subscribe first: that reading is not retained, so a watcher that
    // subscribes after it was published never sees it.
    let watcher = Watcher::connect(&broker, &pki, "observer");
    watcher.subscribe(&format!("{PREFIX}/#"), 1);
    let sensord = start_daemon(SENSORD, &config.path);
    watcher.wait_for(&format!("{PREFIX}/temperature/temp_001"), |_| true);

    // Faster temperature, and a new humidity sensor.
    let new = sensord_yaml(
        &broker,
        &pki,
        "room101",
        PREFIX,
        &[
            ("temp_001", "temperature", "50ms", 1),
            ("hum_001", "humidity", "50ms", 0),
        ],
    );
    std::fs::write(&config.path, new).unwrap();
    sensord.hup();
    let line = sensord.log.wait_for(&["configuration reloaded"]);
    assert!(
        line.contains("reconnecting=false") && line.contains("sensors"),
        "{line}"
    );
    // The new schedule is live: many readings where the old one gave one an hour,
    // and temp_001's seq carries on rather than starting again.
    watcher.wait_until(|all| all.iter().filter(|s| s.topic.ends_with("temp_001")).count() >= 5);
    watcher.wait_for(&format!("{PREFIX}/humidity/hum_001"), |_| true);
    let seqs: Vec<u64> = watcher
        .messages()
        .iter()
        .filter(|s| s.topic.ends_with("temp_001"))
        .map(|s| s.json()["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "seq continues across the reload: {seqs:?}"
    );
    // The new online status lists both sensors; one connection throughout.
    watcher.wait_for(&format!("{PREFIX}/status"), |s| {
        s.json()["sensors"].as_array().is_some_and(|a| a.len() == 2)
    });
    assert_eq!(sensord.log.text().matches("connected broker=").count(), 1);
}

#[test]
fn sighup_with_a_broken_config_keeps_running_on_the_old_one() {
    let pki = Pki::new(&["room101", "aggregatord"]);
    let broker = Broker::start(&pki);
    let config = sensord_config(&broker, &pki, &[("temp_001", "temperature", "50ms", 0)]);
    let sensord = start_daemon(SENSORD, &config.path);
    sensord.log.wait_for(&["connected broker="]);
    let good = std::fs::read_to_string(&config.path).unwrap();
    let bad = good.replace("qos: 0", "qos: 7");
    let bad_line = 1 + bad.lines().position(|l| l.contains("qos: 7")).unwrap();
    std::fs::write(&config.path, bad).unwrap();
    sensord.hup();
    let line = sensord.log.wait_for(&["reload failed"]);
    let names_file_line_key = line.contains(&format!(
        "{}:{bad_line}: sensors[0].qos",
        config.path.display()
    ));
    let before = sensord.log.count(&[" reading topic="]);
    sensord.log.wait_for_nth(&[" reading topic="], before + 3);
    let sensord_readings_after = sensord.log.count(&[" reading topic="]) - before;

    // The same for aggregatord.
    let storage = tempfile::tempdir().unwrap();
    let agg_config = write_config(&aggregatord_yaml(&broker, &pki, storage.path()));
    let agg = start_daemon(AGGREGATORD, &agg_config.path);
    agg.log.wait_for(&["subscribed"]);
    std::fs::write(&agg_config.path, "client_id: [").unwrap();
    agg.hup();
    let agg_line = agg.log.wait_for(&["reload failed"]);
    // …and keeps storing sensord's readings.
    let stored = agg.log.count(&["stored reading"]);
    agg.log.wait_for_nth(&["stored reading"], stored + 3);
    let agg_stored_after = agg.log.count(&["stored reading"]) - stored;
    record(
        "sighup_broken_config",
        "SIGHUP with an invalid config file, both daemons",
        serde_json::json!({
            "sensord_error_names_file_line_key": names_file_line_key,
            "sensord_readings_after_failed_reload": sensord_readings_after,
            "aggregatord_error_names_file_line": agg_line.contains(&format!("{}:1:", agg_config.path.display())),
            "aggregatord_stored_after_failed_reload": agg_stored_after,
        }),
    );
    assert!(names_file_line_key, "names file, line and key: {line}");
    assert!(
        agg_line.contains(&format!("{}:1:", agg_config.path.display())),
        "{agg_line}"
    );
}

#[test]
fn sighup_after_renewing_the_certificate_reconnects_with_it_and_no_last_will() {
    let pki = Pki::new(&["room101", "observer"]);
    let broker = Broker::start(&pki);
    let config = sensord_config(&broker, &pki, &[("temp_001", "temperature", "100ms", 0)]);
    let mut sensord = start_daemon(SENSORD, &config.path);
    let watcher = Watcher::connect(&broker, &pki, "observer");
    watcher.subscribe(&format!("{PREFIX}/status"), 1);
    watcher.wait_for(&format!("{PREFIX}/status"), |s| {
        s.json()["status"] == "online"
    });
    let old_cert = std::fs::read(pki.path("room101.crt")).unwrap();

    pki.renew("room101", &[]);
    assert_ne!(
        std::fs::read(pki.path("room101.crt")).unwrap(),
        old_cert,
        "the certificate was renewed"
    );
    sensord.hup();
    let line = sensord.log.wait_for(&["configuration reloaded"]);
    assert!(line.contains("reconnecting=true"), "{line}");
    sensord.log.wait_for_nth(&["connected broker="], 2);
    // A clean DISCONNECT first: the broker keeps the Last Will to itself.
    broker.proc.log.wait_for(&["Client room101 disconnected."]);
    let status = format!("{PREFIX}/status");
    watcher.wait_until(|all| {
        all.iter()
            .filter(|s| s.topic == status && s.json()["status"] == "online")
            .count()
            >= 2
    });
    assert!(
        watcher
            .messages()
            .iter()
            .all(|s| s.json()["status"] == "online"),
        "no offline status: {:?}",
        watcher.messages()
    );
    assert!(sensord.terminate().success());
}

/// A stand-in for systemd's notify socket.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: String,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify").display().to_string();
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        NotifySocket {
            _dir: dir,
            path,
            socket,
        }
    }

    /// The next message containing `needle` (earlier ones are returned in `skipped`).
    fn wait_for(&self, needle: &str, skipped: &mut Vec<String>) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            let n = self
                .socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {needle:?} from the daemon: {e}"));
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            if message.contains(needle) {
                return message;
            }
            skipped.push(message);
        }
        panic!("no {needle:?} within {PATIENCE:?}; got {skipped:?}");
    }
}

fn notify_protocol(bin: &str, config: &std::path::Path) {
    let notify = NotifySocket::new();
    let mut daemon = start_daemon_with(
        bin,
        config,
        &[("NOTIFY_SOCKET", &notify.path), ("WATCHDOG_USEC", "200000")],
    );
    let mut seen = Vec::new();
    let ready = notify.wait_for("READY=1", &mut seen);
    assert!(ready.contains("STATUS="), "READY carries a status: {ready}");
    // Watchdog pings at half the period, from the main loop.
    let start = Instant::now();
    notify.wait_for("WATCHDOG=1", &mut seen);
    notify.wait_for("WATCHDOG=1", &mut seen);
    assert!(start.elapsed() < Duration::from_secs(5));
    daemon.hup();
    let reloading = notify.wait_for("RELOADING=1", &mut seen);
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    notify.wait_for("READY=1", &mut seen);
    assert!(daemon.terminate().success());
    notify.wait_for("STOPPING=1", &mut seen);
}

#[test]
fn both_daemons_speak_the_systemd_notify_protocol() {
    let pki = Pki::new(&["room101", "aggregatord"]);
    let broker = Broker::start(&pki);
    let config = sensord_config(&broker, &pki, &[("temp_001", "temperature", "1s", 0)]);
    notify_protocol(SENSORD, &config.path);
    let storage = tempfile::tempdir().unwrap();
    let agg_config = write_config(&aggregatord_yaml(&broker, &pki, storage.path()));
    notify_protocol(AGGREGATORD, &agg_config.path);
}

#[test]
fn log_lines_are_json_when_configured() {
    let pki = Pki::new(&["room101"]);
    let broker = Broker::start(&pki);
    let yaml = sensord_yaml(
        &broker,
        &pki,
        "room101",
        PREFIX,
        &[("t", "temperature", "100ms", 0)],
    )
    .replace("sensors:\n", "log: { format: json }\nsensors:\n");
    let config = write_config(&yaml);
    let mut sensord = Proc::spawn(
        "sensord",
        std::process::Command::new(SENSORD)
            .arg("--config")
            .arg(&config.path)
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM"),
    );
    let line = sensord.log.wait_for(&["connected"]);
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["message"], "connected");
    assert!(
        v["broker"]
            .as_str()
            .is_some_and(|b| b.starts_with("localhost:")),
        "structured fields: {v}"
    );
    assert!(sensord.terminate().success());
}
