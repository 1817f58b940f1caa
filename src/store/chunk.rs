//! How readings are laid out on disk: in chunks. One sled value holds up to
//! [`CHUNK_MAX`] consecutive readings of one topic, compressed, under the key
//! of its first reading. A typical reading takes 3–4 bytes: its timestamp as a
//! delta of deltas, its seq and value as deltas, all exact (issue 15; the
//! Gorilla paper's ideas, kept byte-aligned for simplicity).
//! It does no I/O: readings.rs decides which chunk to read, write or split.
//!
//! ```text
//! key:    topic id u32 BE | time (8, big-endian, sign flipped) | seq u64 BE
//! value:  0x03 | count u16 LE | last time i64 LE | last seq u64 LE | entries
//! entries: unit u8 (timestamps are in 10^unit µs: 0, 3 or 6) | entry…
//! entry:  head u8 | [time dod] | [seq delta] | [value] | received dod | [strings]
//!   head bits 0-1: QoS; 4: has seq; 8: seq delta as before (none follows);
//!   16: strings follow; 32-64: value (0 same as before, 1 decimal delta,
//!   2 decimal: scale u8 + number, 3 f64 LE); 128: time delta as before.
//!   time dod: zigzag varint, the change in the time delta, in the unit.
//!   seq delta: zigzag varint of the wrapping difference.
//!   decimal: the value is number / 10^scale exactly (checked bit for bit on
//!   writing, else f64); a delta is against the last decimal at that scale.
//!   received dod: zigzag varint of the change in received_at - time.
//!   strings: flags u8 (8 unit, 16 sensor id, 32 sensor type), then each
//!   (varint length + UTF-8): only when they differ from what the topic implies.
//! ```
//! Every delta starts from the key (the first entry's own time and seq) with
//! deltas of 0. Entries are in strictly increasing (time, seq) order, and one
//! topic's chunks never overlap: so "is this reading stored?" is one seek.
//! Version 2 chunks (uncompressed deltas) are still read, and rewritten as
//! version 3 when appended to.

use super::format::time_key;

/// A reading's place in its sensor's history; also its identity (the same
/// time and seq is the same reading, however often it is delivered).
pub(super) type Pos = (i64, u64);

/// Readings per chunk. Bigger chunks store less per reading (each costs a
/// locator and fold mark in sled, and a frame header in its segment: at 64,
/// sled's writes for them were most of what a reading cost the disk), but a
/// topic's unfolded readings wait in memory and in the journal (readings.rs)
/// until there are this many, and a late reading rewrites its chunk whole.
pub(super) const CHUNK_MAX: usize = 256;
pub(super) const KEY_LEN: usize = 20;
const V2: u8 = 2;
const V3: u8 = 3;
/// Not a chunk but where one is: sled's value for a chunk in a segment file
/// (`readings::locator`): this byte, then the chunk's header after its own
/// first byte (so [`header`] reads both), then the place.
pub(super) const LOCATED: u8 = 0x80;
/// Version, count, last time, last seq: what [`header`] reads.
pub(super) const HEADER: usize = 19;
pub(super) const UNIT: u8 = 8;
pub(super) const SENSOR_ID: u8 = 16;
pub(super) const SENSOR_TYPE: u8 = 32;

// Version 3 entry head bits.
const QOS: u8 = 3;
const HAS_SEQ: u8 = 4;
const SEQ_STEADY: u8 = 8;
const STRINGS: u8 = 16;
const VALUE_SHIFT: u8 = 5;
const VALUE_SAME: u8 = 0;
const VALUE_DELTA: u8 = 1;
const VALUE_DECIMAL: u8 = 2;
const VALUE_F64: u8 = 3;
const TIME_STEADY: u8 = 128;
/// The most decimals a value is stored with as a decimal (more: f64).
pub(super) const MAX_SCALE: u8 = 9;

/// One reading within a chunk: what the topic does not already say.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Entry {
    /// The reading's own timestamp, microseconds since the epoch.
    pub time: i64,
    /// The reading's seq; `None` is keyed and ordered as 0.
    pub seq: Option<u64>,
    /// The reading's value, kept bit for bit.
    pub value: f64,
    /// When aggregatord received it, microseconds since the epoch.
    pub received_at: i64,
    /// The delivery QoS, 0 to 2.
    pub qos: u8,
    /// Unit, sensor id and sensor type, each only when it differs from what the
    /// topic implies.
    pub unit: Option<String>,
    /// Only when it differs from the topic's last level.
    pub sensor_id: Option<String>,
    /// Only when it differs from the topic's type level.
    pub sensor_type: Option<String>,
}

impl Entry {
    pub fn pos(&self) -> Pos {
        (self.time, self.seq.unwrap_or(0))
    }
}

/// A chunk or key that cannot be decoded, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct ChunkError(pub &'static str);

pub(super) fn key(topic_id: u32, (time, seq): Pos) -> [u8; KEY_LEN] {
    let mut k = [0; KEY_LEN];
    k[..4].copy_from_slice(&topic_id.to_be_bytes());
    k[4..12].copy_from_slice(&time_key(time));
    k[12..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn parse_key(key: &[u8]) -> Result<(u32, Pos), ChunkError> {
    let key: &[u8; KEY_LEN] = key.try_into().map_err(|_| ChunkError("bad key length"))?;
    let id = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    let time = (u64::from_be_bytes(arr(&key[4..12])) ^ (1 << 63)).cast_signed();
    Ok((id, (time, u64::from_be_bytes(arr(&key[12..])))))
}

/// How many entries, and the last one's position, without decoding them.
pub(super) fn header(value: &[u8]) -> Result<(usize, Pos), ChunkError> {
    if value.len() < HEADER || !matches!(value[0], V2 | V3 | LOCATED) {
        return Err(ChunkError("unknown chunk layout"));
    }
    let count = u16::from_le_bytes([value[1], value[2]]);
    let time = i64::from_le_bytes(arr(&value[3..11]));
    let seq = u64::from_le_bytes(arr(&value[11..19]));
    Ok((usize::from(count), (time, seq)))
}

/// A chunk of `entries` (sorted, non-empty), to be stored under `key(id, entries[0].pos())`.
/// Writers keep chunks within [`CHUNK_MAX`] entries (a merge may reach it, then
/// splits), far inside the u16 count.
pub(super) fn encode(entries: &[Entry]) -> Vec<u8> {
    let last = entries.last().map_or((0, 0), Entry::pos);
    let mut v = Vec::with_capacity(HEADER + 1 + entries.len() * 5);
    v.push(V3);
    let count = u16::try_from(entries.len()).unwrap_or(u16::MAX);
    v.extend_from_slice(&count.to_le_bytes());
    v.extend_from_slice(&last.0.to_le_bytes());
    v.extend_from_slice(&last.1.to_le_bytes());
    encode_entries(&mut v, entries);
    v
}

/// The chunk `chunk`, stored under `key`, with `entries` (sorted, all after
/// its last) added: re-encoded whole. A chunk that cannot be read is refused,
/// not extended. Tests only: the store writes a chunk once (segments).
#[cfg(test)]
pub(super) fn append(key: &[u8], chunk: &[u8], entries: &[Entry]) -> Result<Vec<u8>, ChunkError> {
    let mut all = decode(key, chunk)?;
    all.extend_from_slice(entries);
    Ok(encode(&all))
}

/// Every entry of a chunk stored under `key`.
pub(super) fn decode(key: &[u8], value: &[u8]) -> Result<Vec<Entry>, ChunkError> {
    let (_, first) = parse_key(key)?;
    let (count, _) = header(value)?;
    let entries = if value[0] == V2 {
        decode_v2(first, &value[HEADER..], count)?
    } else {
        decode_entries(first, &value[HEADER..])?
    };
    if entries.len() != count {
        return Err(ChunkError("entry count does not match the header"));
    }
    Ok(entries)
}

/// What each delta is taken against: the entry before (at first, the
/// chunk's own first position, with deltas of 0).
#[derive(Clone, Copy)]
struct Previous {
    /// Time in the chunk's unit, and the delta that led to it.
    time: i64,
    time_delta: i64,
    /// Seq (0 after an entry without one), and the delta that led to it.
    seq: u64,
    seq_delta: u64,
    /// The value's bits, if there was one.
    value: Option<u64>,
    /// The last decimal value: its scale and number.
    decimal: Option<(u8, i64)>,
    /// `received_at - time`, in the unit.
    received: i64,
}

impl Previous {
    fn start((time, seq): Pos, unit: i64) -> Previous {
        Previous {
            time: time.div_euclid(unit),
            time_delta: 0,
            seq,
            seq_delta: 0,
            value: None,
            decimal: None,
            received: 0,
        }
    }
}

/// The coarsest unit (10^6, 10^3 or 1 µs) that every timestamp is a whole
/// number of: sensors and aggregatord stamp milliseconds.
fn unit_of(entries: &[Entry]) -> u8 {
    [6u8, 3]
        .into_iter()
        .find(|&exp| {
            let unit = 10i64.pow(u32::from(exp));
            entries
                .iter()
                .all(|e| e.time % unit == 0 && e.received_at % unit == 0)
        })
        .unwrap_or(0)
}

/// `value` as number / 10^scale, if that gives back exactly its bits.
pub(super) fn as_decimal(value: f64, scale: u8) -> Option<i64> {
    let k = 10f64.powi(i32::from(scale));
    let scaled = (value * k).round();
    // |scaled| < 2^53, so the conversion is exact (NaN, infinities and
    // anything larger fail the range check and are stored as f64).
    if scaled.is_nan() || scaled.abs() >= 9_007_199_254_740_992.0 {
        return None;
    }
    #[allow(clippy::cast_possible_truncation)]
    let n = scaled as i64;
    #[allow(clippy::cast_precision_loss)]
    let back = n as f64 / k;
    (back.to_bits() == value.to_bits()).then_some(n)
}

pub(super) fn from_decimal(n: i64, scale: u8) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let n = n as f64;
    n / 10f64.powi(i32::from(scale))
}

/// Appends entries (sorted, non-empty) as `unit | entry…`, deltas from the
/// first entry's position.
pub(super) fn encode_entries(out: &mut Vec<u8>, entries: &[Entry]) {
    let Some(first) = entries.first() else {
        return;
    };
    let exp = unit_of(entries);
    let unit = 10i64.pow(u32::from(exp));
    out.push(exp);
    let mut prev = Previous::start(first.pos(), unit);
    for e in entries {
        let (t, s) = e.pos();
        let t = t.div_euclid(unit);
        let mut head = e.qos & QOS;
        let mut body = Vec::with_capacity(8);
        let time_delta = t.wrapping_sub(prev.time);
        if time_delta == prev.time_delta {
            head |= TIME_STEADY;
        } else {
            varint(&mut body, zigzag(time_delta.wrapping_sub(prev.time_delta)));
        }
        if e.seq.is_some() {
            head |= HAS_SEQ;
            let seq_delta = s.wrapping_sub(prev.seq);
            if seq_delta == prev.seq_delta {
                head |= SEQ_STEADY;
            } else {
                varint(&mut body, zigzag(seq_delta.cast_signed()));
            }
            prev.seq_delta = seq_delta;
        } else {
            prev.seq_delta = 0;
        }
        let bits = e.value.to_bits();
        let mode = if prev.value == Some(bits) {
            VALUE_SAME
        } else if let Some((n, at)) = prev
            .decimal
            .and_then(|(scale, last)| Some((as_decimal(e.value, scale)?, last)))
        {
            varint(&mut body, zigzag(n.wrapping_sub(at)));
            prev.decimal = prev.decimal.map(|(scale, _)| (scale, n));
            VALUE_DELTA
        } else if let Some((scale, n)) =
            (0..=MAX_SCALE).find_map(|scale| Some((scale, as_decimal(e.value, scale)?)))
        {
            body.push(scale);
            varint(&mut body, zigzag(n));
            prev.decimal = Some((scale, n));
            VALUE_DECIMAL
        } else {
            body.extend_from_slice(&e.value.to_le_bytes());
            prev.decimal = None;
            VALUE_F64
        };
        head |= mode << VALUE_SHIFT;
        let received = e.received_at.div_euclid(unit).wrapping_sub(t);
        varint(&mut body, zigzag(received.wrapping_sub(prev.received)));
        let strings = [
            (UNIT, &e.unit),
            (SENSOR_ID, &e.sensor_id),
            (SENSOR_TYPE, &e.sensor_type),
        ];
        let flags = strings
            .iter()
            .filter(|(_, s)| s.is_some())
            .fold(0, |f, (flag, _)| f | flag);
        if flags != 0 {
            head |= STRINGS;
            body.push(flags);
            for s in strings.iter().filter_map(|(_, s)| s.as_ref()) {
                varint(&mut body, s.len() as u64);
                body.extend_from_slice(s.as_bytes());
            }
        }
        out.push(head);
        out.extend_from_slice(&body);
        prev.time = t;
        prev.time_delta = time_delta;
        prev.seq = s;
        prev.value = Some(bits);
        prev.received = received;
    }
}

/// The entries [`encode_entries`] wrote, the first at `first`.
pub(super) fn decode_entries(first: Pos, bytes: &[u8]) -> Result<Vec<Entry>, ChunkError> {
    let mut r = Reader(bytes);
    let exp = r.byte()?;
    if !matches!(exp, 0 | 3 | 6) {
        return Err(ChunkError("unknown time unit"));
    }
    let unit = 10i64.pow(u32::from(exp));
    let mut prev = Previous::start(first, unit);
    let mut entries = Vec::new();
    while !r.0.is_empty() {
        let head = r.byte()?;
        if head & TIME_STEADY == 0 {
            prev.time_delta = prev.time_delta.wrapping_add(unzigzag(r.varint()?));
        }
        prev.time = prev.time.wrapping_add(prev.time_delta);
        let has_seq = head & HAS_SEQ != 0;
        if has_seq {
            if head & SEQ_STEADY == 0 {
                prev.seq_delta = unzigzag(r.varint()?).cast_unsigned();
            }
            prev.seq = prev.seq.wrapping_add(prev.seq_delta);
        } else {
            prev.seq = 0;
            prev.seq_delta = 0;
        }
        let value = match (head >> VALUE_SHIFT) & 3 {
            VALUE_SAME => f64::from_bits(prev.value.ok_or(ChunkError("no value to repeat"))?),
            VALUE_DELTA => {
                let (scale, at) = prev.decimal.ok_or(ChunkError("no decimal to add to"))?;
                let n = at.wrapping_add(unzigzag(r.varint()?));
                prev.decimal = Some((scale, n));
                from_decimal(n, scale)
            }
            VALUE_DECIMAL => {
                let scale = r.byte()?;
                if scale > MAX_SCALE {
                    return Err(ChunkError("bad decimal scale"));
                }
                let n = unzigzag(r.varint()?);
                prev.decimal = Some((scale, n));
                from_decimal(n, scale)
            }
            _ => {
                prev.decimal = None;
                f64::from_le_bytes(r.take::<8>()?)
            }
        };
        prev.value = Some(value.to_bits());
        prev.received = prev.received.wrapping_add(unzigzag(r.varint()?));
        let (mut unit_s, mut sensor_id, mut sensor_type) = (None, None, None);
        if head & STRINGS != 0 {
            let flags = r.byte()?;
            for (flag, slot) in [
                (UNIT, &mut unit_s),
                (SENSOR_ID, &mut sensor_id),
                (SENSOR_TYPE, &mut sensor_type),
            ] {
                if flags & flag != 0 {
                    *slot = Some(r.string()?);
                }
            }
        }
        entries.push(Entry {
            time: prev.time.wrapping_mul(unit),
            seq: has_seq.then_some(prev.seq),
            value,
            received_at: prev.time.wrapping_add(prev.received).wrapping_mul(unit),
            qos: head & QOS,
            unit: unit_s,
            sensor_id,
            sensor_type,
        });
    }
    Ok(entries)
}

/// Version 2 entries: `flags u8 | time delta varint | [seq delta varint] |
/// value f64 LE | received_at - time (zigzag varint) | [strings]`; flags bits
/// 0-1 QoS, 4 has seq, 8/16/32 the strings (varint length + UTF-8).
fn decode_v2(first: Pos, bytes: &[u8], count: usize) -> Result<Vec<Entry>, ChunkError> {
    let (mut time, mut seq) = first;
    let mut entries = Vec::with_capacity(count);
    let mut r = Reader(bytes);
    while !r.0.is_empty() {
        let flags = r.byte()?;
        time = time.wrapping_add(r.varint()?.cast_signed());
        let has_seq = flags & HAS_SEQ != 0;
        if has_seq {
            seq = seq.wrapping_add(r.varint()?);
        }
        let value = f64::from_le_bytes(r.take::<8>()?);
        let received_at = time.wrapping_add(unzigzag(r.varint()?));
        let mut string = |flag: u8| -> Result<Option<String>, ChunkError> {
            if flags & flag == 0 {
                return Ok(None);
            }
            r.string().map(Some)
        };
        let (unit, sensor_id, sensor_type) =
            (string(UNIT)?, string(SENSOR_ID)?, string(SENSOR_TYPE)?);
        entries.push(Entry {
            time,
            // Readings without a seq sort as seq 0; the next delta is against that.
            seq: has_seq.then_some(seq),
            value,
            received_at,
            qos: flags & 3,
            unit,
            sensor_id,
            sensor_type,
        });
        if !has_seq {
            seq = 0;
        }
    }
    Ok(entries)
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0; N];
    a.copy_from_slice(&b[..N]);
    a
}

pub(super) fn varint(out: &mut Vec<u8>, mut v: u64) {
    // LEB128: seven bits at a time, low first; the casts keep the low byte.
    while v >= 0x80 {
        out.push((v & 0x7f).to_le_bytes()[0] | 0x80);
        v >>= 7;
    }
    out.push(v.to_le_bytes()[0]);
}

pub(super) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)).cast_unsigned()
}

pub(super) fn unzigzag(v: u64) -> i64 {
    (v >> 1).cast_signed() ^ -(v & 1).cast_signed()
}

/// A cursor over a chunk's entries: the bytes not read yet.
pub(super) struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ChunkError> {
        if self.0.len() < n {
            return Err(ChunkError("truncated chunk"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    pub fn take<const N: usize>(&mut self) -> Result<[u8; N], ChunkError> {
        self.bytes(N).map(arr)
    }
    pub fn byte(&mut self) -> Result<u8, ChunkError> {
        Ok(self.take::<1>()?[0])
    }
    fn string(&mut self) -> Result<String, ChunkError> {
        let len = usize::try_from(self.varint()?).map_err(|_| ChunkError("truncated"))?;
        let bytes = self.bytes(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| ChunkError("string is not UTF-8"))
    }
    pub fn varint(&mut self) -> Result<u64, ChunkError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ChunkError("varint too long"))
    }
}

/// Version 2 (before compression) as it was written, for tests of reading it.
#[cfg(test)]
pub(super) fn encode_v2(entries: &[Entry]) -> Vec<u8> {
    let (mut time, mut seq) = entries[0].pos();
    let last = entries[entries.len() - 1].pos();
    let mut v = vec![V2];
    v.extend_from_slice(&u16::try_from(entries.len()).unwrap().to_le_bytes());
    v.extend_from_slice(&last.0.to_le_bytes());
    v.extend_from_slice(&last.1.to_le_bytes());
    for e in entries {
        let (t, s) = e.pos();
        v.push(e.qos | if e.seq.is_some() { HAS_SEQ } else { 0 });
        varint(&mut v, t.wrapping_sub(time).cast_unsigned());
        if e.seq.is_some() {
            varint(&mut v, s.wrapping_sub(seq));
        }
        v.extend_from_slice(&e.value.to_le_bytes());
        varint(&mut v, zigzag(e.received_at.wrapping_sub(t)));
        (time, seq) = (t, s);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(time: i64, seq: Option<u64>) -> Entry {
        Entry {
            time,
            seq,
            value: time as f64 / 7.0,
            received_at: time + 1500,
            qos: 1,
            unit: None,
            sensor_id: None,
            sensor_type: None,
        }
    }

    #[test]
    fn round_trips_the_unusual_including_appends() {
        let mut es: Vec<Entry> = (0..40)
            .map(|i| {
                entry(
                    1_790_000_000_000_000 + i * 5_000_000,
                    Some(100 + i.cast_unsigned()),
                )
            })
            .collect();
        es[3].seq = None;
        es[5].received_at = es[5].time - 3_000_000;
        es[7].unit = Some("mK".into());
        es[7].sensor_type = Some("temp".into());
        es[7].qos = 2;
        es[8].value = -0.0;
        es[9].value = f64::NAN;
        es[10].value = 21.5;
        es[11].value = 21.75;
        es[12].value = 1e300;
        let k = key(7, es[0].pos());
        let v = append(&k, &encode(&es[..25]), &es[25..]).unwrap();
        let back = decode(&k, &v).unwrap();
        assert_eq!(back.len(), es.len());
        for (a, b) in back.iter().zip(&es) {
            // Bit for bit (NaN != NaN, and -0.0 == 0.0, under ==).
            assert_eq!(a.value.to_bits(), b.value.to_bits());
            assert_eq!(
                (a.time, a.seq, a.received_at, a.qos),
                (b.time, b.seq, b.received_at, b.qos)
            );
            assert_eq!(
                (&a.unit, &a.sensor_id, &a.sensor_type),
                (&b.unit, &b.sensor_id, &b.sensor_type)
            );
        }
        assert_eq!(header(&v).unwrap(), (40, es[39].pos()));
        assert_eq!(parse_key(&k).unwrap(), (7, es[0].pos()));
    }

    /// What a sensor sends: once a second (a few ms of jitter), millisecond
    /// stamps, seq + 1, two decimals drifting, received a few ms later.
    #[test]
    fn a_typical_sensor_takes_about_four_bytes_a_reading() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut value = 2150i64;
        let es: Vec<Entry> = (0..64i64)
            .map(|i| {
                value += rng.i64(-3..=3);
                let time = 1_790_000_000_000_000 + (i * 1000 + rng.i64(0..4)) * 1000;
                Entry {
                    value: value as f64 / 100.0,
                    received_at: time + rng.i64(1..40) * 1000,
                    ..entry(time, Some(1000 + i.cast_unsigned()))
                }
            })
            .collect();
        let v = encode(&es);
        assert_eq!(decode(&key(1, es[0].pos()), &v).unwrap(), es);
        let per = (v.len() - HEADER) as f64 / 64.0;
        assert!(per <= 4.0, "{per} bytes a reading");
    }

    #[test]
    fn reads_version_2_and_rewrites_it_as_version_3_on_append() {
        let es: Vec<Entry> = (0..10)
            .map(|i| {
                entry(
                    1_790_000_000_000_000 + i * 1_000_000,
                    Some(5 + i.cast_unsigned()),
                )
            })
            .collect();
        let k = key(3, es[0].pos());
        let old = encode_v2(&es[..6]);
        assert_eq!(decode(&k, &old).unwrap(), es[..6]);
        assert_eq!(header(&old).unwrap(), (6, es[5].pos()));
        let new = append(&k, &old, &es[6..]).unwrap();
        assert_eq!(new[0], V3);
        assert_eq!(decode(&k, &new).unwrap(), es);
    }

    #[test]
    fn appending_to_a_chunk_with_an_unreadable_header_is_refused() {
        let e = entry(1_790_000_000_000_000, Some(1));
        let k = key(1, e.pos());
        assert!(append(&k, &[0x7f, 0, 0], std::slice::from_ref(&e)).is_err());
    }

    #[test]
    fn key_order_is_topic_then_time_then_seq() {
        let keys = [
            key(1, (i64::MIN, 0)),
            key(1, (-5, 9)),
            key(1, (0, 0)),
            key(1, (0, 1)),
            key(1, (7, 0)),
            key(2, (-9, 0)),
        ];
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn refuses_damage_without_panicking() {
        let es = [entry(10, Some(1)), entry(20, Some(2))];
        let v = encode(&es);
        let k = key(1, es[0].pos());
        for cut in 0..v.len() {
            assert!(decode(&k, &v[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode(b"short", &v).is_err());
        let mut bad = v.clone();
        bad[0] = 9;
        assert!(decode(&k, &bad).is_err());
    }

    fn arb_entries() -> impl Strategy<Value = Vec<Entry>> {
        let value = prop_oneof![
            any::<f64>(),
            (-100_000i64..100_000, 0u8..4).prop_map(|(n, s)| from_decimal(n, s)),
            Just(0.0),
            Just(-0.0),
            Just(f64::INFINITY),
        ];
        let string = proptest::option::weighted(0.1, "[a-zé]{0,5}");
        let step = prop_oneof![Just(1_000_000i64), 0i64..3_000_000, Just(i64::MAX / 4),];
        let one = (
            step,
            proptest::option::weighted(0.9, 0u64..4),
            value,
            -5_000_000i64..5_000_000,
            0u8..3,
            (string.clone(), string.clone(), string),
            any::<bool>(),
        );
        (any::<i64>(), proptest::collection::vec(one, 1..80)).prop_map(|(start, ones)| {
            let mut time = start / 4;
            let mut seq = 0u64;
            let mut out: Vec<Entry> = Vec::new();
            for (step, seq_step, value, late, qos, (unit, id, ty), millis) in ones {
                time = time.wrapping_add(step);
                let (mut t, mut r) = (time, time.wrapping_add(late));
                if millis {
                    t = t.wrapping_sub(t.rem_euclid(1000));
                    r = r.wrapping_sub(r.rem_euclid(1000));
                }
                let s = seq_step.map(|d| {
                    seq = seq.wrapping_add(d);
                    seq
                });
                let e = Entry {
                    time: t,
                    seq: s,
                    value,
                    received_at: r,
                    qos,
                    unit,
                    sensor_id: id,
                    sensor_type: ty,
                };
                // Strictly increasing positions, as writers keep them.
                if out.last().is_none_or(|l| l.pos() < e.pos()) {
                    out.push(e);
                }
            }
            out
        })
    }

    proptest! {
        /// Whatever the readings, a chunk gives them back bit for bit.
        #[test]
        fn any_entries_round_trip(es in arb_entries(), split in 0usize..80) {
            let k = key(9, es[0].pos());
            let split = split.min(es.len() - 1).max(1).min(es.len());
            let v = append(&k, &encode(&es[..split]), &es[split..]).unwrap();
            let back = decode(&k, &v).unwrap();
            prop_assert_eq!(back.len(), es.len());
            for (a, b) in back.iter().zip(&es) {
                prop_assert_eq!(a.value.to_bits(), b.value.to_bits());
                prop_assert_eq!((a.time, a.seq, a.received_at, a.qos), (b.time, b.seq, b.received_at, b.qos));
                prop_assert_eq!((&a.unit, &a.sensor_id, &a.sensor_type), (&b.unit, &b.sensor_id, &b.sensor_type));
            }
        }
    }
}
