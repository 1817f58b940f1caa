//! The store's files damaged on purpose after readings were acknowledged
//! (issue 24): a cut tail, a flipped byte. What was acknowledged is all
//! there, or its loss is said with file and offset; never a silent loss.

use crate::harness::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const TOPIC: &str = "building/floor1/room101/temperature/temp_001";
const N: u64 = 20_000;
/// A second sensor's few readings, stored last, one batch each: too few to
/// fill a chunk, so they are only in the journal (and the tail in memory).
const SLOW: &str = "building/floor1/room101/temperature/temp_002";
const ALL: u64 = N + 3;

/// A store holding `N` readings that aggregatord stored and flushed (its
/// "stored reading" line comes after the flush), then killed with -9 (the
/// state a power cut leaves), or stopped (everything in chunks, and sled
/// flushed). The broker and certificates are dropped with it.
fn acknowledged_then(kill: bool) -> tempfile::TempDir {
    let Agg {
        pki,
        broker,
        _storage: storage,
        mut agg,
        ..
    } = aggregatord_for(&["room101"], "");
    let node = Watcher::connect(&broker, &pki, "room101");
    for seq in 1..=N {
        node.publish(TOPIC, &reading_payload(seq), 1);
    }
    agg.log
        .wait_for(&["stored reading", &format!("seq=Some({N})")]);
    for seq in N + 1..=ALL {
        let payload = String::from_utf8(reading_payload(seq)).unwrap();
        node.publish(SLOW, payload.replace("temp_001", "temp_002").as_bytes(), 1);
        agg.log
            .wait_for(&["stored reading", &format!("seq=Some({seq})")]);
    }
    if kill {
        agg.kill9();
    } else {
        assert!(agg.terminate().success());
    }
    storage
}

/// A copy of the store in `storage`, damaged by `harm`, then dumped the way
/// an operator would (the same open as the daemon's start): the seqs found,
/// and what dump said on stderr.
fn damaged_copy(storage: &Path, harm: impl FnOnce(&Path)) -> (Vec<u64>, String) {
    let (seqs, said, _copy, _config) = damaged_copy_kept(storage, harm);
    (seqs, said)
}

/// [`damaged_copy`], with the copy and its config kept for a daemon.
fn damaged_copy_kept(
    storage: &Path,
    harm: impl FnOnce(&Path),
) -> (Vec<u64>, String, tempfile::TempDir, ConfigFile) {
    let (copy, db, config) = copy_of(storage);
    harm(&db);
    let (seqs, said) = dumped(&config);
    (seqs, said, copy, config)
}

/// A copy of the store in `storage` (at the returned path, in the folder
/// returned), and a config naming it.
fn copy_of(storage: &Path) -> (tempfile::TempDir, PathBuf, ConfigFile) {
    let copy = tempfile::tempdir().unwrap();
    let db = copy.path().join("db");
    let status = Command::new("cp")
        .arg("-a")
        .arg(storage)
        .arg(&db)
        .status()
        .unwrap();
    assert!(status.success());
    // dump needs a config only for the storage path; the broker is never asked.
    let config = write_config(&format!(
        "client_id: aggregatord\nbroker: {{ hosts: [{{ host: localhost, port: 1 }}], insecure_plaintext: true }}\nsubscriptions:\n  - {{ filter: \"building/#\", qos: 1 }}\nstorage:\n  path: {}\nhttp: {{ listen: \"127.0.0.1:0\" }}\n",
        db.display()
    ));
    (copy, db, config)
}

/// `aggregatord dump` of a stopped store, as an operator runs it: the seqs
/// found, and what it said on stderr (damage).
fn dumped(config: &ConfigFile) -> (Vec<u64>, String) {
    let out = Command::new(AGGREGATORD)
        .arg("--config")
        .arg(&config.path)
        .args(["dump", "--format", "jsonl"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "dump failed: {said}");
    (seqs_of(&String::from_utf8_lossy(&out.stdout)), said)
}

fn cut(file: &Path, bytes: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(bytes)).unwrap();
}

fn flip_middle(file: &Path) -> u64 {
    flip_at(file, |bytes| bytes.len() / 2)
}

/// Flips one bit of the byte of `file` that `at` picks from its bytes;
/// returns its offset.
fn flip_at(file: &Path, at: impl FnOnce(&[u8]) -> usize) -> u64 {
    let mut bytes = std::fs::read(file).unwrap();
    let at = at(&bytes);
    bytes[at] ^= 0x20;
    std::fs::write(file, &bytes).unwrap();
    at as u64
}

/// Where a journal file's frames end: it is made at full size, sparse, and
/// its unused end reads as zeros (the last frame ends on a byte that is not
/// zero, or its cut is a few bytes deeper).
fn journal_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)
}

/// The journal file loses `bytes` of its frames' end (and its unused end).
fn cut_journal(file: &Path, bytes: u64) {
    let end = journal_end(&std::fs::read(file).unwrap()) as u64;
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.set_len(end - bytes).unwrap();
}

/// A byte flipped half way through a journal file's frames.
fn flip_journal_middle(file: &Path) -> u64 {
    flip_at(file, |bytes| journal_end(bytes) / 2)
}

/// The journal file holding the newest records.
fn newest_log_file(db: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(db.join("wal"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    files.sort();
    files.pop().expect("a journal file")
}

/// The report may err on the side of "lost" (it cannot read the damaged
/// frame), never on the side of "none lost".
fn says_whether_lost(said: &str, lost: &[u64]) {
    if lost.is_empty() {
        return;
    }
    assert!(
        said.contains("lost") && !said.contains("none lost"),
        "{} readings lost, and the report says: {said}",
        lost.len()
    );
}

fn missing(seqs: &[u64]) -> Vec<u64> {
    let have: BTreeSet<u64> = seqs.iter().copied().collect();
    (1..=ALL).filter(|s| !have.contains(s)).collect()
}

#[test]
fn a_cut_or_flipped_store_loses_nothing_acknowledged_silently() {
    let storage = acknowledged_then(true);
    let mut results = serde_json::Map::new();

    // sled's file loses its end (the last flushes): the journal still holds
    // what those flushes had folded, and replay puts it back.
    for bytes in [1, 100, 4096] {
        let (seqs, said) = damaged_copy(storage.path(), |db| cut(&db.join("db"), bytes));
        let lost = missing(&seqs);
        results.insert(format!("db_cut_{bytes}_lost"), lost.len().into());
        assert!(
            lost.is_empty(),
            "cutting {bytes} bytes off sled's file lost {} readings ({said})",
            lost.len()
        );
        assert_eq!(seqs.len() as u64, ALL, "each reading once");
    }

    // The journal loses acknowledged frames at its end: the readings in
    // them are gone, and dump says where.
    for bytes in [1, 100] {
        let mut file = PathBuf::new();
        let (seqs, said) = damaged_copy(storage.path(), |db| {
            file = newest_log_file(db);
            cut_journal(&file, bytes);
        });
        let lost = missing(&seqs);
        results.insert(
            format!("journal_cut_{bytes}_lost_and_reported"),
            lost.len().into(),
        );
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            said.contains("STORAGE DAMAGED") && said.contains(&name) && said.contains("offset"),
            "cutting {bytes} bytes off the journal was not reported with file and offset: {said:?}"
        );
        // Only the newest readings (those not yet folded into chunks) can be
        // in it, and the report says whether any were.
        assert!(lost.iter().all(|s| *s > N - 200), "lost {lost:?}");
        assert!(
            !lost.is_empty(),
            "the slow sensor's last reading was only in the journal's last frame"
        );
        says_whether_lost(&said, &lost);
    }

    // A flipped byte inside the journal: reported with file and offset;
    // the frames after it are still read.
    let mut at = 0;
    let mut file = PathBuf::new();
    let (seqs, said) = damaged_copy(storage.path(), |db| {
        file = newest_log_file(db);
        at = flip_journal_middle(&file);
    });
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        said.contains("STORAGE DAMAGED") && said.contains(&name),
        "a flipped byte in the journal was not reported: {said:?}"
    );
    let offset: u64 = said
        .split("at offset ")
        .nth(1)
        .and_then(|s| s.split(':').next()?.parse().ok())
        .expect("an offset in the report");
    assert!(
        offset <= at && at - offset < 4096,
        "reported at {offset}, flipped at {at}"
    );
    let lost = missing(&seqs);
    results.insert("journal_flip_lost".into(), lost.len().into());
    assert!(lost.len() < 500, "one frame's readings (a batch) at most");
    says_whether_lost(&said, &lost);

    let stopped = acknowledged_then(false);
    // A flipped byte inside a segment (the chunks) of a stopped store: the
    // chunk it hit is reported with file, offset and how many readings it
    // held; the rest is served.
    let (seqs, said, _copy, config) = damaged_copy_kept(stopped.path(), |db| {
        let mut segments: Vec<PathBuf> = std::fs::read_dir(db.join("segments"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        segments.sort();
        flip_middle(&segments[0]);
    });
    let lost = missing(&seqs);
    let reported: usize = said
        .split("a chunk of ")
        .skip(1)
        .filter_map(|s| s.split(' ').next()?.parse::<usize>().ok())
        .sum();
    results.insert("segment_flip_lost".into(), lost.len().into());
    results.insert("segment_flip_reported_lost".into(), reported.into());
    assert_eq!(
        lost.len(),
        reported,
        "lost and said lost must agree: {said}"
    );
    assert!(
        reported > 0 && said.contains(".seg at offset") && said.contains("STORAGE DAMAGED"),
        "{said}"
    );

    // The daemon on that store says it too: /readyz and the metric (it has
    // no broker to reach here, so it is not ready; the damage line is there).
    let agg = start_daemon(AGGREGATORD, &config.path);
    let addr = dashboard_addr(&agg.log);
    let (_, history) = http_get(
        &addr,
        "/api/history?sensor=building/floor1/room101/temperature/temp_001&since=365d&tier=raw",
    );
    let (_, readyz) = http_get(&addr, "/readyz");
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(readyz.contains("damage: 1 "), "{readyz} ({history:.200})");
    assert!(metrics.contains("roomsense_storage_damage 1"), "{metrics}");

    record(
        "store_damage",
        "20,000 QoS 1 readings stored, aggregatord killed -9 (a segment: stopped), then a copy of the store damaged each way and read by dump",
        serde_json::Value::Object(results),
    );
}

/// Every file under `dir`, with its bytes.
fn files_in(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.file_type().unwrap().is_dir() {
            out.extend(files_in(&entry.path()));
        } else {
            out.insert(entry.path(), std::fs::read(entry.path()).unwrap());
        }
    }
    out
}

/// The files of the store at `db` that `dumps` changed.
fn changed_by(db: &Path, dumps: impl FnOnce()) -> Vec<PathBuf> {
    let before = files_in(db);
    dumps();
    let after = files_in(db);
    let changed: BTreeSet<&PathBuf> = before
        .keys()
        .chain(after.keys())
        .filter(|f| before.get(*f) != after.get(*f))
        .collect();
    changed.into_iter().cloned().collect()
}

/// Each way of reading a stopped store: readings, a rollup tier, alerts,
/// refused messages, statistics. Whether each exited 0.
fn every_dump(config: &ConfigFile) -> Vec<bool> {
    [
        &["dump", "--format", "jsonl"][..],
        &["dump", "--tier", "1m"],
        &["dump", "--alerts"],
        &["dump", "--rejected"],
        &["stats"],
    ]
    .iter()
    .map(|args| {
        Command::new(AGGREGATORD)
            .arg("--config")
            .arg(&config.path)
            .args(*args)
            .output()
            .unwrap()
            .status
            .success()
    })
    .collect()
}

/// `dump` of a stopped store only reads it, even a damaged one. Before, its
/// open was the daemon's: sled's open rewrote its file (963,029 → 1,048,575
/// bytes on an undamaged store, in the issue), and on a damaged one rewrote
/// it from the damage on, so that putting the byte back no longer brought
/// the readings back; the journal's replay folded and set files aside. Now
/// every byte stays as it was, and putting the byte back gives every
/// reading again. (Whether sled can open its file with that byte flipped
/// depends on what the byte was; either way nothing is written.)
#[test]
fn a_dump_changes_nothing_even_in_a_damaged_store() {
    let stopped = acknowledged_then(false);
    let (_copy, db, config) = copy_of(stopped.path());
    let mut ok = Vec::new();
    let undamaged = changed_by(&db, || ok = every_dump(&config));
    assert!(ok.iter().all(|ok| *ok), "{ok:?}");
    let at = flip_middle(&db.join("db"));
    let mut damaged_ok = Vec::new();
    let damaged = changed_by(&db, || damaged_ok = every_dump(&config));
    // The byte put back: the store is as aggregatord left it.
    let mut bytes = std::fs::read(db.join("db")).unwrap();
    bytes[usize::try_from(at).unwrap()] ^= 0x20;
    std::fs::write(db.join("db"), bytes).unwrap();
    let (seqs, said) = dumped(&config);
    record(
        "dump_reads_only",
        "20,000 QoS 1 readings and a clean stop; read five ways by dump and stats; a byte flipped in the middle of sled's file, read five ways again; the byte put back",
        serde_json::json!({
            "files_changed_by_reads": undamaged.len(),
            "files_changed_by_reads_of_the_damaged_store": damaged.len(),
            "reads_of_the_damaged_store_that_exited_0": damaged_ok.iter().filter(|ok| **ok).count(),
            "lost_after_the_byte_is_back": missing(&seqs).len(),
        }),
    );
    assert!(undamaged.is_empty(), "reads changed {undamaged:?}");
    assert!(
        damaged.is_empty(),
        "reads of the damaged store changed {damaged:?}"
    );
    assert_eq!(missing(&seqs), Vec::<u64>::new(), "{said}");
}

/// sled goes back (its files as they were before its last flushes: a disk
/// that lost recent writes to one file) while the journal and the segments
/// stay as they are: sled recovers without a word, the journal's frames
/// saw those flushes, and the open says so, naming sled's file; what the
/// journal still held is replayed.
#[test]
fn a_sled_that_went_back_is_said_and_the_journal_replayed() {
    let Agg {
        pki,
        broker,
        _storage: storage,
        config,
        mut agg,
        ..
    } = aggregatord_for(&["room101"], "");
    let node = Watcher::connect(&broker, &pki, "room101");
    let publish = |seqs: std::ops::RangeInclusive<u64>, agg: &Proc| {
        let last = *seqs.end();
        for seq in seqs {
            node.publish(TOPIC, &reading_payload(seq), 1);
        }
        agg.log
            .wait_for(&["stored reading", &format!("seq=Some({last})")]);
    };
    publish(1..=1000, &agg);
    assert!(agg.terminate().success());
    // sled's files as they are now.
    let old = tempfile::tempdir().unwrap();
    let sled_files = ["db", "conf"];
    for f in sled_files {
        std::fs::copy(storage.path().join(f), old.path().join(f)).unwrap();
    }
    let mut agg = start_daemon(AGGREGATORD, &config.path);
    agg.log.wait_for(&["subscribed"]);
    publish(1001..=2000, &agg);
    assert!(agg.terminate().success());
    // sled goes back; its snapshot with it (sled rebuilds from its log).
    for f in sled_files {
        std::fs::copy(old.path().join(f), storage.path().join(f)).unwrap();
    }
    for e in std::fs::read_dir(storage.path()).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("snap.") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let (seqs, said) = dumped(&config);
    let seqs: BTreeSet<u64> = seqs.into_iter().collect();
    let lost = (1..=2000).filter(|s| !seqs.contains(s)).count();
    record(
        "sled_went_back",
        "1,000 QoS 1 readings, a clean stop, sled's files copied; 1,000 more, a clean stop; sled's files put back",
        serde_json::json!({ "readings": 2000, "lost": lost, "said": said.contains("sled lost its last") }),
    );
    assert!(
        said.contains("STORAGE DAMAGED")
            && said.contains("sled lost its last")
            && said.contains("/db:"),
        "sled went back and nothing was said: {said:?}"
    );
    assert_eq!(lost, 0, "the journal held them all: replayed");
}

/// sled came back from one byte flipped in its file with one of its two
/// maps of the topics empty (id → name whole, name → id empty), the chunks'
/// trees with it, and its notes as at its one completed flush, and said
/// nothing: `dump` listed 3 of 20,003 readings, though the journal held
/// every one. Found by flipping bytes through sled's file one at a time (one
/// store in a few lost everything at some offset); kept as a fixture, because
/// where sled drops what depends on its file's layout. The store: 20,000
/// QoS 1 readings and 3 of a slow sensor, aggregatord killed -9
/// (`acknowledged_then(true)`), written by this version.
#[test]
fn a_sled_that_lost_a_topic_map_loses_nothing() {
    let fixture = Path::new(REPO).join("tests/fixtures/sled-lost-a-topic-map");
    let offset: usize = std::fs::read_to_string(fixture.join("FLIP_AT"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (seqs, said) = damaged_copy(&fixture.join("store"), |db| {
        flip_at(&db.join("db"), |_| offset);
    });
    let lost = missing(&seqs);
    record(
        "sled_lost_a_topic_map",
        "a store of 20,003 readings (killed -9) whose sled file, with one byte flipped, opens with one map of the topics empty",
        serde_json::json!({ "lost": lost.len(), "readings": seqs.len() }),
    );
    assert!(lost.is_empty(), "{} of {ALL} lost: {said}", lost.len());
    assert_eq!(seqs.len() as u64, ALL, "each reading once");
}
