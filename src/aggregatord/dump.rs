//! `aggregatord dump` and `aggregatord stats`: the stored history as a table,
//! JSON lines or CSV. [`answer`] is used both by the command itself (database
//! opened directly) and by a running aggregatord answering over its socket.
//! It knows nothing of sockets: control.rs carries requests and answers to and
//! from a running aggregatord.

use crate::contract::Timestamp;
use crate::store::{Query, RejectedMessage, Row, Store, StoredReading, Tier};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};

/// How `dump` and `stats` write (the binary maps its `--format` onto this).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Aligned columns, for people.
    Table,
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated, with a header line.
    Csv,
}

/// What a dump request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    /// Stored readings, by topic then time.
    Readings,
    /// Refused messages (the latest [`REJECTED_KEEP`](crate::store::REJECTED_KEEP)), oldest
    /// first.
    Rejected,
    /// Every alert change, oldest first.
    Alerts,
    /// Per sensor: count, range, mean, first and last (see [`SensorStats`]).
    Stats,
    /// `aggregatord forget`: answered by the running daemon only.
    Forget,
    /// A rollup tier's rows (`dump --tier`): per sensor and minute or hour,
    /// count, min, max, mean, first and last.
    Rollups(Tier),
}

/// One dump or stats request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Which records.
    pub what: RequestKind,
    /// How to write them (ignored by `forget`, which answers in plain lines).
    pub format: Format,
    /// Which of them: every filter applies to every kind of record.
    pub query: Query,
    /// Readings only: the `n` newest of those selected, oldest of them
    /// first (`dump --latest`), instead of every one by topic then time.
    #[serde(default)]
    pub latest: Option<usize>,
}

/// Rows used to size table columns; longer values later simply overflow.
const TABLE_SAMPLE: usize = 1000;

pub fn answer(store: &Store, request: &Request, out: impl Write) -> io::Result<()> {
    let q = &request.query;
    q.check()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let f = request.format;
    let storage = |e: crate::store::StoreError| io::Error::other(e.to_string());
    match request.what {
        RequestKind::Readings | RequestKind::Stats => {
            write_readings(store.select(q).map(|r| r.map_err(storage)), request, out)
        }
        // Every filter applies to every kind of record: rejected messages by
        // their topic and arrival, alerts by the topic they concern and their time.
        RequestKind::Rejected => {
            let rows = store
                .rejected()
                .map(|r| r.map_err(storage))
                .filter(|r| {
                    r.as_ref()
                        .map_or(true, |r| q.admits(&r.topic, r.received_at))
                })
                .take(q.limit.unwrap_or(usize::MAX));
            write_rows(rows, f, REJECTED_HEADER, rejected_fields, out)
        }
        RequestKind::Alerts => {
            let rows = store
                .alerts()
                .map(|r| r.map_err(storage))
                .filter(|a| a.as_ref().map_or(true, |a| q.admits(&a.topic, a.time)))
                .take(q.limit.unwrap_or(usize::MAX));
            write_rows(rows, f, ALERT_HEADER, alert_fields, out)
        }
        RequestKind::Rollups(tier) => {
            let whole = |t: Option<Timestamp>, edge| t.unwrap_or(Timestamp(edge));
            let (since, until) = (
                whole(q.since, chrono::DateTime::<chrono::Utc>::MIN_UTC),
                whole(q.until, chrono::DateTime::<chrono::Utc>::MAX_UTC),
            );
            let topics = store.topics().map_err(storage)?;
            let rows = topics
                .into_iter()
                .filter(|t| q.matches_topic(t))
                .flat_map(move |topic| match store.rollups(&topic, tier, since, until) {
                    Ok(rows) => rows
                        .into_iter()
                        .map(|r| Ok(RollupRow::new(&topic, tier, &r)))
                        .collect::<Vec<_>>(),
                    Err(e) => vec![Err(storage(e))],
                })
                .take(q.limit.unwrap_or(usize::MAX));
            write_rows(rows, f, ROLLUP_HEADER, rollup_fields, out)
        }
        RequestKind::Forget => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "forget works on the running aggregatord (it publishes the alert clears); start it, then run forget again",
        )),
    }
}

/// Readings, or (for [`RequestKind::Stats`]) their statistics, from `rows`:
/// a store's selection, or several instances' merged by [`merge`]; only the
/// newest `request.latest` of them, if set.
pub fn write_readings(
    rows: impl Iterator<Item = io::Result<StoredReading>>,
    request: &Request,
    out: impl Write,
) -> io::Result<()> {
    if let Some(n) = request.latest {
        let newest = latest(rows, n)?;
        let all = Request {
            latest: None,
            ..request.clone()
        };
        return write_readings(newest.into_iter().map(Ok), &all, out);
    }
    match (request.what, request.format) {
        (RequestKind::Stats, f) => write_rows(
            stats(rows)?.into_iter().map(Ok),
            f,
            STATS_HEADER,
            stats_fields,
            out,
        ),
        // The bulk export: written field by field, several times faster than
        // serde's generic path through the flattened struct.
        (_, Format::Jsonl) => {
            let mut out = BufWriter::new(out);
            for r in rows {
                write_reading_json(&mut out, &r?)?;
            }
            out.flush()
        }
        (_, f) => write_rows(rows, f, READING_HEADER, reading_fields, out),
    }
}

/// The `n` newest of `rows` (by timestamp, then topic and seq), oldest of
/// them first. Keeps `n` in memory however many rows go past.
fn latest(
    rows: impl Iterator<Item = io::Result<StoredReading>>,
    n: usize,
) -> io::Result<Vec<StoredReading>> {
    let mut newest = BTreeMap::new();
    for (i, r) in rows.enumerate() {
        let r = r?;
        newest.insert((r.reading.timestamp, r.topic.clone(), r.reading.seq, i), r);
        if newest.len() > n {
            newest.pop_first();
        }
    }
    Ok(newest.into_values().collect())
}

/// Several instances' readings as one history (SCALING.md, "One view"): each
/// reading once, however many instances stored it (its identity is topic,
/// timestamp and seq; the first source's copy is kept), by topic then time.
/// Held in memory: narrow a large history with the query's filters.
pub fn merge(
    sources: impl IntoIterator<Item = impl IntoIterator<Item = StoredReading>>,
) -> Vec<StoredReading> {
    let mut by_identity = BTreeMap::new();
    for source in sources {
        for r in source {
            let key = (r.topic.clone(), r.reading.timestamp.micros(), r.reading.seq);
            by_identity.entry(key).or_insert(r);
        }
    }
    by_identity.into_values().collect()
}

/// One reading as a JSON line, with the same fields and order as serde would
/// write for [`StoredReading`].
fn write_reading_json(out: &mut impl Write, r: &StoredReading) -> io::Result<()> {
    let json = |out: &mut dyn Write, v: &dyn erased::Json| v.write(out);
    out.write_all(b"{\"topic\":")?;
    json(out, &r.topic.as_str())?;
    out.write_all(b",\"sensor_id\":")?;
    json(out, &r.reading.sensor_id.as_str())?;
    out.write_all(b",\"sensor_type\":")?;
    json(out, &r.reading.sensor_type.as_str())?;
    out.write_all(b",\"value\":")?;
    json(out, &r.reading.value)?;
    out.write_all(b",\"unit\":")?;
    json(out, &r.reading.unit.as_str())?;
    write!(out, ",\"timestamp\":\"{}\"", r.reading.timestamp)?;
    if let Some(seq) = r.reading.seq {
        write!(out, ",\"seq\":{seq}")?;
    }
    writeln!(
        out,
        ",\"received_at\":\"{}\",\"qos\":{}}}",
        r.received_at, r.qos
    )
}

/// `serde_json`'s escaping and number formatting, for a few concrete types.
mod erased {
    use std::io::{self, Write};

    /// A row written as one JSON object, whatever its type.
    pub trait Json {
        fn write(&self, out: &mut dyn Write) -> io::Result<()>;
    }

    impl<T: serde::Serialize> Json for T {
        fn write(&self, out: &mut dyn Write) -> io::Result<()> {
            serde_json::to_writer(out, self).map_err(io::Error::from)
        }
    }
}

const READING_HEADER: &[&str] = &[
    "topic",
    "sensor_id",
    "sensor_type",
    "value",
    "unit",
    "timestamp",
    "seq",
    "received_at",
    "qos",
];

fn reading_fields(r: &StoredReading) -> Vec<String> {
    vec![
        r.topic.clone(),
        r.reading.sensor_id.clone(),
        r.reading.sensor_type.clone(),
        r.reading.value.to_string(),
        r.reading.unit.clone(),
        r.reading.timestamp.to_string(),
        r.reading.seq.map(|s| s.to_string()).unwrap_or_default(),
        r.received_at.to_string(),
        r.qos.to_string(),
    ]
}

const REJECTED_HEADER: &[&str] = &["received_at", "topic", "reason", "detail", "payload"];

fn rejected_fields(r: &RejectedMessage) -> Vec<String> {
    vec![
        r.received_at.to_string(),
        r.topic.clone(),
        r.reason.clone(),
        r.detail.clone(),
        r.payload.clone(),
    ]
}

const ALERT_HEADER: &[&str] = &[
    "time", "rule", "state", "severity", "topic", "value", "message",
];

fn alert_fields(a: &crate::contract::Alert) -> Vec<String> {
    vec![
        a.time.to_string(),
        a.rule.clone(),
        a.state.to_string(),
        a.severity.to_string(),
        a.topic.clone(),
        a.value.map(|v| v.to_string()).unwrap_or_default(),
        a.message.clone(),
    ]
}

/// Per sensor: how many readings, their range and mean, first and last seen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SensorStats {
    /// The reading topic.
    pub topic: String,
    /// Readings selected.
    pub count: u64,
    /// The lowest value.
    pub min: f64,
    /// The highest value.
    pub max: f64,
    /// The arithmetic mean of the values.
    pub mean: f64,
    /// The oldest reading's own timestamp.
    pub first: crate::contract::Timestamp,
    /// The newest reading's own timestamp.
    pub last: crate::contract::Timestamp,
    /// The most decimals any of its values has: the table shows the mean with
    /// one more (an energy meter's 4 decimals are not cut to 3).
    #[serde(skip)]
    pub decimals: usize,
}

/// One row of a rollup tier, as `dump --tier` writes it.
#[derive(Debug, Serialize)]
struct RollupRow {
    topic: String,
    tier: Tier,
    /// The bucket's start.
    time: Option<Timestamp>,
    count: u64,
    min: f64,
    max: f64,
    mean: f64,
    /// A meter's first and last reading in the bucket (other types: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    first: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_at: Option<Timestamp>,
}

impl RollupRow {
    fn new(topic: &str, tier: Tier, r: &Row) -> RollupRow {
        RollupRow {
            topic: topic.to_owned(),
            tier,
            time: Timestamp::from_micros(r.start),
            count: r.n,
            min: r.min,
            max: r.max,
            mean: r.mean(),
            first: r.first.map(|f| f.1),
            first_at: r.first.and_then(|f| Timestamp::from_micros(f.0)),
            last: r.last.map(|l| l.1),
            last_at: r.last.and_then(|l| Timestamp::from_micros(l.0)),
        }
    }
}

const ROLLUP_HEADER: &[&str] = &[
    "topic", "tier", "time", "count", "min", "max", "mean", "first", "last",
];

fn rollup_fields(r: &RollupRow) -> Vec<String> {
    vec![
        r.topic.clone(),
        r.tier.to_string(),
        r.time.map(|t| t.to_string()).unwrap_or_default(),
        r.count.to_string(),
        r.min.to_string(),
        r.max.to_string(),
        format!("{:.3}", r.mean),
        r.first.map(|v| v.to_string()).unwrap_or_default(),
        r.last.map(|v| v.to_string()).unwrap_or_default(),
    ]
}

const STATS_HEADER: &[&str] = &["topic", "count", "min", "max", "mean", "first", "last"];

fn stats_fields(s: &SensorStats) -> Vec<String> {
    vec![
        s.topic.clone(),
        s.count.to_string(),
        s.min.to_string(),
        s.max.to_string(),
        format!("{:.*}", s.decimals + 1, s.mean),
        s.first.to_string(),
        s.last.to_string(),
    ]
}

fn stats(rows: impl Iterator<Item = io::Result<StoredReading>>) -> io::Result<Vec<SensorStats>> {
    let mut by_topic: BTreeMap<String, (SensorStats, f64)> = BTreeMap::new();
    for row in rows {
        let r = row?;
        let (v, t) = (r.reading.value, r.reading.timestamp);
        let (s, sum) = by_topic.entry(r.topic.clone()).or_insert_with(|| {
            let s = SensorStats {
                topic: r.topic.clone(),
                count: 0,
                min: v,
                max: v,
                mean: 0.0,
                first: t,
                last: t,
                decimals: 0,
            };
            (s, 0.0)
        });
        s.count += 1;
        s.min = s.min.min(v);
        s.max = s.max.max(v);
        s.first = s.first.min(t);
        s.last = s.last.max(t);
        s.decimals = s.decimals.max(decimals(v));
        *sum += v;
    }
    Ok(by_topic
        .into_values()
        .map(|(mut s, sum)| {
            s.mean = sum / s.count as f64;
            s
        })
        .collect())
}

/// Decimals in `v`'s shortest exact text (`24435.0316` → 4), at most 9.
fn decimals(v: f64) -> usize {
    let text = v.to_string();
    text.split_once('.').map_or(0, |(_, d)| d.len()).min(9)
}

fn write_rows<T: Serialize>(
    rows: impl Iterator<Item = io::Result<T>>,
    format: Format,
    header: &[&str],
    fields: impl Fn(&T) -> Vec<String>,
    out: impl Write,
) -> io::Result<()> {
    let mut out = BufWriter::new(out);
    let mut rows = rows;
    match format {
        Format::Jsonl => {
            for row in rows {
                serde_json::to_writer(&mut out, &row?)?;
                out.write_all(b"\n")?;
            }
        }
        Format::Csv => {
            writeln!(out, "{}", header.join(","))?;
            for row in rows {
                let line: Vec<String> = fields(&row?).iter().map(|f| csv_field(f)).collect();
                writeln!(out, "{}", line.join(","))?;
            }
        }
        Format::Table => {
            let mut sample: Vec<Vec<String>> = Vec::new();
            for row in rows.by_ref().take(TABLE_SAMPLE) {
                sample.push(fields(&row?));
            }
            let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
            for row in &sample {
                for (w, f) in widths.iter_mut().zip(row) {
                    *w = (*w).max(f.chars().count());
                }
            }
            let upper: Vec<String> = header.iter().map(|h| h.to_uppercase()).collect();
            write_aligned(&mut out, &upper, &widths)?;
            for row in &sample {
                write_aligned(&mut out, row, &widths)?;
            }
            for row in rows {
                write_aligned(&mut out, &fields(&row?), &widths)?;
            }
        }
    }
    out.flush()
}

fn write_aligned(out: &mut impl Write, row: &[String], widths: &[usize]) -> io::Result<()> {
    let mut line = String::new();
    for (i, (f, w)) in row.iter().zip(widths).enumerate() {
        if i + 1 == row.len() {
            line.push_str(f);
        } else {
            let _ = std::fmt::Write::write_fmt(&mut line, format_args!("{f:<w$}  "));
        }
    }
    writeln!(out, "{}", line.trim_end())
}

/// RFC 4180: quote fields holding a comma, quote or line break; double the quotes.
fn csv_field(f: &str) -> String {
    if f.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f.to_owned()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fast_jsonl_path_writes_what_serde_writes() {
        use crate::contract::{Reading, Timestamp};
        for seq in [Some(7), None] {
            let r = super::StoredReading {
                topic: "b/f/r\"1/temperature/t".into(),
                reading: Reading {
                    sensor_id: "t".into(),
                    sensor_type: "temperature".into(),
                    value: 20.0,
                    unit: "celsius".into(),
                    timestamp: Timestamp::parse("2026-01-24T10:00:00.123456Z").unwrap(),
                    seq,
                },
                received_at: Timestamp::parse("2026-01-24T10:00:01Z").unwrap(),
                qos: 1,
            };
            let mut fast = Vec::new();
            super::write_reading_json(&mut fast, &r).unwrap();
            let mut serde = serde_json::to_vec(&r).unwrap();
            serde.push(b'\n');
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(serde).unwrap()
            );
        }
    }

    #[test]
    fn csv_quoting() {
        assert_eq!(super::csv_field("plain"), "plain");
        assert_eq!(super::csv_field("a,b"), "\"a,b\"");
        assert_eq!(super::csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
