//! The cluster's KV buckets (and the queues' streams): how they are opened, and what a refused
//! compare-and-set means. A write expecting a revision
//! (none, for a create) that the key no longer has is refused by the server
//! with 10071 in older releases, 10164 since 2.12, or 10163 while the stream
//! leader cannot check it yet; async-nats 0.52 maps only 10071 to
//! `WrongLastRevision`, so the server's own error is read from the chain.
//! A write that no server took at all (NATS answered "no responders": just
//! after a bucket is created, the stream's interest in its subjects may not
//! have reached the node this engine is connected to yet) was not stored.

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::kv::{Config, Store, UpdateError, UpdateErrorKind};
use async_nats::jetstream::{Error, ErrorCode};
use std::time::Duration;

use super::ClusterError;

/// How long opening a bucket retries while the NATS cluster cannot place
/// it yet (its nodes still forming, or one restarting).
const PLACEMENT_WITHIN: Duration = Duration::from_secs(15);

/// Opens (or creates) `bucket` with `replicas`, keeping one value per key,
/// each for `max_age` (zero: for good). A cluster that has no peers for
/// the replicas yet ("no suitable peers for placement") or no meta leader
/// is asked again for a while: right after a start or a node's restart its
/// `/healthz` can be ok before JetStream counts every peer.
pub(super) async fn open_bucket(
    client: &async_nats::Client,
    bucket: String,
    replicas: usize,
    max_age: Duration,
) -> Result<Store, ClusterError> {
    let js = async_nats::jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + PLACEMENT_WITHIN;
    let mut pause = Duration::from_millis(100);
    loop {
        let config = Config {
            bucket: bucket.clone(),
            history: 1,
            max_age,
            num_replicas: replicas,
            ..Default::default()
        };
        match js.create_key_value(config).await {
            Ok(store) => return Ok(store),
            Err(e) if not_placed_yet(&e) && tokio::time::Instant::now() < deadline => {
                tracing::warn!(bucket, replicas, error = %e, "NATS cannot place the bucket yet; asking again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(source) => {
                return Err(ClusterError::Bucket {
                    bucket,
                    replicas,
                    source,
                });
            }
        }
    }
}

/// Opens (or creates) a stream as [`open_bucket`] opens a bucket: asked
/// again for a while when the cluster cannot place its replicas yet.
pub(super) async fn open_stream(
    js: &async_nats::jetstream::Context,
    config: async_nats::jetstream::stream::Config,
) -> Result<async_nats::jetstream::stream::Stream, async_nats::jetstream::context::CreateStreamError>
{
    use async_nats::jetstream::context::CreateStreamErrorKind;
    let deadline = tokio::time::Instant::now() + PLACEMENT_WITHIN;
    let mut pause = Duration::from_millis(100);
    loop {
        let e = match js.get_or_create_stream(config.clone()).await {
            Ok(stream) => return Ok(stream),
            Err(e) => e,
        };
        let transient = match e.kind() {
            CreateStreamErrorKind::JetStream(js) => {
                js.error_code() == ErrorCode::CLUSTER_NO_PEERS
                    || js.error_code() == ErrorCode::CLUSTER_NOT_AVAILABLE
            }
            CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => true,
            _ => false,
        };
        if !transient || tokio::time::Instant::now() >= deadline {
            return Err(e);
        }
        tracing::warn!(stream = %config.name, error = %e, "NATS cannot place the stream yet; asking again");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// The cluster could not place a bucket now, but may in a moment. (The
/// server's code rides in the kind of the stream-creation error underneath.)
fn not_placed_yet(e: &async_nats::jetstream::context::CreateKeyValueError) -> bool {
    use async_nats::jetstream::context::{
        CreateKeyValueErrorKind, CreateStreamError, CreateStreamErrorKind,
    };
    if e.kind() == CreateKeyValueErrorKind::TimedOut {
        return true;
    }
    let transient =
        |c: ErrorCode| c == ErrorCode::CLUSTER_NO_PEERS || c == ErrorCode::CLUSTER_NOT_AVAILABLE;
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(create) = err.downcast_ref::<CreateStreamError>() {
            return match create.kind() {
                CreateStreamErrorKind::JetStream(js) => transient(js.error_code()),
                CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => {
                    true
                }
                _ => false,
            };
        }
        if let Some(js) = err.downcast_ref::<Error>() {
            return transient(js.error_code());
        }
        source = err.source();
    }
    false
}

/// The key's revision is not the one the write expected: another writer
/// came first.
pub(super) fn revision_moved(e: &UpdateError) -> bool {
    e.kind() == UpdateErrorKind::WrongLastRevision
        || server_code(e).is_some_and(|c| {
            c == ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                || c == ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
        })
}

/// The leader could not check the expected revision yet: the same write,
/// read again, may succeed.
pub(super) fn revision_not_checked(e: &UpdateError) -> bool {
    server_code(e) == Some(ErrorCode::STREAM_EXPECTED_LAST_SEQ_PER_SUBJECT_NOT_READY)
}

/// No stream took the write (NATS had no responder for its subject): it
/// was not stored, and the same write may be sent again.
pub(super) fn reached_no_stream(e: &UpdateError) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(p) = err.downcast_ref::<PublishError>() {
            return p.kind() == PublishErrorKind::StreamNotFound;
        }
        source = err.source();
    }
    false
}

fn server_code(e: &UpdateError) -> Option<ErrorCode> {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(js) = err.downcast_ref::<Error>() {
            return Some(js.error_code());
        }
        source = err.source();
    }
    None
}

/// A key's last entry in `bucket`, read from its stream leader (so a write
/// just acknowledged anywhere is seen): its value (`None` when absent or
/// deleted) and its revision (0 when never written).
pub(super) async fn last_entry(
    bucket: &Store,
    key: &str,
) -> Result<(Option<bytes::Bytes>, u64), async_nats::jetstream::stream::LastRawMessageError> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let subject = format!("{}{key}", bucket.prefix);
    match bucket
        .stream
        .get_last_raw_message_by_subject(&subject)
        .await
    {
        Ok(m) => {
            let removed = m
                .headers
                .get("KV-Operation")
                .is_some_and(|op| op.as_str() != "PUT");
            Ok(((!removed).then_some(m.payload), m.sequence))
        }
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok((None, 0)),
        Err(e) => Err(e),
    }
}
