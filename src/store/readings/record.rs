//! The journal's records: one batch's new readings, as bytes (the journal's
//! files, `wal.rs`, frame and checksum them; replay in `mod.rs` reads them
//! back). Pure bytes, no I/O.
//!
//! A journal record (version 2): `0x02 | base time i64 LE | count varint`
//! and that many topics created in this batch, each `id varint | length
//! varint | name`; then per topic `id varint | first time - base (zigzag
//! varint) | first seq varint | length varint | entries
//! (chunk::encode_entries)`. A batch's readings are mostly one per topic, so
//! the per-topic part is kept to a few bytes. Version 1 (no names) and the
//! first layout (per topic: chunk key, length u32 LE, a version 2 chunk,
//! starting with a topic id's top byte, 0) are still read, from stores that
//! kept the journal in sled.

use super::corrupt;
use crate::store::chunk::{self, Entry};
use crate::store::StoreError;

pub(super) const RECORD_V1: u8 = 1;
pub(super) const RECORD_V2: u8 = 2;

/// A decoded journal record.
pub(super) struct Record {
    /// Topics created in its batch.
    pub names: Vec<(u32, String)>,
    /// Per topic id, its new readings.
    pub topics: Vec<(u32, Vec<Entry>)>,
}

pub(super) fn encode_record(
    names: &[(u32, String)],
    topics: &[(u32, String, Vec<Entry>)],
) -> Vec<u8> {
    let base = topics
        .iter()
        .find_map(|(_, _, es)| es.first())
        .map_or(0, |e| e.time);
    let mut v = Vec::with_capacity(16 + topics.len() * 16);
    v.push(RECORD_V2);
    v.extend_from_slice(&base.to_le_bytes());
    chunk::varint(&mut v, names.len() as u64);
    for (id, name) in names {
        chunk::varint(&mut v, u64::from(*id));
        chunk::varint(&mut v, name.len() as u64);
        v.extend_from_slice(name.as_bytes());
    }
    let mut entries = Vec::new();
    for (id, _, es) in topics {
        let Some(first) = es.first() else {
            continue;
        };
        let (time, seq) = first.pos();
        chunk::varint(&mut v, u64::from(*id));
        chunk::varint(&mut v, chunk::zigzag(time.wrapping_sub(base)));
        chunk::varint(&mut v, seq);
        entries.clear();
        chunk::encode_entries(&mut entries, es);
        chunk::varint(&mut v, entries.len() as u64);
        v.extend_from_slice(&entries);
    }
    v
}

pub(super) fn decode_record(k: &[u8], v: &[u8]) -> Result<Record, StoreError> {
    let version = v.first().copied();
    if version != Some(RECORD_V1) && version != Some(RECORD_V2) {
        return Ok(Record {
            names: Vec::new(),
            topics: decode_record_v0(k, v)?,
        });
    }
    let bad = |e: chunk::ChunkError| corrupt(k, e);
    let mut r = chunk::Reader(&v[1..]);
    let base = i64::from_le_bytes(r.take::<8>().map_err(bad)?);
    let mut names = Vec::new();
    if version == Some(RECORD_V2) {
        for _ in 0..r.varint().map_err(bad)? {
            let id = u32::try_from(r.varint().map_err(bad)?)
                .map_err(|_| corrupt(k, "bad topic id in journal record"))?;
            let len = usize::try_from(r.varint().map_err(bad)?)
                .map_err(|_| corrupt(k, "truncated journal record"))?;
            let name = std::str::from_utf8(r.bytes(len).map_err(bad)?)
                .map_err(|_| corrupt(k, "topic name is not UTF-8"))?;
            names.push((id, name.to_owned()));
        }
    }
    let mut topics = Vec::new();
    while !r.0.is_empty() {
        let id = u32::try_from(r.varint().map_err(bad)?)
            .map_err(|_| corrupt(k, "bad topic id in journal record"))?;
        let time = base.wrapping_add(chunk::unzigzag(r.varint().map_err(bad)?));
        let seq = r.varint().map_err(bad)?;
        let len = usize::try_from(r.varint().map_err(bad)?)
            .map_err(|_| corrupt(k, "truncated journal record"))?;
        let body = r.bytes(len).map_err(bad)?;
        topics.push((id, chunk::decode_entries((time, seq), body).map_err(bad)?));
    }
    Ok(Record { names, topics })
}

/// The first record layout: per topic, chunk key, length (u32 LE), chunk.
fn decode_record_v0(k: &[u8], v: &[u8]) -> Result<Vec<(u32, Vec<Entry>)>, StoreError> {
    let mut out = Vec::new();
    let mut rest = v;
    while !rest.is_empty() {
        if rest.len() < chunk::KEY_LEN + 4 {
            return Err(corrupt(k, "truncated journal record"));
        }
        let (key, tail) = rest.split_at(chunk::KEY_LEN);
        let (len, tail) = tail.split_at(4);
        let len = usize::try_from(u32::from_le_bytes([len[0], len[1], len[2], len[3]]))
            .unwrap_or(usize::MAX);
        if tail.len() < len {
            return Err(corrupt(k, "truncated journal record"));
        }
        let (body, tail) = tail.split_at(len);
        let (id, _) = chunk::parse_key(key).map_err(|e| corrupt(k, e))?;
        out.push((id, chunk::decode(key, body).map_err(|e| corrupt(k, e))?));
        rest = tail;
    }
    Ok(out)
}

pub(super) fn record_of(k: &[u8]) -> Result<u64, StoreError> {
    k.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt(k, "bad journal key"))
}
