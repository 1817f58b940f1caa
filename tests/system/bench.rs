//! The benchmark scripts, run tiny, so they keep working (numbers are not
//! checked here: benchmarks are run on demand; see BENCHMARKS.md).

use crate::harness::*;
use std::path::Path;
use std::process::Command;

fn bench(script: &str, args: &[&str]) -> String {
    require_mosquitto();
    let bin = Path::new(SENSORD).parent().unwrap();
    let out = Command::new(format!("{REPO}/bench/{script}"))
        .args(args)
        .env("BENCH_BIN", bin)
        // bench/storage's history query: 2 sensors, 10 minutes, 2 runs.
        .env("HISTORY", "2 600 2")
        // bench/storage's year: 2 sensors, a reading a minute, 3 days.
        .env("YEAR", "2 60 3")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "bench/{script} failed:\n{text}");
    text
}

#[test]
fn drain_runs_and_reports_all_three() {
    let text = bench("drain", &["2000"]);
    for who in [
        "aggregatord (stored, fsynced, acked)",
        "mosquitto_sub",
        "paho-mqtt + SQLite",
    ] {
        assert!(text.contains(who), "{who} missing:\n{text}");
    }
}

#[test]
fn storage_runs_and_dumps_every_row() {
    let text = bench("storage", &["3000"]);
    assert!(text.contains("3000 readings (3000 dumped)"), "{text}");
    assert!(text.contains("of which: chunks (segments)"), "{text}");
    assert!(
        text.contains(
            "a year, simulated: 2 sensors, one reading every 60 s for 3 days (8640 readings"
        ) && text.contains("a 1,000-sensor building:")
            && text.contains("a year of one sensor at 1 h a row (73 rows)"),
        "{text}"
    );
    for when in ["tails in memory", "after a reopen"] {
        assert!(
            text.contains(&format!(
                "history of one sensor at 1 Hz, 600 readings, {when}"
            )),
            "{text}"
        );
    }
}

#[test]
fn sensord_footprint_runs() {
    let text = bench("sensord", &["1"]);
    assert!(
        text.contains("1,000 readings/s:") && text.contains("idle"),
        "{text}"
    );
}

#[test]
fn live_runs_and_reports_both_stores() {
    let text = bench("live", &["20", "3"]);
    for row in [
        "| bytes written to disk |",
        "| sled's own count of what its fsyncs made durable |",
        "| handed to write() (wchar: sled, and TLS acks) |",
        "| bytes kept on disk after the run |",
        "| of which the journal (readings not yet in chunks: bounded, at most an hour's) |",
        "| kept without the journal |",
        "| CPU (µs) |",
        "(SQLite stored 60 readings;",
    ] {
        assert!(text.contains(row), "{row} missing:\n{text}");
    }
}

#[test]
fn broker_log_runs_both_ways() {
    let text = bench("broker-log", &["500"]);
    for row in [
        "| as shipped (debug, filtered by run-broker) |",
        "| without `log_type debug` |",
    ] {
        assert!(text.contains(row), "{row} missing:\n{text}");
    }
}

#[test]
fn latency_runs() {
    // One 1-second step at 500/s, then 2 s at half the rate it sustained.
    let text = bench("latency", &["1", "500"]);
    for line in [
        "sustained: ",
        "publish -> stored (fsynced), ",
        "arrival -> acknowledged: p50",
    ] {
        assert!(text.contains(line), "{line:?} missing:\n{text}");
    }
}

#[test]
fn hostile_runs_and_reports_the_legitimate_node() {
    let text = bench("hostile", &["500", "default"]);
    assert!(text.contains("legitimate node:"), "{text}");
    assert!(text.contains("0 reconnects"), "{text}");
}
