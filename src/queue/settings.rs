//! Per-queue settings from the config file (`[queue.defaults]` and
//! `[queue.queues.NAME]`), each with a default.

use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[derive(Default)]
pub struct QueueConfig {
    /// Refuse enqueues to queues not declared under `queues` (default: create them with the defaults).
    pub strict: bool,
    pub defaults: QueueSettings,
    /// Per-queue overrides of `defaults`.
    pub queues: HashMap<String, QueueOverrides>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    /// Jobs of the queue running at once.
    pub concurrency: usize,
    /// How long one attempt may run before it fails with `timeout`.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Total attempts, the first included.
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    pub backoff_multiplier: f64,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// How long completed jobs (and their results) are kept.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    pub max_payload_bytes: usize,
    /// `standard` (concurrent) or `fifo` (one job at a time per group, in enqueue order).
    pub ordering: Ordering,
    /// FIFO: the top-level payload field whose value names a job's group.
    pub group_field: Option<String>,
    /// At most this many job starts per period (`"100/1s"`), across every worker.
    pub rate: Option<super::rate::Rate>,
    /// The top-level payload field whose value is a job's fair key: ready
    /// jobs are dispatched round-robin across keys (one tenant's burst waits
    /// its turn behind every other tenant's next job).
    pub fair_by: Option<String>,
    /// With `fair_by`: at most this many starts per period for each key.
    pub rate_per_key: Option<super::rate::Rate>,
    /// Lines `queue::log` keeps per job (older ones are dropped and counted).
    pub max_log_lines: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    #[default]
    Standard,
    Fifo,
}

/// Any subset of [`QueueSettings`]; unset fields take the defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueOverrides {
    pub concurrency: Option<usize>,
    #[serde(with = "humantime_serde::option")]
    pub lease: Option<Duration>,
    pub max_attempts: Option<u32>,
    #[serde(with = "humantime_serde::option")]
    pub backoff_initial: Option<Duration>,
    pub backoff_multiplier: Option<f64>,
    #[serde(with = "humantime_serde::option")]
    pub backoff_max: Option<Duration>,
    #[serde(with = "humantime_serde::option")]
    pub retention: Option<Duration>,
    pub max_payload_bytes: Option<usize>,
    pub ordering: Option<Ordering>,
    pub group_field: Option<String>,
    pub rate: Option<super::rate::Rate>,
    pub fair_by: Option<String>,
    pub rate_per_key: Option<super::rate::Rate>,
    pub max_log_lines: Option<usize>,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            concurrency: 10,
            lease: Duration::from_secs(30),
            max_attempts: 5,
            backoff_initial: Duration::from_secs(1),
            backoff_multiplier: 2.0,
            backoff_max: Duration::from_secs(300),
            retention: Duration::from_secs(3600),
            max_payload_bytes: 1 << 20,
            ordering: Ordering::Standard,
            group_field: None,
            rate: None,
            fair_by: None,
            rate_per_key: None,
            max_log_lines: 100,
        }
    }
}

impl QueueConfig {
    /// Settings for `queue`, or `None` in strict mode for an undeclared queue.
    pub fn settings(&self, queue: &str) -> Option<QueueSettings> {
        match self.queues.get(queue) {
            Some(o) => Some(o.apply(&self.defaults)),
            None if self.strict => None,
            None => Some(self.defaults.clone()),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.defaults.validate("queue.defaults")?;
        for (name, o) in &self.queues {
            if name.is_empty() {
                return Err("queue names must not be empty".into());
            }
            o.apply(&self.defaults)
                .validate(&format!("queue.queues.{name}"))?;
        }
        Ok(())
    }
}

impl QueueOverrides {
    pub(crate) fn apply(&self, d: &QueueSettings) -> QueueSettings {
        QueueSettings {
            concurrency: self.concurrency.unwrap_or(d.concurrency),
            lease: self.lease.unwrap_or(d.lease),
            max_attempts: self.max_attempts.unwrap_or(d.max_attempts),
            backoff_initial: self.backoff_initial.unwrap_or(d.backoff_initial),
            backoff_multiplier: self.backoff_multiplier.unwrap_or(d.backoff_multiplier),
            backoff_max: self.backoff_max.unwrap_or(d.backoff_max),
            retention: self.retention.unwrap_or(d.retention),
            max_payload_bytes: self.max_payload_bytes.unwrap_or(d.max_payload_bytes),
            ordering: self.ordering.unwrap_or(d.ordering),
            group_field: self.group_field.clone().or_else(|| d.group_field.clone()),
            rate: self.rate.or(d.rate),
            fair_by: self.fair_by.clone().or_else(|| d.fair_by.clone()),
            rate_per_key: self.rate_per_key.or(d.rate_per_key),
            max_log_lines: self.max_log_lines.unwrap_or(d.max_log_lines),
        }
    }
}

impl QueueSettings {
    fn validate(&self, at: &str) -> Result<(), String> {
        if self.concurrency == 0 || self.max_attempts == 0 || self.lease.is_zero() {
            return Err(format!(
                "{at}: concurrency, max_attempts and lease must be greater than 0"
            ));
        }
        if self.ordering == Ordering::Fifo && self.group_field.as_deref().is_none_or(str::is_empty)
        {
            return Err(format!(
                "{at}: a fifo queue needs group_field (the payload field naming a job's group)"
            ));
        }
        if self.rate_per_key.is_some() && self.fair_by.as_deref().is_none_or(str::is_empty) {
            return Err(format!(
                "{at}: rate_per_key needs fair_by (the payload field naming a job's key)"
            ));
        }
        if self.max_log_lines > 10_000 {
            return Err(format!("{at}: max_log_lines is at most 10000"));
        }
        if !(self.backoff_multiplier >= 1.0 && self.backoff_multiplier.is_finite()) {
            return Err(format!("{at}: backoff_multiplier must be a number >= 1"));
        }
        Ok(())
    }

    /// Delay before the retry that follows failed attempt number `attempt` (1-based):
    /// `initial × multiplier^(attempt-1)`, capped, with "equal jitter" (a random
    /// point in the upper half) so retries of a burst do not arrive together.
    pub fn backoff(&self, attempt: u32, unit_random: f64) -> Duration {
        let exp = self
            .backoff_multiplier
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let raw = self.backoff_initial.as_secs_f64() * exp;
        let capped = raw.min(self.backoff_max.as_secs_f64());
        Duration::from_secs_f64(capped * (0.5 + 0.5 * unit_random.clamp(0.0, 1.0)))
    }

    /// The settings as `queue::stats` shows them (durations as `"30s"`),
    /// whichever home the queue's jobs have.
    pub fn view(&self) -> serde_json::Value {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        serde_json::json!({
            "concurrency": self.concurrency,
            "lease": d(self.lease),
            "max_attempts": self.max_attempts,
            "backoff_initial": d(self.backoff_initial),
            "backoff_multiplier": self.backoff_multiplier,
            "backoff_max": d(self.backoff_max),
            "retention": d(self.retention),
            "max_payload_bytes": self.max_payload_bytes,
            "ordering": match self.ordering { Ordering::Fifo => "fifo", Ordering::Standard => "standard" },
            "group_field": self.group_field,
            "fair_by": self.fair_by,
            "rate": self.rate.map(|r| r.to_string()),
            "rate_per_key": self.rate_per_key.map(|r| r.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let s = QueueSettings::default();
        assert_eq!(s.backoff(1, 1.0), Duration::from_secs(1));
        assert_eq!(s.backoff(3, 1.0), Duration::from_secs(4));
        assert_eq!(s.backoff(30, 1.0), Duration::from_secs(300), "capped");
        assert_eq!(
            s.backoff(3, 0.0),
            Duration::from_secs(2),
            "jitter keeps at least half"
        );
    }

    #[test]
    fn overrides_and_strict_mode() {
        let c: QueueConfig =
            toml::from_str("strict = true\n[queues.mail]\nconcurrency = 2\nlease = \"5s\"\n")
                .unwrap();
        let mail = c.settings("mail").unwrap();
        assert_eq!(
            (mail.concurrency, mail.lease, mail.max_attempts),
            (2, Duration::from_secs(5), 5)
        );
        assert!(c.settings("other").is_none());
        assert!(c.validate().is_ok());
    }
}
