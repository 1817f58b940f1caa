//! Logging to journald, so that `journalctl -u` and `systemctl status` read
//! like the stderr log: MESSAGE is the message followed by its fields
//! (`reload failed; still running on the previous configuration error=…:7:
//! sensors[0].qos: …`), and every field is also kept as its own journal field
//! (`F_ERROR=…`) for `journalctl -o json` and for filtering.
//! It knows no config: whether to log here at all is `daemon::init_logging`'s call.
//!
//! tracing-journald, which this replaces, puts the fields only into their own
//! journal fields, and plain `journalctl` shows none of them.
//!
//! The protocol is journald's native one: one datagram per entry to
//! /run/systemd/journal/socket, `KEY=value` lines, or `KEY\n<u64 LE length>
//! value\n` for values with newlines (systemd's "Native Journal Protocol").

use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

const SOCKET: &str = "/run/systemd/journal/socket";
/// Values longer than this are cut: a datagram must stay under the socket's
/// buffer size, and no log line of ours needs more.
const MAX_VALUE: usize = 48 * 1024;

/// A tracing layer that writes each event to journald in its native protocol.
pub struct Journald {
    /// Unbound, connected to journald's socket: one datagram per entry.
    socket: UnixDatagram,
    /// `SYSLOG_IDENTIFIER`: the program's file name (`sensord`), for `journalctl -t`.
    identifier: String,
}

impl Journald {
    pub fn connect() -> std::io::Result<Journald> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(SOCKET)?;
        let identifier = std::env::args()
            .next()
            .and_then(|a| {
                std::path::Path::new(&a)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "roomsense".into());
        Ok(Journald { socket, identifier })
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for Journald {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let entry = entry(
            &self.identifier,
            *meta.level(),
            meta.target(),
            meta.file(),
            meta.line(),
            &fields,
        );
        // Nothing sensible to do if the journal is gone: logging must not fail the daemon.
        let _ = self.socket.send(&entry);
    }
}

/// An event's message and its other fields, in the order written.
#[derive(Default)]
struct Fields {
    /// The event's `message` field: the start of MESSAGE.
    message: String,
    /// Every other field, by name, as text (Debug-formatted unless a string).
    others: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            value.clone_into(&mut self.message);
        } else {
            self.others.push((field.name(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.others.push((field.name(), format!("{value:?}")));
        }
    }
}

/// One journal entry in the native protocol.
fn entry(
    identifier: &str,
    level: Level,
    target: &str,
    file: Option<&str>,
    line: Option<u32>,
    fields: &Fields,
) -> Vec<u8> {
    // The same `key=value` tail as the stderr format, quoted where needed.
    let mut message = fields.message.clone();
    for (key, value) in &fields.others {
        if value.contains([' ', '"']) {
            let _ = write!(message, " {key}={value:?}");
        } else {
            let _ = write!(message, " {key}={value}");
        }
    }
    let priority = match level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "6",
        _ => "7",
    };
    let mut out = Vec::with_capacity(256 + message.len());
    put(&mut out, "MESSAGE", &message);
    put(&mut out, "PRIORITY", priority);
    put(&mut out, "SYSLOG_IDENTIFIER", identifier);
    put(&mut out, "TARGET", target);
    if let Some(file) = file {
        put(&mut out, "CODE_FILE", file);
    }
    if let Some(line) = line {
        put(&mut out, "CODE_LINE", &line.to_string());
    }
    for (key, value) in &fields.others {
        put(&mut out, &field_name(key), value);
    }
    out
}

/// `error` → `F_ERROR`: journal field names are upper case letters, digits
/// and underscores, and must not start with an underscore (those are trusted).
fn field_name(key: &str) -> String {
    let mut name = String::from("F_");
    name.extend(key.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    name
}

fn put(out: &mut Vec<u8>, key: &str, value: &str) {
    let mut end = value.len().min(MAX_VALUE);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let value = &value.as_bytes()[..end];
    out.extend_from_slice(key.as_bytes());
    if value.contains(&b'\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_carries_the_fields_and_each_field_is_kept() {
        let fields = Fields {
            message: "reload failed; still running on the previous configuration".into(),
            others: vec![
                (
                    "error",
                    "/etc/x.yaml:7: sensors[0].qos: QoS is 0, 1 or 2".into(),
                ),
                ("stored", "12".into()),
            ],
        };
        let entry = entry(
            "sensord",
            Level::WARN,
            "roomsense::daemon",
            None,
            Some(3),
            &fields,
        );
        let text = String::from_utf8(entry).unwrap();
        assert!(text.starts_with(
            "MESSAGE=reload failed; still running on the previous configuration \
             error=\"/etc/x.yaml:7: sensors[0].qos: QoS is 0, 1 or 2\" stored=12\n"
        ));
        assert!(text.contains("\nPRIORITY=4\n"));
        assert!(text.contains("\nF_ERROR=/etc/x.yaml:7: sensors[0].qos: QoS is 0, 1 or 2\n"));
        assert!(text.contains("\nF_STORED=12\n"));
        assert!(text.contains("\nCODE_LINE=3\n"));
    }

    #[test]
    fn values_with_newlines_are_length_prefixed() {
        let mut out = Vec::new();
        put(&mut out, "MESSAGE", "a\nb");
        assert_eq!(out, b"MESSAGE\n\x03\0\0\0\0\0\0\0a\nb\n");
    }
}
