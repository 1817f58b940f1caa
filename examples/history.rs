//! The dashboard's history query, timed: a day of one sensor at 1 Hz (86,400
//! readings) among SENSORS others, written as a live stream writes them (one
//! reading per sensor per batch, so through the journal and the folds), then
//! selected as the dashboard's `/api/history` does. Prints the median and the
//! slowest of RUNS, with the journal's tails in memory and again after a
//! reopen (tails rebuilt from the journal). For bench/storage.
//!
//!   cargo run --release --example history -- `DB_DIR` [SENSORS] [SECONDS] [RUNS]
//!
//! (defaults 20 sensors, 86400 s, 5 runs; the test suite runs it small)

use roomsense::contract::{Reading, Timestamp};
use roomsense::store::{Query, Store, StoredReading};
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::Path::new(args.get(1).map_or("history.db", String::as_str));
    let sensors: i64 = args.get(2).map_or(Ok(20), |a| a.parse())?;
    let seconds: i64 = args.get(3).map_or(Ok(86_400), |a| a.parse())?;
    let runs: usize = args.get(4).map_or(Ok(5), |a| a.parse())?;
    let t0 = 1_790_000_000_000_000i64; // µs
    let topic = |s: i64| format!("building/floor1/room{}/temperature/temp_001", 100 + s);
    {
        let store = Store::open(dir)?;
        for second in 0..seconds {
            let mut w = store.reading_writer()?;
            for s in 0..sensors {
                let ts = Timestamp::from_micros(t0 + second * 1_000_000 + s * 1000)
                    .ok_or_else(|| anyhow::anyhow!("time"))?;
                w.insert(&StoredReading {
                    topic: topic(s),
                    reading: Reading {
                        sensor_id: "temp_001".into(),
                        sensor_type: "temperature".into(),
                        // A random walk in hundredths, as a real sensor drifts.
                        value: 21.0 + ((second * 7 + s) % 300 - 150) as f64 / 100.0,
                        unit: "celsius".into(),
                        timestamp: ts,
                        seq: Some(u64::try_from(second + 1)?),
                    },
                    received_at: ts,
                    qos: 1,
                })?;
            }
            w.finish()?;
        }
        store.flush()?;
        time("tails in memory", &store, &topic(0), (t0, seconds), runs)?;
    }
    let store = Store::open(dir)?;
    time("after a reopen", &store, &topic(0), (t0, seconds), runs)?;
    Ok(())
}

fn time(
    what: &str,
    store: &Store,
    topic: &str,
    (t0, seconds): (i64, i64),
    runs: usize,
) -> anyhow::Result<()> {
    let query = Query {
        topic: Some(topic.to_owned()),
        since: Timestamp::from_micros(t0),
        until: Timestamp::from_micros(t0 + seconds * 1_000_000),
        ..Query::default()
    };
    let mut times: Vec<Duration> = Vec::new();
    let mut rows = 0i64;
    for _ in 0..runs {
        let start = Instant::now();
        rows = 0;
        for r in store.select(&query) {
            r?;
            rows += 1;
        }
        times.push(start.elapsed());
    }
    times.sort();
    anyhow::ensure!(rows == seconds, "selected {rows} readings, want {seconds}");
    println!(
        "history of one sensor at 1 Hz, {rows} readings, {what}: median {:.1} ms, slowest {:.1} ms of {runs}",
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
    );
    Ok(())
}
