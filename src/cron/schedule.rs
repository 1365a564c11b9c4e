//! A cron binding's config and its schedule's arithmetic. Nothing here
//! reads a clock: every function takes "now", so the tests pin it.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::Deserialize;
use std::str::FromStr;

use crate::protocol::names;

/// What to do with slots that passed while the job could not fire (the
/// engine was down, or no worker had bound the trigger id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Missed {
    /// Fire none of them (counted and logged).
    #[default]
    Skip,
    /// Fire once, for the latest of them.
    FireOnce,
}

impl Missed {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Missed::Skip => "skip",
            Missed::FireOnce => "fire_once",
        }
    }
}

/// Why a binding was refused. The texts of the first three are iii's.
#[derive(Debug, thiserror::Error)]
pub(super) enum BindError {
    #[error("Cron expression is required")]
    ExpressionRequired,
    #[error("Invalid cron expression '{expression}': {why}")]
    InvalidExpression { expression: String, why: String },
    #[error("Cron job '{0}' is already registered")]
    AlreadyRegistered(String),
    #[error("Invalid cron missed policy '{0}': expected \"skip\" or \"fire_once\"")]
    InvalidMissed(String),
    #[error("Invalid cron trigger config: {0}")]
    BadConfig(String),
    #[error("{0}")]
    BadName(String),
}

/// A `cron` binding's config as sent; `missed` is kept as text so an unknown
/// policy gets its own message.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawConfig {
    expression: Option<String>,
    condition_function_id: Option<String>,
    missed: Option<String>,
}

/// A `cron` binding's config, checked.
#[derive(Debug, Clone)]
pub(super) struct JobConfig {
    pub schedule: cron::Schedule,
    pub condition_function_id: Option<String>,
    pub missed: Missed,
}

impl JobConfig {
    /// Parses and checks a binding's config (raw JSON text) for trigger `id`.
    pub(super) fn parse(id: &str, config: &str) -> Result<Self, BindError> {
        names::check("cron trigger id", id).map_err(BindError::BadName)?;
        let raw: RawConfig = match config.trim() {
            "null" => RawConfig::default(),
            text => serde_json::from_str(text).map_err(|e| BindError::BadConfig(e.to_string()))?,
        };
        let expression = raw
            .expression
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .ok_or(BindError::ExpressionRequired)?;
        let schedule =
            cron::Schedule::from_str(&expression).map_err(|e| BindError::InvalidExpression {
                expression: expression.clone(),
                why: e.to_string(),
            })?;
        if let Some(c) = &raw.condition_function_id {
            names::check("condition_function_id", c).map_err(BindError::BadName)?;
        }
        let missed = match raw.missed.as_deref() {
            None | Some("skip") => Missed::Skip,
            Some("fire_once") => Missed::FireOnce,
            Some(other) => return Err(BindError::InvalidMissed(other.to_owned())),
        };
        Ok(Self {
            schedule,
            condition_function_id: raw.condition_function_id,
            missed,
        })
    }
}

/// The slots that passed after `last` up to `now`: how many (counted up to
/// `cap`) and the latest.
pub(super) struct MissedSlots {
    pub count: usize,
    pub latest: DateTime<Utc>,
}

/// Counting stops here: a `* * * * * *` job down for a month has millions.
const COUNT_CAP: usize = 100_000;

pub(super) fn missed_since(
    schedule: &cron::Schedule,
    last: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<MissedSlots> {
    let latest = schedule
        .after(&last)
        .take_while(|t| *t <= now)
        .take(COUNT_CAP)
        .enumerate()
        .last()?;
    let (mut count, mut latest) = (latest.0 + 1, latest.1);
    if count == COUNT_CAP {
        // More than the cap passed: the latest one is the last before `now`.
        latest = schedule.after(&now).next_back().unwrap_or(latest);
        count = COUNT_CAP;
    }
    Some(MissedSlots { count, latest })
}

/// The first slot after `t`.
pub(super) fn next_after(schedule: &cron::Schedule, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    schedule.after(&t).next()
}

pub(super) fn to_ms(t: DateTime<Utc>) -> u64 {
    u64::try_from(t.timestamp_millis()).unwrap_or(0)
}

pub(super) fn from_ms(ms: u64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(i64::try_from(ms).unwrap_or(i64::MAX))
        .single()
        .unwrap_or_default()
}

pub(super) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn err(id: &str, config: &str) -> String {
        JobConfig::parse(id, config).unwrap_err().to_string()
    }

    #[test]
    fn registration_errors_have_iiis_texts() {
        assert_eq!(err("j", "{}"), "Cron expression is required");
        assert_eq!(
            err("j", r#"{"expression":"  "}"#),
            "Cron expression is required"
        );
        assert_eq!(err("j", "null"), "Cron expression is required");
        assert!(
            err("j", r#"{"expression":"not cron"}"#)
                .starts_with("Invalid cron expression 'not cron': "),
            "{}",
            err("j", r#"{"expression":"not cron"}"#)
        );
        assert!(err("j", r#"{"expression":"* * * * * *","missed":"all"}"#).contains("'all'"));
        assert!(err("a\0b", r#"{"expression":"* * * * * *"}"#).contains("control character"));
        assert!(err("j", "[1]").starts_with("Invalid cron trigger config"));
    }

    #[test]
    fn seconds_come_first_and_missed_defaults_to_skip() {
        let c = JobConfig::parse("j", r#"{"expression":"*/5 * * * * *"}"#).unwrap();
        assert_eq!(c.missed, Missed::Skip);
        let next = next_after(&c.schedule, at("2026-01-01T00:00:01Z")).unwrap();
        assert_eq!(next, at("2026-01-01T00:00:05Z"));
        let c =
            JobConfig::parse("j", r#"{"expression":"0 0 * * * *","missed":"fire_once"}"#).unwrap();
        assert_eq!(c.missed, Missed::FireOnce);
    }

    #[test]
    fn missed_slots_are_those_after_the_last_up_to_now() {
        let c = JobConfig::parse("j", r#"{"expression":"*/10 * * * * *"}"#).unwrap();
        let last = at("2026-01-01T00:00:00Z");
        assert!(missed_since(&c.schedule, last, at("2026-01-01T00:00:09Z")).is_none());
        let m = missed_since(&c.schedule, last, at("2026-01-01T00:00:35Z")).unwrap();
        assert_eq!((m.count, m.latest), (3, at("2026-01-01T00:00:30Z")));
    }

    #[test]
    fn a_long_outage_is_counted_up_to_the_cap_with_the_right_latest_slot() {
        let c = JobConfig::parse("j", r#"{"expression":"* * * * * *"}"#).unwrap();
        let last = at("2026-01-01T00:00:00Z");
        let now = at("2026-01-03T00:00:00.500Z");
        let m = missed_since(&c.schedule, last, now).unwrap();
        assert_eq!(m.count, COUNT_CAP);
        assert_eq!(m.latest, at("2026-01-03T00:00:00Z"));
    }

    #[test]
    fn times_round_trip_through_ms_and_print_as_rfc3339() {
        let t = at("2026-01-01T00:00:05.250Z");
        assert_eq!(from_ms(to_ms(t)), t);
        assert_eq!(rfc3339(t), "2026-01-01T00:00:05.250Z");
    }
}
