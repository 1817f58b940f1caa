//! The energy meter's rule, checked against what is stored: a meter only
//! counts up, and a drop to less than half is a new series (a replaced or
//! cleared meter), not a reading to refuse.

use super::Arrival;
use crate::contract::{Rejection, RejectionReason, SensorType};
use crate::store::{ReadingWriter, StoreError, StoredReading};

/// A meter reading lower than this fraction of the one before it is a reset
/// (a replaced or cleared meter), not a glitch.
const METER_RESET_DROP: f64 = 0.5;

/// What an energy reading means against its stored neighbours.
pub(super) enum Meter {
    Counts,
    /// A new series: far below the reading before it (recorded, counted).
    Reset {
        from: f64,
    },
    Refused(Rejection),
}

/// An energy meter only counts up: a reading a little below the one before it
/// (or above the one after it) is refused as `meter_decreased`. A drop to less
/// than half is a reset and starts a new series, so that one bogus reading (or
/// a replaced meter) cannot lock the meter out for good, as it once did.
pub(super) fn meter_check(store: &ReadingWriter, a: &Arrival) -> Result<Meter, StoreError> {
    if a.sensor.sensor_type() != SensorType::Energy {
        return Ok(Meter::Counts);
    }
    let r = &a.record;
    let (before, after) = store.neighbours(r)?;
    let v = r.reading.value;
    let refusal = |other: &StoredReading, relation: &str| {
        Meter::Refused(Rejection::new(
            RejectionReason::MeterDecreased,
            format!(
                "{v} is {relation} {} at {}",
                other.reading.value, other.reading.timestamp
            ),
        ))
    };
    let reset = |high: f64, low: f64| low < high * METER_RESET_DROP;
    Ok(match (before, after) {
        (Some(b), _) if v < b.reading.value && reset(b.reading.value, v) => Meter::Reset {
            from: b.reading.value,
        },
        (Some(b), _) if v < b.reading.value => refusal(&b, "below the earlier"),
        // Above a later reading that was itself a reset: consistent.
        (_, Some(a)) if v > a.reading.value && !reset(v, a.reading.value) => {
            refusal(&a, "above the later")
        }
        _ => Meter::Counts,
    })
}
