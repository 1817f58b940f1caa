//! How readings are laid out on disk: in chunks. One sled value holds up to
//! [`CHUNK_MAX`] consecutive readings of one topic, delta-encoded, under the key
//! of its first reading. Per reading that is ~16 bytes instead of a ~60-byte
//! key plus value plus sled's per-key overhead, and ingest writes one sled key
//! per topic per batch instead of one per reading (sled copies a whole leaf on
//! every write: that copy was most of ingest's CPU time).
//! It does no I/O: readings.rs decides which chunk to read, append to or split.
//!
//! ```text
//! key:    topic id u32 BE | time (8, big-endian, sign flipped) | seq u64 BE
//! value:  0x02 | count u16 LE | last time i64 LE | last seq u64 LE | entries
//! entry:  flags u8 | time delta varint | [seq delta varint] | value f64 LE
//!         | received_at - time (zigzag varint) | [strings]
//!   flags: bits 0-1 QoS; 4 = has seq; 8 = unit, 16 = sensor id, 32 = sensor
//!   type follow (varint length + UTF-8), only when they differ from what the
//!   topic implies.
//! ```
//! Deltas are against the previous entry; the first entry's are against the
//! key, so they are 0. Entries are in strictly increasing (time, seq) order, and
//! one topic's chunks never overlap: so "is this reading stored?" is one seek.

use super::codec::time_key;

/// A reading's place in its sensor's history; also its identity (the same
/// time and seq is the same reading, however often it is delivered).
pub(super) type Pos = (i64, u64);

/// Readings per chunk. Bigger chunks store less per reading, but appending one
/// reading rewrites its chunk: 64 keeps that rewrite under ~1.5 KiB.
pub(super) const CHUNK_MAX: usize = 64;
pub(super) const KEY_LEN: usize = 20;
const VERSION: u8 = 2;
const HEADER: usize = 19;
const HAS_SEQ: u8 = 4;
pub(super) const UNIT: u8 = 8;
pub(super) const SENSOR_ID: u8 = 16;
pub(super) const SENSOR_TYPE: u8 = 32;

/// The unit an entry without the UNIT flag has, by its topic's type level: the
/// contract's units as they were when this format (version 2) was made. Never
/// change this table: history written under it must read back the same. A unit
/// the contract adopts later is simply stored with each reading (the flag),
/// until a new format version brings a new table.
pub(super) fn implied_unit(sensor_type: &str) -> Option<&'static str> {
    Some(match sensor_type {
        "temperature" => "celsius",
        "humidity" => "percent",
        "motion" => "boolean",
        "co2" => "ppm",
        "power" => "W",
        "energy" => "kWh",
        _ => return None,
    })
}

/// One reading within a chunk: what the topic does not already say.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Entry {
    /// The reading's own timestamp, microseconds since the epoch.
    pub time: i64,
    /// The reading's seq; `None` is keyed and ordered as 0.
    pub seq: Option<u64>,
    /// The reading's value, kept bit for bit (f64 LE).
    pub value: f64,
    /// When aggregatord received it, microseconds since the epoch (stored as a delta from
    /// `time`).
    pub received_at: i64,
    /// The delivery QoS, 0 to 2 (the flags' two low bits).
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
pub(super) struct ChunkError(&'static str);

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
    if value.len() < HEADER || value[0] != VERSION {
        return Err(ChunkError("unknown chunk layout"));
    }
    let count = u16::from_le_bytes([value[1], value[2]]);
    let time = i64::from_le_bytes(arr(&value[3..11]));
    let seq = u64::from_le_bytes(arr(&value[11..19]));
    Ok((usize::from(count), (time, seq)))
}

/// A chunk of `entries` (sorted, non-empty), to be stored under `key(id, entries[0].pos())`.
pub(super) fn encode(entries: &[Entry]) -> Vec<u8> {
    let first = entries.first().map_or((0, 0), Entry::pos);
    let mut v = Vec::with_capacity(HEADER + entries.len() * 18);
    v.push(VERSION);
    v.extend_from_slice(&0u16.to_le_bytes());
    v.extend_from_slice(&first.0.to_le_bytes());
    v.extend_from_slice(&first.1.to_le_bytes());
    extend(&mut v, 0, first, entries);
    v
}

/// Adds entries (sorted, all after the chunk's last) to an encoded chunk.
/// Writers keep chunks within [`CHUNK_MAX`] entries (a merge may reach it, then
/// splits), far inside the u16 count.
/// A chunk whose header cannot be read is refused, not extended.
pub(super) fn append(chunk: &mut Vec<u8>, entries: &[Entry]) -> Result<(), ChunkError> {
    let (count, last) = header(chunk)?;
    extend(chunk, count, last, entries);
    Ok(())
}

/// Writes `entries` after a chunk's `count` entries, the last at `last`, and
/// updates its header.
fn extend(chunk: &mut Vec<u8>, count: usize, last: Pos, entries: &[Entry]) {
    let (mut time, mut seq) = last;
    for e in entries {
        let (t, s) = e.pos();
        let mut flags = e.qos & 3;
        if e.seq.is_some() {
            flags |= HAS_SEQ;
        }
        for (flag, s) in [
            (UNIT, &e.unit),
            (SENSOR_ID, &e.sensor_id),
            (SENSOR_TYPE, &e.sensor_type),
        ] {
            if s.is_some() {
                flags |= flag;
            }
        }
        chunk.push(flags);
        varint(chunk, t.wrapping_sub(time).cast_unsigned());
        if e.seq.is_some() {
            varint(chunk, s.wrapping_sub(seq));
        }
        chunk.extend_from_slice(&e.value.to_le_bytes());
        varint(chunk, zigzag(e.received_at.wrapping_sub(t)));
        for s in [&e.unit, &e.sensor_id, &e.sensor_type]
            .into_iter()
            .flatten()
        {
            varint(chunk, s.len() as u64);
            chunk.extend_from_slice(s.as_bytes());
        }
        (time, seq) = (t, s);
    }
    let count = u16::try_from(count + entries.len()).unwrap_or(u16::MAX);
    chunk[1..3].copy_from_slice(&count.to_le_bytes());
    chunk[3..11].copy_from_slice(&time.to_le_bytes());
    chunk[11..19].copy_from_slice(&seq.to_le_bytes());
}

/// Every entry of a chunk stored under `key`.
pub(super) fn decode(key: &[u8], value: &[u8]) -> Result<Vec<Entry>, ChunkError> {
    let (_, (mut time, mut seq)) = parse_key(key)?;
    let (count, _) = header(value)?;
    let mut entries = Vec::with_capacity(count);
    let mut r = Reader(&value[HEADER..]);
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
            let len = usize::try_from(r.varint()?).map_err(|_| ChunkError("truncated"))?;
            let bytes = r.bytes(len)?;
            String::from_utf8(bytes.to_vec())
                .map(Some)
                .map_err(|_| ChunkError("string is not UTF-8"))
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
    if entries.len() != count {
        return Err(ChunkError("entry count does not match the header"));
    }
    Ok(entries)
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0; N];
    a.copy_from_slice(&b[..N]);
    a
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    // LEB128: seven bits at a time, low first; the casts keep the low byte.
    while v >= 0x80 {
        out.push((v & 0x7f).to_le_bytes()[0] | 0x80);
        v >>= 7;
    }
    out.push(v.to_le_bytes()[0]);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)).cast_unsigned()
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1).cast_signed() ^ -(v & 1).cast_signed()
}

/// A cursor over a chunk's entries: the bytes not read yet.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], ChunkError> {
        if self.0.len() < n {
            return Err(ChunkError("truncated chunk"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn take<const N: usize>(&mut self) -> Result<[u8; N], ChunkError> {
        self.bytes(N).map(arr)
    }
    fn byte(&mut self) -> Result<u8, ChunkError> {
        Ok(self.take::<1>()?[0])
    }
    fn varint(&mut self) -> Result<u64, ChunkError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn round_trips_compactly_including_appends() {
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
        let k = key(7, es[0].pos());
        let mut v = encode(&es[..25]);
        append(&mut v, &es[25..]).unwrap();
        assert_eq!(decode(&k, &v).unwrap(), es);
        assert_eq!(header(&v).unwrap(), (40, es[39].pos()));
        // flags 1 + time 4 + seq 1 + value 8 + received 2, and a few strings.
        assert!(v.len() < 19 + 40 * 17 + 16, "{} bytes", v.len());
        assert_eq!(parse_key(&k).unwrap(), (7, es[0].pos()));
    }

    #[test]
    fn appending_to_a_chunk_with_an_unreadable_header_is_refused() {
        let e = entry(1_790_000_000_000_000, Some(1));
        let mut v = vec![0x7f, 0, 0];
        assert!(append(&mut v, std::slice::from_ref(&e)).is_err());
        assert_eq!(v, vec![0x7f, 0, 0], "left as it was");
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
}
