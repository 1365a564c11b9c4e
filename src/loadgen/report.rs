//! The summary of a run: throughput and latency percentiles, as JSON or text.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Duration;

use super::Outcome;

/// How a run was set up, repeated in its report so runs can be compared.
#[derive(Debug, Clone, Serialize)]
pub struct RunShape {
    /// `invoke`, `enqueue`, `e2e` or `channel`.
    pub workload: String,
    /// What was called: a function id, or `queue → function`.
    pub target: String,
    /// Connections sending load (channel: channels, each a writer and a reader).
    pub clients: usize,
    /// Operations outstanding per connection (channel: frames per channel).
    pub in_flight: usize,
    /// Bytes of each payload, as JSON text (channel: of each binary frame).
    pub payload_bytes: usize,
}

/// Latency of successful operations, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

impl Latency {
    /// From a histogram of microseconds; all zero when it is empty.
    pub fn from_micros(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency {
                min: 0.0,
                mean: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p99_9: 0.0,
                max: 0.0,
            };
        }
        let ms = |us: f64| (us / 1000.0 * 1000.0).round() / 1000.0;
        Latency {
            min: ms(h.min() as f64),
            mean: ms(h.mean()),
            p50: ms(h.value_at_quantile(0.50) as f64),
            p90: ms(h.value_at_quantile(0.90) as f64),
            p99: ms(h.value_at_quantile(0.99) as f64),
            p99_9: ms(h.value_at_quantile(0.999) as f64),
            max: ms(h.max() as f64),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub shape: RunShape,
    pub elapsed_secs: f64,
    /// Successful operations.
    pub ops: u64,
    pub errors: u64,
    /// Successful operations per second of the run.
    pub throughput_per_sec: f64,
    pub latency_ms: Latency,
    pub first_error: Option<String>,
    /// Channel runs: bytes received and verified by the readers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Channel runs: `bytes` per second of the run in decimal megabytes (10^6 bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mb_per_sec: Option<f64>,
}

impl Report {
    pub fn new(shape: RunShape, outcome: &Outcome) -> Report {
        let secs = outcome.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            outcome.ok as f64 / secs
        } else {
            0.0
        };
        Report {
            shape,
            elapsed_secs: (secs * 1000.0).round() / 1000.0,
            ops: outcome.ok,
            errors: outcome.errors,
            throughput_per_sec: rate.round(),
            latency_ms: Latency::from_micros(&outcome.latency_us),
            first_error: outcome.first_error.clone(),
            bytes: None,
            mb_per_sec: None,
        }
    }

    /// Adds the bytes a run moved, and their rate in MB/s (10^6 bytes).
    pub fn with_bytes(mut self, bytes: u64, elapsed: Duration) -> Report {
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 { bytes as f64 / secs } else { 0.0 };
        self.bytes = Some(bytes);
        self.mb_per_sec = Some((rate / 1e4).round() / 100.0);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_histogram_in_milliseconds() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap(); // 10 µs .. 10 ms
        }
        let outcome = Outcome {
            elapsed: Duration::from_secs(2),
            ok: 1000,
            errors: 1,
            latency_us: h,
            first_error: Some("boom".into()),
        };
        let shape = RunShape {
            workload: "invoke".into(),
            target: "f".into(),
            clients: 1,
            in_flight: 1,
            payload_bytes: 10,
        };
        let r = Report::new(shape, &outcome);
        assert_eq!(r.throughput_per_sec, 500.0);
        assert_eq!(r.latency_ms.min, 0.01);
        assert!((r.latency_ms.p50 - 5.0).abs() < 0.01, "{:?}", r.latency_ms);
        assert!((r.latency_ms.p99 - 9.9).abs() < 0.01, "{:?}", r.latency_ms);
        assert!((r.latency_ms.max - 10.0).abs() < 0.01, "{:?}", r.latency_ms);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["workload"], "invoke");
        assert_eq!(v["latency_ms"]["p99_9"], r.latency_ms.p99_9);
        assert!(v.get("bytes").is_none(), "only channel runs count bytes");
        let r = r.with_bytes(3_000_000, Duration::from_secs(2));
        assert_eq!((r.bytes, r.mb_per_sec), (Some(3_000_000), Some(1.5)));
    }

    #[test]
    fn an_empty_run_reports_zeros() {
        let l = Latency::from_micros(&Histogram::<u64>::new(3).unwrap());
        assert_eq!((l.p50, l.max), (0.0, 0.0));
    }
}
