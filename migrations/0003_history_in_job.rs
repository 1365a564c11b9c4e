//! Schema version 3: a job's ended attempts move from the `A` table into its
//! record (see `0003_history_in_job.md`).

use uuid::Uuid;

use super::m0002_payload_in_job::JobRecordV2;
use super::m0004_job_features::JobRecordV3;
use crate::store::layout;
use crate::store::records::AttemptRecord;
use crate::store::{StoreError, codec};

/// Jobs rewritten per atomic batch.
const CHUNK: usize = 1000;

pub fn apply(db: &sled::Db) -> Result<(), StoreError> {
    let tree = db.open_tree(layout::QUEUE_TREE)?;
    let end = layout::prefix_end(&[layout::JOBS]);
    let mut from = vec![layout::JOBS];
    let mut moved = 0u64;
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
            // Records already at version 3 were rewritten before a crash cut the step short.
            if codec::version(bytes)? >= 3 {
                continue;
            }
            let Ok(id) = Uuid::from_slice(&key[1..]) else {
                continue;
            };
            let mut history = Vec::new();
            for kv in tree.scan_prefix(attempts_prefix(&id)) {
                let (k, v) = kv?;
                history.push(codec::decode::<AttemptRecord>(&v)?);
                batch.remove(k);
            }
            history.sort_by_key(|a| a.attempt);
            let job = upgrade(codec::decode(bytes)?, history);
            batch.insert(key.clone(), codec::encode_as(3, &job));
            moved += 1;
        }
        tree.apply_batch(batch)?;
    }
    // Attempts of jobs that no longer exist.
    let orphans: Vec<sled::IVec> = tree
        .scan_prefix([layout::ATTEMPTS_V2])
        .keys()
        .collect::<Result<_, _>>()?;
    for chunk in orphans.chunks(CHUNK) {
        let mut batch = sled::Batch::default();
        chunk.iter().for_each(|k| batch.remove(k.clone()));
        tree.apply_batch(batch)?;
    }
    if moved > 0 {
        tracing::info!(jobs = moved, "moved attempt histories into job records");
    }
    Ok(())
}

/// Every attempt of one job in the retired `A` table: `A` job_id attempt(4).
pub fn attempts_prefix(id: &Uuid) -> Vec<u8> {
    let mut k = vec![layout::ATTEMPTS_V2];
    k.extend_from_slice(id.as_bytes());
    k
}

fn upgrade(v2: JobRecordV2, history: Vec<AttemptRecord>) -> JobRecordV3 {
    JobRecordV3 {
        queue: v2.queue,
        queue_id: v2.queue_id,
        namespace: v2.namespace,
        function_id: v2.function_id,
        fn_id: v2.fn_id,
        state: v2.state,
        priority: v2.priority,
        seq: v2.seq,
        attempts: v2.attempts,
        history_len: v2.history_len,
        max_attempts: v2.max_attempts,
        enqueued_ms: v2.enqueued_ms,
        due_ms: v2.due_ms,
        finished_ms: v2.finished_ms,
        traceparent: v2.traceparent,
        baggage: v2.baggage,
        group: v2.group,
        idempotency_key: v2.idempotency_key,
        result: v2.result,
        last_error: v2.last_error,
        redrives: v2.redrives,
        dead_seq: v2.dead_seq,
        payload: v2.payload,
        history,
    }
}
