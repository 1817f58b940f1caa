//! sensord's outbox: QoS 1/2 readings made while the broker is away survive
//! the node's own kill -9 (or power cut), and a torn tail of its file is cut
//! off and counted, never sent.

use crate::harness::*;
use std::collections::BTreeMap;

const PREFIX: &str = "building/floor1/room101";
const ENERGY: &str = "building/floor1/room101/energy/energy_001";
const TEMP: &str = "building/floor1/room101/temperature/temp_001";

/// room101 with two QoS 1/2 streams and one QoS 0, against `port`, keeping its
/// state (the outbox) in `state`.
fn node_config(port: u16, pki: &Pki, state: &std::path::Path) -> ConfigFile {
    write_config(&sensord_yaml_on(
        port,
        pki,
        "room101",
        PREFIX,
        &[
            ("energy_001", "energy", "100ms", 2),
            ("temp_001", "temperature", "100ms", 1),
            ("hum_001", "humidity", "100ms", 0),
        ],
        &format!("state_dir: {}\n", state.display()),
    ))
}

/// The seq of each QoS 1/2 reading sensord logged before the n-th "outbox
/// synced" line, per stream. The runtime is single-threaded and the outbox
/// takes everything queued before it syncs, so a reading logged before a
/// sync's line was in that sync.
fn synced_before(log: &str, n: usize) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut syncs = 0;
    for line in log.lines() {
        if line.contains("outbox synced") {
            syncs += 1;
            if syncs == n {
                break;
            }
        }
        if !line.contains(" reading ") {
            continue;
        }
        let field = |name: &str| {
            line.split(&format!("{name}="))
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .map(str::to_owned)
        };
        let (Some(topic), Some(seq)) = (field("topic"), field("seq")) else {
            continue;
        };
        if topic != ENERGY && topic != TEMP {
            continue;
        }
        let seq = seq.trim_start_matches("Some(").trim_end_matches(')');
        out.entry(topic)
            .or_default()
            .push(seq.parse().expect("seq"));
    }
    out
}

#[test]
fn qos12_readings_made_while_the_broker_is_down_survive_a_kill_9_stored_once_in_order() {
    require_mosquitto();
    let pki = Pki::new(&["room101", "aggregatord"]);
    let port = free_port();
    let state = tempfile::tempdir().unwrap();
    let config = node_config(port, &pki, state.path());

    // No broker: the node keeps its QoS 1/2 readings, then is killed.
    let mut first = start_daemon(SENSORD, &config.path);
    let syncs = 20;
    first.log.wait_for_nth(&["outbox synced"], syncs);
    first.kill9();
    let killed_at = chrono::Utc::now();
    let made = synced_before(&first.log.text(), syncs);
    assert!(
        made.get(ENERGY).is_some_and(|s| s.len() >= 3)
            && made.get(TEMP).is_some_and(|s| s.len() >= 3),
        "{made:?}"
    );

    // The broker and aggregatord come; the node starts again.
    let broker = Broker::start_on(&pki, port);
    let storage = tempfile::tempdir().unwrap();
    let agg_config = write_config(&aggregatord_yaml(&broker, &pki, storage.path()));
    let agg = start_daemon(AGGREGATORD, &agg_config.path);
    agg.log.wait_for(&["subscribed"]);
    let mut second = start_daemon(SENSORD, &config.path);
    let replayed = second
        .log
        .wait_for(&["outbox: sending readings kept from before the restart"]);
    // Sent before anything new, in order: once the last of each stream is
    // stored, all of it is.
    for (topic, seqs) in &made {
        let last = seqs.last().expect("a seq");
        agg.log.wait_for(&[
            "stored reading",
            &format!("topic={topic} "),
            &format!("seq=Some({last})"),
        ]);
    }

    let stored = dump(
        &agg_config.path,
        &["--format", "jsonl", "--room", "room101"],
    );
    let mut lost = 0;
    for (topic, seqs) in &made {
        // The readings made before the kill: by their timestamps.
        let before: Vec<u64> = stored
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["topic"] == topic.as_str())
            .filter(|v| {
                v["timestamp"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .is_some_and(|t| t < killed_at)
            })
            .filter_map(|v| v["seq"].as_u64())
            .collect();
        // Every one, once, in order: 1, 2, 3… (a reading synced just before
        // the kill, after the last line the test read, may follow).
        let expected: Vec<u64> = (1..=before.len() as u64).collect();
        lost += seqs.iter().filter(|s| !before.contains(s)).count();
        assert_eq!(before, expected, "{topic}: stored before the kill");
        assert!(
            before.len() >= seqs.len(),
            "{topic}: {} made and synced before the kill, {} stored",
            seqs.len(),
            before.len()
        );
    }
    // A clean stop while connected leaves nothing to send twice.
    assert!(second.terminate().success());
    let mut third = start_daemon(SENSORD, &config.path);
    third.log.wait_for(&["connected broker="]);
    assert!(third.terminate().success());
    let stop = third.log.wait_for(&["sensord stopped"]);
    assert_eq!(field::<u64>(&stop, "outbox_replayed"), 0, "{stop}");
    record(
        "outbox_kill9_during_outage",
        "sensord with its broker down, kill -9, restarted with the broker back: its QoS 1/2 readings from before the kill",
        serde_json::json!({
            "synced_before_kill": made.values().map(Vec::len).sum::<usize>(),
            "replayed_line": replayed.split("readings=").nth(1).unwrap_or_default().split_whitespace().next().unwrap_or_default(),
            "synced_but_not_stored": lost,
        }),
    );
}

#[test]
fn a_torn_tail_of_the_outbox_file_is_cut_off_and_counted_never_sent() {
    require_mosquitto();
    let pki = Pki::new(&["room101"]);
    let port = free_port();
    let state = tempfile::tempdir().unwrap();
    let config = node_config(port, &pki, state.path());
    let mut first = start_daemon(SENSORD, &config.path);
    first.log.wait_for_nth(&["outbox synced"], 5);
    assert!(first.terminate().success());
    let stop = first.log.wait_for(&["sensord stopped"]);
    let kept: u64 = field(&stop, "outbox_kept");
    assert!(kept >= 3, "{stop}");
    assert_eq!(field::<u64>(&stop, "lost_at_exit"), 0, "{stop}");

    // A power cut in the middle of a write: half a frame at the end.
    let file = state.path().join("outbox");
    let whole = std::fs::metadata(&file).unwrap().len();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.extend_from_slice(&[0x40, 0, 0, 0, 0xde, 0xad, 0xbe]);
    std::fs::write(&file, &bytes).unwrap();

    let mut second = start_daemon(SENSORD, &config.path);
    let cut = second.log.wait_for(&["torn or damaged tail was cut off"]);
    assert!(cut.contains("bytes=7"), "{cut}");
    assert!(second.terminate().success());
    let stop = second.log.wait_for(&["sensord stopped"]);
    assert_eq!(field::<u64>(&stop, "outbox_replayed"), kept, "{stop}");
    assert_eq!(field::<u64>(&stop, "outbox_torn_bytes"), 7, "{stop}");
    assert!(std::fs::metadata(&file).unwrap().len() >= whole);
}

/// The newest seq of `topic` among the readings a node's log says it made.
fn last_made(log: &Log, topic: &str) -> Option<u64> {
    let needle = format!("topic={topic} ");
    log.text()
        .lines()
        .filter(|l| l.contains(" reading ") && l.contains(&needle))
        .filter_map(|l| l.split("seq=Some(").nth(1)?.split(')').next()?.parse().ok())
        .max()
}

/// A `name=value` field of a log line.
fn field<T: std::str::FromStr>(line: &str, name: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    line.split(&format!("{name}="))
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {name}= in {line}"))
        .parse()
        .expect(name)
}

#[test]
fn a_full_disk_turns_the_outbox_to_memory_with_an_error_and_readings_still_flow() {
    require_mosquitto();
    let site = aggregatord_for(&["room101"], "");
    // The node's state directory on a small disk of its own.
    let disk = SmallDisk::new("1m");
    let config = node_config(site.broker.port, &site.pki, disk.dir.path());
    let mut node = Proc::spawn(
        "sensord",
        disk.command(SENSORD)
            .arg("--config")
            .arg(&config.path)
            .env("RUST_LOG", "info,roomsense=debug")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET"),
    );
    node.log.wait_for(&["connected broker="]);
    node.log.wait_for_nth(&["outbox synced"], 3);
    disk.fill();
    let error = node
        .log
        .wait_for(&["ERROR", "outbox: cannot write its file"]);
    assert!(error.contains("in memory only"), "{error}");
    // Readings made after it still reach aggregatord.
    let after = last_made(&node.log, ENERGY).unwrap_or(0);
    site.agg.log.wait_for(&[
        "stored reading",
        &format!("topic={ENERGY} "),
        &format!("seq=Some({})", after + 5),
    ]);
    assert_eq!(
        node.log.count(&["outbox: cannot write its file"]),
        1,
        "said once"
    );
    assert!(node.terminate().success());
}

#[test]
fn a_full_outbox_drops_the_oldest_unsent_readings_and_counts_them() {
    require_mosquitto();
    let pki = Pki::new(&["room101"]);
    let state = tempfile::tempdir().unwrap();
    // No broker; the smallest outbox, filled fast.
    let config = write_config(&sensord_yaml_on(
        free_port(),
        &pki,
        "room101",
        PREFIX,
        &[
            ("energy_001", "energy", "10ms", 2),
            ("temp_001", "temperature", "10ms", 1),
        ],
        &format!(
            "state_dir: {}\noutbox: {{ max_size: 64KiB }}\n",
            state.path().display()
        ),
    ));
    let mut node = start_daemon(SENSORD, &config.path);
    node.log
        .wait_for(&["outbox full; dropping the oldest unsent readings"]);
    assert!(node.terminate().success());
    let stop = node.log.wait_for(&["sensord stopped"]);
    let dropped: u64 = field(&stop, "dropped_buffer_full");
    let kept: u64 = field(&stop, "outbox_kept");
    assert!(dropped > 0 && kept > 0, "{stop}");
    let size = std::fs::metadata(state.path().join("outbox"))
        .unwrap()
        .len();
    assert!(size <= 64 * 1024, "the file holds {size} bytes");
    // What is kept is the newest: the energy stream's kept seqs end with the
    // last one made.
    let made_last = last_made(&node.log, ENERGY).expect("an energy reading made");
    let file = std::fs::read(state.path().join("outbox")).unwrap();
    let needle = format!("\"seq\":{made_last}");
    assert!(
        file.windows(needle.len()).any(|w| w == needle.as_bytes()),
        "the newest energy reading (seq {made_last}) is kept"
    );
}
