//! `/api/history`: one sensor's readings over a time window, cut to at most
//! `points` buckets (each with mean, min, max and count), read from the raw
//! readings or a rollup tier. The tier is the coarsest whose rows are still
//! finer than a bucket, unless it no longer reaches back to `since`
//! (`storage.rollups`), then the next coarser: so a year is 8,760 hourly rows,
//! not 31 million readings, and the answer says which it used.

use super::{bad_request, App};
use crate::contract::Timestamp;
use crate::store::{Kept, Query, Row, Store, StoreError, Tier};
use axum::extract::{Query as Params, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

const MAX_POINTS: usize = 2000;
/// Raw readings one query reads at most (a week of one sensor at 1 Hz is
/// 604,800); past it the answer stops there and says `truncated`.
const MAX_ROWS_PER_QUERY: u64 = 1_000_000;

#[derive(Deserialize)]
pub(super) struct HistoryParams {
    /// `sensor`: the reading topic; required.
    sensor: Option<String>,
    /// `since`: a time or a duration ago (`1h`); default an hour ago.
    since: Option<String>,
    /// `until`: likewise; default now.
    until: Option<String>,
    /// `points`: buckets, 1 to `MAX_POINTS`, default 300; checked by the handler, with
    /// its own error message.
    points: Option<String>,
    /// `tier`: `auto` (default), `raw`, `1m` or `1h`.
    tier: Option<String>,
}

/// Where an answer's points come from: the raw readings or a tier.
type Source = Option<Tier>;

fn source_name(source: Source) -> &'static str {
    source.map_or("raw", Tier::name)
}

pub(super) async fn history(
    State(app): State<App>,
    params: Result<Params<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Params(p)) = params else {
        return bad_request("could not read the query string");
    };
    let Some(topic) = p.sensor.filter(|s| !s.is_empty()) else {
        return bad_request("sensor: required (the reading topic, e.g. building/floor1/room101/temperature/temp_001)");
    };
    let hour_ago = || Timestamp(Timestamp::now_millis().0 - chrono::Duration::hours(1));
    let since = match p.since.as_deref().map(Timestamp::parse_ago).transpose() {
        Ok(t) => t.unwrap_or_else(hour_ago),
        Err(e) => return bad_request(format!("since: {e}")),
    };
    let until = match p.until.as_deref().map(Timestamp::parse_ago).transpose() {
        Ok(t) => t.unwrap_or_else(Timestamp::now_millis),
        Err(e) => return bad_request(format!("until: {e}")),
    };
    if until <= since {
        return bad_request("until must be after since");
    }
    let points = match p.points.as_deref().map(str::parse::<usize>) {
        None => 300,
        Some(Ok(n)) if (1..=MAX_POINTS).contains(&n) => n,
        Some(_) => return bad_request(format!("points: a number from 1 to {MAX_POINTS}")),
    };
    let asked: Option<Source> = match p.tier.as_deref() {
        None | Some("auto") => None,
        Some("raw") => Some(None),
        Some(t) => match t.parse::<Tier>() {
            Ok(t) => Some(Some(t)),
            Err(_) => return bad_request("tier: auto, raw, 1m or 1h"),
        },
    };
    let Ok(_turn) = app.queries.clone().acquire_owned().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping\n").into_response();
    };
    let store = app.store.clone();
    let result = tokio::task::spawn_blocking(move || {
        let source = match asked {
            Some(source) => source,
            None => choose(&store.kept(&topic)?, (since, until), points),
        };
        let (buckets, truncated) = downsample(
            &store,
            &topic,
            source,
            (since, until),
            points,
            MAX_ROWS_PER_QUERY,
        )?;
        Ok::<_, StoreError>(serde_json::json!({
            "sensor": topic, "since": since, "until": until, "tier": source_name(source),
            "points": buckets, "truncated": truncated,
        }))
    })
    .await;
    match result {
        Ok(Ok(answer)) => Json(answer).into_response(),
        Ok(Err(e)) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("storage: {e}\n")).into_response()
        }
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "history task failed\n").into_response(),
    }
}

/// The coarsest source whose rows are no wider than a bucket, or the next
/// coarser that still reaches back to `since`; if none does, the one that
/// reaches furthest back.
fn choose(kept: &Kept, (since, until): (Timestamp, Timestamp), points: usize) -> Source {
    let bucket = (i128::from(until.micros()) - i128::from(since.micros())) / points.max(1) as i128;
    let all: [Source; 3] = [None, Some(Tier::Minute), Some(Tier::Hour)];
    let finest = all
        .iter()
        .rposition(|s| s.is_none_or(|t| i128::from(t.width()) <= bucket))
        .unwrap_or(0);
    all[finest..]
        .iter()
        .copied()
        .find(|s| kept.holds(*s, since))
        .unwrap_or_else(|| {
            all.iter()
                .copied()
                .filter_map(|s| Some((kept.reach(s)?, s)))
                .min_by_key(|(reach, _)| *reach)
                .and_then(|(_, s)| s)
        })
}

/// Buckets of (mean, min, max, n) from `source`; reads at most `max_rows`
/// raw readings, and says whether it stopped there.
fn downsample(
    store: &Store,
    topic: &str,
    source: Source,
    (since, until): (Timestamp, Timestamp),
    points: usize,
    max_rows: u64,
) -> Result<(Vec<serde_json::Value>, bool), StoreError> {
    // i128: the range comes from the query string and may span all of chrono's
    // ±262,000 years, whose width in microseconds does not fit an i64.
    let from = i128::from(since.micros());
    let span = (i128::from(until.micros()) - from).max(1);
    // (count, sum, min, max) per bucket.
    let mut buckets: Vec<(u64, f64, f64, f64)> =
        vec![(0, 0.0, f64::INFINITY, f64::NEG_INFINITY); points];
    let mut add = |time: i64, n: u64, sum: f64, min: f64, max: f64| {
        let offset = i128::from(time) - from;
        // A row that starts before `since` (its bucket meets the window) goes first.
        let i = usize::try_from(offset * points as i128 / span)
            .unwrap_or(0)
            .min(points - 1);
        let b = &mut buckets[i];
        *b = (b.0 + n, b.1 + sum, b.2.min(min), b.3.max(max));
    };
    let mut truncated = false;
    match source {
        None => {
            let query = Query {
                topic: Some(topic.to_owned()),
                since: Some(since),
                until: Some(until),
                ..Query::default()
            };
            let mut rows = 0u64;
            for r in store.select(&query) {
                rows += 1;
                if rows > max_rows {
                    truncated = true;
                    break;
                }
                let r = r?;
                let v = r.reading.value;
                add(r.reading.timestamp.micros(), 1, v, v, v);
            }
        }
        Some(tier) => {
            for Row {
                start,
                n,
                sum,
                min,
                max,
                ..
            } in store.rollups(topic, tier, since, until)?
            {
                add(start, n, sum, min, max);
            }
        }
    }
    let answer = buckets
        .into_iter()
        .enumerate()
        .filter(|(_, b)| b.0 > 0)
        .map(|(i, (n, sum, min, max))| {
            let mid = (from + span * (2 * i as i128 + 1) / (2 * points as i128)) / 1000;
            let t_ms = i64::try_from(mid).unwrap_or_default(); // between since and until
            #[allow(clippy::cast_precision_loss)] // a mean needs no more
            let mean = sum / n as f64;
            serde_json::json!({ "t": t_ms, "mean": mean, "min": min, "max": max, "n": n })
        })
        .collect();
    Ok((answer, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Reading;
    use crate::store::StoredReading;

    const TOPIC: &str = "b/f/r/temperature/t";

    fn at(s: i64) -> Timestamp {
        Timestamp(chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap())
    }

    fn store_readings(store: &Store, seconds: impl IntoIterator<Item = i64>) {
        for s in seconds {
            let r = StoredReading {
                topic: TOPIC.into(),
                reading: Reading {
                    sensor_id: "t".into(),
                    sensor_type: "temperature".into(),
                    value: 20.0 + (s % 7) as f64 / 10.0,
                    unit: "celsius".into(),
                    timestamp: at(s),
                    seq: Some(s.cast_unsigned() + 1),
                },
                received_at: at(s),
                qos: 1,
            };
            store.insert_reading(&r).unwrap();
        }
    }

    fn count((points, truncated): (Vec<serde_json::Value>, bool)) -> (u64, bool) {
        let n: u64 = points.iter().map(|p| p["n"].as_u64().unwrap()).sum();
        (n, truncated)
    }

    #[test]
    fn a_history_query_reads_at_most_its_row_budget_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store_readings(&store, 0..10);
        let all = downsample(&store, TOPIC, None, (at(0), at(100)), 3, 100).unwrap();
        assert_eq!(count(all), (10, false));
        let cut = downsample(&store, TOPIC, None, (at(0), at(100)), 3, 4).unwrap();
        assert_eq!(count(cut), (4, true));
    }

    /// The same buckets from every source, once readings are counted in
    /// whole buckets; raw or a tier, whichever the range needs.
    #[test]
    fn every_source_gives_the_same_buckets_and_the_range_picks_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Three hours at one reading every 10 s, from a whole hour on.
        let hour0 = 3600; // at(0) is on a whole hour
        store_readings(&store, (0..3 * 360).map(|i| hour0 + i * 10));
        let window = (at(hour0), at(hour0 + 3 * 3600 - 1));
        let answers: Vec<_> = [None, Some(Tier::Minute), Some(Tier::Hour)]
            .into_iter()
            .map(|source| {
                downsample(&store, TOPIC, source, window, 3, u64::MAX)
                    .unwrap()
                    .0
            })
            .collect();
        assert_eq!(answers[0].len(), 3);
        for a in &answers[1..] {
            for (x, y) in a.iter().zip(&answers[0]) {
                assert_eq!(
                    (&x["n"], &x["min"], &x["max"], &x["t"]),
                    (&y["n"], &y["min"], &y["max"], &y["t"])
                );
                assert!((x["mean"].as_f64().unwrap() - y["mean"].as_f64().unwrap()).abs() < 1e-9);
            }
        }
        let kept = store.kept(TOPIC).unwrap();
        assert_eq!(
            choose(&kept, window, 100),
            Some(Tier::Minute),
            "108 s buckets: minutes"
        );
        assert_eq!(choose(&kept, window, 300), None, "36 s buckets: raw");
        assert_eq!(
            choose(&kept, (at(hour0 - 400 * 86_400), at(hour0)), 300),
            Some(Tier::Hour)
        );
        // Raw readings gone (retention): minutes, though finer would do.
        store.expire(at(hour0 + 3 * 3600), 100_000).unwrap();
        let kept = store.kept(TOPIC).unwrap();
        assert_eq!(choose(&kept, window, 300), Some(Tier::Minute));
    }
}
