//! Schema version 2: payloads move into job records, and a running job's
//! attempt lives in its `X` entry (see `0002_payload_in_job.md`).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::layout::{self, FnId, QueueId};
use crate::store::records::{AttemptRecord, ErrorRecord, JobState};
use crate::store::{StoreError, codec};

/// Jobs moved per atomic batch.
const CHUNK: usize = 1000;

/// `JobRecord` as schema 1 wrote it (record version 1): no payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecordV1 {
    pub queue: String,
    pub queue_id: QueueId,
    pub namespace: String,
    pub function_id: String,
    pub fn_id: FnId,
    pub state: JobState,
    pub priority: u8,
    pub seq: u64,
    pub attempts: u32,
    pub history_len: u32,
    pub max_attempts: u32,
    pub enqueued_ms: u64,
    pub due_ms: u64,
    pub finished_ms: u64,
    pub traceparent: Option<String>,
    pub baggage: Option<String>,
    pub group: Option<String>,
    pub idempotency_key: Option<String>,
    pub result: Option<Vec<u8>>,
    pub last_error: Option<ErrorRecord>,
    pub redrives: u32,
    pub dead_seq: u64,
}

/// `JobRecord` as schema 2 wrote it (record version 2): the payload inside,
/// attempts in the `A` table. Read by migration 0003.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecordV2 {
    pub queue: String,
    pub queue_id: QueueId,
    pub namespace: String,
    pub function_id: String,
    pub fn_id: FnId,
    pub state: JobState,
    pub priority: u8,
    pub seq: u64,
    pub attempts: u32,
    pub history_len: u32,
    pub max_attempts: u32,
    pub enqueued_ms: u64,
    pub due_ms: u64,
    pub finished_ms: u64,
    pub traceparent: Option<String>,
    pub baggage: Option<String>,
    pub group: Option<String>,
    pub idempotency_key: Option<String>,
    pub result: Option<Vec<u8>>,
    pub last_error: Option<ErrorRecord>,
    pub redrives: u32,
    pub dead_seq: u64,
    pub payload: Vec<u8>,
}

pub fn apply(db: &sled::Db) -> Result<(), StoreError> {
    let tree = db.open_tree(layout::QUEUE_TREE)?;
    let mut moved = 0u64;
    loop {
        let rows: Vec<(sled::IVec, sled::IVec)> = tree
            .scan_prefix([layout::PAYLOADS_V1])
            .take(CHUNK)
            .collect::<Result<_, _>>()?;
        if rows.is_empty() {
            break;
        }
        let mut batch = sled::Batch::default();
        for (key, payload) in rows {
            batch.remove(key.clone());
            let Ok(id) = Uuid::from_slice(&key[1..]) else {
                continue;
            };
            move_job(&tree, &id, payload.to_vec(), &mut batch)?;
            moved += 1;
        }
        tree.apply_batch(batch)?;
    }
    if moved > 0 {
        tracing::info!(jobs = moved, "moved payloads into job records");
    }
    Ok(())
}

/// Writes job `id` in the schema 2 form into `batch`.
fn move_job(
    tree: &sled::Tree,
    id: &Uuid,
    payload: Vec<u8>,
    batch: &mut sled::Batch,
) -> Result<(), StoreError> {
    let Some(bytes) = tree.get(layout::job(id))? else {
        return Ok(()); // a payload without its job: dropped with its row
    };
    let old: JobRecordV1 = codec::decode(&bytes)?;
    let mut job = upgrade(old, payload);
    if job.state == JobState::Running {
        // Schema 1 counted the attempt when it started; schema 2 counts it
        // when it ends (or when recovery finds it interrupted).
        let attempt = AttemptRecord {
            attempt: job.history_len,
            started_ms: 0,
            ended_ms: 0,
            worker_id: None,
            error: None,
        };
        job.state = JobState::Ready;
        job.attempts = job.attempts.saturating_sub(1);
        job.history_len = job.history_len.saturating_sub(1);
        batch.insert(layout::running(id), codec::encode_as(2, &attempt));
    }
    batch.insert(layout::job(id), codec::encode_as(2, &job));
    Ok(())
}

fn upgrade(v1: JobRecordV1, payload: Vec<u8>) -> JobRecordV2 {
    JobRecordV2 {
        queue: v1.queue,
        queue_id: v1.queue_id,
        namespace: v1.namespace,
        function_id: v1.function_id,
        fn_id: v1.fn_id,
        state: v1.state,
        priority: v1.priority,
        seq: v1.seq,
        attempts: v1.attempts,
        history_len: v1.history_len,
        max_attempts: v1.max_attempts,
        enqueued_ms: v1.enqueued_ms,
        due_ms: v1.due_ms,
        finished_ms: v1.finished_ms,
        traceparent: v1.traceparent,
        baggage: v1.baggage,
        group: v1.group,
        idempotency_key: v1.idempotency_key,
        result: v1.result,
        last_error: v1.last_error,
        redrives: v1.redrives,
        dead_seq: v1.dead_seq,
        payload,
    }
}
