//! Several aggregatord instances (issue 17, SCALING.md): one view over all of
//! them, merged by reading identity.

use crate::harness::*;
use std::collections::BTreeSet;

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
    let rows: Vec<(String, u64)> = lines
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["topic"].as_str().unwrap().to_owned(),
                v["seq"].as_u64().unwrap(),
            )
        })
        .collect();
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
    let counts: Vec<(String, u64)> = stats
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["topic"].as_str().unwrap().to_owned(),
                v["count"].as_u64().unwrap(),
            )
        })
        .collect();
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
