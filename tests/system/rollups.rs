//! Rollups as an operator meets them (issue 24): `dump --tier` from the
//! running daemon and from a stopped store, and `/api/history` picking a tier
//! for a long range. Each is checked against the raw readings `dump` prints.

use crate::harness::*;
use std::collections::BTreeMap;

const TOPIC: &str = "building/floor1/room101/temperature/temp_001";
/// A meter: its rows keep their first and last reading too.
const METER: &str = "building/floor1/room101/energy/meter_001";
/// Readings, one every 3 s: two and a half hours.
const N: u64 = 3000;
/// The meter's, one every 15 s: the same span.
const METERED: u64 = 600;
const T0_MS: i64 = 1_780_002_000_000; // on a whole hour

/// The meter's reading `seq`: every 15 s, counting up.
fn meter_payload(seq: u64) -> Vec<u8> {
    let ts = chrono::DateTime::from_timestamp_millis(T0_MS + (seq as i64 - 1) * 15_000).unwrap();
    format!(
        r#"{{"sensor_id":"meter_001","sensor_type":"energy","value":{},"unit":"kWh","timestamp":"{}","seq":{seq}}}"#,
        1000.0 + (seq * seq % 7 + seq * 3) as f64 / 100.0,
        ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    )
    .into_bytes()
}

fn payload(seq: u64) -> Vec<u8> {
    let ts = chrono::DateTime::from_timestamp_millis(T0_MS + (seq as i64 - 1) * 3000).unwrap();
    format!(
        r#"{{"sensor_id":"temp_001","sensor_type":"temperature","value":{},"unit":"celsius","timestamp":"{}","seq":{seq}}}"#,
        18.0 + ((seq * 37) % 101) as f64 / 10.0,
        ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    )
    .into_bytes()
}

/// Per topic and bucket start (ms), what the tier must say: count, min,
/// max, sum, and (a meter's only) its first and last value; from the raw
/// readings as `dump` prints them.
type Expected = BTreeMap<(String, i64), (u64, f64, f64, f64, Option<(f64, f64)>)>;

fn expected(raw_jsonl: &str, width_ms: i64) -> Expected {
    let mut out = Expected::new();
    for line in raw_jsonl.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let t = chrono::DateTime::parse_from_rfc3339(r["timestamp"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        let v = r["value"].as_f64().unwrap();
        let topic = r["topic"].as_str().unwrap().to_owned();
        let ends = (topic == METER).then_some((v, v));
        let e = out
            .entry((topic, t.div_euclid(width_ms) * width_ms))
            .or_insert((0, f64::INFINITY, f64::NEG_INFINITY, 0.0, ends));
        *e = (
            e.0 + 1,
            e.1.min(v),
            e.2.max(v),
            e.3 + v,
            e.4.map(|(first, _)| (first, v)),
        );
    }
    out
}

fn said(tier_jsonl: &str) -> Expected {
    tier_jsonl
        .lines()
        .map(|line| {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            let t = chrono::DateTime::parse_from_rfc3339(r["time"].as_str().unwrap())
                .unwrap()
                .timestamp_millis();
            let n = r["count"].as_u64().unwrap();
            let f = |k: &str| r[k].as_f64().unwrap();
            let ends = r.get("first").map(|_| (f("first"), f("last")));
            let topic = r["topic"].as_str().unwrap().to_owned();
            (
                (topic, t),
                (n, f("min"), f("max"), f("mean") * n as f64, ends),
            )
        })
        .collect()
}

fn assert_agree(tier: &str, got: &Expected, want: &Expected) {
    assert_eq!(got.len(), want.len(), "{tier}: rows");
    for ((k, g), (wk, w)) in got.iter().zip(want) {
        assert_eq!(k, wk, "{tier}: bucket");
        assert_eq!(
            (g.0, g.1, g.2, g.4),
            (w.0, w.1, w.2, w.4),
            "{tier} at {k:?}"
        );
        assert!(
            (g.3 - w.3).abs() < 1e-6,
            "{tier} at {k:?}: sum {} against {}",
            g.3,
            w.3
        );
    }
}

#[test]
fn rollups_agree_with_the_readings_in_dump_and_history_running_or_stopped() {
    let Agg {
        pki,
        broker,
        _storage,
        config,
        mut agg,
        addr,
    } = aggregatord_for(&["room101"], "");
    let node = Watcher::connect(&broker, &pki, "room101");
    // The meter's first: one connection keeps the order, so once the last
    // temperature reading is stored, so are they.
    for seq in 1..=METERED {
        node.publish(METER, &meter_payload(seq), 1);
    }
    for seq in 1..=N {
        node.publish(TOPIC, &payload(seq), 1);
    }
    agg.log
        .wait_for(&["stored reading", &format!("seq=Some({N})")]);

    let raw = dump(&config.path, &["--format", "jsonl"]);
    assert_eq!(seqs_of(&raw).len() as u64, N + METERED);
    let minutes = expected(&raw, 60_000);
    let hours = expected(&raw, 3_600_000);
    assert_eq!(
        (minutes.len(), hours.len()),
        (300, 6),
        "two sensors, each over 150 minutes, 3 hours"
    );
    // From the running daemon (its control socket), the tail not yet in
    // chunks included.
    assert_agree(
        "1m",
        &said(&dump(&config.path, &["--tier", "1m", "--format", "jsonl"])),
        &minutes,
    );
    assert_agree(
        "1h",
        &said(&dump(&config.path, &["--tier", "1h", "--format", "jsonl"])),
        &hours,
    );

    // History picks the tier by the range: one point for 2.5 hours is an
    // hour or more a point (hours); 100 points, 90 s each (minutes); 3,000
    // points, 3 s each (the readings). Every reading counted once each way.
    let at = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let window = format!(
        "since={}&until={}",
        at(T0_MS),
        at(T0_MS + 3 * 3_600_000 - 1)
    );
    for (points, tier) in [(1, "1h"), (100, "1m"), (2000, "raw")] {
        let (status, body) = http_get(
            &addr,
            &format!("/api/history?sensor={TOPIC}&{window}&points={points}"),
        );
        assert_eq!(status, 200, "{body}");
        let h: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(h["tier"], tier, "{points} points");
        let n: u64 = h["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["n"].as_u64().unwrap())
            .sum();
        assert_eq!(n, N, "{points} points from {tier}");
    }

    // Stopped: the same rows, read from the store itself.
    assert!(agg.terminate().success());
    assert_agree(
        "1m stopped",
        &said(&dump(&config.path, &["--tier", "1m", "--format", "jsonl"])),
        &minutes,
    );
    let table = dump(&config.path, &["--tier", "1h", "--type", "temperature"]);
    assert!(
        table.starts_with("TOPIC") && table.lines().count() == 4,
        "{table}"
    );
}
