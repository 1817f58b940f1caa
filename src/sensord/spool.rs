//! The outbox's file: QoS 1/2 messages the broker has not confirmed yet, kept
//! in sensord's state directory so they survive a restart, a kill or a power
//! cut (the outbox, outbox.rs, decides when to write, sync and trim).
//!
//! One append-only file, `outbox`: a 16-byte header, then frames.
//!
//! ```text
//! header  "RSOB" | head: u64 LE | CRC-32 of the 12 bytes before it
//! frame   body length: u32 LE | CRC-32 of the body: u32 LE | body
//! body    qos: u8 | retain: u8 | topic length: u16 LE | topic | payload
//! ```
//!
//! `head` is where the first unconfirmed frame starts; what lies before it is
//! confirmed. It is rewritten at each confirmation without a sync of its own
//! (the next sync carries it; a kill keeps it, the page cache survives), and
//! synced at a clean stop: so a restart sends again only what the broker had
//! not confirmed, except after a power cut, when up to one sync interval of
//! confirmed readings may be sent again (aggregatord's exactly-once storage
//! drops them). The file is cut back to its header once everything is
//! confirmed and [`TRUNCATE_AT`] of it has piled up. Frames are synced before
//! they are handed to MQTT. A torn or damaged frame ends the file: it and what
//! follows are cut off at open, and counted, never sent.

use crate::contract::Qos;
use crate::mqtt::Message;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"RSOB";
const HEADER_LEN: usize = 16;
pub const HEADER: u64 = HEADER_LEN as u64;
const FRAME_HEAD: usize = 8;
/// Confirmed bytes before the file is cut back to its header: a cut is a
/// metadata change the next sync pays for, so not one per confirmation.
pub const TRUNCATE_AT: u64 = 64 * 1024;
/// No reading comes near this (MQTT packets are capped at 64 KiB here); a
/// larger length is damage.
const MAX_BODY: usize = 1 << 20;

/// The file, and where its live frames are.
pub struct Spool {
    file: File,
    path: PathBuf,
    /// Start of the first unconfirmed frame.
    head: u64,
    /// End of the last frame.
    end: u64,
    /// Where the synced frames end: only those may be handed to MQTT.
    synced: u64,
}

/// What [`Spool::open`] found.
pub struct Opened {
    pub spool: Spool,
    /// The unconfirmed messages, oldest first, with each frame's start.
    pub pending: Vec<(Message, u64)>,
    /// Bytes of a torn or damaged tail, cut off.
    pub torn_bytes: u64,
}

impl Spool {
    /// Opens (or makes) `dir/outbox` and reads back what is unconfirmed.
    pub fn open(dir: &Path) -> io::Result<Opened> {
        let path = dir.join("outbox");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let head = read_header(&bytes).unwrap_or(HEADER);
        let (pending, valid_end) = decode_frames(&bytes, head);
        let len = bytes.len() as u64;
        let torn_bytes = len.saturating_sub(valid_end.max(HEADER));
        let mut spool = Spool {
            file,
            path,
            head: head.min(valid_end.max(HEADER)),
            end: valid_end.max(HEADER),
            synced: valid_end.max(HEADER),
        };
        if len < HEADER || torn_bytes > 0 {
            spool.file.set_len(spool.end)?;
            spool.write_header()?;
            spool.file.sync_data()?;
        }
        Ok(Opened {
            spool,
            pending,
            torn_bytes,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of unconfirmed frames.
    pub fn live(&self) -> u64 {
        self.end - self.head
    }

    /// Appends `m` (not synced yet); returns where its frame starts.
    pub fn append(&mut self, m: &Message) -> io::Result<u64> {
        let frame = encode(m);
        let at = self.end;
        self.file.write_all_at(&frame, at)?;
        self.end += frame.len() as u64;
        Ok(at)
    }

    /// Whether frames were appended since the last sync.
    pub fn dirty(&self) -> bool {
        self.synced < self.end
    }

    /// Whether the frame starting at `at` is on disk.
    pub fn is_synced(&self, at: u64) -> bool {
        at < self.synced
    }

    /// Makes every appended frame durable (one fdatasync for all of them).
    pub fn sync(&mut self) -> io::Result<bool> {
        if !self.dirty() {
            return Ok(false);
        }
        self.file.sync_data()?;
        self.synced = self.end;
        Ok(true)
    }

    /// Everything before `head` is confirmed. Once everything is, and enough
    /// of it, the file goes back to its header.
    pub fn confirm_to(&mut self, head: u64) -> io::Result<()> {
        self.head = head.clamp(HEADER, self.end);
        if self.head == self.end && self.end - HEADER >= TRUNCATE_AT && !self.dirty() {
            self.file.set_len(HEADER)?;
            self.head = HEADER;
            self.end = HEADER;
            self.synced = HEADER;
        }
        self.write_header()
    }

    /// At a clean stop: the head on disk, so the next start sends nothing twice.
    pub fn close(&mut self) -> io::Result<()> {
        self.write_header()?;
        self.file.sync_data()
    }

    /// Writes `live` (oldest first) as the whole file, through a new file
    /// renamed over the old one; returns each frame's start.
    pub fn rewrite<'a>(&mut self, live: impl Iterator<Item = &'a Message>) -> io::Result<Vec<u64>> {
        let tmp = self.path.with_extension("new");
        let mut out = File::create(&tmp)?;
        out.write_all(&header(HEADER))?;
        let mut starts = Vec::new();
        let mut at = HEADER;
        for m in live {
            let frame = encode(m);
            out.write_all(&frame)?;
            starts.push(at);
            at += frame.len() as u64;
        }
        out.sync_data()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new().read(true).write(true).open(&self.path)?;
        self.head = HEADER;
        self.end = at;
        self.synced = at;
        Ok(starts)
    }

    fn write_header(&mut self) -> io::Result<()> {
        self.file.write_all_at(&header(self.head), 0)
    }
}

fn header(head: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(MAGIC);
    h[4..12].copy_from_slice(&head.to_le_bytes());
    let crc = crc32fast::hash(&h[..12]);
    h[12..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The head a header names, if the header is whole.
fn read_header(bytes: &[u8]) -> Option<u64> {
    let h = bytes.get(..HEADER_LEN)?;
    let crc = u32::from_le_bytes(h[12..16].try_into().ok()?);
    (h[..4] == *MAGIC && crc32fast::hash(&h[..12]) == crc)
        .then(|| u64::from_le_bytes(h[4..12].try_into().unwrap_or_default()))
        .filter(|&head| head >= HEADER)
}

/// One message as a frame.
pub fn encode(m: &Message) -> Vec<u8> {
    let topic = m.topic.as_bytes();
    // Topics are checked far below 64 KiB (the contract's limits).
    let topic_len = u16::try_from(topic.len()).unwrap_or(u16::MAX);
    let topic = &topic[..usize::from(topic_len)];
    let mut body = Vec::with_capacity(4 + topic.len() + m.payload.len());
    body.push(match m.qos {
        Qos::AtMostOnce => 0,
        Qos::AtLeastOnce => 1,
        Qos::ExactlyOnce => 2,
    });
    body.push(u8::from(m.retain));
    body.extend_from_slice(&topic_len.to_le_bytes());
    body.extend_from_slice(topic);
    body.extend_from_slice(&m.payload);
    let mut frame = Vec::with_capacity(FRAME_HEAD + body.len());
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// The whole frames from `from` on, each with its start, and where the last
/// whole one ends: the first torn or damaged frame ends the walk.
pub fn decode_frames(bytes: &[u8], from: u64) -> (Vec<(Message, u64)>, u64) {
    let mut out = Vec::new();
    let Ok(mut at) = usize::try_from(from) else {
        return (out, HEADER);
    };
    if at < HEADER_LEN || at > bytes.len() {
        return (out, HEADER.min(bytes.len() as u64));
    }
    while let Some(m) = frame_at(bytes, at) {
        let (message, next) = m;
        out.push((message, at as u64));
        at = next;
    }
    (out, at as u64)
}

fn frame_at(bytes: &[u8], at: usize) -> Option<(Message, usize)> {
    let head = bytes.get(at..at + FRAME_HEAD)?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().ok()?);
    if !(4..=MAX_BODY).contains(&len) {
        return None;
    }
    let body = bytes.get(at + FRAME_HEAD..at + FRAME_HEAD + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let qos = match body[0] {
        0 => Qos::AtMostOnce,
        1 => Qos::AtLeastOnce,
        2 => Qos::ExactlyOnce,
        _ => return None,
    };
    let retain = body[1] == 1;
    let topic_len = usize::from(u16::from_le_bytes([body[2], body[3]]));
    let topic = std::str::from_utf8(body.get(4..4 + topic_len)?).ok()?;
    let payload = body.get(4 + topic_len..)?.to_vec();
    Some((
        Message {
            topic: topic.to_owned(),
            payload,
            qos,
            retain,
        },
        at + FRAME_HEAD + len,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(i: u32) -> Message {
        Message {
            topic: format!("building/floor1/room101/energy/energy_00{}", i % 3),
            payload: format!("{{\"seq\":{i}}}").into_bytes(),
            qos: if i.is_multiple_of(2) {
                Qos::ExactlyOnce
            } else {
                Qos::AtLeastOnce
            },
            retain: false,
        }
    }

    /// The unconfirmed messages a fresh open of `dir` finds.
    fn reopened(dir: &Path) -> Vec<Message> {
        let opened = Spool::open(dir).unwrap();
        opened.pending.into_iter().map(|(m, _)| m).collect()
    }

    #[test]
    fn what_was_appended_and_synced_comes_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path()).unwrap().spool;
        for i in 0..10 {
            s.append(&message(i)).unwrap();
        }
        assert!(s.sync().unwrap());
        drop(s);
        assert_eq!(
            reopened(dir.path()),
            (0..10).map(message).collect::<Vec<_>>()
        );
        assert_eq!(Spool::open(dir.path()).unwrap().torn_bytes, 0);
    }

    #[test]
    fn confirmed_frames_are_not_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path()).unwrap().spool;
        let starts: Vec<u64> = (0..5).map(|i| s.append(&message(i)).unwrap()).collect();
        s.sync().unwrap();
        s.confirm_to(starts[3]).unwrap();
        drop(s);
        let back = reopened(dir.path());
        assert_eq!(back, vec![message(3), message(4)]);
    }

    #[test]
    fn enough_confirmed_leaves_only_the_header_and_a_restart_replays_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path()).unwrap().spool;
        s.append(&message(1)).unwrap();
        s.sync().unwrap();
        let end = s.end;
        s.confirm_to(end).unwrap();
        assert_eq!(s.live(), 0);
        // A little confirmed: kept, behind the head.
        assert!(std::fs::metadata(s.path()).unwrap().len() > HEADER);
        drop(s);
        assert!(Spool::open(dir.path()).unwrap().pending.is_empty());
        let mut s = Spool::open(dir.path()).unwrap().spool;
        while s.end - HEADER < TRUNCATE_AT {
            s.append(&message(2)).unwrap();
        }
        s.sync().unwrap();
        let end = s.end;
        s.confirm_to(end).unwrap();
        assert_eq!(std::fs::metadata(s.path()).unwrap().len(), HEADER);
        drop(s);
        assert!(Spool::open(dir.path()).unwrap().pending.is_empty());
    }

    #[test]
    fn a_torn_or_damaged_tail_is_cut_off_and_counted_never_read_as_a_message() {
        for damage in ["cut", "flip"] {
            let dir = tempfile::tempdir().unwrap();
            let mut s = Spool::open(dir.path()).unwrap().spool;
            let starts: Vec<u64> = (0..4).map(|i| s.append(&message(i)).unwrap()).collect();
            s.sync().unwrap();
            let len = s.end;
            drop(s);
            let path = dir.path().join("outbox");
            let mut bytes = std::fs::read(&path).unwrap();
            match damage {
                "cut" => bytes.truncate(usize::try_from(len).unwrap() - 5),
                _ => bytes[usize::try_from(starts[2]).unwrap() + 12] ^= 0x40,
            }
            std::fs::write(&path, &bytes).unwrap();
            let opened = Spool::open(dir.path()).unwrap();
            let back: Vec<Message> = opened.pending.into_iter().map(|(m, _)| m).collect();
            let whole = if damage == "cut" { 3 } else { 2 };
            assert_eq!(
                back,
                (0..whole).map(message).collect::<Vec<_>>(),
                "{damage}"
            );
            assert_eq!(
                opened.torn_bytes,
                bytes.len() as u64 - starts[whole as usize],
                "{damage}"
            );
            // Cut off for good: appending goes on after the last whole frame.
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                starts[whole as usize]
            );
        }
    }

    #[test]
    fn a_rewrite_keeps_the_live_frames_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path()).unwrap().spool;
        for i in 0..6 {
            s.append(&message(i)).unwrap();
        }
        let keep = [message(4), message(5)];
        s.rewrite(keep.iter()).unwrap();
        s.append(&message(6)).unwrap();
        s.sync().unwrap();
        drop(s);
        let back = reopened(dir.path());
        assert_eq!(back, vec![message(4), message(5), message(6)]);
    }
}
