//! Schema version 4: job records gain expiry, progress, log lines and flow
//! links; per-queue counts gain `waiting` (see `0004_job_features.md`).

use serde::{Deserialize, Serialize};

use crate::store::layout::{self, FnId, QueueId};
use crate::store::records::{AttemptRecord, Counts, ErrorRecord, JobRecord, JobState};
use crate::store::{StoreError, codec};

/// Records rewritten per atomic batch.
const CHUNK: usize = 1000;

/// `JobRecord` as schemas 3 wrote it (record version 3). Written by 0003.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecordV3 {
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
    pub history: Vec<AttemptRecord>,
}

/// `Counts` as schemas 1 to 3 wrote it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountsV3 {
    pub ready: u64,
    pub delayed: u64,
    pub running: u64,
    pub completed: u64,
    pub dead: u64,
    pub held: u64,
}

pub fn apply(db: &sled::Db) -> Result<(), StoreError> {
    let tree = db.open_tree(layout::QUEUE_TREE)?;
    let jobs = rewrite(&tree, layout::JOBS, |v3: JobRecordV3| upgrade(v3))?;
    let counts = rewrite(&tree, layout::COUNTS, |c: CountsV3| Counts {
        ready: c.ready,
        delayed: c.delayed,
        running: c.running,
        completed: c.completed,
        dead: c.dead,
        held: c.held,
        waiting: 0,
    })?;
    if jobs + counts > 0 {
        tracing::info!(jobs, counts, "rewrote job records and counts at version 4");
    }
    Ok(())
}

/// Rewrites every record under `prefix` still below version 4, `CHUNK` per
/// atomic batch. Records already at version 4 were rewritten before a crash
/// cut the step short, so they are skipped.
fn rewrite<Old, New>(
    tree: &sled::Tree,
    prefix: u8,
    upgrade: impl Fn(Old) -> New,
) -> Result<u64, StoreError>
where
    Old: serde::de::DeserializeOwned,
    New: Serialize,
{
    let end = layout::prefix_end(&[prefix]);
    let mut from = vec![prefix];
    let mut rewritten = 0u64;
    loop {
        let rows: Vec<(sled::IVec, sled::IVec)> = tree
            .range(from.clone()..end.clone())
            .take(CHUNK)
            .collect::<Result<_, _>>()?;
        let Some((last, _)) = rows.last() else {
            break;
        };
        from = last.to_vec();
        from.push(0); // just past the last key
        let mut batch = sled::Batch::default();
        for (key, bytes) in &rows {
            if codec::version(bytes)? >= 4 {
                continue;
            }
            let new = upgrade(codec::decode(bytes)?);
            batch.insert(key.clone(), codec::encode_as(4, &new));
            rewritten += 1;
        }
        tree.apply_batch(batch)?;
    }
    Ok(rewritten)
}

fn upgrade(v3: JobRecordV3) -> JobRecord {
    JobRecord {
        queue: v3.queue,
        queue_id: v3.queue_id,
        namespace: v3.namespace,
        function_id: v3.function_id,
        fn_id: v3.fn_id,
        state: v3.state,
        priority: v3.priority,
        seq: v3.seq,
        attempts: v3.attempts,
        history_len: v3.history_len,
        max_attempts: v3.max_attempts,
        enqueued_ms: v3.enqueued_ms,
        due_ms: v3.due_ms,
        finished_ms: v3.finished_ms,
        traceparent: v3.traceparent,
        baggage: v3.baggage,
        group: v3.group,
        idempotency_key: v3.idempotency_key,
        result: v3.result,
        last_error: v3.last_error,
        redrives: v3.redrives,
        dead_seq: v3.dead_seq,
        payload: v3.payload,
        history: v3.history,
        expires_ms: 0,
        progress: None,
        logs: Vec::new(),
        logs_dropped: 0,
        flow: None,
    }
}
