//! `aggregatord dump`: the stored history as a table, JSON lines or CSV.

use crate::store::{RejectedMessage, Store, StoredReading};
use std::io::{self, BufWriter, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, for people.
    Table,
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated, with a header line.
    Csv,
}

/// Rows used to size table columns; longer values later simply overflow.
const TABLE_SAMPLE: usize = 1000;

pub fn readings(store: &Store, format: Format, out: impl Write) -> io::Result<()> {
    const HEADER: [&str; 9] = [
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
    let fields = |r: &StoredReading| {
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
    };
    write_rows(store.readings(), format, &HEADER, fields, out)
}

pub fn rejected(store: &Store, format: Format, out: impl Write) -> io::Result<()> {
    const HEADER: [&str; 5] = ["received_at", "topic", "reason", "detail", "payload"];
    let fields = |r: &RejectedMessage| {
        vec![
            r.received_at.to_string(),
            r.topic.clone(),
            r.reason.clone(),
            r.detail.clone(),
            r.payload.clone(),
        ]
    };
    write_rows(store.rejected(), format, &HEADER, fields, out)
}

fn write_rows<T: serde::Serialize, E: std::fmt::Display>(
    rows: impl Iterator<Item = Result<T, E>>,
    format: Format,
    header: &[&str],
    fields: impl Fn(&T) -> Vec<String>,
    out: impl Write,
) -> io::Result<()> {
    let mut out = BufWriter::new(out);
    let mut rows = rows.map(|r| r.map_err(|e| io::Error::other(e.to_string())));
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
            line.push_str(&format!("{f:<w$}  "));
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
    fn csv_quoting() {
        assert_eq!(super::csv_field("plain"), "plain");
        assert_eq!(super::csv_field("a,b"), "\"a,b\"");
        assert_eq!(super::csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
