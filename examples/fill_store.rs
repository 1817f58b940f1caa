//! Fills a roomsense database with N readings (and writes the same rows as CSV
//! for loading into SQLite), for the dump and storage benchmarks (bench/storage).
//!
//!   cargo run --release --example `fill_store` -- `DB_DIR` N `CSV_OUT`

use roomsense::contract::{Reading, Timestamp};
use roomsense::store::{Store, StoredReading};
use std::io::Write;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (dir, n, csv) = (&args[1], args[2].parse::<u64>()?, &args[3]);
    let store = Store::open(std::path::Path::new(dir))?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(csv)?);
    // Like a building: 30 rooms, 6 sensors each, one reading per sensor in turn.
    let kinds = [
        ("temperature", "celsius"),
        ("humidity", "percent"),
        ("co2", "ppm"),
        ("power", "W"),
        ("energy", "kWh"),
        ("motion", "boolean"),
    ];
    let t0 = 1_790_000_000_000i64;
    let mut writer = None;
    for i in 0..n {
        let room = i % 30;
        let (kind, unit) = kinds[(i / 30 % 6) as usize];
        let seq = i / 180 + 1;
        let ts = Timestamp::from_micros((t0 + i.cast_signed() * 5) * 1000)
            .ok_or_else(|| anyhow::anyhow!("time"))?;
        let r = StoredReading {
            topic: format!(
                "building/floor{}/room{}/{kind}/{kind}_001",
                room / 10 + 1,
                100 + room
            ),
            reading: Reading {
                sensor_id: format!("{kind}_001"),
                sensor_type: kind.to_owned(),
                value: 20.0 + (i % 1000) as f64 / 100.0,
                unit: unit.to_owned(),
                timestamp: ts,
                seq: Some(seq),
            },
            received_at: ts,
            qos: 1,
        };
        if writer.is_none() {
            writer = Some(store.reading_writer()?);
        }
        if let Some(w) = &mut writer {
            w.insert(&r)?;
        }
        // Batches as ingest makes them under load.
        if i % 500 == 499 {
            if let Some(w) = writer.take() {
                w.finish()?;
            }
        }
        writeln!(
            out,
            "{},{},{},{},{},{},{},{},{}",
            r.topic,
            r.reading.sensor_id,
            r.reading.sensor_type,
            r.reading.value,
            r.reading.unit,
            r.reading.timestamp,
            seq,
            r.received_at,
            r.qos
        )?;
        if i % 100_000 == 99_999 {
            store.flush()?;
        }
    }
    if let Some(w) = writer.take() {
        w.finish()?;
    }
    // As aggregatord's clean stop leaves it.
    store.checkpoint()?;
    Ok(())
}
