//! Fairness between tenants (`fair_by` on a standard queue): jobs of
//! different fair keys start in turns rather than in enqueue order, so one
//! key's flood does not starve another.
//!
//! A stream delivers a subject in one order, so fair keys are spread over
//! lanes: a job's lane is its key's SHA-256 modulo [`FAIR_LANES`], in its
//! priority's band ([`Lane::Fair`], subject suffix `.k<lane>` or
//! `.p<band>k<lane>`), each a consumer of its own (made with its first
//! job). An engine's pull task visits a band's lanes in a circle from where
//! it stopped, asking each for one job per visit (without waiting), until
//! its free slots are filled or a whole circle gave none. Keys are
//! unbounded and consumers are not, hence the approximation: keys whose
//! digests meet in a lane are served in enqueue order between themselves
//! (two given keys share a lane one time in [`FAIR_LANES`]), where the
//! local queue gives every key its own turn.

use sha2::Digest;
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

use super::job::Job;
use super::{JobKey, Lane, Shared};
use crate::protocol::ErrorBody;
use crate::queue::settings::QueueSettings;
use async_nats::jetstream::consumer::PullConsumer;

/// Fair lanes per (queue, namespace, function) and priority band: at most
/// this many more consumers in NATS per band used, and requests per visit.
pub(super) const FAIR_LANES: u32 = 16;

impl Lane {
    /// The lane of fair key `key` in priority band `band`: the same on
    /// every engine (a digest, not Rust's per-process hasher).
    pub(super) fn fair(key: &str, band: u8) -> Lane {
        let digest = sha2::Sha256::digest(key.as_bytes());
        let n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        Lane::Fair {
            band,
            lane: (n % u64::from(FAIR_LANES)) as u32,
        }
    }

    /// A fair lane's subject part: `k<lane>` or `p<band>k<lane>` (band
    /// 1–8), numbers written without leading zeros.
    pub(super) fn parse_fair(part: &str) -> Option<Lane> {
        let (band, lane) = part.split_once('k')?;
        let band = match band {
            "" => 0,
            b => match b.strip_prefix('p')?.parse::<u8>().ok()? {
                n @ 1..=8 if n.to_string() == b[1..] => n,
                _ => return None,
            },
        };
        let n = lane.parse::<u32>().ok()?;
        (n.to_string() == lane).then_some(Lane::Fair { band, lane: n })
    }
}

/// The lane of a job of a standard queue: its priority's band, and on a
/// `fair_by` queue its fair key's lane in that band.
pub(super) fn standard_lane(job: &Job, settings: &QueueSettings) -> Result<Lane, ErrorBody> {
    let band = Lane::band(job.priority);
    let Some(field) = settings.fair_by.as_deref().filter(|f| !f.is_empty()) else {
        return Ok(band);
    };
    let key = crate::queue::fair_key(field, &job.key.queue, &job.payload)?;
    Ok(Lane::fair(&key, band.band_number().unwrap_or(0)))
}

/// A stored job's fair key on a `fair_by` queue (`queue::get` shows it).
pub(super) fn key_of(settings: &QueueSettings, queue: &str, payload: &[u8]) -> Option<String> {
    let field = settings.fair_by.as_deref().filter(|f| !f.is_empty())?;
    let payload: crate::protocol::Payload = serde_json::from_slice(payload).ok()?;
    crate::queue::fair_key(field, queue, &payload).ok()
}

/// The lanes of one priority band of a key that this engine pulls: the
/// band's own, its fair lanes, or both (a queue given `fair_by` while it
/// held jobs), visited in a circle.
#[derive(Default)]
pub(super) struct BandLanes {
    lanes: Vec<(Lane, PullConsumer)>,
    /// The lane the next visit starts at.
    next: usize,
}

impl BandLanes {
    pub(super) fn insert(&mut self, lane: Lane, consumer: PullConsumer) {
        self.lanes.push((lane, consumer));
        self.lanes.sort_by_key(|(l, _)| *l);
    }

    /// The band's one consumer, when it has no fair lanes.
    pub(super) fn single(&self) -> Option<&PullConsumer> {
        match self.lanes.as_slice() {
            [(_, c)] => Some(c),
            _ => None,
        }
    }

    pub(super) fn consumers(&self) -> impl Iterator<Item = &PullConsumer> {
        self.lanes.iter().map(|(_, c)| c)
    }
}

impl Shared {
    /// Fills `free` slots from a band's lanes in turns: one job per lane
    /// per visit, from where the last pass stopped, until the slots are
    /// filled or a whole circle gave none. Returns the jobs started and
    /// whether every request ended normally.
    pub(super) async fn fill_in_turns(
        self: &Arc<Self>,
        key: &JobKey,
        band: &mut BandLanes,
        free: &mut Vec<OwnedSemaphorePermit>,
    ) -> (usize, bool) {
        let (mut started, mut ended_well) = (0, true);
        let mut idle = 0;
        while !free.is_empty() && idle < band.lanes.len() {
            let at = band.next % band.lanes.len();
            band.next = at + 1;
            let consumer = &band.lanes[at].1;
            // Without waiting: an empty lane answers at once.
            let fetch = consumer.fetch().max_messages(1);
            let (got, ended) = super::pull::pull_each(fetch, |msg| {
                let slot = free.pop();
                tokio::spawn(self.clone().run(key.clone(), msg, slot));
                std::future::ready(())
            })
            .await;
            started += got;
            ended_well &= ended;
            let got = got > 0;
            idle = if got { 0 } else { idle + 1 };
        }
        (started, ended_well)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fair_key_always_has_the_same_lane_in_its_band() {
        let lane = Lane::fair("tenant-1", 3);
        assert_eq!(lane, Lane::fair("tenant-1", 3));
        assert!(matches!(lane, Lane::Fair { band: 3, lane } if lane < FAIR_LANES));
        let used: std::collections::HashSet<Lane> =
            (0..200).map(|k| Lane::fair(&k.to_string(), 0)).collect();
        assert_eq!(
            used.len(),
            FAIR_LANES as usize,
            "200 keys spread over every lane"
        );
    }

    #[test]
    fn a_fair_lane_is_named_and_parsed_in_its_band() {
        for (part, lane) in [
            ("k0", Lane::Fair { band: 0, lane: 0 }),
            ("k15", Lane::Fair { band: 0, lane: 15 }),
            ("p8k3", Lane::Fair { band: 8, lane: 3 }),
        ] {
            assert_eq!(Lane::parse_fair(part), Some(lane), "{part}");
            assert_eq!(lane.suffix('.'), format!(".{part}"));
            assert_eq!(Lane::parse(part), Some(lane), "{part}");
        }
        for bad in ["k", "k01", "p0k1", "p9k1", "p01k1", "pk1", "x1k1", "p1"] {
            assert_eq!(Lane::parse_fair(bad), None, "{bad}");
        }
        assert_eq!(Lane::Fair { band: 5, lane: 2 }.lowest_priority(), 16);
    }
}
