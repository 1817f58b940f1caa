//! The reliability and security proof suite: faults injected on purpose, with the
//! outcome counted. Each test records what it measured in
//! target/reliability/<test>.json; scripts/reliability-report turns those into
//! RELIABILITY.md.

use crate::harness::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const PREFIX: &str = "building/floor1/room101";

#[test]
fn a_silently_dead_link_is_noticed_by_keepalive_and_healed_without_busy_looping() {
    let pki = Pki::new(&["room101", "observer"]);
    let broker = Broker::start(&pki);
    let link = Blackhole::to(broker.port);
    let sensors = [("temp_001", "temperature", "200ms", 0)];
    let keep_alive = Duration::from_secs(2);
    let yaml = sensord_yaml_on(link.port, &pki, "room101", PREFIX, &sensors, "")
        .replace("keep_alive: 5s", "keep_alive: 2s");
    let config = write_config(&yaml);
    let sensord = start_daemon(SENSORD, &config.path);
    sensord.log.wait_for(&["connected broker="]);
    let watcher = Watcher::connect(&broker, &pki, "observer");
    watcher.subscribe(&format!("{PREFIX}/#"), 1);
    watcher.wait_for(&format!("{PREFIX}/temperature/temp_001"), |_| true);

    let cpu_before = cpu_seconds(sensord.pid());
    let cut_at = Instant::now();
    link.cut();
    sensord.log.wait_for(&["no answer to keep-alive ping"]);
    let detected = cut_at.elapsed();
    // While cut: connection attempts go into the void and time out; no spinning.
    sensord
        .log
        .wait_for_nth(&["waiting before reconnecting"], 2);
    let cut_for = cut_at.elapsed();
    let cpu_while_cut = cpu_seconds(sensord.pid()) - cpu_before;
    // The broker saw nothing either, and sends the Last Will after 1.5 keep-alives.
    watcher.wait_for(&format!("{PREFIX}/status"), |s| {
        s.json()["status"] == "offline"
    });

    link.heal();
    let healed_at = Instant::now();
    sensord.log.wait_for_nth(&["connected broker="], 2);
    let recovered = healed_at.elapsed();
    watcher.wait_for(&format!("{PREFIX}/status"), |s| {
        s.json()["status"] == "online" && !s.retain
    });

    // Two keep-alives: one ping unanswered, noticed when the next is due.
    assert!(
        detected < keep_alive * 3,
        "dead link noticed after {detected:?} (keep-alive {keep_alive:?})"
    );
    assert!(
        cpu_while_cut < 0.5,
        "{cpu_while_cut:.3} s of CPU during a {cut_for:?} cut: busy looping?"
    );
    record(
        "network_cut",
        "Relay goes silent (no FIN) under sensord, keep-alive 2 s; then heals",
        serde_json::json!({
            "detected_after_s": detected.as_secs_f64(),
            "cpu_s_while_cut": cpu_while_cut,
            "cut_for_s": cut_for.as_secs_f64(),
            "reconnected_after_heal_s": recovered.as_secs_f64(),
        }),
    );
}

#[test]
fn ten_kill_9s_during_20000_qos1_readings_lose_nothing_and_store_nothing_twice() {
    const N: u64 = 20_000;
    const KILLS: usize = 10;
    let topic = format!("{PREFIX}/temperature/temp_001");
    let Agg {
        pki,
        broker,
        _storage,
        config,
        mut agg,
        ..
    } = Site::new(&["room101"]).start();

    // The node publishes all N at QoS 1; the broker queues them for aggregatord's
    // session while it is down.
    let node = Watcher::connect(&broker, &pki, "room101");
    let publisher = std::thread::spawn({
        let topic = topic.clone();
        move || {
            for seq in 1..=N {
                node.publish(&topic, &reading_payload(seq), 1);
            }
            node.wait_confirmed(N as usize);
            node
        }
    });
    let started = Instant::now();
    let mut rng = fastrand::Rng::new();
    let mut redelivered = 0;
    let mut recoveries = Vec::new();
    for _ in 0..KILLS {
        // Let it store a random few hundred more, then kill it wherever it is.
        let before = agg.log.text().matches("stored reading").count();
        agg.log
            .wait_for_nth(&["stored reading"], before + rng.usize(100..1500));
        agg.kill9();
        redelivered += agg.log.text().matches("duplicate reading").count();
        let restart = Instant::now();
        agg = start_daemon(AGGREGATORD, &config.path);
        agg.log.wait_for(&["stored reading"]);
        recoveries.push(restart.elapsed().as_secs_f64());
    }
    let _node = publisher.join().unwrap();
    agg.log
        .wait_for(&["stored reading", &format!("seq=Some({N})")]);
    assert!(agg.terminate().success());
    agg.log.wait_for(&["aggregatord stopped"]);
    redelivered += agg.log.text().matches("duplicate reading").count();

    let rows: Vec<u64> = stored_seqs(&config.path).into_iter().collect();
    let unique: BTreeSet<u64> = rows.iter().copied().collect();
    let duplicated_rows = rows.len() - unique.len();
    let lost = (1..=N).filter(|s| !unique.contains(s)).count();
    record(
        "kill_9_aggregatord",
        "aggregatord killed with SIGKILL 10 times at random moments during 20,000 QoS 1 readings",
        serde_json::json!({
            "readings": N, "kills": KILLS, "lost": lost, "duplicated_rows": duplicated_rows,
            "redelivered_and_dropped_as_duplicates": redelivered,
            "restart_to_first_store_s_max": recoveries.iter().copied().fold(0.0, f64::max),
            "total_s": started.elapsed().as_secs_f64(),
        }),
    );
    assert_eq!(duplicated_rows, 0, "a reading was stored twice");
    assert_eq!(lost, 0, "readings lost");
}

#[test]
fn when_storage_fails_nothing_is_acknowledged_readiness_says_so_and_nothing_is_lost() {
    // Enough to pass the limit below well before the end: the journal grows
    // by a few bytes a reading, and so do the segments.
    const N: u64 = 40_000;
    let topic = format!("{PREFIX}/temperature/temp_001");
    let pki = Pki::new(&["room101", "aggregatord"]);
    let broker = Broker::start(&pki);
    let storage = tempfile::tempdir().unwrap();
    let config = write_config(&aggregatord_yaml(&broker, &pki, storage.path()));
    // A file-size limit stands in for a full disk: writes past it fail (EFBIG).
    // Small: no file of the store reaches 1 MiB for all of N.
    let limit = 64 * 1024;
    let mut agg = Proc::spawn(
        "aggregatord",
        std::process::Command::new("prlimit")
            .arg(format!("--fsize={limit}:unlimited"))
            .arg("--")
            .arg(AGGREGATORD)
            .arg("--config")
            .arg(&config.path)
            .env("RUST_LOG", "info,roomsense=debug"),
    );
    let addr = dashboard_addr(&agg.log);
    agg.log.wait_for(&["subscribed"]);
    let node = Watcher::connect(&broker, &pki, "room101");
    for seq in 1..=N {
        node.publish(&topic, &reading_payload(seq), 1);
    }
    agg.log.wait_for(&["STORAGE FAILED"]);
    let failed_at = Instant::now();
    let ready = http_status(&addr, "/readyz");
    let stored_while_failing = agg.log.text().matches("stored reading").count();

    // Space comes back.
    let raised = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", agg.pid()))
        .arg("--fsize=unlimited:unlimited")
        .status()
        .unwrap();
    assert!(raised.success());
    agg.log.wait_for(&["storage works again"]);
    let recovered_after = failed_at.elapsed();
    node.wait_confirmed(N as usize);
    agg.log
        .wait_for(&["stored reading", &format!("seq=Some({N})")]);
    assert_eq!(http_status(&addr, "/readyz"), 200);
    assert!(agg.terminate().success());
    // Said on each change, never per batch: FAILED, works again, FAILED… A
    // reopened sled may write a batch or two into space it freed below the
    // limit before the next write past it fails, so there can be more than
    // one round; but never the same line twice in a row.
    let said: Vec<bool> = agg
        .log
        .text()
        .lines()
        .filter_map(|l| {
            if l.contains("STORAGE FAILED") {
                Some(false)
            } else if l.contains("storage works again") {
                Some(true)
            } else {
                None
            }
        })
        .collect();
    assert!(
        said.first() == Some(&false)
            && said.last() == Some(&true)
            && said.windows(2).all(|w| w[0] != w[1]),
        "FAILED and 'works again' alternate, once per change (true = works again): {said:?}"
    );

    let unique: BTreeSet<u64> = stored_seqs(&config.path).into_iter().collect();
    let lost = (1..=N).filter(|s| !unique.contains(s)).count();
    record(
        "storage_full",
        "aggregatord's files hit a 64 KiB size limit (a full disk) during 40,000 QoS 1 readings; the limit is lifted",
        serde_json::json!({
            "readyz_while_failing": ready, "stored_before_failure": stored_while_failing,
            "lost": lost, "recovered_after_limit_lifted_s": recovered_after.as_secs_f64(),
        }),
    );
    assert_eq!(ready, 503, "not ready while storage fails");
    assert_eq!(lost, 0, "readings lost");
}

#[test]
fn a_restart_on_a_full_disk_waits_for_space_and_then_loses_nothing() {
    const BEFORE: u64 = 3_000;
    const WHILE_FULL: u64 = 2_000;
    let topic = format!("{PREFIX}/temperature/temp_001");
    let pki = Pki::new(&["room101", "aggregatord"]);
    let broker = Broker::start(&pki);
    let disk = SmallDisk::new("8m");
    let storage = disk.dir.path().join("db");
    let config = write_config(&aggregatord_yaml(&broker, &pki, &storage));
    let mut agg = disk.start_aggregatord(&config.path);
    agg.log.wait_for(&["subscribed"]);
    let node = Watcher::connect(&broker, &pki, "room101");
    for seq in 1..=BEFORE {
        node.publish(&topic, &reading_payload(seq), 1);
    }
    agg.log
        .wait_for(&["stored reading", &format!("seq=Some({BEFORE})")]);

    // The disk fills while it runs; it is restarted (an upgrade, a crash).
    disk.fill();
    agg.kill9();
    for seq in BEFORE + 1..=BEFORE + WHILE_FULL {
        node.publish(&topic, &reading_payload(seq), 1);
    }
    node.wait_confirmed((BEFORE + WHILE_FULL) as usize);
    let mut agg = disk.start_aggregatord(&config.path);
    agg.log.wait_for(&["STORAGE FAILED"]);
    let failed_at = Instant::now();
    // Still there, waiting: not exited, and nothing acknowledged meanwhile.
    assert!(
        agg.try_status().is_none(),
        "aggregatord exited on a full disk"
    );
    disk.free();
    agg.log.wait_for(&["storage works again"]);
    let recovered_after = failed_at.elapsed();
    agg.log.wait_for(&[
        "stored reading",
        &format!("seq=Some({})", BEFORE + WHILE_FULL),
    ]);
    assert!(agg.terminate().success());
    let rows = disk.stored_seqs(&config.path);
    let unique: BTreeSet<u64> = rows.iter().copied().collect();
    let lost = (1..=BEFORE + WHILE_FULL)
        .filter(|s| !unique.contains(s))
        .count();
    let duplicated_rows = rows.len() - unique.len();
    record(
        "storage_full_restart",
        "aggregatord killed and started again on a full disk (8 MiB tmpfs) with 2,000 QoS 1 readings queued at the broker; the space is freed",
        serde_json::json!({
            "readings": BEFORE + WHILE_FULL, "lost": lost, "duplicated_rows": duplicated_rows,
            "resumed_after_space_freed_s": recovered_after.as_secs_f64(),
        }),
    );
    assert_eq!(lost, 0, "readings lost");
    assert_eq!(duplicated_rows, 0, "a reading was stored twice");
}

/// Bytes in the files under `dir`.
fn bytes_under(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            if e.file_type().unwrap().is_dir() {
                bytes_under(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}

fn http_status(addr: &str, path: &str) -> u16 {
    http_get(addr, path).0
}

#[test]
fn past_storage_max_size_the_oldest_readings_go_and_the_newest_stay() {
    // Readings that compress badly (values with many digits, jittered
    // times), so that 1 MiB of chunks comes quickly: ~12 bytes each.
    const N: u64 = 150_000;
    // `extra` follows the storage section's `path:` line: indented, it is
    // part of that section.
    let Agg {
        pki,
        broker,
        _storage: storage,
        config,
        mut agg,
        addr,
    } = aggregatord_for(&["room101"], "  max_size: 1MiB\n");
    let node = Watcher::connect(&broker, &pki, "room101");
    let mut rng = fastrand::Rng::with_seed(7);
    let start = chrono::Utc::now().timestamp_millis() - N as i64 * 10;
    for seq in 1..=N {
        let ts = chrono::DateTime::from_timestamp_millis(start + seq as i64 * 10 + rng.i64(0..5))
            .unwrap();
        let payload = format!(
            r#"{{"sensor_id":"temp_001","sensor_type":"temperature","value":{:.9},"unit":"celsius","timestamp":"{}","seq":{seq}}}"#,
            rng.f64() * 40.0,
            ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        node.publish(
            &format!("{PREFIX}/temperature/temp_001"),
            payload.as_bytes(),
            1,
        );
    }
    agg.log
        .wait_for(&["stored reading", &format!("seq=Some({N})")]);
    agg.log.wait_for(&["storage.max_size reached"]);
    // The budget is checked every 5 s: wait for the store, as the daemon
    // measures it, to be under it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let said: u64 = http_get(&addr, "/metrics")
            .1
            .lines()
            .filter(|l| l.starts_with("roomsense_storage_bytes{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        if said <= 1 << 20 {
            break;
        }
        assert!(Instant::now() < deadline, "{said} bytes after 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let chunk_bytes = bytes_under(&storage.path().join("segments"));
    // The budget is the whole folder's: sled's file and the journal too.
    let folder_bytes = bytes_under(storage.path());
    let metric: u64 = http_get(&addr, "/metrics")
        .1
        .lines()
        .find_map(|l| l.strip_prefix("roomsense_storage_budget_deleted_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the budget's counter");
    assert!(agg.terminate().success());
    let kept: BTreeSet<u64> = stored_seqs(&config.path).into_iter().collect();
    let deleted = N - kept.len() as u64;
    record(
        "storage_max_size",
        "150,000 QoS 1 readings (about 12 bytes each in chunks) into aggregatord with storage.max_size: 1MiB (the whole folder's budget)",
        serde_json::json!({
            "readings": N, "deleted_oldest_first": deleted, "chunk_bytes_after": chunk_bytes,
            "folder_bytes_after": folder_bytes, "counted_by_the_metric": metric,
        }),
    );
    assert!(
        folder_bytes <= 1 << 20,
        "{folder_bytes} bytes in the store's folder: {}",
        std::process::Command::new("du")
            .arg("-ab")
            .arg(storage.path())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    );
    assert!(
        deleted > 0 && metric == deleted,
        "deleted {deleted}, counted {metric}"
    );
    // The oldest went: what is kept is the newest, without a hole.
    assert_eq!(kept.first(), Some(&(deleted + 1)));
    assert_eq!(kept.last(), Some(&N));
}
