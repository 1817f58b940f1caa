//! Validated names that become topic levels.
//! It only validates names; topic.rs builds topics from them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A node, sensor or client id: `[A-Za-z0-9_-]{1,64}`, and not a reserved topic word.
///
/// Ids become topic levels, so anything that could change a topic's meaning
/// (`/`, `+`, `#`, spaces) is refused at config load, not discovered on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ident(String);

/// Topic levels with a fixed meaning in the contract; no id may take them.
pub const RESERVED_LEVELS: [&str; 2] = ["status", "alerts"];

impl Ident {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `s` could be an id, without making one (ingest checks every
    /// topic level this way, without allocating).
    pub fn check(s: &str) -> Result<(), String> {
        Ident::check_level(s)?;
        if RESERVED_LEVELS.contains(&s) {
            return Err(format!("{s:?} is reserved in the topic layout"));
        }
        Ok(())
    }

    /// An id's characters and length, reserved words allowed: what any level
    /// of a topic prefix must be.
    pub fn check_level(s: &str) -> Result<(), String> {
        if s.is_empty() || s.len() > 64 {
            return Err(format!("{s:?} must be 1 to 64 characters long"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(format!(
                "{s:?} contains {c:?}; use only letters, digits, '_' and '-'"
            ));
        }
        Ok(())
    }
}

impl TryFrom<String> for Ident {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Ident::check(&s)?;
        Ok(Ident(s))
    }
}

impl From<Ident> for String {
    fn from(i: Ident) -> String {
        i.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The topic levels a node publishes under, e.g. `building/floor1/room101`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicPrefix(String);

impl TopicPrefix {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TopicPrefix {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.starts_with('$') {
            return Err(format!(
                "{s:?}: topics starting with '$' belong to the broker"
            ));
        }
        if s.len() > 512 {
            return Err(format!("{s:?} is longer than 512 bytes"));
        }
        for level in s.split('/') {
            if level.is_empty() {
                return Err(format!(
                    "{s:?} has an empty level (leading, trailing or double '/')"
                ));
            }
            if level.contains(['+', '#', '\0']) {
                return Err(format!(
                    "{s:?} contains a wildcard or NUL; a prefix is a plain topic"
                ));
            }
            if RESERVED_LEVELS.contains(&level) {
                return Err(format!(
                    "{s:?}: level {level:?} is reserved in the topic layout"
                ));
            }
        }
        Ok(TopicPrefix(s))
    }
}

impl From<TopicPrefix> for String {
    fn from(p: TopicPrefix) -> String {
        p.0
    }
}

impl fmt::Display for TopicPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ident_rules() {
        assert!(Ident::try_from("temp_001".to_owned()).is_ok());
        assert!(Ident::try_from("room-1".to_owned()).is_ok());
        for bad in ["", "a/b", "a+", "#", "a b", "status", "alerts", "é"] {
            assert!(Ident::try_from(bad.to_owned()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefix_rules() {
        assert!(TopicPrefix::try_from("building/floor1/room101".to_owned()).is_ok());
        for bad in ["", "/a", "a/", "a//b", "a/+/b", "a/#", "$SYS/x", "a/status"] {
            assert!(TopicPrefix::try_from(bad.to_owned()).is_err(), "{bad:?}");
        }
    }
}
