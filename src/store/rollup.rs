//! Rollups: each sensor's readings summed up per minute and per hour (count,
//! min, max, sum; for meters also the first and last reading with their
//! times, which is what a meter's consumption is made of). Kept long after the raw readings are gone
//! (`storage.rollups`), and read instead of them for long ranges: a year of a
//! sensor is 8,760 hourly rows, not 31 million readings.
//! It does no I/O: readings/ decides which entry a reading goes to, and
//! writes entries with the chunks they summarize, in one transaction.
//!
//! A tier is a sled tree of entries, each a run of rows of one topic:
//! ```text
//! key:    a chunk key (topic id u32 BE | time | seq): at or before its rows
//! value:  0x01 | flags u8 (1: first and last kept) | scale u8 (decimals,
//!         or F64) | rows varint | row…
//! row:    bucket (first: zigzag index; then: steps after the last) | n varint
//!         | [first offset varint (µs after the bucket's start) | last - first (µs)]
//!         | decimal: min (zigzag, delta from the last row's) | max - min
//!         |          | sum - n·min (zigzag) | [first - min | last - min]
//!         | F64: min, max, sum, [first, last] (f64 LE each)
//! ```
//! One topic's entries partition its time: an entry holds readings at or
//! after its key and before the next entry's key. A bucket can straddle two
//! entries; readers merge rows of the same bucket. Each reading is added to
//! exactly one entry, when it is written into a chunk.

use super::chunk::{self, ChunkError, Reader};
use serde::{Deserialize, Serialize};

/// How long a rollup row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Tier {
    #[serde(rename = "1m")]
    Minute,
    #[serde(rename = "1h")]
    Hour,
}

impl Tier {
    /// Finest first.
    pub const ALL: [Tier; 2] = [Tier::Minute, Tier::Hour];

    /// A row's span, in microseconds.
    pub const fn width(self) -> i64 {
        match self {
            Tier::Minute => 60_000_000,
            Tier::Hour => 3_600_000_000,
        }
    }

    /// As written in configs, dumps and answers: `1m`, `1h`.
    pub const fn name(self) -> &'static str {
        match self {
            Tier::Minute => "1m",
            Tier::Hour => "1h",
        }
    }

    /// The start of the row that holds `time`.
    pub fn bucket(self, time: i64) -> i64 {
        time.div_euclid(self.width()) * self.width()
    }

    /// Rows an entry takes before a reading after all of them starts the
    /// next one: an hour of minutes, a day of hours. Bigger entries are
    /// fewer keys; smaller ones less to rewrite when a row is added.
    pub(super) const fn cap(self) -> usize {
        match self {
            // Small in tests, so that the store's model test splits entries.
            Tier::Minute if cfg!(test) => 3,
            Tier::Minute => 60,
            Tier::Hour => 24,
        }
    }

    pub(super) const fn index(self) -> usize {
        match self {
            Tier::Minute => 0,
            Tier::Hour => 1,
        }
    }
}

impl std::str::FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Tier, String> {
        Tier::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("{s:?}: a tier is 1m or 1h"))
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One bucket of one sensor's readings.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The bucket's start, microseconds since the epoch.
    pub start: i64,
    /// Readings in it.
    pub n: u64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    /// The earliest reading: its time (µs) and value; kept for meters only
    /// ([`keeps_ends`]).
    pub first: Option<(i64, f64)>,
    /// The latest reading, likewise.
    pub last: Option<(i64, f64)>,
    /// The decimals every reading in it has (`None`: some have more than
    /// [`chunk::MAX_SCALE`]): the scale at which the sum is exact.
    pub(super) decimals: Option<u8>,
}

impl Row {
    /// A row of one reading.
    pub fn of(tier: Tier, time: i64, value: f64) -> Row {
        Row {
            start: tier.bucket(time),
            n: 1,
            min: value,
            max: value,
            sum: value,
            first: Some((time, value)),
            last: Some((time, value)),
            decimals: (0..=chunk::MAX_SCALE).find(|&s| chunk::as_decimal(value, s).is_some()),
        }
    }

    #[allow(clippy::cast_precision_loss)] // a mean needs no more than f64's precision
    pub fn mean(&self) -> f64 {
        self.sum / self.n as f64
    }

    /// Adds another row of the same bucket (readings not in this one).
    pub fn merge(&mut self, other: &Row) {
        self.n += other.n;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
        // Two readings at one instant (different seqs): the smaller value is
        // first, so that rows do not depend on the order readings came in.
        // A row without them (read back from an entry that does not keep
        // them) makes the merged row one without them too.
        let earlier =
            |a: (i64, f64), b: (i64, f64)| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).is_lt();
        self.first = match (self.first, other.first) {
            (Some(a), Some(b)) => Some(if earlier(b, a) { b } else { a }),
            _ => None,
        };
        self.last = match (self.last, other.last) {
            (Some(a), Some(b)) => Some(if earlier(a, b) { b } else { a }),
            _ => None,
        };
        self.decimals = self
            .decimals
            .max(other.decimals)
            .filter(|_| self.decimals.is_some() && other.decimals.is_some());
    }
}

/// Adds a reading to `rows` (sorted by start, one row per bucket).
pub(super) fn add(rows: &mut Vec<Row>, tier: Tier, time: i64, value: f64) {
    let row = Row::of(tier, time, value);
    // Readings come mostly in order: look at the end first.
    match rows.last_mut() {
        Some(last) if last.start == row.start => last.merge(&row),
        Some(last) if last.start < row.start => rows.push(row),
        None => rows.push(row),
        Some(_) => match rows.binary_search_by_key(&row.start, |r| r.start) {
            Ok(i) => rows[i].merge(&row),
            Err(i) => rows.insert(i, row),
        },
    }
}

/// Rows from several entries, in key order, as one run: equal buckets (an
/// entry boundary inside a bucket) merged.
pub(super) fn merge_runs(runs: impl IntoIterator<Item = Vec<Row>>) -> Vec<Row> {
    let mut out: Vec<Row> = runs.into_iter().flatten().collect();
    // Entries partition time, so rows are mostly in order already (a
    // stable sort then costs one pass); the tail's rows may share a bucket
    // with the last entry's.
    out.sort_by_key(|r| r.start);
    out.dedup_by(|b, a| {
        if a.start == b.start {
            a.merge(b);
            true
        } else {
            false
        }
    });
    out
}

const VERSION: u8 = 1;
/// Flags: the entry keeps each row's first and last reading.
const ENDS: u8 = 1;
/// The scale byte of an entry kept as f64s.
const F64: u8 = 0xff;

/// Whether a topic's rows keep their first and last reading: a meter's
/// (its type level `energy`), whose use in a bucket is last minus first. For
/// the others they would be most of a row's bytes, for nothing that min,
/// max and mean do not say.
pub(super) fn keeps_ends(topic: &str) -> bool {
    topic.rsplit('/').nth(1) == Some("energy")
}

/// An entry's bytes; first and last only if `ends` (and every row has
/// them). Values are kept as decimals at the scale of the most decimals
/// any of its readings has (so sums, rounded to it, are exact too), else
/// as f64.
pub(super) fn encode(tier: Tier, rows: &[Row], ends: bool) -> Vec<u8> {
    let ends = ends && rows.iter().all(|r| r.first.is_some() && r.last.is_some());
    let mut out = Vec::with_capacity(3 + rows.len() * 12);
    out.push(VERSION);
    out.push(if ends { ENDS } else { 0 });
    let scale = rows
        .iter()
        .try_fold(0u8, |most, r| r.decimals.map(|d| d.max(most)));
    let exact = scale.and_then(|s| Some((s, decimals(rows, s)?)));
    out.push(exact.as_ref().map_or(F64, |(s, _)| *s));
    chunk::varint(&mut out, rows.len() as u64);
    let width = tier.width();
    let mut prev: Option<i64> = None;
    let mut prev_min = 0i64;
    for (i, row) in rows.iter().enumerate() {
        let index = row.start.div_euclid(width);
        match prev {
            None => chunk::varint(&mut out, chunk::zigzag(index)),
            Some(p) => chunk::varint(&mut out, index.abs_diff(p)),
        }
        prev = Some(index);
        chunk::varint(&mut out, row.n);
        let (first, last) = match (row.first, row.last) {
            (Some(f), Some(l)) if ends => (f, l),
            _ => ((row.start, row.min), (row.start, row.min)),
        };
        if ends {
            chunk::varint(&mut out, first.0.abs_diff(row.start));
            chunk::varint(&mut out, last.0.abs_diff(first.0));
        }
        if let Some((_, d)) = &exact {
            let [min, max, sum, first, last] = d[i];
            chunk::varint(&mut out, chunk::zigzag(min.wrapping_sub(prev_min)));
            prev_min = min;
            chunk::varint(&mut out, max.abs_diff(min));
            chunk::varint(&mut out, chunk::zigzag(sum));
            if ends {
                for v in [first, last] {
                    chunk::varint(&mut out, v.abs_diff(min));
                }
            }
        } else {
            for v in [row.min, row.max, row.sum] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            if ends {
                for v in [first.1, last.1] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    out
}

/// Per row at `scale`: min, max, (sum - n·min), first and last (min if the
/// row has none), if every one is exact there and fits.
fn decimals(rows: &[Row], scale: u8) -> Option<Vec<[i64; 5]>> {
    rows.iter()
        .map(|r| {
            let d = |v| chunk::as_decimal(v, scale);
            let (min, max) = (d(r.min)?, d(r.max)?);
            let end = |e: Option<(i64, f64)>| e.map_or(Some(min), |(_, v)| d(v));
            let (first, last) = (end(r.first)?, end(r.last)?);
            let k = 10f64.powi(i32::from(scale));
            let sum = (r.sum * k).round();
            if !sum.is_finite() || sum.abs() >= 9.0e15 {
                return None;
            }
            #[allow(clippy::cast_possible_truncation)] // in range: checked above
            let sum = sum as i64;
            let rest = sum.checked_sub(min.checked_mul(i64::try_from(r.n).ok()?)?)?;
            Some([min, max, rest, first, last])
        })
        .collect()
}

pub(super) fn decode(tier: Tier, bytes: &[u8]) -> Result<Vec<Row>, ChunkError> {
    let mut r = Reader(bytes);
    if r.byte()? != VERSION {
        return Err(ChunkError("unknown rollup version"));
    }
    let flags = r.byte()?;
    if flags & !ENDS != 0 {
        return Err(ChunkError("unknown rollup flags"));
    }
    let ends = flags & ENDS != 0;
    let scale = r.byte()?;
    if scale != F64 && scale > chunk::MAX_SCALE {
        return Err(ChunkError("bad rollup scale"));
    }
    let count = r.varint()?;
    let width = tier.width();
    let mut rows = Vec::with_capacity(usize::try_from(count.min(4096)).unwrap_or(0));
    let mut index = 0i64;
    let mut prev_min = 0i64;
    let signed = |v: u64| i64::try_from(v).map_err(|_| ChunkError("rollup number too large"));
    for i in 0..count {
        let step = r.varint()?;
        index = if i == 0 {
            chunk::unzigzag(step)
        } else {
            index
                .checked_add(signed(step)?)
                .ok_or(ChunkError("bad bucket"))?
        };
        let start = index.checked_mul(width).ok_or(ChunkError("bad bucket"))?;
        let n = r.varint()?;
        let times = if ends {
            let first = start
                .checked_add(signed(r.varint()?)?)
                .ok_or(ChunkError("bad time"))?;
            let last = first
                .checked_add(signed(r.varint()?)?)
                .ok_or(ChunkError("bad time"))?;
            Some((first, last))
        } else {
            None
        };
        let (min, max, sum, values, decimals) = if scale == F64 {
            let mut f = || r.take::<8>().map(f64::from_le_bytes);
            let (min, max, sum) = (f()?, f()?, f()?);
            let values = if ends { Some((f()?, f()?)) } else { None };
            (min, max, sum, values, None)
        } else {
            let min = prev_min.wrapping_add(chunk::unzigzag(r.varint()?));
            prev_min = min;
            let mut above = || -> Result<i64, ChunkError> {
                min.checked_add(signed(r.varint()?)?)
                    .ok_or(ChunkError("bad value"))
            };
            let max = above()?;
            let rest = chunk::unzigzag(r.varint()?);
            let sum = i64::try_from(n)
                .ok()
                .and_then(|n| min.checked_mul(n))
                .and_then(|m| m.checked_add(rest))
                .ok_or(ChunkError("bad sum"))?;
            let v = |x| chunk::from_decimal(x, scale);
            let values = if ends {
                let mut above = || -> Result<i64, ChunkError> {
                    min.checked_add(signed(r.varint()?)?)
                        .ok_or(ChunkError("bad value"))
                };
                Some((v(above()?), v(above()?)))
            } else {
                None
            };
            (v(min), v(max), v(sum), values, Some(scale))
        };
        let (first, last) = match (times, values) {
            (Some((ft, lt)), Some((fv, lv))) => (Some((ft, fv)), Some((lt, lv))),
            _ => (None, None),
        };
        rows.push(Row {
            start,
            n,
            min,
            max,
            sum,
            first,
            last,
            decimals,
        });
    }
    if !r.0.is_empty() {
        return Err(ChunkError("bytes after the last rollup row"));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: i64 = 60_000_000;

    /// What a row says, without the bookkeeping (a decoded row carries its
    /// entry's scale) and with the sum to its readings' decimals.
    type Said = (
        i64,
        u64,
        f64,
        f64,
        String,
        Option<(i64, f64)>,
        Option<(i64, f64)>,
    );

    fn said(rows: &[Row]) -> Vec<Said> {
        rows.iter()
            .map(|r| {
                (
                    r.start,
                    r.n,
                    r.min,
                    r.max,
                    // Sums merged in another order differ in the last
                    // bits, and one near zero can come out as -0.0.
                    format!("{:.9}", (r.sum * 1e9).round() / 1e9 + 0.0),
                    r.first,
                    r.last,
                )
            })
            .collect()
    }

    fn rows_of(tier: Tier, readings: &[(i64, f64)]) -> Vec<Row> {
        let mut rows = Vec::new();
        for &(t, v) in readings {
            add(&mut rows, tier, t, v);
        }
        rows
    }

    #[test]
    fn a_minute_of_readings_is_one_row_with_its_first_and_last() {
        let t0 = 1_800_000_000_000_000; // on a minute
        let rows = rows_of(
            Tier::Minute,
            &[
                (t0 + 30, 20.5),
                (t0 + 10, 21.0),
                (t0 + 59_000_000, 19.5),
                (t0 + MIN, 22.0),
            ],
        );
        assert_eq!(rows.len(), 2);
        let r = &rows[0];
        assert_eq!((r.start, r.n, r.min, r.max), (t0, 3, 19.5, 21.0));
        assert!((r.mean() - 61.0 / 3.0).abs() < 1e-12);
        assert_eq!(
            (r.first, r.last),
            (Some((t0 + 10, 21.0)), Some((t0 + 59_000_000, 19.5)))
        );
        assert_eq!(
            said(&decode(Tier::Minute, &encode(Tier::Minute, &rows, true)).unwrap()),
            said(&rows)
        );
    }

    #[test]
    fn an_hour_of_a_one_hertz_sensor_takes_a_few_bytes_a_minute() {
        let t0 = 1_800_000_000_000_000;
        let readings: Vec<(i64, f64)> = (0..3600)
            .map(|i| {
                (
                    t0 + i * 1_000_000,
                    20.0 + f64::from(i32::try_from(i % 37).unwrap()) / 10.0,
                )
            })
            .collect();
        let rows = rows_of(Tier::Minute, &readings);
        let bytes = encode(Tier::Minute, &rows, true);
        assert_eq!(rows.len(), 60);
        assert!(bytes.len() < 60 * 16, "{} bytes for 60 rows", bytes.len());
        assert_eq!(said(&decode(Tier::Minute, &bytes).unwrap()), said(&rows));
    }

    #[test]
    fn values_no_decimal_holds_are_kept_as_f64() {
        let rows = rows_of(Tier::Hour, &[(0, 1.0 / 3.0), (5, f64::MAX), (7, -0.0)]);
        let bytes = encode(Tier::Hour, &rows, true);
        assert_eq!(bytes[2], F64);
        assert_eq!(said(&decode(Tier::Hour, &bytes).unwrap()), said(&rows));
    }

    #[test]
    fn damage_is_an_error_never_a_panic() {
        let rows = rows_of(Tier::Minute, &[(0, 1.5), (MIN * 3, 2.5)]);
        let bytes = encode(Tier::Minute, &rows, true);
        for cut in 0..bytes.len() {
            assert!(decode(Tier::Minute, &bytes[..cut]).is_err());
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            let _ = decode(Tier::Minute, &b);
        }
    }

    #[test]
    fn a_bucket_split_over_two_entries_reads_as_one_row() {
        let a = rows_of(Tier::Minute, &[(0, 1.0), (10, 3.0)]);
        let b = rows_of(Tier::Minute, &[(20, 2.0), (MIN, 5.0)]);
        let merged = merge_runs([a, b]);
        assert_eq!(
            said(&merged),
            said(&rows_of(
                Tier::Minute,
                &[(0, 1.0), (10, 3.0), (20, 2.0), (MIN, 5.0)]
            ))
        );
    }

    proptest! {
        /// Any readings, in any order, split over entries anywhere: encoding
        /// keeps every row, and the merged runs equal the rows of all of them.
        #[test]
        fn rows_survive_encoding_and_any_split(
            readings in proptest::collection::vec((-5_000_000_000i64..5_000_000_000, -1000i32..1000, 0u8..3), 1..200),
            split in 0usize..200,
        ) {
            let readings: Vec<(i64, f64)> = readings
                .into_iter()
                .map(|(t, v, scale)| (t, f64::from(v) / 10f64.powi(i32::from(scale))))
                .collect();
            let mut sorted = readings.clone();
            sorted.sort_by_key(|r| r.0);
            sorted.dedup_by_key(|r| r.0);
            for tier in Tier::ALL {
                let all = rows_of(tier, &sorted);
                let back = decode(tier, &encode(tier, &all, true)).unwrap();
                prop_assert_eq!(said(&back), said(&all));
                let at = split.min(sorted.len());
                let merged = merge_runs([rows_of(tier, &sorted[..at]), rows_of(tier, &sorted[at..])]);
                prop_assert_eq!(said(&merged), said(&all));
            }
        }
    }
}
