//! Several aggregatord instances (issue 17, SCALING.md): one view over all of
//! them, merged by reading identity.

use crate::harness::*;
use std::collections::BTreeSet;

/// (topic, `field`) of each JSON line: `dump` and `stats --format jsonl`.
fn topic_and(jsonl: &str, field: &str) -> Vec<(String, u64)> {
    jsonl
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["topic"].as_str().unwrap().to_owned(),
                v[field].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The seqs 1..=`count` of `topic` that `rows` (topic, seq) lack.
fn missing(rows: &[(String, u64)], topic: &str, count: u64) -> Vec<u64> {
    let have: BTreeSet<u64> = rows
        .iter()
        .filter(|(t, _)| t == topic)
        .map(|(_, s)| *s)
        .collect();
    (1..=count).filter(|s| !have.contains(s)).collect()
}

/// Two instances, each on its own broker (two buildings' gateways): one has
/// room101's readings 1–10, the other room101's 6–10 again (the same readings:
/// same identity) and room201's 1–5. `dump --also` shows each reading once,
/// whether an instance is stopped (its database is read) or running (it is
/// asked over its socket); `stats --also` counts each once; `--limit` applies
/// to the merged history.
#[test]
fn dump_and_stats_over_several_instances_show_each_reading_once() {
    let pki = Pki::new(&["room101", "room201", "aggregatord"]);
    let (b1, b2) = (Broker::start(&pki), Broker::start(&pki));
    let (s1, s2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c1 = write_config(&aggregatord_yaml(&b1, &pki, s1.path()));
    let c2 = write_config(&aggregatord_yaml(&b2, &pki, s2.path()));
    let mut a1 = start_daemon(AGGREGATORD, &c1.path);
    let a2 = start_daemon(AGGREGATORD, &c2.path);
    a1.log.wait_for(&["subscribed"]);
    a2.log.wait_for(&["subscribed"]);

    let t101 = "building/floor1/room101/temperature/temp_001";
    let t201 = "building/floor2/room201/temperature/temp_001";
    let n101 = Watcher::connect(&b1, &pki, "room101");
    for seq in 1..=10 {
        n101.publish(t101, &reading_payload(seq), 1);
    }
    let again = Watcher::connect(&b2, &pki, "room101");
    for seq in 6..=10 {
        again.publish(t101, &reading_payload(seq), 1);
    }
    let n201 = Watcher::connect(&b2, &pki, "room201");
    for seq in 1..=5 {
        n201.publish(t201, &reading_payload(seq), 1);
    }
    a1.log.wait_for_nth(&["stored reading"], 10);
    a2.log.wait_for_nth(&["stored reading"], 10);
    // One stopped (its database), one running (its socket).
    assert!(a1.terminate().success());

    let also = c2.path.to_str().unwrap();
    let lines = dump(&c1.path, &["--also", also, "--format", "jsonl"]);
    let rows = topic_and(&lines, "seq");
    let unique: BTreeSet<_> = rows.iter().cloned().collect();
    let want: BTreeSet<_> = (1..=10)
        .map(|s| (t101.to_owned(), s))
        .chain((1..=5).map(|s| (t201.to_owned(), s)))
        .collect();
    assert_eq!(unique, want, "{lines}");
    assert_eq!(rows.len(), 15, "each reading once:\n{lines}");

    let limited = dump(
        &c1.path,
        &["--also", also, "--format", "jsonl", "--limit", "12"],
    );
    assert_eq!(limited.lines().count(), 12, "{limited}");

    let stats = stdout_of(
        std::process::Command::new(AGGREGATORD)
            .arg("--config")
            .arg(&c1.path)
            .args(["stats", "--also", also, "--format", "jsonl"]),
    );
    let counts = topic_and(&stats, "count");
    assert_eq!(
        counts,
        [(t101.to_owned(), 10), (t201.to_owned(), 5)],
        "{stats}"
    );
    record(
        "merged_view",
        "Two aggregatord instances (one stopped, one running), 20 readings stored, 5 of them by both",
        serde_json::json!({ "rows_in_merged_dump": rows.len(), "unique": unique.len() }),
    );
}

/// SCALING.md's choice, static partitions by topic filter: two instances on
/// one broker, `building/floor1/#` and `building/floor2/#`, each with its own
/// identity, session and database; a node on each floor. One instance is
/// killed (kill -9) mid-stream and started again: its share waited in its
/// session. Every reading each node published is stored exactly once, by the
/// instance owning its floor, and the merged view has no hole and no double.
#[test]
fn partitions_by_topic_filter_lose_nothing_when_an_instance_is_killed() {
    let pki = Pki::new(&[
        "room101",
        "room201",
        "aggregatord",
        "aggregatord-b",
        "aggregatord-b-alerts",
    ]);
    let broker = Broker::start_with_acl(
        &pki,
        "user aggregatord-b\ntopic read building/#\n\
         user aggregatord-b-alerts\ntopic write building/+/+/alerts/#\n",
    );
    let instance = |name: &str, filter: &str, storage: &std::path::Path| {
        let yaml = aggregatord_yaml(&broker, &pki, storage)
            .replace("client_id: aggregatord\n", &format!("client_id: {name}\n"))
            .replace(
                &format!("{}.crt", pki.path("aggregatord").display()),
                &format!("{}.crt", pki.path(name).display()),
            )
            .replace(
                &format!("{}.key", pki.path("aggregatord").display()),
                &format!("{}.key", pki.path(name).display()),
            )
            .replace(
                &format!("{}.crt", pki.path("aggregatord-alerts").display()),
                &format!("{}.crt", pki.path(&format!("{name}-alerts")).display()),
            )
            .replace(
                &format!("{}.key", pki.path("aggregatord-alerts").display()),
                &format!("{}.key", pki.path(&format!("{name}-alerts")).display()),
            )
            .replace("\"building/#\"", &format!("\"{filter}\""));
        assert!(yaml.contains(filter) && yaml.contains(name), "{yaml}");
        write_config(&yaml)
    };
    let (sa, sb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ca = instance("aggregatord", "building/floor1/#", sa.path());
    let cb = instance("aggregatord-b", "building/floor2/#", sb.path());
    let mut a = start_daemon(AGGREGATORD, &ca.path);
    let mut b = start_daemon(AGGREGATORD, &cb.path);
    a.log.wait_for(&["subscribed"]);
    b.log.wait_for(&["subscribed"]);

    let sensors = [("temp_001", "temperature", "20ms", 1)];
    let node = |id: &str, prefix: &str| {
        let config = write_config(&sensord_yaml(&broker, &pki, id, prefix, &sensors));
        let proc = start_daemon(SENSORD, &config.path);
        (config, proc)
    };
    let (_c1, mut n1) = node("room101", "building/floor1/room101");
    let (_c2, mut n2) = node("room201", "building/floor2/room201");
    b.log.wait_for_nth(&["stored reading"], 20);
    b.kill9();
    // While b is gone its share queues in its session; a carries on.
    let before = a.log.text().matches("stored reading").count();
    a.log.wait_for_nth(&["stored reading"], before + 50);
    let mut b = start_daemon(AGGREGATORD, &cb.path);
    b.log.wait_for(&["session_present=true"]);

    let mut totals = Vec::new();
    for (n, topic, owner) in [
        (&mut n1, "building/floor1/room101/temperature/temp_001", &a),
        (&mut n2, "building/floor2/room201/temperature/temp_001", &b),
    ] {
        assert!(n.terminate().success());
        let count = published(n);
        owner
            .log
            .wait_for(&["stored reading", topic, &format!("seq=Some({count})")]);
        totals.push((topic, count));
    }
    let also = cb.path.to_str().unwrap();
    let merged = dump(&ca.path, &["--also", also, "--format", "jsonl"]);
    let rows = topic_and(&merged, "seq");
    let mut lost = 0;
    for (topic, count) in &totals {
        lost += missing(&rows, topic, *count).len();
    }
    let unique: BTreeSet<_> = rows.iter().collect();
    // Each instance stored its own floor only, each reading once.
    let floor_of = |config: &std::path::Path| -> Vec<String> {
        dump(config, &["--format", "jsonl"])
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["topic"]
                    .as_str()
                    .unwrap()
                    .split('/')
                    .nth(1)
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    assert!(a.terminate().success() && b.terminate().success());
    let (floors_a, floors_b) = (floor_of(&ca.path), floor_of(&cb.path));
    record(
        "partitions_kill9",
        "Two aggregatord instances split by topic filter (floor1, floor2) on one broker; the floor2 instance is killed (kill -9) mid-stream and restarted",
        serde_json::json!({
            "published": totals.iter().map(|(_, c)| c).sum::<u64>(),
            "lost": lost,
            "stored_twice_in_merged_view": rows.len() - unique.len(),
        }),
    );
    assert_eq!(lost, 0, "readings lost");
    assert_eq!(rows.len(), unique.len(), "a reading stored twice");
    assert!(floors_a.iter().all(|f| f == "floor1"), "{floors_a:?}");
    assert!(floors_b.iter().all(|f| f == "floor2"), "{floors_b:?}");
    assert_eq!(floors_a.len() + floors_b.len(), rows.len());
}

/// SCALING.md's bridged buildings, with the shipped deploy/mosquitto/bridge.conf:
/// a building's nodes publish to its edge broker, which bridges every reading
/// to two central brokers, each with its own aggregatord. One central is killed
/// (kill -9) mid-stream and comes back with what it had saved. The surviving
/// central's instance stores every reading; the edge queued the dead central's
/// share while it was away and delivered it on its return; the merged view has
/// every reading once; and the course brief's retained statuses reach a
/// central through the bridge.
#[test]
fn a_building_bridged_to_two_centrals_loses_nothing_when_one_is_killed() {
    let pki = Pki::new(&[
        "room101",
        "room102",
        "aggregatord",
        "observer",
        "edge-building1",
    ]);
    let shipped = std::fs::read_to_string(format!("{REPO}/deploy/mosquitto/bridge.conf"))
        .expect("deploy/mosquitto/bridge.conf");
    // The central acl lines the shipped file's header asks for.
    let central_acl: String = shipped
        .lines()
        .skip_while(|l| !l.contains("append to its acl file"))
        .skip(1)
        .take_while(|l| l.starts_with("#   "))
        .fold(String::new(), |acl, l| {
            acl + l.trim_start_matches("#   ") + "\n"
        });
    assert!(
        central_acl.starts_with("user edge-building1\n"),
        "{central_acl}"
    );
    let central_a = Broker::start_with_acl(&pki, &central_acl);
    let central_b = Broker::start_with_acl(&pki, &central_acl);
    let bridge = shipped
        .replace(
            "central-a.example.net:8883",
            &format!("localhost:{}", central_a.port),
        )
        .replace(
            "central-b.example.net:8883",
            &format!("localhost:{}", central_b.port),
        )
        .replace(
            "/etc/mosquitto/roomsense/",
            &format!("{}/", pki.path("ca.crt").with_file_name("").display()),
        );
    let edge = Broker::start_with_conf(&pki, &bridge);

    // Each central's aggregatord: the same config but for the broker.
    let (sa, sb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ca = write_config(&aggregatord_yaml(&central_a, &pki, sa.path()));
    let cb = write_config(&aggregatord_yaml(&central_b, &pki, sb.path()));
    let mut a = start_daemon(AGGREGATORD, &ca.path);
    let mut b = start_daemon(AGGREGATORD, &cb.path);
    a.log.wait_for(&["subscribed"]);
    b.log.wait_for(&["subscribed"]);
    // central-a's saved state holds aggregatord's session (its subscription):
    // as an autosave would, so that it is still there after the kill.
    central_a.save();

    let node = |id: &str, sensor: (&str, &str, &str, u8)| {
        let prefix = format!("building/floor1/{id}");
        let config = write_config(&sensord_yaml(&edge, &pki, id, &prefix, &[sensor]));
        let proc = start_daemon(SENSORD, &config.path);
        (config, proc)
    };
    let (_c1, mut n1) = node("room101", ("temp_001", "temperature", "20ms", 1));
    let (_c2, mut n2) = node("room102", ("hum_001", "humidity", "20ms", 2));
    a.log.wait_for_nth(&["stored reading"], 20);
    b.log.wait_for_nth(&["stored reading"], 20);

    let central_a = central_a.crash();
    // The last seq each node had made by now: anything later was published
    // while central-a was dead, so only the edge's queue can bring it there.
    let last_seq = |log: &Log| -> u64 {
        log.text()
            .lines()
            .filter(|l| l.contains(" reading topic="))
            .filter_map(|l| l.split("seq=Some(").nth(1)?.split(')').next()?.parse().ok())
            .max()
            .unwrap_or(0)
    };
    let dead_from = [last_seq(&n1.log), last_seq(&n2.log)];
    let stored_b = b.log.count(&["stored reading"]);
    b.log.wait_for_nth(&["stored reading"], stored_b + 100);
    let back_from = [last_seq(&n1.log), last_seq(&n2.log)];
    let central_a = central_a.start(&pki);
    a.log.wait_for_nth(&["connected broker="], 2);

    let mut totals = Vec::new();
    for (n, topic) in [
        (&mut n1, "building/floor1/room101/temperature/temp_001"),
        (&mut n2, "building/floor1/room102/humidity/hum_001"),
    ] {
        assert!(n.terminate().success());
        let count = published(n);
        for instance in [&a, &b] {
            instance
                .log
                .wait_for(&["stored reading", topic, &format!("seq=Some({count})")]);
        }
        totals.push((topic, count));
    }
    // The course brief's retained status, read on a central: through the bridge.
    let observer = Watcher::connect(&central_b, &pki, "observer");
    observer.subscribe("building/+/+/status", 1);
    for room in ["room101", "room102"] {
        observer.wait_for(&format!("building/floor1/{room}/status"), |s| {
            s.retain && s.json()["status"] == "offline"
        });
    }
    assert!(a.terminate().success() && b.terminate().success());
    drop(central_a);

    let rows_a = topic_and(&dump(&ca.path, &["--format", "jsonl"]), "seq");
    let rows_b = topic_and(&dump(&cb.path, &["--format", "jsonl"]), "seq");
    let merged = topic_and(
        &dump(
            &ca.path,
            &["--also", cb.path.to_str().unwrap(), "--format", "jsonl"],
        ),
        "seq",
    );
    let mut report = serde_json::Map::new();
    let (mut lost, mut lost_b) = (0, 0);
    let mut queued_for_a_lost: Vec<u64> = Vec::new();
    let mut made_while_dead = 0;
    for (((topic, count), dead_from), back_from) in totals.iter().zip(dead_from).zip(back_from) {
        made_while_dead += back_from - dead_from;
        let missing_a = missing(&rows_a, topic, *count);
        queued_for_a_lost.extend(missing_a.iter().filter(|s| **s > dead_from));
        lost_b += missing(&rows_b, topic, *count).len();
        lost += missing(&merged, topic, *count).len();
        report.insert(
            topic.to_string(),
            serde_json::json!({
                "published": count,
                "made_while_central_a_was_dead": back_from - dead_from,
                "missing_at_central_a": missing_a,
            }),
        );
    }
    let once = |rows: &[(String, u64)]| rows.iter().collect::<BTreeSet<_>>().len() == rows.len();
    report.insert("lost_in_merged_view".into(), lost.into());
    record(
        "bridge_central_kill9",
        "A building's edge broker bridged (deploy/mosquitto/bridge.conf) to two central brokers, each with its own aggregatord; central-a killed (kill -9) mid-stream and restarted from its last save",
        serde_json::Value::Object(report),
    );
    assert!(made_while_dead > 0, "the outage saw no reading");
    assert_eq!(lost_b, 0, "the surviving central's instance lost readings");
    assert!(
        queued_for_a_lost.is_empty(),
        "readings made while central-a was dead never reached it (the edge did not queue them): {queued_for_a_lost:?}"
    );
    assert_eq!(lost, 0, "readings lost in the merged view");
    assert!(
        once(&rows_a) && once(&rows_b) && once(&merged),
        "a reading stored twice"
    );
}
