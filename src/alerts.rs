//! Alert rules, evaluated as readings and statuses arrive and on a clock tick.
//!
//! Two levels. Per sensor, each rule keeps a *condition* (with hysteresis: on
//! above `above`, off only below `clear_below`) and since when it has held. Per
//! room and rule there is one alert: raised when some sensor's condition has
//! held for `for`, cleared when no sensor's condition holds any more. The engine
//! only computes changes; ingest stores them and the publisher sends them.
//! It does no I/O: readings, statuses and ticks bring their time with them.

use crate::config::{RuleConfig, Schedule};
use crate::contract::{
    Alert, AlertState, NodeState, SensorTopic, SensorType, Severity, Status, Timestamp,
    REASON_SHUTDOWN,
};
use crate::store::StoredReading;
use chrono::{Datelike, Local};
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::time::Duration;

/// An alert rule, typed: an `alerts:` entry of the config, decided once when
/// the config loads (the config's "whichever key is set" becomes a [`Kind`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Its name: the alert's topic level, and its identity across reloads.
    pub name: String,
    /// Carried on its alerts.
    pub severity: Severity,
    /// Only sensors (or status topics) whose topic matches this MQTT filter.
    pub filter: Option<String>,
    /// How long a condition must hold before the alert is raised (`for`).
    pub lasting: Duration,
    /// What it watches for.
    pub kind: Kind,
}

/// What a rule watches for.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A value above `above`; it clears only below `clear_below` (hysteresis).
    Above {
        sensor_type: SensorType,
        above: f64,
        clear_below: f64,
    },
    /// A value below `below`; it clears only above `clear_above`.
    Below {
        sensor_type: SensorType,
        below: f64,
        clear_above: f64,
    },
    /// No reading for `after`.
    Stale {
        sensor_type: SensorType,
        after: Duration,
    },
    /// A node's connection lost: an `offline` status that is not a clean stop.
    Offline,
    /// A reading of 1 (motion) outside the `allowed` hours.
    Outside {
        sensor_type: SensorType,
        allowed: Schedule,
    },
}

impl Kind {
    /// The sensor type it watches; `None` for the status-based `Offline`.
    fn sensor_type(&self) -> Option<SensorType> {
        match self {
            Kind::Above { sensor_type, .. }
            | Kind::Below { sensor_type, .. }
            | Kind::Stale { sensor_type, .. }
            | Kind::Outside { sensor_type, .. } => Some(*sensor_type),
            Kind::Offline => None,
        }
    }
}

impl TryFrom<&RuleConfig> for Rule {
    type Error = String;

    /// The config's validation has checked that exactly one kind is given;
    /// this only reads which.
    fn try_from(c: &RuleConfig) -> Result<Rule, String> {
        let needs_type = || {
            c.sensor_type
                .ok_or_else(|| format!("alert rule {}: give its sensor `type`", c.name))
        };
        let kind = match (c.above, c.below, c.stale_after, c.offline, &c.outside) {
            (Some(above), None, None, false, None) => Kind::Above {
                sensor_type: needs_type()?,
                above,
                clear_below: c.clear_below.unwrap_or(above),
            },
            (None, Some(below), None, false, None) => Kind::Below {
                sensor_type: needs_type()?,
                below,
                clear_above: c.clear_above.unwrap_or(below),
            },
            (None, None, Some(after), false, None) => Kind::Stale {
                sensor_type: needs_type()?,
                after,
            },
            (None, None, None, true, None) => Kind::Offline,
            (None, None, None, false, Some(allowed)) => Kind::Outside {
                sensor_type: needs_type()?,
                allowed: allowed.clone(),
            },
            _ => {
                return Err(format!(
                    "alert rule {}: give exactly one of above/below, stale_after, offline, outside",
                    c.name
                ))
            }
        };
        Ok(Rule {
            name: c.name.to_string(),
            severity: c.severity,
            filter: c.filter.clone(),
            lasting: c.lasting.unwrap_or_default(),
            kind,
        })
    }
}

/// The typed rules of a (validated) config.
pub fn rules(configs: &[RuleConfig]) -> Result<Vec<Rule>, String> {
    configs.iter().map(Rule::try_from).collect()
}

#[derive(Debug)]
struct Condition {
    /// The room prefix of its topic, worked out once.
    room: String,
    /// Since when the condition has held, while it holds.
    since: Option<Timestamp>,
    /// The value (if any) that last set it.
    value: Option<f64>,
    /// Stale rules: when the sensor last reported.
    last_seen: Option<Timestamp>,
    /// When the clock next needs to look at it (its entry in the agenda).
    due: Option<Timestamp>,
}

impl Condition {
    fn new(room: &str) -> Self {
        Condition {
            room: room.to_owned(),
            since: None,
            value: None,
            last_seen: None,
            due: None,
        }
    }
}

/// Every piece of work is proportional to what changed, never to the number
/// of sensors known: a node inventing sensor ids by the thousand must not slow
/// down everyone else's readings (issue 18: `settle` used to scan every
/// condition, on every reading and every tick).
pub struct Engine {
    /// The rules; a condition names its rule by index here.
    rules: Vec<Rule>,
    /// (rule index, sensor or status topic) → its condition.
    conditions: HashMap<(usize, String), Condition>,
    /// (rule index, room) → the topics whose condition holds: all `settle`
    /// needs to look at.
    holding: HashMap<(usize, String), BTreeSet<String>>,
    /// What the clock must look at, soonest first: a `for` running out, a
    /// sensor going stale. Entries whose condition was rescheduled since are
    /// skipped when they come up (`Condition::due` says which one counts).
    agenda: BinaryHeap<Reverse<(Timestamp, usize, String)>>,
    /// (room prefix, rule name) → the active alert.
    active: HashMap<(String, String), Alert>,
}

impl Engine {
    /// `active`: alerts raised before a restart and never cleared. Each one's
    /// condition is taken as holding since it was raised, so only a reading past
    /// the clear threshold clears it, as before the restart. Alerts of rules that
    /// no longer exist are returned as `cleared` changes, to be stored and sent.
    pub fn new(rules: Vec<Rule>, active: Vec<Alert>) -> (Engine, Vec<Alert>) {
        let mut engine = Engine {
            rules,
            conditions: HashMap::new(),
            holding: HashMap::new(),
            agenda: BinaryHeap::new(),
            active: HashMap::new(),
        };
        let orphans = engine.adopt(active, Timestamp::now_millis());
        (engine, orphans)
    }

    /// Takes over active alerts; returns those whose rule is gone, cleared.
    fn adopt(&mut self, active: Vec<Alert>, now: Timestamp) -> Vec<Alert> {
        let mut orphans = Vec::new();
        for a in active {
            match self.rules.iter().position(|r| r.name == a.rule) {
                Some(i) => {
                    let c = self.condition(i, &a.topic, &a.room);
                    let since = c.since.or(Some(a.raised_at));
                    c.value = c.value.or(a.value);
                    self.mark(i, &a.topic, since);
                    self.active.insert((a.room.clone(), a.rule.clone()), a);
                }
                None => orphans.push(Alert {
                    state: AlertState::Cleared,
                    time: now,
                    message: "rule removed".into(),
                    ..a
                }),
            }
        }
        orphans
    }

    /// New rules (a reload). Rules that did not change keep their state; alerts
    /// of changed rules are re-evaluated from their next readings; alerts of
    /// rules that are gone are cleared (returned as changes).
    pub fn set_rules(&mut self, rules: Vec<Rule>) -> Vec<Alert> {
        let old_rules = std::mem::replace(&mut self.rules, rules);
        let conditions = std::mem::take(&mut self.conditions);
        self.holding.clear();
        self.agenda.clear();
        for ((i, topic), mut c) in conditions {
            if let Some(j) = self.rules.iter().position(|r| *r == old_rules[i]) {
                let since = c.since.take();
                c.due = None;
                self.conditions.insert((j, topic.clone()), c);
                self.mark(j, &topic, since);
                self.plan(j, &topic);
            }
        }
        let active: Vec<Alert> = std::mem::take(&mut self.active).into_values().collect();
        self.adopt(active, Timestamp::now_millis())
    }

    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// A stored (new, not duplicate) reading, from `sensor`.
    pub fn reading(&mut self, sensor: &SensorTopic, r: &StoredReading) -> Vec<Alert> {
        let prefix = sensor.room();
        let (value, now) = (r.reading.value, r.received_at);
        let mut changes = Vec::new();
        for i in 0..self.rules.len() {
            let rule = &self.rules[i];
            if rule.kind.sensor_type() != Some(sensor.sensor_type())
                || !rule
                    .filter
                    .as_deref()
                    .is_none_or(|f| crate::mqtt::filter_matches(f, &r.topic))
            {
                continue;
            }
            let holds = match &rule.kind {
                Kind::Above {
                    above, clear_below, ..
                } => {
                    let (above, clear_below) = (*above, *clear_below);
                    let was = self.held(i, &r.topic);
                    value > above || (was && value >= clear_below)
                }
                Kind::Below {
                    below, clear_above, ..
                } => {
                    let (below, clear_above) = (*below, *clear_above);
                    let was = self.held(i, &r.topic);
                    value < below || (was && value <= clear_above)
                }
                Kind::Outside { allowed, .. } => {
                    value == 1.0 && !within(allowed, r.reading.timestamp)
                }
                // Stale: a reading is the opposite of stale.
                Kind::Stale { .. } | Kind::Offline => {
                    self.condition(i, &r.topic, prefix).last_seen = Some(now);
                    false
                }
            };
            self.set(i, (&r.topic, prefix), holds, Some(value), now);
            changes.extend(self.settle(i, prefix, now, Some((&r.topic, Some(value)))));
            self.plan(i, &r.topic);
        }
        changes
    }

    /// A node's status changed (`prefix` is the node's topic prefix).
    pub fn status(&mut self, prefix: &str, status: &Status, now: Timestamp) -> Vec<Alert> {
        let status_topic = format!("{prefix}/status");
        // Only a clean stop says `shutdown`. An `offline` without a reason is
        // the Last Will of a client like the course brief's, which never says
        // offline itself: its connection was lost.
        let lost = status.status == NodeState::Offline
            && status.reason.as_deref() != Some(REASON_SHUTDOWN);
        let mut changes = Vec::new();
        for i in 0..self.rules.len() {
            let rule = &self.rules[i];
            if rule.kind != Kind::Offline
                || !rule
                    .filter
                    .as_deref()
                    .is_none_or(|f| crate::mqtt::filter_matches(f, &status_topic))
            {
                continue;
            }
            self.set(i, (&status_topic, prefix), lost, None, now);
            changes.extend(self.settle(i, prefix, now, Some((&status_topic, None))));
            self.plan(i, &status_topic);
        }
        changes
    }

    /// Forgets `topics` (reading or status topics): their conditions go, and
    /// each alert no other sensor of its room still holds is cleared with
    /// `why` as its message (returned, to be stored and sent).
    pub fn forget(&mut self, topics: &[String], why: &str, now: Timestamp) -> Vec<Alert> {
        let mut touched = BTreeSet::new();
        for t in topics {
            for i in 0..self.rules.len() {
                if self.conditions.contains_key(&(i, t.clone())) {
                    self.mark(i, t, None);
                    if let Some(c) = self.conditions.remove(&(i, t.clone())) {
                        touched.insert((i, c.room));
                    }
                }
            }
        }
        // An alert adopted at start may have no condition left for its topic.
        for ((room, rule), a) in &self.active {
            if topics.contains(&a.topic) {
                if let Some(i) = self.rules.iter().position(|r| r.name == *rule) {
                    touched.insert((i, room.clone()));
                }
            }
        }
        let mut changes = Vec::new();
        for (i, room) in touched {
            if let Some(mut cleared) = self.settle(i, &room, now, None) {
                if cleared.state == AlertState::Cleared {
                    why.clone_into(&mut cleared.message);
                }
                changes.push(cleared);
            }
        }
        changes
    }

    /// Time passing: `for` durations running out, sensors going stale. Looks
    /// only at what the agenda says is due.
    pub fn tick(&mut self, now: Timestamp) -> Vec<Alert> {
        let mut changes = Vec::new();
        while let Some(Reverse((due, _, _))) = self.agenda.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((due, i, t))) = self.agenda.pop() else {
                break;
            };
            let Some(c) = self.conditions.get_mut(&(i, t.clone())) else {
                continue;
            };
            if c.due != Some(due) {
                continue; // Superseded by a later plan.
            }
            c.due = None;
            if let (
                Kind::Stale {
                    after: stale_after, ..
                },
                Some(seen),
            ) = (&self.rules[i].kind, c.last_seen)
            {
                let stale_after = *stale_after;
                if elapsed(seen, now) >= stale_after && c.since.is_none() {
                    let since = seen
                        .0
                        .checked_add_signed(
                            chrono::Duration::from_std(stale_after).unwrap_or_default(),
                        )
                        .map(Timestamp);
                    self.mark(i, &t, since);
                }
            }
            let room = self.conditions[&(i, t.clone())].room.clone();
            changes.extend(self.settle(i, &room, now, None));
            self.plan(i, &t);
        }
        changes
    }

    /// Rule `i`'s condition for topic `t` (in `room`), made if new.
    fn condition(&mut self, i: usize, t: &str, room: &str) -> &mut Condition {
        self.conditions
            .entry((i, t.to_owned()))
            .or_insert_with(|| Condition::new(room))
    }

    fn held(&self, i: usize, t: &str) -> bool {
        self.conditions
            .get(&(i, t.to_owned()))
            .is_some_and(|c| c.since.is_some())
    }

    /// `(t, room)`: the topic and its room.
    fn set(
        &mut self,
        i: usize,
        (t, room): (&str, &str),
        holds: bool,
        value: Option<f64>,
        now: Timestamp,
    ) {
        let c = self.condition(i, t, room);
        match (holds, c.since) {
            (true, None) => {
                c.value = value;
                self.mark(i, t, Some(now));
            }
            (true, Some(_)) => c.value = value.or(c.value),
            (false, _) => self.mark(i, t, None),
        }
    }

    /// Sets since when a condition holds, keeping `holding` in step.
    /// Only for a condition that exists (`condition` makes it).
    fn mark(&mut self, i: usize, t: &str, since: Option<Timestamp>) {
        let Some(c) = self.conditions.get_mut(&(i, t.to_owned())) else {
            return;
        };
        let was = std::mem::replace(&mut c.since, since).is_some();
        // Most readings leave a condition as it was: no index work for them.
        if was == since.is_some() {
            return;
        }
        let key = (i, c.room.clone());
        if since.is_some() {
            self.holding.entry(key).or_default().insert(t.to_owned());
        } else if let Some(topics) = self.holding.get_mut(&key) {
            topics.remove(t);
            if topics.is_empty() {
                self.holding.remove(&key);
            }
        }
    }

    /// Puts the condition's next moment of interest on the agenda: when its
    /// `for` runs out (if its alert is not up yet), or when it goes stale.
    fn plan(&mut self, i: usize, t: &str) {
        let rule = &self.rules[i];
        let Some(c) = self.conditions.get(&(i, t.to_owned())) else {
            return;
        };
        let after = |at: Timestamp, d: Duration| {
            chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| at.0.checked_add_signed(d))
                .map(Timestamp)
        };
        // Only a holding condition with a `for` asks whether its alert is up.
        let lasting = match c.since {
            Some(since)
                if !rule.lasting.is_zero()
                    && !self
                        .active
                        .contains_key(&(c.room.clone(), rule.name.clone())) =>
            {
                after(since, rule.lasting)
            }
            _ => None,
        };
        let stale = match (&rule.kind, c.last_seen, c.since) {
            (
                Kind::Stale {
                    after: stale_after, ..
                },
                Some(seen),
                None,
            ) => after(seen, *stale_after),
            _ => None,
        };
        let Some(at) = lasting.into_iter().chain(stale).min() else {
            return;
        };
        if c.due.is_none_or(|due| at < due) {
            if let Some(c) = self.conditions.get_mut(&(i, t.to_owned())) {
                c.due = Some(at);
            }
            self.agenda.push(Reverse((at, i, t.to_owned())));
        }
    }

    /// Raises or clears rule `i`'s alert for `room` from its sensors' conditions.
    /// `cause` is the topic (and value) of what just arrived: a clear is about
    /// that, not a copy of the raise (issue 14: "30.5 above 26" after 22.0).
    fn settle(
        &mut self,
        i: usize,
        room: &str,
        now: Timestamp,
        cause: Option<(&str, Option<f64>)>,
    ) -> Option<Alert> {
        let rule = &self.rules[i];
        let lasting = rule.lasting;
        let key = (room.to_owned(), rule.name.clone());
        let holding = self.holding.get(&(i, room.to_owned()));
        match self.active.get(&key) {
            // Active: stays while any sensor's condition holds (hysteresis), even
            // one that has not yet held for `for` (after a restart, say).
            Some(active) if holding.is_none_or(BTreeSet::is_empty) => {
                let (topic, value) = match cause {
                    Some((topic, value)) => (topic.to_owned(), value),
                    None => (active.topic.clone(), None),
                };
                let cleared = Alert {
                    state: AlertState::Cleared,
                    time: now,
                    message: describe_clear(rule, value),
                    topic,
                    value,
                    ..active.clone()
                };
                self.active.remove(&key);
                Some(cleared)
            }
            Some(_) => None,
            None => {
                let (t, c) = holding?
                    .iter()
                    .filter_map(|t| Some((t, self.conditions.get(&(i, t.clone()))?)))
                    .find(|(_, c)| c.since.is_some_and(|s| elapsed(s, now) >= lasting))?;
                let alert = Alert {
                    rule: rule.name.clone(),
                    severity: rule.severity,
                    state: AlertState::Raised,
                    room: room.to_owned(),
                    topic: t.clone(),
                    value: c.value,
                    message: describe(rule, c.value),
                    raised_at: now,
                    time: now,
                };
                self.active.insert(key, alert.clone());
                Some(alert)
            }
        }
    }
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    (now.0 - since.0).to_std().unwrap_or_default()
}

fn within(s: &Schedule, t: Timestamp) -> bool {
    let local = t.0.with_timezone(&Local);
    s.days.contains(&local.weekday()) && local.time() >= s.from && local.time() < s.to
}

fn describe(rule: &Rule, value: Option<f64>) -> String {
    let v = value.map(|v| v.to_string()).unwrap_or_default();
    match &rule.kind {
        Kind::Above { above, .. } => format!("{v} above {above}"),
        Kind::Below { below, .. } => format!("{v} below {below}"),
        Kind::Offline => "node lost its connection".into(),
        Kind::Stale { .. } => "no reading".into(),
        Kind::Outside { .. } => "motion outside allowed hours".into(),
    }
}

/// What made an alert clear, in the words of its rule.
fn describe_clear(rule: &Rule, value: Option<f64>) -> String {
    let v = value.map(|v| v.to_string()).unwrap_or_default();
    match &rule.kind {
        Kind::Above { clear_below, .. } => format!("{v} back below {clear_below}"),
        Kind::Below { clear_above, .. } => format!("{v} back above {clear_above}"),
        Kind::Offline => "node back online, or stopped cleanly".into(),
        Kind::Stale { .. } => "reporting again".into(),
        Kind::Outside { .. } => "no motion outside allowed hours".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Reading;

    /// A stored reading, as ingest hands it over: with its typed topic.
    fn feed(e: &mut Engine, r: &StoredReading) -> Vec<Alert> {
        let sensor = SensorTopic::parse(&r.topic).unwrap().unwrap();
        e.reading(&sensor, r)
    }

    pub(super) fn rule(yaml: &str) -> Rule {
        let config: RuleConfig = yaml_serde::from_str(yaml).unwrap();
        Rule::try_from(&config).unwrap()
    }

    #[test]
    fn a_rule_config_becomes_one_kind_with_its_defaults() {
        let hot = rule("{ name: hot, type: temperature, above: 26 }");
        assert_eq!(
            hot.kind,
            Kind::Above {
                sensor_type: SensorType::Temperature,
                above: 26.0,
                clear_below: 26.0
            }
        );
        assert_eq!(hot.lasting, Duration::ZERO);
        assert_eq!(rule("{ name: down, offline: true }").kind, Kind::Offline);
        let two: RuleConfig =
            yaml_serde::from_str("{ name: x, type: temperature, above: 1, stale_after: 1m }")
                .unwrap();
        assert!(Rule::try_from(&two).is_err());
        let untyped: RuleConfig = yaml_serde::from_str("{ name: x, above: 1 }").unwrap();
        assert!(Rule::try_from(&untyped).is_err());
    }

    fn reading(value: f64, secs: i64) -> StoredReading {
        let t = Timestamp(chrono::DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap());
        StoredReading {
            topic: "b/f/r1/temperature/t1".into(),
            reading: Reading {
                sensor_id: "t1".into(),
                sensor_type: "temperature".into(),
                value,
                unit: "celsius".into(),
                timestamp: t,
                seq: Some(secs.cast_unsigned()),
            },
            received_at: t,
            qos: 1,
        }
    }

    fn states(changes: Vec<Alert>) -> Vec<AlertState> {
        changes.into_iter().map(|a| a.state).collect()
    }

    #[test]
    fn threshold_with_hysteresis_and_duration() {
        let (mut e, _) = Engine::new(
            vec![rule(
                "{ name: hot, type: temperature, above: 26, clear_below: 25, for: 30s }",
            )],
            vec![],
        );
        assert!(
            feed(&mut e, &reading(27.0, 0)).is_empty(),
            "not for 30 s yet"
        );
        assert!(feed(&mut e, &reading(27.0, 20)).is_empty());
        let raised = feed(&mut e, &reading(25.5, 31));
        assert_eq!(
            states(raised.clone()),
            [AlertState::Raised],
            "held 31 s (25.5 is inside the band)"
        );
        assert_eq!(raised[0].value, Some(25.5), "the value when it was raised");
        assert_eq!(raised[0].topic(), "b/f/r1/alerts/hot");
        assert!(
            feed(&mut e, &reading(25.2, 40)).is_empty(),
            "hysteresis: not cleared above 25"
        );
        let cleared = feed(&mut e, &reading(24.9, 50));
        assert_eq!(states(cleared.clone()), [AlertState::Cleared]);
        assert_eq!(
            cleared[0].value,
            Some(24.9),
            "the clearing value, not the raise's"
        );
        assert_eq!(cleared[0].message, "24.9 back below 25");
        assert_eq!(cleared[0].raised_at, raised[0].raised_at);
        // A blip that does not last never raises.
        assert!(feed(&mut e, &reading(30.0, 60)).is_empty());
        assert!(feed(&mut e, &reading(20.0, 70)).is_empty());
    }

    #[test]
    fn duration_runs_out_on_the_clock_too() {
        let (mut e, _) = Engine::new(
            vec![rule(
                "{ name: hot, type: temperature, above: 26, for: 30s }",
            )],
            vec![],
        );
        assert!(feed(&mut e, &reading(27.0, 0)).is_empty());
        let at =
            |s: i64| Timestamp(chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap());
        assert!(e.tick(at(29)).is_empty());
        assert_eq!(states(e.tick(at(31))), [AlertState::Raised]);
        assert!(e.tick(at(40)).is_empty(), "raised once");
    }

    #[test]
    fn stale_sensor() {
        let (mut e, _) = Engine::new(
            vec![rule("{ name: stale, type: temperature, stale_after: 1m }")],
            vec![],
        );
        assert!(feed(&mut e, &reading(20.0, 0)).is_empty());
        let at =
            |s: i64| Timestamp(chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap());
        assert!(e.tick(at(59)).is_empty());
        assert_eq!(states(e.tick(at(61))), [AlertState::Raised]);
        assert_eq!(
            states(feed(&mut e, &reading(20.0, 70))),
            [AlertState::Cleared]
        );
    }

    /// 5,000 rooms, each with a sensor that goes stale: each raises once, when
    /// due, and the clock's agenda holds one entry per condition, not one per
    /// reading (what keeps a tick's cost to what is due).
    #[test]
    fn many_rooms_go_stale_each_once_and_the_agenda_stays_small() {
        let (mut e, _) = Engine::new(
            vec![rule("{ name: stale, type: temperature, stale_after: 1m }")],
            vec![],
        );
        let at =
            |s: i64| Timestamp(chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap());
        for round in 0..3 {
            for room in 0..5_000 {
                let mut r = reading(20.0, round);
                r.topic = format!("b/f/r{room}/temperature/t1");
                assert!(feed(&mut e, &r).is_empty());
            }
        }
        assert_eq!(e.conditions.len(), 5_000);
        assert!(e.agenda.len() <= 5_000, "agenda: {}", e.agenda.len());
        assert!(
            e.tick(at(61)).is_empty(),
            "not a minute since the last reading yet"
        );
        let raised = e.tick(at(62));
        assert_eq!(raised.len(), 5_000);
        assert!(raised.iter().all(|a| a.state == AlertState::Raised));
        assert!(e.tick(at(120)).is_empty(), "raised once");
        assert!(
            e.agenda.is_empty(),
            "nothing left to look at until a reading"
        );
    }

    #[test]
    fn restart_keeps_an_active_alert_without_a_second_raise() {
        let rules = vec![rule(
            "{ name: hot, type: temperature, above: 26, clear_below: 25, for: 30s }",
        )];
        let (mut before, _) = Engine::new(rules.clone(), vec![]);
        feed(&mut before, &reading(27.0, 0));
        let raised = feed(&mut before, &reading(27.0, 40));
        assert_eq!(states(raised.clone()), [AlertState::Raised]);
        let (mut after, orphans) = Engine::new(rules, raised);
        assert!(orphans.is_empty());
        assert!(
            feed(&mut after, &reading(27.0, 50)).is_empty(),
            "still hot: no second raise"
        );
        assert_eq!(
            states(feed(&mut after, &reading(24.0, 60))),
            [AlertState::Cleared]
        );
    }

    #[test]
    fn node_offline_only_when_the_connection_was_lost() {
        let (mut e, _) = Engine::new(
            vec![rule("{ name: down, offline: true, severity: critical }")],
            vec![],
        );
        let now = Timestamp(chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap());
        let shutdown = Status::offline("r1", crate::contract::REASON_SHUTDOWN);
        assert!(e.status("b/f/r1", &shutdown, now).is_empty());
        let lost = Status::offline("r1", crate::contract::REASON_CONNECTION_LOST);
        let raised = e.status("b/f/r1", &lost, now);
        assert_eq!(states(raised.clone()), [AlertState::Raised]);
        assert_eq!(raised[0].topic, "b/f/r1/status");
        let online = Status {
            status: NodeState::Online,
            ..lost.clone()
        };
        assert_eq!(
            states(e.status("b/f/r1", &online, now)),
            [AlertState::Cleared]
        );
        // The course brief's Will gives no reason: a lost connection too.
        let brief_will = Status {
            reason: None,
            client_id: Some("sensor_node_1".into()),
            ..lost
        };
        assert_eq!(
            states(e.status("b/f/r1", &brief_will, now)),
            [AlertState::Raised]
        );
    }
}

#[cfg(test)]
mod reload_tests {
    use super::tests::rule;
    use super::*;

    #[test]
    fn a_rule_removed_while_stopped_has_its_alert_cleared_at_start() {
        let t = Timestamp::now_millis();
        let a = Alert {
            rule: "gone".into(),
            severity: crate::contract::Severity::Warning,
            state: AlertState::Raised,
            room: "b/f/r".into(),
            topic: "b/f/r/temperature/t".into(),
            value: Some(30.0),
            message: String::new(),
            raised_at: t,
            time: t,
        };
        let (_, orphans) = Engine::new(
            vec![rule("{ name: kept, type: temperature, above: 26 }")],
            vec![a],
        );
        assert_eq!(orphans.len(), 1);
        assert_eq!(orphans[0].state, AlertState::Cleared);
    }
}
