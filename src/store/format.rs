//! The frozen rules of the disk format, shared by every layout that stores
//! readings (chunks, the journal's records, the old one-key-per-reading
//! layout): what a topic implies about its readings, and how a time sorts as
//! a key. A leaf: it imports nothing from the store, and everything that
//! writes bytes imports it. Nothing here may ever change meaning: history
//! written under it must read back the same; a new rule needs a new format
//! version.

/// Big-endian with the sign bit flipped, so that byte order is time order.
pub(super) fn time_key(micros: i64) -> [u8; 8] {
    (micros.cast_unsigned() ^ (1 << 63)).to_be_bytes()
}

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

/// What a reading topic says about its readings: the sensor id and type, and
/// the type's unit. Entries (and the old layout, `codec.rs`) store these only
/// where a reading differs.
pub(super) struct Implied<'t> {
    /// The topic's last level; `None` for a topic not shaped like a reading's.
    pub sensor_id: Option<&'t str>,
    /// The topic's type level; `None` likewise.
    pub sensor_type: Option<&'t str>,
    /// The type's unit by the format's table ([`implied_unit`]); `None` for
    /// a type that table does not know.
    pub unit: Option<&'static str>,
}

impl<'t> Implied<'t> {
    /// By the disk format's own rule (version 2), not the contract's parser, so
    /// that a change to the contract's topic layout cannot change what stored
    /// history decodes to: a topic `{prefix}/{type}/{id}` (three or more
    /// levels, none of the last three empty) implies its last two levels,
    /// unless it ends in `/status` or its type level is `alerts`. Never change
    /// it; it is the contract's layout as it was when the format was made.
    pub fn of(t: &'t str) -> Implied<'t> {
        let mut levels = t.rsplitn(3, '/');
        let (id, kind, prefix) = (levels.next(), levels.next(), levels.next());
        match (id, kind, prefix) {
            (Some(id), Some(kind), Some(prefix))
                if id != "status"
                    && kind != "alerts"
                    && !id.is_empty()
                    && !kind.is_empty()
                    && !prefix.is_empty() =>
            {
                Implied {
                    sensor_id: Some(id),
                    sensor_type: Some(kind),
                    unit: implied_unit(kind),
                }
            }
            _ => Implied {
                sensor_id: None,
                sensor_type: None,
                unit: None,
            },
        }
    }
}
