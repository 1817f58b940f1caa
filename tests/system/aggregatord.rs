//! aggregatord's history and alerts: dump and stats (running and stopped),
//! every rejection reason, alert rules end to end, retention.

use crate::harness::*;
use serde_json::Value;
use std::process::Command;

const ROOM: &str = "building/floor1/room101";

fn payload(kind: &str, id: &str, unit: &str, value: f64, ts: &str, seq: u64) -> Vec<u8> {
    format!(r#"{{"sensor_id":"{id}","sensor_type":"{kind}","value":{value},"unit":"{unit}","timestamp":"{ts}","seq":{seq}}}"#)
        .into_bytes()
}

fn now_minus(secs: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::seconds(secs))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn jsonl(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

struct Running {
    pki: Pki,
    broker: Broker,
    _storage: tempfile::TempDir,
    config: ConfigFile,
    agg: Proc,
    node: Watcher,
}

fn running(extra: &str) -> Running {
    let Agg {
        pki,
        broker,
        _storage: storage,
        config,
        agg,
        ..
    } = Site::new(&["room101", "observer", "homeassistant"])
        .extra(extra)
        .start();
    let node = Watcher::connect(&broker, &pki, "room101");
    Running {
        pki,
        broker,
        _storage: storage,
        config,
        agg,
        node,
    }
}

#[test]
fn dump_and_stats_filter_the_same_way_running_or_stopped() {
    let mut r = running("");
    // Two rooms' worth of topics from one certificate is not allowed by the ACL,
    // so vary sensor and type within room101.
    let readings = [
        ("temperature", "temp_001", "celsius", 20.0, 300),
        ("temperature", "temp_001", "celsius", 22.0, 200),
        ("temperature", "temp_001", "celsius", 24.0, 100),
        ("temperature", "temp_002", "celsius", 30.0, 100),
        ("humidity", "hum_001", "percent", 40.0, 100),
    ];
    for (i, (kind, id, unit, v, ago)) in readings.iter().enumerate() {
        r.node.publish(
            &format!("{ROOM}/{kind}/{id}"),
            &payload(kind, id, unit, *v, &now_minus(*ago), i as u64 + 1),
            1,
        );
    }
    r.agg.log.wait_for_nth(&["stored reading"], readings.len());

    let check = |when: &str| {
        let all = jsonl(&dump(&r.config.path, &["--format", "jsonl"]));
        assert_eq!(all.len(), 5, "{when}");
        let temp1 = jsonl(&dump(
            &r.config.path,
            &["--format", "jsonl", "--sensor", "temp_001"],
        ));
        assert_eq!(
            temp1
                .iter()
                .map(|v| v["value"].as_f64().unwrap())
                .collect::<Vec<_>>(),
            [20.0, 22.0, 24.0],
            "{when}: time order"
        );
        let temps = jsonl(&dump(
            &r.config.path,
            &[
                "--format",
                "jsonl",
                "--type",
                "temperature",
                "--room",
                "room101",
            ],
        ));
        assert_eq!(temps.len(), 4, "{when}");
        assert!(
            jsonl(&dump(
                &r.config.path,
                &["--format", "jsonl", "--room", "room999"]
            ))
            .is_empty(),
            "{when}"
        );
        let recent = jsonl(&dump(
            &r.config.path,
            &["--format", "jsonl", "--since", "150s"],
        ));
        assert_eq!(recent.len(), 3, "{when}: --since 150s");
        let older = jsonl(&dump(
            &r.config.path,
            &["--format", "jsonl", "--until", "150s"],
        ));
        assert_eq!(older.len(), 2, "{when}: --until 150s");
        assert_eq!(
            jsonl(&dump(
                &r.config.path,
                &["--format", "jsonl", "--limit", "2"]
            ))
            .len(),
            2,
            "{when}"
        );
        let stats = jsonl(&dump_stats(&r.config.path));
        let t1 = stats
            .iter()
            .find(|s| s["topic"] == format!("{ROOM}/temperature/temp_001"))
            .unwrap();
        assert_eq!(
            (
                t1["count"].as_u64(),
                t1["min"].as_f64(),
                t1["max"].as_f64(),
                t1["mean"].as_f64()
            ),
            (Some(3), Some(20.0), Some(24.0), Some(22.0)),
            "{when}"
        );
        let csv = dump(&r.config.path, &["--format", "csv", "--sensor", "hum_001"]);
        assert_eq!(csv.lines().count(), 2, "{when}: header and one row");
    };
    check("while running (through the control socket)");
    assert!(r.agg.terminate().success());
    check("while stopped (database opened directly)");
}

fn dump_stats(config: &std::path::Path) -> String {
    stdout_of(
        Command::new(AGGREGATORD)
            .arg("--config")
            .arg(config)
            .args(["stats", "--format", "jsonl"]),
    )
}

#[test]
fn every_rejection_reason_is_counted_and_valid_readings_around_them_are_stored() {
    let mut r = running("");
    let t = |kind: &str, id: &str| format!("{ROOM}/{kind}/{id}");
    let ts = now_minus(10);
    let bad: Vec<(String, Vec<u8>, &str)> = vec![
        (
            t("temperature", "temp_001"),
            b"{not json".to_vec(),
            "malformed",
        ),
        (
            t("temperature", "temp_001"),
            payload("temperature", "temp_002", "celsius", 20.0, &ts, 1),
            "topic_mismatch",
        ),
        (
            t("temperature", "temp_001"),
            payload("temperature", "temp_001", "kelvin", 20.0, &ts, 1),
            "unit_mismatch",
        ),
        (
            t("temperature", "temp_001"),
            payload("temperature", "temp_001", "celsius", 400.0, &ts, 1),
            "out_of_range",
        ),
        (
            t("light", "lux_001"),
            payload("light", "lux_001", "lux", 20.0, &ts, 1),
            "unknown_sensor_type",
        ),
        (
            t("temperature", "temp_001"),
            payload(
                "temperature",
                "temp_001",
                "celsius",
                20.0,
                "2999-01-01T00:00:00Z",
                1,
            ),
            "future_timestamp",
        ),
        (
            t("temperature", "temp_001"),
            vec![b'x'; 5000],
            "payload_too_large",
        ),
    ];
    // (unrecognized_topic needs fewer than three levels, which the ACL does not
    // let a node publish; the topic parser's unit tests cover it.)
    // Valid, then each bad one followed by a valid one.
    let mut seq = 0;
    let mut good = |node: &Watcher| {
        seq += 1;
        node.publish(
            &t("temperature", "temp_001"),
            &payload(
                "temperature",
                "temp_001",
                "celsius",
                21.0,
                &now_minus(100 - seq as i64),
                seq,
            ),
            1,
        );
    };
    good(&r.node);
    for (topic, body, _) in &bad {
        r.node.publish(topic, body, 1);
        good(&r.node);
    }
    // An energy meter going backwards is refused against what is stored.
    let e = t("energy", "energy_001");
    r.node.publish(
        &e,
        &payload("energy", "energy_001", "kWh", 100.0, &now_minus(50), 1),
        1,
    );
    r.node.publish(
        &e,
        &payload("energy", "energy_001", "kWh", 99.0, &now_minus(40), 2),
        1,
    );
    r.node.publish(
        &e,
        &payload("energy", "energy_001", "kWh", 101.0, &now_minus(30), 3),
        1,
    );
    r.agg
        .log
        .wait_for_nth(&["stored reading"], bad.len() + 1 + 2);
    r.agg
        .log
        .wait_for(&["rejected message", "reason=meter_decreased"]);
    assert!(r.agg.terminate().success());
    let totals = r.agg.log.wait_for(&["aggregatord stopped"]);
    for (_, _, reason) in &bad {
        assert!(
            totals.contains(&format!("{reason}=1")),
            "{reason} not counted once in: {totals}"
        );
    }
    assert!(totals.contains("meter_decreased=1"), "{totals}");
    assert!(
        totals.contains(&format!("stored={}", bad.len() + 1 + 2)),
        "{totals}"
    );
    let kept = jsonl(&dump(&r.config.path, &["--rejected", "--format", "jsonl"]));
    assert_eq!(
        kept.len(),
        bad.len() + 1,
        "each rejected message kept for inspection"
    );
}

const RULES: &str = "alerts:\n  - { name: too_hot, type: temperature, above: 26, clear_below: 25, for: 300ms, severity: critical }\n";

fn hot(node: &Watcher, value: f64, seq: u64) {
    let id = "temp_001";
    node.publish(
        &format!("{ROOM}/temperature/{id}"),
        &payload("temperature", id, "celsius", value, &now_minus(0), seq),
        1,
    );
}

/// An active alert whose rule is removed is cleared, and the clear published:
/// on a reload, and at start when the rule went away while aggregatord was stopped.
#[test]
fn an_alert_whose_rule_is_removed_is_cleared_on_reload_and_at_start() {
    let rule = "alerts:\n  - { name: too_hot, type: temperature, above: 26, clear_below: 25, severity: warning }\n";
    let mut r = running(rule);
    let observer = Watcher::connect(&r.broker, &r.pki, "observer");
    observer.subscribe("building/+/+/alerts/#", 2);
    let alert_topic = format!("{ROOM}/alerts/too_hot");
    let cleared = |n: usize| {
        let topic = alert_topic.clone();
        move |all: &[Seen]| {
            all.iter()
                .filter(|s| {
                    s.topic == topic && !s.payload.is_empty() && s.json()["state"] == "cleared"
                })
                .count()
                >= n
        }
    };

    // Reload without the rule.
    hot(&r.node, 27.0, 1);
    r.agg.log.wait_for(&["alert rule=too_hot", "state=raised"]);
    let with_rule = std::fs::read_to_string(&r.config.path).unwrap();
    std::fs::write(&r.config.path, with_rule.replace(rule, "")).unwrap();
    r.agg.hup();
    observer.wait_until(cleared(1));

    // Raised again, then the rule removed while stopped.
    std::fs::write(&r.config.path, &with_rule).unwrap();
    r.agg.hup();
    r.agg.log.wait_for_nth(&["configuration reloaded"], 2);
    hot(&r.node, 27.5, 2);
    r.agg
        .log
        .wait_for_nth(&["alert rule=too_hot", "state=raised"], 2);
    assert!(r.agg.terminate().success());
    std::fs::write(&r.config.path, with_rule.replace(rule, "")).unwrap();
    r.agg = start_daemon(AGGREGATORD, &r.config.path);
    observer.wait_until(cleared(2));
}

/// A meter reading that arrives late (older than one already stored) is
/// checked against both neighbours: refused above the later one, kept between.
#[test]
fn a_late_meter_reading_is_checked_against_the_later_one_too() {
    let r = running("");
    let topic = format!("{ROOM}/energy/energy_001");
    let e = |value: f64, ago: i64, seq: u64| {
        payload("energy", "energy_001", "kWh", value, &now_minus(ago), seq)
    };
    r.node.publish(&topic, &e(100.0, 10, 1), 1);
    r.node.publish(&topic, &e(120.0, 2, 4), 1);
    r.agg.log.wait_for(&["stored reading", "seq=Some(4)"]);
    // Late: 130 between 100 (earlier) and 120 (later) in time, above the later.
    r.node.publish(&topic, &e(130.0, 6, 2), 1);
    let refused = r
        .agg
        .log
        .wait_for(&["rejected message", "reason=meter_decreased"]);
    assert!(refused.contains("above the later"), "{refused}");
    // Late and between both: kept; so is a value equal to either neighbour
    // (a meter that did not move).
    r.node.publish(&topic, &e(110.0, 4, 3), 1);
    r.node.publish(&topic, &e(120.0, 3, 5), 1);
    r.node.publish(&topic, &e(100.0, 8, 6), 1);
    r.agg.log.wait_for(&["stored reading", "seq=Some(6)"]);
    let stored: Vec<u64> = jsonl(&dump(
        &r.config.path,
        &["--format", "jsonl", "--type", "energy"],
    ))
    .iter()
    .map(|j| j["seq"].as_u64().unwrap())
    .collect();
    // In time order: t-10, t-8, t-4, t-3, t-2.
    assert_eq!(stored, [1, 6, 3, 5, 4]);
}

/// A redelivered reading (same topic, timestamp and seq: a duplicate) is not a
/// new observation: it must not raise again an alert that later readings
/// cleared. (The broker redelivers whatever was unacknowledged after a crash.)
#[test]
fn a_redelivered_reading_does_not_move_an_alert() {
    let r = running("alerts:\n  - { name: too_hot, type: temperature, above: 26, clear_below: 25, severity: warning }\n");
    let topic = format!("{ROOM}/temperature/temp_001");
    let first = payload("temperature", "temp_001", "celsius", 27.0, &now_minus(2), 1);
    r.node.publish(&topic, &first, 1);
    r.agg.log.wait_for(&["alert", "state=raised"]);
    hot(&r.node, 24.0, 2);
    r.agg.log.wait_for(&["alert", "state=cleared"]);
    r.node.publish(&topic, &first, 1);
    r.agg.log.wait_for(&["duplicate reading", "seq=Some(1)"]);
    // A marker after it: once this is stored, the duplicate has been through ingest.
    hot(&r.node, 24.5, 3);
    r.agg.log.wait_for(&["stored reading", "seq=Some(3)"]);
    let raises = r.agg.log.count(&["alert rule=", "state=raised"]);
    assert_eq!(raises, 1, "the duplicate raised the alert again");
}

#[test]
fn an_alert_is_raised_after_its_duration_cleared_with_hysteresis_and_survives_a_restart() {
    let mut r = running(RULES);
    let observer = Watcher::connect(&r.broker, &r.pki, "observer");
    observer.subscribe("building/+/+/alerts/#", 2);
    let alert_topic = format!("{ROOM}/alerts/too_hot");

    hot(&r.node, 27.0, 1);
    // Not raised at once (for: 300ms)… then raised by the clock, at QoS 2.
    r.agg.log.wait_for(&["stored reading", "seq=Some(1)"]);
    assert!(!r.agg.log.contains(&["alert", "state=raised"]));
    let raised = observer.wait_for(&alert_topic, |s| s.json()["state"] == "raised");
    assert_eq!(raised.qos, 2, "alerts are published at QoS 2");
    let json = raised.json();
    assert_eq!(
        (
            json["rule"].as_str(),
            json["severity"].as_str(),
            json["value"].as_f64()
        ),
        (Some("too_hot"), Some("critical"), Some(27.0))
    );
    assert_eq!(json["room"], ROOM);

    // Retained while active: a late subscriber sees it at once. Another
    // identity: the broker gives each certificate one client id, so a second
    // "observer" would take the first one's place.
    let late = Watcher::connect(&r.broker, &r.pki, "homeassistant");
    late.subscribe("building/+/+/alerts/#", 2);
    assert!(late.wait_for(&alert_topic, |_| true).retain);

    // Restart: still hot, so no second `raised`.
    assert!(r.agg.terminate().success());
    r.agg = start_daemon(AGGREGATORD, &r.config.path);
    r.agg
        .log
        .wait_for(&["alerts still active from before the restart", "active=1"]);
    r.agg
        .log
        .wait_for(&[INGEST_CONNECTED, "session_present=true"]);
    hot(&r.node, 25.5, 2); // inside the hysteresis band: stays raised
    r.agg.log.wait_for(&["stored reading", "seq=Some(2)"]);
    hot(&r.node, 24.0, 3);
    let cleared = observer.wait_for(&alert_topic, |s| {
        !s.payload.is_empty() && s.json()["state"] == "cleared"
    });
    assert_eq!(cleared.qos, 2);
    // …and the retained alert is removed (an empty retained message).
    observer.wait_for(&alert_topic, |s| s.payload.is_empty());
    let raised_count = observer
        .messages()
        .iter()
        .filter(|s| {
            s.topic == alert_topic && !s.payload.is_empty() && s.json()["state"] == "raised"
        })
        .count();
    assert_eq!(raised_count, 1, "one raise across the restart");
    let newcomer = Watcher::connect(&r.broker, &r.pki, "observer");
    newcomer.subscribe("building/+/+/alerts/#", 2);
    newcomer.subscribe(&format!("{ROOM}/status"), 1); // a marker: its SUBACK comes after any retained alert
    assert!(
        newcomer.messages().iter().all(|s| s.topic != alert_topic),
        "no retained alert once cleared"
    );

    assert!(r.agg.terminate().success());
    let history: Vec<String> = jsonl(&dump(&r.config.path, &["--alerts", "--format", "jsonl"]))
        .iter()
        .map(|a| a["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(history, ["raised", "cleared"]);
}

#[test]
fn node_offline_alert_follows_the_last_will() {
    let rules = "alerts:\n  - { name: node_down, offline: true, severity: critical }\n";
    let r = running(rules);
    let observer = Watcher::connect(&r.broker, &r.pki, "observer");
    observer.subscribe("building/+/+/alerts/#", 2);
    let sensors = [("temp_001", "temperature", "1s", 0)];
    let config = write_config(&sensord_yaml(&r.broker, &r.pki, "room101", ROOM, &sensors));
    let mut sensord = start_daemon(SENSORD, &config.path);
    r.agg.log.wait_for(&["node status", "status=Online"]);
    sensord.kill9();
    let raised = observer.wait_for(&format!("{ROOM}/alerts/node_down"), |s| {
        !s.payload.is_empty()
    });
    assert_eq!(raised.json()["state"], "raised");
    let _sensord = start_daemon(SENSORD, &config.path);
    observer.wait_for(&format!("{ROOM}/alerts/node_down"), |s| {
        !s.payload.is_empty() && s.json()["state"] == "cleared"
    });
}

#[test]
fn retention_deletes_old_readings_and_keeps_recent_ones() {
    let mut r = running("");
    let t = format!("{ROOM}/temperature/temp_001");
    r.node.publish(
        &t,
        &payload(
            "temperature",
            "temp_001",
            "celsius",
            20.0,
            &now_minus(7200),
            1,
        ),
        1,
    );
    r.node.publish(
        &t,
        &payload(
            "temperature",
            "temp_001",
            "celsius",
            21.0,
            &now_minus(60),
            2,
        ),
        1,
    );
    r.agg.log.wait_for_nth(&["stored reading"], 2);
    assert!(r.agg.terminate().success());
    // Restart with a one-hour retention: the two-hour-old reading goes.
    let yaml = std::fs::read_to_string(&r.config.path)
        .unwrap()
        .replace("storage:\n", "storage:\n  retention: 1h\n");
    std::fs::write(&r.config.path, yaml).unwrap();
    r.agg = start_daemon(AGGREGATORD, &r.config.path);
    r.agg
        .log
        .wait_for(&["retention: old readings deleted", "deleted=1"]);
    let left = jsonl(&dump(&r.config.path, &["--format", "jsonl"]));
    assert_eq!(
        left.iter()
            .map(|v| v["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [2]
    );
}

/// A store held by another process (an instance still running) makes a
/// starting aggregatord wait, not exit: it starts once the holder lets go.
#[test]
fn a_start_waits_while_another_process_holds_the_database() {
    let mut first = aggregatord_for(&["room101"], "");
    let mut second = start_daemon(AGGREGATORD, &first.config.path);
    second.log.wait_for(&["waiting for the database", "in use"]);
    assert!(second.try_status().is_none(), "exited instead of waiting");
    assert!(first.agg.terminate().success());
    second.log.wait_for(&["storage works again"]);
    second.log.wait_for(&["subscribed"]);
    assert!(second.terminate().success());
}

/// A dump of the stopped store holds nothing a starting aggregatord needs:
/// here the dump is kept half way (nobody reads its output), and the daemon
/// starts and stores meanwhile. Before, dump held sled's lock on the store,
/// and the daemon waited for it.
#[test]
fn a_dump_half_way_does_not_hold_up_a_starting_daemon() {
    use std::io::BufRead;
    const TEMP: &str = "building/floor1/room101/temperature/temp_001";
    // Enough lines to fill a pipe's 64 KiB several times over.
    const N: u64 = 2_000;
    let Agg {
        pki,
        broker,
        _storage,
        config,
        mut agg,
        ..
    } = aggregatord_for(&["room101"], "");
    let node = Watcher::connect(&broker, &pki, "room101");
    for seq in 1..=N {
        node.publish(TEMP, &reading_payload(seq), 1);
    }
    agg.log
        .wait_for(&["stored reading", &format!("seq=Some({N})")]);
    assert!(agg.terminate().success());
    let mut dump = Command::new(AGGREGATORD)
        .arg("--config")
        .arg(&config.path)
        .args(["dump", "--format", "jsonl"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(dump.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.contains("\"seq\":1,"), "{first}");
    // The dump has the store open, and is now blocked on its full pipe.
    let mut agg = start_daemon(AGGREGATORD, &config.path);
    agg.log.wait_for(&["subscribed"]);
    node.publish(TEMP, &reading_payload(N + 1), 1);
    agg.log
        .wait_for(&["stored reading", &format!("seq=Some({})", N + 1)]);
    let rest = std::io::Read::bytes(out).count();
    assert!(dump.wait().unwrap().success());
    assert!(
        rest > 64 * 1024,
        "the dump was still writing: {rest} bytes after"
    );
    assert!(agg.terminate().success());
}

/// Readings lost while aggregatord was down (here: never published, as a
/// broker that dropped its queue leaves it) count across its restart: holes
/// are counted from each sensor's newest stored seq, and the room's alert
/// is raised; late readings below it change nothing.
#[test]
fn a_hole_across_a_restart_of_aggregatord_is_counted() {
    const TEMP: &str = "building/floor1/room101/temperature/temp_001";
    let Agg {
        pki,
        broker,
        _storage,
        config,
        mut agg,
        ..
    } = aggregatord_for(&["room101"], "");
    let node = Watcher::connect(&broker, &pki, "room101");
    for seq in 1..=10 {
        node.publish(TEMP, &reading_payload(seq), 1);
    }
    agg.log.wait_for(&["stored reading", "seq=Some(10)"]);
    assert!(agg.terminate().success());

    let agg = start_daemon(AGGREGATORD, &config.path);
    let addr = dashboard_addr(&agg.log);
    agg.log.wait_for(&["subscribed"]);
    node.publish(TEMP, &reading_payload(5), 1); // a redelivery: no hole, no fill
    node.publish(TEMP, &reading_payload(15), 1);
    agg.log.wait_for(&[
        "alert rule=readings_missing",
        "state=raised",
        "value=Some(4.0)",
    ]);
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(
        metrics.contains(&format!(
            "roomsense_sensor_readings_missing{{topic=\"{TEMP}\"}} 4"
        )),
        "{metrics}"
    );
}
