//! Where each key of a YAML config is written, by the same dotted path that
//! errors carry (`sensors[2].id`, `broker.port`), so every config error can
//! name its line.
//! It knows neither daemon's schema: it records where keys are, not whether they
//! are valid.
//!
//! The serde YAML deserializer reports a position only for some errors, and
//! often that of the enclosing mapping; validation errors found after parsing
//! have none. So the text is walked once more with saphyr-parser, which keeps a
//! source position on every event, and each node's path is mapped to the line
//! it starts on (for a mapping entry, the line of its key).

use saphyr_parser::{Event, Parser, ScanError};
use std::collections::HashMap;

/// Path → one-based line, for every node of the first document.
#[derive(Debug, Default)]
pub(crate) struct Spans(HashMap<String, usize>);

/// Text that is not YAML, and the line where the parser found out.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    /// One-based.
    pub line: usize,
}

impl From<ScanError> for SyntaxError {
    fn from(e: ScanError) -> Self {
        SyntaxError {
            line: e.marker().line(),
        }
    }
}

/// Where the walk is: inside a mapping (waiting for a key, or for the value of
/// `key`) or inside a sequence (at item `next`).
enum Frame {
    /// A mapping at `path`: `key` is the key whose value comes next, `None` while a key
    /// is awaited.
    Mapping { path: String, key: Option<String> },
    /// A sequence at `path`: `next` is the index of the next item.
    Sequence { path: String, next: usize },
}

impl Spans {
    pub fn of(text: &str) -> Result<Spans, SyntaxError> {
        let mut spans = Spans::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut documents = 0;
        for event in Parser::new_from_str(text) {
            let (event, span) = event?;
            let line = span.start.line();
            match event {
                Event::DocumentStart(_) => {
                    documents += 1;
                    if documents > 1 {
                        break; // Configs are one document; serde reads only the first.
                    }
                }
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Mapping {
                        path,
                        key: key @ None,
                    }) = stack.last_mut()
                    {
                        let at = join(path, &value);
                        spans.note(&at, line);
                        *key = Some(value.into_owned());
                    } else {
                        spans.value_at(&mut stack, line);
                    }
                }
                Event::Alias(_) => {
                    spans.value_at(&mut stack, line);
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let path = spans.value_at(&mut stack, line);
                    stack.push(match event {
                        Event::MappingStart(..) => Frame::Mapping { path, key: None },
                        _ => Frame::Sequence { path, next: 0 },
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                _ => {}
            }
        }
        Ok(spans)
    }

    /// The line of `path`, or of the nearest enclosing node that is written
    /// (a missing key is reported where its parent is).
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(&line) = self.0.get(path) {
                return Some(line);
            }
            path = parent(path)?;
        }
    }

    fn note(&mut self, path: &str, line: usize) {
        self.0.entry(path.to_owned()).or_insert(line);
    }

    /// A value starts at `line` in the innermost container: records its path
    /// (sequence items have no key line of their own), advances the container,
    /// and returns the path.
    fn value_at(&mut self, stack: &mut [Frame], line: usize) -> String {
        match stack.last_mut() {
            None => String::new(),
            Some(Frame::Sequence { path, next }) => {
                let at = format!("{path}[{next}]");
                *next += 1;
                self.note(&at, line);
                at
            }
            Some(Frame::Mapping { path, key }) => match key.take() {
                Some(key) => join(path, &key),
                // A mapping or sequence used as a key: nothing serde names.
                None => join(path, "?"),
            },
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// `a.b[2].c` → `a.b[2]` → `a.b` → `a` → none.
fn parent(path: &str) -> Option<&str> {
    let cut = path.rfind(['.', '['])?;
    Some(&path[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_and_flow_nodes_and_nested_lists() {
        let text = "\
node:
  id: a
sensors:
  - id: t1
    faults:
      - { kind: stuck, after: 1m }
      - kind: spike
  - { id: t2, type: humidity }
  -
    id: t3
room:
  occupancy: { days: [mon, xyz] }
";
        let s = Spans::of(text).unwrap();
        assert_eq!(s.line("node.id"), Some(2));
        assert_eq!(s.line("sensors[0].id"), Some(4));
        assert_eq!(s.line("sensors[0].faults[1].kind"), Some(7));
        assert_eq!(s.line("sensors[1]"), Some(8));
        assert_eq!(s.line("sensors[1].type"), Some(8));
        assert_eq!(s.line("sensors[2].id"), Some(10));
        assert_eq!(s.line("room.occupancy.days[1]"), Some(12));
        // Not written: its parent's line.
        assert_eq!(s.line("sensors[2].qos"), Some(10));
        assert_eq!(s.line("nothing"), None);
    }

    #[test]
    fn a_syntax_error_has_the_parsers_line() {
        let e = Spans::of("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(e.line >= 2, "{e:?}");
    }
}
