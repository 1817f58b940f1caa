//! aggregatord's promise: what it acknowledged is on disk, stored exactly once,
//! whatever happens to it or to the broker.
//!
//! These tests stop aggregatord at chosen points with fault injection
//! (src/faults.rs), so the test binary must be built with `--features failpoints`
//! (scripts/test does).

use crate::harness::*;
use std::collections::BTreeSet;

const TOPIC: &str = "building/floor1/room101/temperature/temp_001";

// kill -9 during a stream: see reliability.rs (ten kills over 20,000 readings).

fn require_failpoints() {
    if !cfg!(feature = "failpoints") {
        panic!(
            "these tests inject faults into aggregatord: run them with \
             `cargo test --features failpoints` (scripts/test does)"
        );
    }
}

/// The central promise, checked where it can break: aggregatord is held just
/// before the fsync of the first batch that has messages to acknowledge. A
/// broker-side observer (Mosquitto logging every packet) must have received no
/// acknowledgement from it by then, and after a `kill -9` right there, every
/// reading must still arrive and be stored. Moving the ack ahead of the flush
/// fails both assertions.
#[test]
fn nothing_is_acknowledged_before_the_batch_holding_it_is_on_disk() {
    require_failpoints();
    const N: u64 = 2000;
    // A short keep-alive: its pings show that aggregatord's connection task keeps
    // running (and would have sent any queued ack) while ingest is held.
    let Agg {
        pki,
        broker,
        _storage,
        config,
        mut agg,
        ..
    } = Site::new(&["room101"])
        .logging_packets()
        .edit(|yaml| yaml.replace("keep_alive: 5s", "keep_alive: 1s"))
        .env("FAILPOINTS", "ingest::before_flush=return")
        .start();

    let node = Watcher::connect(&broker, &pki, "room101");
    for seq in 1..=N {
        node.publish(TOPIC, &reading_payload(seq), 1);
    }
    node.wait_confirmed(N as usize);
    let held = agg
        .log
        .wait_for(&["failpoint", "ingest::before_flush", "holding"]);
    let held_acks: usize = held
        .split("acks=")
        .nth(1)
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        held_acks > 0,
        "the held batch has nothing to acknowledge: {held}"
    );
    // Every ack queued before the hold was written before the next ping is.
    // (Lines end with the client id; aggregatord-alerts is the other connection.)
    let ping = |l: &str| l.ends_with("Received PINGREQ from aggregatord");
    let pings = broker.proc.log.count_where(ping);
    broker
        .proc
        .log
        .wait_for_nth_where(ping, pings + 1, "PINGREQ");
    let acked_while_held = broker
        .proc
        .log
        .count(&["Received PUBACK from aggregatord "]);
    let delivered_before_kill = broker.proc.log.count(&["Sending PUBLISH to aggregatord "]);
    agg.kill9();

    // Restarted without the fault, it gets back from the broker everything it
    // had not acknowledged.
    let mut agg = start_daemon(AGGREGATORD, &config.path);
    agg.log
        .wait_for(&["stored reading", &format!("seq=Some({N})")]);
    assert!(agg.terminate().success());
    let rows = stored_seqs(&config.path);
    let unique: BTreeSet<u64> = rows.iter().copied().collect();
    let lost = (1..=N).filter(|s| !unique.contains(s)).count();
    record(
        "ack_after_fsync",
        "aggregatord held just before the fsync of its first batch (fault injection), then killed with SIGKILL; Mosquitto logs every packet",
        serde_json::json!({
            "readings": N,
            "delivered_before_kill": delivered_before_kill,
            "messages_in_the_held_batch": held_acks,
            "acks_received_by_broker_while_held": acked_while_held,
            "lost": lost,
            "duplicated_rows": rows.len() - unique.len(),
        }),
    );
    assert!(delivered_before_kill > 0, "nothing was delivered to hold");
    assert_eq!(
        acked_while_held, 0,
        "the broker got acknowledgements for messages not yet on disk"
    );
    assert_eq!(lost, 0, "acknowledged readings lost by kill -9");
    assert_eq!(rows.len(), unique.len(), "a reading was stored twice");
}

/// An acknowledgement leaves as soon as its batch is on disk, even on an idle
/// connection where nothing else would wake the connection task (it would
/// then wait for the next keep-alive, 60 s here); and /metrics counts it.
#[test]
fn an_ack_leaves_at_once_on_an_idle_connection_and_is_counted() {
    let Agg {
        pki,
        broker,
        _storage,
        config: _config,
        agg,
        addr,
    } = Site::new(&["room101"])
        .logging_packets()
        .edit(|yaml| yaml.replace("keep_alive: 5s", "keep_alive: 60s"))
        .start();
    let node = Watcher::connect(&broker, &pki, "room101");
    node.publish(TOPIC, &reading_payload(1), 1);
    agg.log.wait_for(&["stored reading", "seq=Some(1)"]);
    // Within the harness's patience (20 s), well before a keep-alive ping.
    broker
        .proc
        .log
        .wait_for(&["Received PUBACK from aggregatord "]);
    let pinged = broker
        .proc
        .log
        .count_where(|l| l.ends_with("Received PINGREQ from aggregatord"));
    assert_eq!(pinged, 0, "the ack waited for a keep-alive");
    // The counter moves just after the write the broker has already logged:
    // read it until it does (bounded), not once.
    let deadline = std::time::Instant::now() + PATIENCE;
    let metrics = loop {
        let (_, metrics) = http_get(&addr, "/metrics");
        if metrics.contains("roomsense_mqtt_acks_sent_total 1\n")
            || std::time::Instant::now() > deadline
        {
            break metrics;
        }
        std::thread::yield_now();
    };
    assert!(
        metrics.contains("roomsense_mqtt_acks_sent_total 1\n"),
        "{metrics}"
    );
}

/// `batch_linger` (flash wear, issue 15): a batch short of `batch_fill` waits
/// for company, up to the linger; one that reaches it closes at the window.
/// Ten readings 50 ms apart, fill 5, linger 1 s: exactly two fsyncs. Without
/// the linger each reading is its own batch (ten); without the fill, one
/// batch waits out the whole second (one).
#[test]
fn a_short_batch_lingers_for_company_and_a_full_one_does_not() {
    let a = aggregatord_for(
        &["room101"],
        "ingest: { batch_window: 5ms, batch_linger: 1s, batch_fill: 5 }\n",
    );
    let metric = |name: &str| -> u64 {
        let (_, metrics) = http_get(&a.addr, "/metrics");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    let flushes_before = metric("roomsense_storage_flush_seconds_count ");
    let node = Watcher::connect(&a.broker, &a.pki, "room101");
    for seq in 1..=10 {
        node.publish(TOPIC, &reading_payload(seq), 1);
        node.wait_confirmed(usize::try_from(seq).unwrap());
        // Traffic shape, not synchronisation: readings arrive one by one.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    a.agg.log.wait_for(&["stored reading", "seq=Some(10)"]);
    // Acks are counted after their batch's flush is: once all ten are, the
    // flush count is final.
    let deadline = std::time::Instant::now() + PATIENCE;
    while metric("roomsense_ack_lag_seconds_count ") < 10 {
        assert!(std::time::Instant::now() < deadline, "acks not counted");
        std::thread::yield_now();
    }
    assert_eq!(
        metric("roomsense_storage_flush_seconds_count ") - flushes_before,
        2,
        "ten readings, a fill of five: two batches"
    );
}

/// Subscription QoS: measured with QoS 2 (see README, "Why aggregatord subscribes at
/// QoS 1"), a broker restart mid-stream left aggregatord reconnecting for ever on
/// "unsolicited ack" (rumqtt#664), so QoS 2 subscriptions are refused by config.
/// QoS 1 must come through the same restart with nothing lost.
#[test]
fn subscription_qos_1_survives_a_broker_restart_mid_stream() {
    require_failpoints();
    const N: u64 = 2000;
    // A slow disk (every fsync 20 ms late, 10 readings a batch: ~500 readings/s)
    // so that the broker restart lands while most of the backlog is still queued;
    // at full speed the whole first half is stored before the restart.
    let Agg {
        pki,
        mut broker,
        _storage,
        config,
        mut agg,
        ..
    } = Site::new(&["room101"])
        .extra("ingest: { batch_max: 10 }\n")
        .env("FAILPOINTS", "ingest::before_flush=sleep(20)")
        .start();
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
    // What was stored before aggregatord noticed the broker go away: the rest of
    // the first half was still queued then.
    let stored_before_restart = agg
        .log
        .count_before("stored reading", "MQTT connection failed");
    let backlog_at_restart = (N / 2) as usize - stored_before_restart.min(N as usize / 2);
    let connects = agg.log.count(&[INGEST_CONNECTED]);
    assert!(agg.terminate().success());
    let rows = stored_seqs(&config.path);
    let seqs: BTreeSet<u64> = rows.iter().copied().collect();
    let missing = (1..=N).filter(|s| !seqs.contains(s)).count();
    record(
        "broker_restart_mid_backlog",
        "Mosquitto restarted while aggregatord (slow disk) drains a 1,000-reading QoS 2 backlog (subscription QoS 1); 1,000 more after",
        serde_json::json!({
            "readings": N,
            "backlog_at_restart": backlog_at_restart,
            "lost": missing,
            "duplicated_rows": rows.len() - seqs.len(),
            "reconnects": connects - 1,
        }),
    );
    assert!(
        backlog_at_restart > 0,
        "the whole first half was stored before the restart: nothing was mid-queue"
    );
    assert_eq!(connects, 2, "one reconnect, no loop");
    assert_eq!(missing, 0, "readings lost across the restart");
    assert_eq!(rows.len(), seqs.len(), "a reading was stored twice");
}

#[test]
fn a_qos_2_subscription_is_refused_with_the_reason() {
    let pki = Pki::new(&["aggregatord"]);
    let broker = Broker::start(&pki);
    let storage = tempfile::tempdir().unwrap();
    let yaml = aggregatord_yaml_with(&broker, &pki, storage.path(), 2, "");
    let qos_line = 1 + yaml
        .lines()
        .position(|l| l.contains("qos: 2"))
        .expect("the subscription line");
    let config = write_config(&yaml);
    let out = std::process::Command::new(AGGREGATORD)
        .arg("--config")
        .arg(&config.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    let at = format!(
        "{}:{qos_line}: subscriptions[0].qos: ",
        config.path.display()
    );
    assert!(err.contains(&at) && err.contains("rumqtt#664"), "{err}");
}

/// A clean stop in the middle of a backlog. Everything aggregatord stored was
/// acknowledged, and those acknowledgements must reach the broker before the
/// connection closes: its DISCONNECT goes out behind them, and the socket is
/// closed only after the broker has closed its side. (Dropping the socket with
/// the broker's sends still unread made the kernel reset the connection, and
/// the broker lost our last acks and the DISCONNECT: "disconnected: Protocol
/// error", and the stored tail redelivered at every start.) So the next start
/// gets back exactly what was not stored: no duplicates.
#[test]
fn a_clean_stop_mid_backlog_loses_no_acknowledgement() {
    require_failpoints();
    const N: u64 = 6000;
    let pki = Pki::new(&["room101", "aggregatord"]);
    let broker = Broker::start(&pki);
    let storage = tempfile::tempdir().unwrap();
    let config = write_config(&aggregatord_yaml_with(
        &broker,
        &pki,
        storage.path(),
        1,
        "ingest: { batch_max: 50 }\n",
    ));
    // A slow disk, so that the stop lands while most of the backlog is queued.
    let mut agg = start_daemon_with(
        AGGREGATORD,
        &config.path,
        &[("FAILPOINTS", "ingest::before_flush=sleep(10)")],
    );
    agg.log.wait_for(&["subscribed"]);
    let node = Watcher::connect(&broker, &pki, "room101");
    for seq in 1..=N {
        node.publish(TOPIC, &reading_payload(seq), 1);
    }
    node.wait_confirmed(N as usize);
    agg.log.wait_for_nth(&["stored reading"], 500);
    assert!(agg.terminate().success());
    let first = agg.log.wait_for(&["aggregatord stopped"]);
    let stored_first = field(&first, "stored");
    let said = broker
        .proc
        .log
        .wait_for(&["Client aggregatord ", "disconnect"]);

    let mut agg = start_daemon(AGGREGATORD, &config.path);
    agg.log
        .wait_for(&["stored reading", &format!("seq=Some({N})")]);
    assert!(agg.terminate().success());
    let second = agg.log.wait_for(&["aggregatord stopped"]);
    let rows = stored_seqs(&config.path);
    let seqs: BTreeSet<u64> = rows.iter().copied().collect();
    let missing = (1..=N).filter(|s| !seqs.contains(s)).count();
    assert!(
        stored_first > 0 && stored_first < N,
        "the stop did not land mid-backlog: {first}"
    );
    assert!(
        said.ends_with("Client aggregatord disconnected."),
        "the broker did not see a clean DISCONNECT: {said}"
    );
    assert_eq!(missing, 0, "readings lost");
    assert_eq!(rows.len(), seqs.len(), "a reading was stored twice");
    assert_eq!(
        field(&second, "duplicates"),
        0,
        "acknowledged readings were redelivered after a clean stop: {second}"
    );
}

/// A numeric `key=value` field of a log line.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

/// "On disk" means surviving a power cut, not only a crash of aggregatord.
/// A batch's new readings are in the journal, and its `fdatasync` is the
/// batch's durability point; sled's flush ends in `sync_file_range`, which
/// leaves the drive's write cache and the file's size uncommitted
/// (spacejam/sled#1452), so when sled is flushed its log gets an `fdatasync`
/// too. Seen from outside with strace: each journal write synced before the
/// next, and sled's log never synced ahead of the journal. (A power cut
/// itself cannot be made on loopback; dropping either fdatasync from
/// `Store::flush` fails this test.)
#[test]
fn every_batch_is_fdatasynced_not_only_sync_file_range() {
    require("strace", "strace");
    const N: u64 = 300;
    let pki = Pki::new(&["room101", "aggregatord"]);
    let broker = Broker::start(&pki);
    let storage = tempfile::tempdir().unwrap();
    let config = write_config(&aggregatord_yaml(&broker, &pki, storage.path()));
    let trace = storage.path().with_extension("strace");
    let mut agg = Proc::spawn(
        "aggregatord",
        std::process::Command::new("strace")
            .args([
                "-f",
                "-qq",
                "-y",
                "-e",
                "trace=fdatasync,fsync,sync_file_range,write,pwrite64",
                "-o",
            ])
            .arg(&trace)
            .arg(AGGREGATORD)
            .arg("--config")
            .arg(&config.path)
            .env("RUST_LOG", "info,roomsense=debug"),
    );
    let addr = dashboard_addr(&agg.log);
    agg.log.wait_for(&["subscribed"]);
    let node = Watcher::connect(&broker, &pki, "room101");
    for seq in 1..=N {
        node.publish(TOPIC, &reading_payload(seq), 1);
    }
    agg.log
        .wait_for(&["stored reading", &format!("seq=Some({N})")]);
    let metrics = http_get(&addr, "/metrics").1;
    let batches: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("roomsense_storage_flush_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no flush count in:\n{metrics}"));
    // strace passes no SIGTERM on: stop aggregatord itself, strace follows.
    let strace = agg.pid();
    let child: i32 = std::fs::read_to_string(format!("/proc/{strace}/task/{strace}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("aggregatord under strace");
    signal(child, libc::SIGTERM);
    assert!(agg.wait().success());
    let log = storage.path().join("db");
    let traced = std::fs::read_to_string(&trace).unwrap();
    // With several threads strace splits a call another thread interrupts
    // into "<unfinished ...>" and "<... resumed>": joined here, each call
    // stands where it returned.
    let calls = whole_calls(&traced);
    let synced = |file: &str| {
        calls
            .iter()
            .filter(|l| l.contains("fdatasync(") && l.contains(file))
            .filter(|l| l.trim_end().ends_with("= 0"))
            .count() as u64
    };
    let sled_log = format!("<{}>", log.display());
    let journal = format!("<{}/", storage.path().join("wal").display());
    // Walk the calls in order: every journal write (a batch's record) is
    // synced before the next one, and sled's log is never synced while a
    // journal write is not (sled's note of the journal would run ahead).
    let (mut unsynced, mut writes, mut journal_synced) = (false, 0u64, 0u64);
    let (mut written_twice, mut sled_synced_after_unsynced) = (0u64, 0u64);
    for l in calls
        .iter()
        .filter(|l| l.trim_end().ends_with(|c: char| c.is_ascii_digit()))
    {
        // The journal writes at offsets (pwrite64); sled and the rest write().
        if l.contains(&journal) && (l.contains("write(") || l.contains("pwrite64(")) {
            written_twice += u64::from(unsynced);
            unsynced = true;
            writes += 1;
        } else if l.contains(&journal) && (l.contains("fdatasync(") || l.contains(" fsync(")) {
            unsynced = false;
            journal_synced += 1;
        } else if l.contains(&sled_log) && l.contains("fdatasync(") && unsynced {
            sled_synced_after_unsynced += 1;
        }
    }
    let sled_synced = synced(&sled_log);
    record(
        "fdatasync_per_batch",
        "300 QoS 1 readings stored under strace: the journal's writes and fdatasyncs, and sled's, in order",
        serde_json::json!({
            "batches": batches, "journal_writes": writes, "fdatasync_of_journal": journal_synced,
            "journal_writes_not_synced_before_the_next": written_twice + u64::from(unsynced),
            "fdatasync_of_sled_log": sled_synced,
            "sled_synced_with_journal_writes_unsynced": sled_synced_after_unsynced,
        }),
    );
    assert!(batches > 0, "{metrics}");
    assert!(
        writes > 1
            && written_twice == 0
            && !unsynced
            && sled_synced > 0
            && sled_synced_after_unsynced == 0,
        "{writes} journal writes, {journal_synced} syncs of it, {written_twice} written again unsynced, {sled_synced} fdatasync of sled's log ({sled_synced_after_unsynced} with journal writes unsynced), for {batches} batches:\n{}",
        traced.lines().take(40).collect::<Vec<_>>().join("\n")
    );
}

/// aggregatord (with `extra` config) stores what `act` publishes, and is
/// killed with -9 as soon as `act` has seen it acknowledged; the store is
/// left for `dump`.
fn killed_right_after(
    extra: &str,
    act: impl FnOnce(&Watcher, &Proc),
) -> (tempfile::TempDir, ConfigFile) {
    let Agg {
        pki,
        broker,
        _storage: storage,
        config,
        mut agg,
        ..
    } = aggregatord_for(&["room101"], extra);
    let node = Watcher::connect(&broker, &pki, "room101");
    act(&node, &agg);
    agg.kill9();
    (storage, config)
}

/// The journal holds a batch's new readings; what a batch writes to sled
/// alone must be flushed with it all the same (sled is otherwise flushed
/// every few seconds). Each kind, alone in its batch, survives a kill -9
/// right after it was stored: an alert change, a refused message, and a
/// reading older than its sensor's chunks (stored straight into them).
/// Leaving out the flag that forces sled's flush for any one kind fails here.
#[test]
fn what_a_batch_writes_beside_the_journal_survives_kill_9() {
    let rule = "alerts:\n  - { name: too_hot, type: temperature, above: 26, severity: critical }\n";
    let (_storage, config) = killed_right_after(rule, |node, agg| {
        node.publish(TOPIC, &reading_payload(65), 1); // 26.5
        agg.log.wait_for(&["alert", "state=raised"]);
    });
    let alerts = dump(&config.path, &["--alerts", "--format", "jsonl"]);
    assert!(
        alerts.contains("\"too_hot\"") && alerts.contains("\"raised\""),
        "the raised alert: {alerts:?}"
    );

    let (_storage, config) = killed_right_after("", |node, agg| {
        node.publish(TOPIC, b"{ not json", 1);
        node.publish(TOPIC, &reading_payload(1), 1);
        agg.log.wait_for(&["stored reading", "seq=Some(1)"]);
    });
    let rejected = dump(&config.path, &["--rejected", "--format", "jsonl"]);
    assert!(
        rejected.contains("not json"),
        "the refused message: {rejected:?}"
    );

    let (_storage, config) = killed_right_after("", |node, agg| {
        // A chunk's worth, folded; then one from before all of them.
        for seq in 101..=356 {
            node.publish(TOPIC, &reading_payload(seq), 1);
        }
        agg.log.wait_for(&["stored reading", "seq=Some(356)"]);
        node.publish(TOPIC, &reading_payload(1), 1);
        agg.log.wait_for(&["stored reading", "seq=Some(1)"]);
    });
    let seqs: BTreeSet<u64> = stored_seqs(&config.path).into_iter().collect();
    assert!(seqs.contains(&1), "the late reading");
    assert_eq!(seqs.len(), 257);
}

/// strace -f output with each interrupted call (`PID name(args <unfinished
/// ...>` then `PID <... name resumed>rest`) joined into one line, placed
/// where it returned.
fn whole_calls(traced: &str) -> Vec<String> {
    let mut started: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    let mut calls = Vec::new();
    for l in traced.lines() {
        let pid = l.split_whitespace().next().unwrap_or("");
        if let Some(head) = l.strip_suffix("<unfinished ...>") {
            started.insert(pid, head);
        } else if let Some((_, rest)) = l.split_once(" resumed>") {
            if let Some(head) = started.remove(pid) {
                calls.push(format!("{}{rest}", head.trim_end()));
            }
        } else {
            calls.push(l.to_owned());
        }
    }
    calls
}
