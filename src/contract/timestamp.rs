//! Reading timestamps: RFC 3339 UTC on the wire from us; lenient on the way in.
//! It judges no time: how far ahead of the clock is too far is validate.rs's.

use chrono::{DateTime, Local, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// An instant, shown as RFC 3339 UTC with as many fractional digits as it has
/// (milliseconds for our own readings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub DateTime<Utc>);

impl Timestamp {
    /// Now, truncated to milliseconds: the precision sensord promises.
    pub fn now_millis() -> Self {
        let now = Utc::now();
        Timestamp(DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now))
    }

    pub fn micros(self) -> i64 {
        self.0.timestamp_micros()
    }

    pub fn from_micros(micros: i64) -> Option<Self> {
        DateTime::from_timestamp_micros(micros).map(Timestamp)
    }

    /// Parses RFC 3339 (any offset), or a naive `YYYY-MM-DDTHH:MM:SS[.frac]` as
    /// produced by Python's `datetime.now().isoformat()` in the course brief.
    ///
    /// A naive time is read in the aggregator's local time zone (`TZ`, else
    /// `/etc/localtime`), because that is what such a client wrote: its wall clock,
    /// in the same building. A wall-clock time that does not exist (skipped by a DST
    /// change) is refused; one that occurs twice takes the earlier instant.
    ///
    /// A leap second (`23:59:60`) is refused: chrono keeps it as the last
    /// second's nanosecond 1,000,000,000 and up, which in microseconds is the
    /// next second's first instant, so the reading would take the identity
    /// of another (and be dropped as its duplicate).
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = Self::parse_any(text)?;
        if t.0.timestamp_subsec_nanos() >= 1_000_000_000 {
            return Err(format!(
                "{text:?} is a leap second (:60), which storage cannot tell from the next second's first instant"
            ));
        }
        Ok(t)
    }

    fn parse_any(text: &str) -> Result<Self, String> {
        if let Ok(t) = DateTime::parse_from_rfc3339(text) {
            return Ok(Timestamp(t.with_timezone(&Utc)));
        }
        let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
            .map_err(|_| format!("{text:?} is neither RFC 3339 nor a naive ISO 8601 date-time"))?;
        Local
            .from_local_datetime(&naive)
            .earliest()
            .map(|t| Timestamp(t.with_timezone(&Utc)))
            .ok_or_else(|| format!("{text:?} does not exist in the local time zone"))
    }
}

impl Timestamp {
    /// For command lines and query strings: a duration ago (`1h`, `30m`), or a
    /// time as [`Timestamp::parse`] reads it.
    pub fn parse_ago(text: &str) -> Result<Self, String> {
        if let Ok(ago) = humantime::parse_duration(text) {
            // Checked: the text comes from command lines and query strings
            // (`since=300000y` once panicked here).
            let too_long = || format!("{text:?} is too long ago");
            let ago = chrono::Duration::from_std(ago).map_err(|_| too_long())?;
            return Timestamp::now_millis()
                .0
                .checked_sub_signed(ago)
                .map(Timestamp)
                .ok_or_else(too_long);
        }
        Timestamp::parse(text).map_err(|e| format!("{e}; or a duration ago, like 1h"))
    }
}

impl fmt::Display for Timestamp {
    /// Milliseconds always (`…:00.000Z`, so the text sorts like the time), or
    /// microseconds when a client sent them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = if self.0.timestamp_subsec_micros().is_multiple_of(1000) {
            SecondsFormat::Millis
        } else {
            SecondsFormat::Micros
        };
        f.write_str(&self.0.to_rfc3339_opts(format, true))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_at_millisecond_precision() {
        let t = Timestamp::parse("2026-01-24T10:00:00.123Z").unwrap();
        assert_eq!(t.to_string(), "2026-01-24T10:00:00.123Z");
        let t = Timestamp::parse("2026-01-24T12:00:00.5+02:00").unwrap();
        assert_eq!(t.to_string(), "2026-01-24T10:00:00.500Z");
        let whole = Timestamp::parse("2026-01-24T10:00:00Z").unwrap();
        assert_eq!(
            whole.to_string(),
            "2026-01-24T10:00:00.000Z",
            "always milliseconds"
        );
        let micros = Timestamp::parse("2026-01-24T10:00:00.123456").unwrap();
        assert!(micros.to_string().ends_with(".123456Z"));
    }

    #[test]
    fn a_leap_second_is_refused_not_folded_into_the_next_second() {
        let leap = Timestamp::parse("2016-12-31T23:59:60Z").unwrap_err();
        assert!(leap.contains("leap second"), "{leap}");
        assert!(Timestamp::parse("2016-12-31T23:59:60.500+00:00").is_err());
        assert!(Timestamp::parse("2016-12-31T23:59:59.999Z").is_ok());
        assert!(Timestamp::parse("2017-01-01T00:00:00Z").is_ok());
    }

    #[test]
    fn naive_is_local_wall_clock() {
        let t = Timestamp::parse("2026-01-24T10:00:00.123456").unwrap();
        let expect = Local
            .with_ymd_and_hms(2026, 1, 24, 10, 0, 0)
            .unwrap()
            .with_timezone(&Utc)
            + chrono::Duration::microseconds(123_456);
        assert_eq!(t.0, expect);
    }

    #[test]
    fn garbage_is_refused() {
        for bad in ["", "yesterday", "2026-13-01T00:00:00", "1700000000"] {
            assert!(Timestamp::parse(bad).is_err(), "{bad:?}");
        }
    }
}
