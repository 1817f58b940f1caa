//! A simulated year of SENSORS sensors, one reading every INTERVAL seconds,
//! bulk-loaded through the store's writer (the journal, the folds, the
//! rollups), then the default tiers applied (`storage.retention: 30d` for raw
//! readings, the minute rows a year, the hour rows for ever): what the store
//! then keeps on disk, per sensor and for a 1,000-sensor building (sensors
//! are independent, so it scales by count), and how long a year of one
//! sensor at one hour a row takes to read. For bench/storage.
//!
//!   cargo run --release --example year -- `DB_DIR` [SENSORS] [INTERVAL] [DAYS]
//!
//! (defaults 4 sensors, every 10 s, 365 days)

use roomsense::contract::{Reading, Timestamp};
use roomsense::store::{Store, StoredReading, Tier};
use std::path::Path;
use std::time::Instant;

const DAY: i64 = 86_400_000_000; // µs
/// The shipped config's raw retention, and the rollups' defaults.
const RAW_DAYS: i64 = 30;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(args.get(1).map_or("year.db", String::as_str));
    let sensors: i64 = args.get(2).map_or(Ok(4), |a| a.parse())?;
    let interval: i64 = args.get(3).map_or(Ok(10), |a| a.parse())?;
    let days: i64 = args.get(4).map_or(Ok(365), |a| a.parse())?;
    let step = interval * 1_000_000;
    let now = Timestamp::now_millis().micros();
    let t0 = now - days * DAY;
    let steps = days * DAY / step;
    let topic = |s: i64| format!("building/floor1/room{}/temperature/temp_001", 100 + s);
    let store = Store::open(dir)?;
    // Segments as a 1,000-sensor building's would be (64 MiB): this
    // building's share, so raw retention frees them as it would there.
    let share = u64::try_from(sensors)? * (64 << 20) / 1000;
    // The journal's files as the daemon's (4 MiB) without a budget.
    store.set_file_sizes(share.max(64 << 10), 4 << 20)?;
    let start = Instant::now();
    // Batches of 50 readings per sensor: the folds see what live ingest
    // makes, at bulk speed.
    for base in (0..steps).step_by(50) {
        let mut w = store.reading_writer()?;
        for i in base..(base + 50).min(steps) {
            for s in 0..sensors {
                let ts = Timestamp::from_micros(t0 + i * step + s * 1000)
                    .ok_or_else(|| anyhow::anyhow!("time"))?;
                w.insert(&StoredReading {
                    topic: topic(s),
                    reading: Reading {
                        sensor_id: "temp_001".into(),
                        sensor_type: "temperature".into(),
                        // A daily swing and a drift in tenths, as a room's air does.
                        value: 21.0 + f64::from(i32::try_from((i * 7 + s * 13) % 61 - 30)?) / 10.0,
                        unit: "celsius".into(),
                        timestamp: ts,
                        seq: Some(u64::try_from(i + 1)?),
                    },
                    received_at: ts,
                    qos: 1,
                })?;
            }
        }
        w.finish()?;
        if base % 100_000 == 0 {
            store.flush()?;
        }
    }
    store.flush()?;
    let loaded = start.elapsed();
    // The default tiers, as retention applies them.
    let cutoff =
        |d: i64| Timestamp::from_micros(now - d * DAY).ok_or_else(|| anyhow::anyhow!("time"));
    while store.expire(cutoff(RAW_DAYS)?, 100_000)? > 0 {}
    while store.expire_rollups(Tier::Minute, cutoff(365)?, 100_000)? > 0 {}
    store.seal_segment()?;
    // As a clean stop does: sled flushed, so what retention freed goes.
    store.checkpoint()?;
    let du = |p: &Path| -> u64 {
        let Ok(dir) = std::fs::read_dir(p) else {
            return 0;
        };
        dir.flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(std::fs::Metadata::is_file)
            .map(|m| m.len())
            .sum()
    };
    let segments = du(&dir.join("segments"));
    let journal = du(&dir.join("wal"));
    // sled's own files: the folder's top level, and large values in blobs/.
    let sled = du(dir) + du(&dir.join("blobs"));
    let (minutes, hours) = (
        store.rollup_bytes(Tier::Minute)?,
        store.rollup_bytes(Tier::Hour)?,
    );
    let footprint = store.footprint()?;
    let per = |b: u64| b as f64 / sensors as f64;
    let mib = |b: f64| b / 1_048_576.0;
    let readings = steps * sensors;
    let per_sensor = per(sled + segments);
    println!(
        "a year, simulated: {sensors} sensors, one reading every {interval} s for {days} days ({readings} readings, loaded in {:.0} s)",
        loaded.as_secs_f64()
    );
    println!(
        "  with the default tiers (raw {RAW_DAYS} d, 1m a year, 1h for ever), kept per sensor:"
    );
    println!(
        "    raw readings (segment files)  {:8.2} MiB",
        mib(per(segments))
    );
    println!(
        "    sled's files                  {:8.2} MiB: its data {:.2} MiB, of which rollups 1m {:.2} MiB, 1h {:.3} MiB",
        mib(per(sled)),
        mib(per(footprint.data_bytes)),
        mib(per(minutes)),
        mib(per(hours))
    );
    println!(
        "    per sensor                    {:8.2} MiB;  the journal on top: {:.1} MiB for the whole store (bounded: readings not yet in chunks)",
        mib(per_sensor),
        mib(journal as f64)
    );
    println!(
        "  a 1,000-sensor building: {:.1} GiB",
        (per_sensor * 1000.0 + journal as f64) / 1_073_741_824.0
    );
    // A year of one sensor at one hour a row, as /api/history reads it.
    let (since, until) = (cutoff(days)?, Timestamp::now_millis());
    let mut times = Vec::new();
    let mut rows = 0;
    for _ in 0..7 {
        let t = Instant::now();
        rows = store.rollups(&topic(0), Tier::Hour, since, until)?.len();
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "  a year of one sensor at 1 h a row ({rows} rows): median {:.1} ms, slowest {:.1} ms of 7",
        times[3].as_secs_f64() * 1e3,
        times[6].as_secs_f64() * 1e3
    );
    Ok(())
}
