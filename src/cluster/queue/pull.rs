//! One pull request of a job consumer, its jobs handed on in order: the
//! loop every pull task (priority bands, fair lanes, FIFO lanes) shares.

use async_nats::jetstream::{self, consumer::pull};
use futures_util::StreamExt;

/// Sends one pull request and hands each job it brings to `start`, in
/// order; how many it brought, and whether the request ended normally
/// (not when other engines' requests came first, or NATS went away).
pub(super) async fn pull_each<Started>(
    fetch: pull::FetchBuilder<'_>,
    mut start: impl FnMut(jetstream::Message) -> Started,
) -> (usize, bool)
where
    Started: std::future::Future<Output = ()>,
{
    let mut jobs = match fetch.messages().await {
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::debug!(error = %e, "a pull request failed");
            return (0, false);
        }
    };
    let mut started = 0;
    while let Some(job) = jobs.next().await {
        match job {
            Ok(msg) => {
                started += 1;
                start(msg).await;
            }
            Err(e) => {
                tracing::trace!(error = %e, "a pull request ended");
                return (started, false);
            }
        }
    }
    (started, true)
}
