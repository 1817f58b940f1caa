//! The one-key-per-reading layout of earlier versions, kept to read old
//! databases: `Trees::migrate` moves them into chunks (`chunk.rs`) on open.
//! (Writing it is kept for the tests that build such a database.)
//! It does no I/O: `Trees::migrate` reads the old tree and stores through a
//! `ReadingWriter`.
//!
//! ```text
//! key:   topic 0x00 | timestamp µs (8, big-endian, sign flipped) | seq (8, big-endian)
//! value: 0x01 | value f64 LE | received_at µs i64 LE | qos u8 | flags u8 | [strings]
//!        flags: 1 = has seq; 2 = unit, 4 = sensor id, 8 = sensor type follow as
//!        u16-length-prefixed UTF-8 (only when they differ from what the topic implies)
//! ```
//! Values written as JSON by earlier versions (first byte `{`) are still read.

use super::format::Implied;
use super::StoredReading;
use crate::contract::{Reading, Timestamp};

const VERSION: u8 = 1;
const HAS_SEQ: u8 = 1;
const UNIT: u8 = 2;
const SENSOR_ID: u8 = 4;
const SENSOR_TYPE: u8 = 8;
/// Timestamp (8) and seq (8) after the topic and its 0x00.
const KEY_TAIL: usize = 17;

#[cfg(test)]
pub(super) fn key(topic: &str, ts: Timestamp, seq: Option<u64>) -> Vec<u8> {
    let mut key = Vec::with_capacity(topic.len() + KEY_TAIL);
    key.extend_from_slice(topic.as_bytes());
    // MQTT topics cannot contain U+0000, so this cannot be part of a topic.
    key.push(0);
    key.extend_from_slice(&super::format::time_key(ts.micros()));
    key.extend_from_slice(&seq.unwrap_or(0).to_be_bytes());
    key
}

#[cfg(test)]
pub(super) fn encode(r: &StoredReading) -> Vec<u8> {
    let Implied {
        sensor_id: id,
        sensor_type: ty,
        unit,
    } = Implied::of(&r.topic);
    let mut flags = if r.reading.seq.is_some() { HAS_SEQ } else { 0 };
    let extra: Vec<(u8, &str)> = [
        (UNIT, r.reading.unit.as_str(), unit),
        (SENSOR_ID, r.reading.sensor_id.as_str(), id),
        (SENSOR_TYPE, r.reading.sensor_type.as_str(), ty),
    ]
    .into_iter()
    .filter(|(_, have, implied)| Some(*have) != *implied)
    .map(|(flag, have, _)| (flag, have))
    .collect();
    let mut v = Vec::with_capacity(19 + extra.iter().map(|(_, s)| s.len() + 2).sum::<usize>());
    v.push(VERSION);
    v.extend_from_slice(&r.reading.value.to_le_bytes());
    v.extend_from_slice(&r.received_at.micros().to_le_bytes());
    v.push(r.qos);
    for (flag, _) in &extra {
        flags |= flag;
    }
    v.push(flags);
    for (_, s) in extra {
        // Strings come from validated payloads (at most 4 KiB in all).
        let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
    }
    v
}

pub(super) fn decode(key: &[u8], value: &[u8]) -> Result<StoredReading, StoredReadingError> {
    if value.first() == Some(&b'{') {
        return serde_json::from_slice(value).map_err(|e| StoredReadingError(e.to_string()));
    }
    let split = key
        .len()
        .checked_sub(KEY_TAIL)
        .ok_or_else(|| err("key too short"))?;
    let topic = std::str::from_utf8(&key[..split]).map_err(|_| err("topic is not UTF-8"))?;
    let tail = &key[split + 1..];
    let micros = (u64::from_be_bytes(array(&tail[..8])?) ^ (1 << 63)).cast_signed();
    let seq = u64::from_be_bytes(array(&tail[8..])?);
    if value.len() < 19 || value[0] != VERSION {
        return Err(err("unknown value layout"));
    }
    let f = f64::from_le_bytes(array(&value[1..9])?);
    let received = i64::from_le_bytes(array(&value[9..17])?);
    let (qos, flags) = (value[17], value[18]);
    let mut rest = &value[19..];
    let mut take = |flag: u8, implied: Option<&str>| -> Result<String, StoredReadingError> {
        if flags & flag == 0 {
            return implied
                .map(str::to_owned)
                .ok_or_else(|| err("field neither stored nor implied"));
        }
        let len = usize::from(u16::from_le_bytes(array(
            rest.get(..2).ok_or_else(|| err("truncated"))?,
        )?));
        let s = rest.get(2..2 + len).ok_or_else(|| err("truncated"))?;
        rest = &rest[2 + len..];
        String::from_utf8(s.to_vec()).map_err(|_| err("string is not UTF-8"))
    };
    let Implied {
        sensor_id: id,
        sensor_type: ty,
        unit,
    } = Implied::of(topic);
    let unit = take(UNIT, unit)?;
    let sensor_id = take(SENSOR_ID, id)?;
    let sensor_type = take(SENSOR_TYPE, ty)?;
    let time = |us| Timestamp::from_micros(us).ok_or_else(|| err("time out of range"));
    Ok(StoredReading {
        topic: topic.to_owned(),
        reading: Reading {
            sensor_id,
            sensor_type,
            value: f,
            unit,
            timestamp: time(micros)?,
            seq: (flags & HAS_SEQ != 0).then_some(seq),
        },
        received_at: time(received)?,
        qos,
    })
}

/// An old record that cannot be read, and why: the migration logs it and leaves it out.
#[derive(Debug)]
pub(super) struct StoredReadingError(pub String);

fn err(message: &str) -> StoredReadingError {
    StoredReadingError(message.to_owned())
}

fn array<const N: usize>(bytes: &[u8]) -> Result<[u8; N], StoredReadingError> {
    bytes.try_into().map_err(|_| err("truncated"))
}

impl From<StoredReadingError> for String {
    fn from(e: StoredReadingError) -> String {
        e.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(topic: &str, unit: &str, seq: Option<u64>) -> StoredReading {
        StoredReading {
            topic: topic.to_owned(),
            reading: Reading {
                sensor_id: topic.rsplit('/').next().unwrap().to_owned(),
                sensor_type: topic.rsplit('/').nth(1).unwrap().to_owned(),
                value: -12.5,
                unit: unit.to_owned(),
                timestamp: Timestamp::parse("2026-01-24T10:00:00.123456Z").unwrap(),
                seq,
            },
            received_at: Timestamp::parse("2026-01-24T10:00:01.5Z").unwrap(),
            qos: 2,
        }
    }

    #[test]
    fn round_trips_compactly_and_keeps_the_unusual() {
        let usual = sample("building/f1/r1/temperature/temp_001", "celsius", Some(42));
        let bytes = encode(&usual);
        assert_eq!(
            bytes.len(),
            19,
            "nothing but value, received_at, qos, flags"
        );
        let k = key(&usual.topic, usual.reading.timestamp, usual.reading.seq);
        assert_eq!(decode(&k, &bytes).unwrap(), usual);

        let odd = sample("building/f1/r1/light/lux_1", "lux", None);
        let k = key(&odd.topic, odd.reading.timestamp, odd.reading.seq);
        assert_eq!(decode(&k, &encode(&odd)).unwrap(), odd);
    }

    #[test]
    fn reads_old_json_values_and_refuses_garbage() {
        let r = sample("building/f1/r1/temperature/temp_001", "celsius", Some(1));
        let k = key(&r.topic, r.reading.timestamp, r.reading.seq);
        assert_eq!(decode(&k, &serde_json::to_vec(&r).unwrap()).unwrap(), r);
        for bad in [&b""[..], &[1u8, 2, 3][..], &[9u8; 19][..]] {
            assert!(decode(&k, bad).is_err());
        }
        assert!(decode(b"short", &encode(&r)).is_err());
    }
}
