//! The store's layout, whole: which keyspace holds what, and how keys are built.
//!
//! Everything that must change together lives in ONE sled tree (`queue`),
//! split into tables by a one-byte prefix, so a state change is one unit a
//! crash cannot tear: an undo entry (tree `undo`) holds what the batch's
//! keys held before, the batch is written key by key, and the entry removed
//! (`Store::apply_logged`); an entry found at open is undone. sled's own
//! `apply_batch` would do it in one call, but it waits for every flush in
//! progress (its lock is exclusive), and transactions serialise the whole
//! process and have open deadlock reports. The `meta` tree holds the schema
//! version only.
//!
//! After the prefix, keys are fixed-width big-endian so byte order is logical
//! order (bincode's little-endian integers would not sort).
//!
//! | table | key | value |
//! |---|---|---|
//! | `Q` queues | `Q` name | [`QueueRecord`](super::records::QueueRecord) |
//! | `J` jobs | `J` job_id(16) | [`JobRecord`](super::records::JobRecord), payload and ended attempts included — of a job not in a bundle |
//! | `B` bundles | `B` job_id(16): the greatest id written into it | up to 16 small job records of one enqueue batch, `job_id(16) len(4) JobRecord` each, by id (`store::bundles`); every id is above the previous bundle's key; at most 7 KiB |
//! | `R` ready | `R` queue(4) fn(4) prio_inv(1) seq(8): a run's first position | a run of jobs, `seq(8) job_id(16)` each, by sequence (`store::ready`); a 16-byte value (schema ≤ 5) is one job at the key's position — also of a job whose start is not written yet |
//! | `D` due | `D` due_ms(8) job_id | empty — delayed and backing-off jobs |
//! | `X` running | `X` job_id | [`AttemptRecord`](super::records::AttemptRecord) of the attempt in progress |
//! | `Z` dead | `Z` queue(4) seq(8) | job_id — dead letters in order |
//! | `C` completed | `C` done_ms(8) job_id | job_ids (16 bytes each) — the jobs one batch completed, for retention; an empty value (as entries were first written) = the key's own job |
//! | `K` idempotency | `K` queue(4) key | job_id |
//! | `N` functions | `N` namespace 0x00 function_id [0x00 lane] | fn(4) — interned ids for `R` keys: one per function, and one per (function, fair key) on `fair_by` queues |
//! | `S` seq | `S` | seq(8) — a reservation: every sequence number in use is below it (raised 100,000 at a time) |
//! | `G` groups | `G` queue(4) len(2) group seq(8) | job_id — a FIFO group's unfinished jobs in order |
//! | `T` counts | `T` queue(4) | [`Counts`](super::records::Counts) per state |
//! | `W` waiting | `W` queue(4) seq(8) | job_id — flow parents waiting for their children |
//! | `E` expiry | `E` expires_ms(8) job_id | empty — jobs with an expiry, until it passes (then checked and removed) |
//!
//! A running job's `J` record is left as it was when the job started (state
//! `ready`, attempts not yet counted), and the scheduler keeps the live record
//! in memory. Starting writes nothing at once: an attempt still running 50 ms
//! later (or at a stop) has its `R` entry swapped for an `X` entry. The record
//! is rewritten when the attempt ends, or by recovery from the `X` entry after
//! a crash; a job whose start was never written is simply ready again.
//!
//! The `undo` tree holds one entry, `n(8)` → [`UndoRecord`](super::records::UndoRecord),
//! while a queue batch is being written: what its keys held before. One
//! left by a crash is undone at open. A tree of its own, because a leaf
//! holding it is rewritten whole at each split, and ready entries are
//! appended next to where a `U` table would sit: a 10,000-job batch's entry
//! (hundreds of KB, a blob) was rewritten at every split.
//!
//! Retired: `P` (payloads, schema 1) — moved into `J` by migration 0002;
//! `A` (ended attempts, schema 2) — moved into `J` by migration 0003.

use uuid::Uuid;

pub const QUEUE_TREE: &str = "queue";
pub const META_TREE: &str = "meta";
pub const UNDO_TREE: &str = "undo";
pub const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";

pub const QUEUES: u8 = b'Q';
pub const JOBS: u8 = b'J';
pub const BUNDLES: u8 = b'B';
/// Schema 1 only: read by migration 0002.
pub const PAYLOADS_V1: u8 = b'P';
pub const READY: u8 = b'R';
pub const DUE: u8 = b'D';
pub const RUNNING: u8 = b'X';
pub const DEAD: u8 = b'Z';
pub const COMPLETED: u8 = b'C';
/// Schema 2 only: read by migration 0003.
pub const ATTEMPTS_V2: u8 = b'A';
pub const IDEMPOTENCY: u8 = b'K';
pub const FUNCTIONS: u8 = b'N';
pub const SEQ: u8 = b'S';
pub const COUNTS: u8 = b'T';
pub const GROUPS: u8 = b'G';
pub const WAITING: u8 = b'W';
pub const EXPIRY: u8 = b'E';

pub type QueueId = u32;
pub type FnId = u32;

fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut k = Vec::with_capacity(len);
    k.push(prefix);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

pub fn queue(name: &str) -> Vec<u8> {
    key(QUEUES, &[name.as_bytes()])
}

/// The name in a queue key.
pub fn parse_queue(k: &[u8]) -> String {
    String::from_utf8_lossy(k.get(1..).unwrap_or_default()).into_owned()
}

pub fn job(id: &Uuid) -> Vec<u8> {
    key(JOBS, &[id.as_bytes()])
}

/// A job bundle's key: its greatest member's id (see `store::bundles`).
pub fn bundle(last: &Uuid) -> Vec<u8> {
    key(BUNDLES, &[last.as_bytes()])
}

/// The id in a bundle's key.
pub fn parse_bundle(k: &[u8]) -> Option<Uuid> {
    Uuid::from_slice(k.get(1..)?).ok()
}

/// A job's ready position, and the key of a run starting there. Higher
/// priority sorts first: the byte stored is `255 - priority`.
pub fn ready(q: QueueId, f: FnId, priority: u8, seq: u64) -> Vec<u8> {
    key(
        READY,
        &[
            &q.to_be_bytes(),
            &f.to_be_bytes(),
            &[255 - priority],
            &seq.to_be_bytes(),
        ],
    )
}

/// The sequence number of a ready key (its last eight bytes).
pub fn ready_seq(key: &[u8]) -> Option<u64> {
    let tail = key.len().checked_sub(8).map(|at| &key[at..])?;
    Some(u64::from_be_bytes(tail.try_into().ok()?))
}

pub fn ready_queue_prefix(q: QueueId) -> Vec<u8> {
    key(READY, &[&q.to_be_bytes()])
}

pub fn ready_fn_prefix(q: QueueId, f: FnId) -> Vec<u8> {
    key(READY, &[&q.to_be_bytes(), &f.to_be_bytes()])
}

/// The function id inside a ready key.
pub fn ready_key_fn(k: &[u8]) -> Option<FnId> {
    Some(FnId::from_be_bytes(k.get(5..9)?.try_into().ok()?))
}

pub fn due(due_ms: u64, id: &Uuid) -> Vec<u8> {
    key(DUE, &[&due_ms.to_be_bytes(), id.as_bytes()])
}

/// (due_ms, job_id) of a due key.
pub fn parse_due(k: &[u8]) -> Option<(u64, Uuid)> {
    let ms = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
    let id = Uuid::from_slice(k.get(9..25)?).ok()?;
    Some((ms, id))
}

pub fn running(id: &Uuid) -> Vec<u8> {
    key(RUNNING, &[id.as_bytes()])
}

/// The job id in a running key.
pub fn parse_running(k: &[u8]) -> Option<Uuid> {
    Uuid::from_slice(k.get(1..)?).ok()
}

pub fn dead(q: QueueId, seq: u64) -> Vec<u8> {
    key(DEAD, &[&q.to_be_bytes(), &seq.to_be_bytes()])
}

pub fn dead_prefix(q: QueueId) -> Vec<u8> {
    key(DEAD, &[&q.to_be_bytes()])
}

/// The jobs a completed entry stands for: every id its value lists, or the
/// key's own job when the value is empty. A new key costs sled a split every
/// few inserts, far more than the bytes, hence one entry per batch, not per job.
pub fn completed_ids(k: &[u8], v: &[u8]) -> Vec<Uuid> {
    if v.is_empty() {
        return parse_due(k).map(|(_, id)| id).into_iter().collect();
    }
    v.chunks_exact(16)
        .filter_map(|c| Uuid::from_slice(c).ok())
        .collect()
}

/// The value of a completed entry listing `ids`.
pub fn completed_value(ids: &[Uuid]) -> Vec<u8> {
    ids.iter().flat_map(|id| *id.as_bytes()).collect()
}

pub fn completed(done_ms: u64, id: &Uuid) -> Vec<u8> {
    key(COMPLETED, &[&done_ms.to_be_bytes(), id.as_bytes()])
}

pub fn idempotency(q: QueueId, k: &str) -> Vec<u8> {
    key(IDEMPOTENCY, &[&q.to_be_bytes(), k.as_bytes()])
}

/// A function's key, or one of its fair lanes' (`lane` = the job's fair key).
pub fn function(namespace: &str, function_id: &str, lane: Option<&str>) -> Vec<u8> {
    match lane {
        None => key(
            FUNCTIONS,
            &[namespace.as_bytes(), &[0], function_id.as_bytes()],
        ),
        Some(lane) => key(
            FUNCTIONS,
            &[
                namespace.as_bytes(),
                &[0],
                function_id.as_bytes(),
                &[0],
                lane.as_bytes(),
            ],
        ),
    }
}

/// (namespace, function id, lane) of a function key.
pub fn parse_function(k: &[u8]) -> Option<(String, String, Option<String>)> {
    let rest = k.get(1..)?;
    let sep = rest.iter().position(|b| *b == 0)?;
    let ns = String::from_utf8_lossy(&rest[..sep]).into_owned();
    let rest = &rest[sep + 1..];
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Some(match rest.iter().position(|b| *b == 0) {
        None => (ns, text(rest), None),
        Some(sep) => (ns, text(&rest[..sep]), Some(text(&rest[sep + 1..]))),
    })
}

/// A flow parent waiting for its children.
pub fn waiting(q: QueueId, seq: u64) -> Vec<u8> {
    key(WAITING, &[&q.to_be_bytes(), &seq.to_be_bytes()])
}

pub fn waiting_of_queue(q: QueueId) -> Vec<u8> {
    key(WAITING, &[&q.to_be_bytes()])
}

pub fn expiry(expires_ms: u64, id: &Uuid) -> Vec<u8> {
    key(EXPIRY, &[&expires_ms.to_be_bytes(), id.as_bytes()])
}

/// Every unfinished job of one FIFO group, in enqueue order.
pub fn group_prefix(q: QueueId, group: &str) -> Vec<u8> {
    let len = u16::try_from(group.len()).unwrap_or(u16::MAX);
    key(
        GROUPS,
        &[
            &q.to_be_bytes(),
            &len.to_be_bytes(),
            &group.as_bytes()[..len as usize],
        ],
    )
}

pub fn group_entry(q: QueueId, group: &str, seq: u64) -> Vec<u8> {
    let mut k = group_prefix(q, group);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn groups_of_queue(q: QueueId) -> Vec<u8> {
    key(GROUPS, &[&q.to_be_bytes()])
}

/// An entry of the `undo` tree.
pub fn undo(n: u64) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

pub fn counts(q: QueueId) -> Vec<u8> {
    key(COUNTS, &[&q.to_be_bytes()])
}

pub fn seq() -> Vec<u8> {
    vec![SEQ]
}

/// A job id from a value that stores one.
pub fn uuid_value(v: &[u8]) -> Option<Uuid> {
    Uuid::from_slice(v).ok()
}

/// The first key after every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

// ---------------------------------------------------------------------------
// Realtime channels (`crate::realtime::persist`), kept apart from the job tables.
//
// | table | key | value |
// |---|---|---|
// | `w` open client connections | `w` channel_id(16) | [`RealtimeConnRecord`](super::records::RealtimeConnRecord) |
//
// A row exists while a client connection whose route has a disconnect handler
// is open; rows left after a crash become `engine_restart` disconnects.

pub const REALTIME_CONNS: u8 = b'w';

pub fn realtime_conn(channel_id: &Uuid) -> Vec<u8> {
    key(REALTIME_CONNS, &[channel_id.as_bytes()])
}

/// The connection id of a [`realtime_conn`] key.
pub fn parse_realtime_conn(key: &[u8]) -> Option<Uuid> {
    match key {
        [REALTIME_CONNS, id @ ..] => Uuid::from_slice(id).ok(),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// State (`crate::state`), kept apart from the job tables.
//
// | table | key | value |
// |---|---|---|
// | `v` state values | `v` scope_len(2) scope key | [`StateRecord`](super::records::StateRecord) |
//
// The scope's length comes first so one scope's keys are one contiguous,
// exact prefix (scope `a` never scans scope `ab`), and a listing of scopes
// can jump from one scope to the next. Scopes and keys are at most
// `protocol::names::MAX_NAME_BYTES` long, so the length fits two bytes.

pub const STATE_VALUES: u8 = b'v';

/// Every key of one scope.
pub fn state_scope(scope: &str) -> Vec<u8> {
    let len = u16::try_from(scope.len()).unwrap_or(u16::MAX);
    key(
        STATE_VALUES,
        &[&len.to_be_bytes(), &scope.as_bytes()[..len as usize]],
    )
}

pub fn state_value(scope: &str, k: &str) -> Vec<u8> {
    let mut out = state_scope(scope);
    out.extend_from_slice(k.as_bytes());
    out
}

/// (scope, key) of a [`state_value`] key.
pub fn parse_state_value(k: &[u8]) -> Option<(String, String)> {
    let [STATE_VALUES, a, b, rest @ ..] = k else {
        return None;
    };
    let len = u16::from_be_bytes([*a, *b]) as usize;
    let scope = std::str::from_utf8(rest.get(..len)?).ok()?;
    let key = std::str::from_utf8(rest.get(len..)?).ok()?;
    Some((scope.to_owned(), key.to_owned()))
}

// ---------------------------------------------------------------------------
// Streams (`crate::stream`), kept apart from the job tables.
//
// | table | key | value |
// |---|---|---|
// | `m` stream items | `m` name_len(2) name group_len(2) group item | [`StateRecord`](super::records::StateRecord) |
//
// Lengths lead each name so a stream's groups and a group's items are exact,
// contiguous prefixes, and listings can jump from one group (or stream) to
// the next.

pub const STREAM_ITEMS: u8 = b'm';

fn len2(s: &str) -> ([u8; 2], &[u8]) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    (len.to_be_bytes(), &s.as_bytes()[..len as usize])
}

/// Every item of one stream.
pub fn stream_prefix(stream: &str) -> Vec<u8> {
    let (l, s) = len2(stream);
    key(STREAM_ITEMS, &[&l, s])
}

/// Every item of one group.
pub fn stream_group(stream: &str, group: &str) -> Vec<u8> {
    let (l, g) = len2(group);
    let mut out = stream_prefix(stream);
    out.extend_from_slice(&l);
    out.extend_from_slice(g);
    out
}

pub fn stream_item(stream: &str, group: &str, item: &str) -> Vec<u8> {
    let mut out = stream_group(stream, group);
    out.extend_from_slice(item.as_bytes());
    out
}

/// (stream, group, item) of a [`stream_item`] key.
pub fn parse_stream_item(k: &[u8]) -> Option<(String, String, String)> {
    let [STREAM_ITEMS, rest @ ..] = k else {
        return None;
    };
    let take = |b: &[u8]| -> Option<(String, usize)> {
        let len = u16::from_be_bytes([*b.first()?, *b.get(1)?]) as usize;
        let s = std::str::from_utf8(b.get(2..2 + len)?).ok()?;
        Some((s.to_owned(), 2 + len))
    };
    let (stream, n) = take(rest)?;
    let rest = &rest[n..];
    let (group, n) = take(rest)?;
    let item = std::str::from_utf8(&rest[n..]).ok()?;
    Some((stream, group, item.to_owned()))
}

// ---------------------------------------------------------------------------
// Cron (`crate::cron`), kept apart from the job tables.
//
// | table | key | value |
// |---|---|---|
// | `c` cron positions | `c` trigger_id | [`CronRecord`](super::records::CronRecord) |
//
// One entry per cron trigger id ever bound: the last slot the engine decided
// (fired, or skipped by policy), written and synced before the slot's fire,
// so a restart neither fires that slot again nor forgets the slots after it.
// Keyed by trigger id, not by worker: a worker that binds the same id after
// a restart resumes the schedule. Entries are not removed on unbind (a
// worker's disconnect unbinds too); each is a few dozen bytes.

pub const CRON_POSITIONS: u8 = b'c';

pub fn cron_position(trigger_id: &str) -> Vec<u8> {
    key(CRON_POSITIONS, &[trigger_id.as_bytes()])
}

// ---------------------------------------------------------------------------
// Durable topics (`crate::topics`), kept apart from the job tables.
//
// | table | key | value |
// |---|---|---|
// | `u` topic subscriptions | `u` topic_len(2) topic ns_len(2) namespace function_id | [`TopicSubRecord`](super::records::TopicSubRecord) |
//
// One entry per (topic, namespace, function) that a `durable:subscriber`
// binding ever named, kept after its bindings go (with the time they went)
// so publishes while its worker is away still get a job each. The messages
// themselves are jobs in the queue tables, one queue per entry.

pub const TOPIC_SUBS: u8 = b'u';

/// Every subscription of one topic.
pub fn topic_prefix(topic: &str) -> Vec<u8> {
    let (l, t) = len2(topic);
    key(TOPIC_SUBS, &[&l, t])
}

pub fn topic_sub(topic: &str, namespace: &str, function_id: &str) -> Vec<u8> {
    let (l, ns) = len2(namespace);
    let mut out = topic_prefix(topic);
    out.extend_from_slice(&l);
    out.extend_from_slice(ns);
    out.extend_from_slice(function_id.as_bytes());
    out
}

/// (topic, namespace, function id) of a [`topic_sub`] key.
pub fn parse_topic_sub(k: &[u8]) -> Option<(String, String, String)> {
    let [TOPIC_SUBS, rest @ ..] = k else {
        return None;
    };
    let take = |b: &[u8]| -> Option<(String, usize)> {
        let len = u16::from_be_bytes([*b.first()?, *b.get(1)?]) as usize;
        let s = std::str::from_utf8(b.get(2..2 + len)?).ok()?;
        Some((s.to_owned(), 2 + len))
    };
    let (topic, n) = take(rest)?;
    let rest = &rest[n..];
    let (ns, n) = take(rest)?;
    let function_id = std::str::from_utf8(&rest[n..]).ok()?;
    Some((topic, ns, function_id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_keys_sort_by_priority_then_seq() {
        let a = ready(1, 7, 5, 10);
        let b = ready(1, 7, 0, 2);
        let c = ready(1, 7, 5, 11);
        assert!(a < c && c < b, "higher priority first, then enqueue order");
        assert_eq!(ready_key_fn(&a), Some(7));
        assert!(a.starts_with(&ready_fn_prefix(1, 7)));
    }

    #[test]
    fn due_keys_round_trip_and_sort_by_time() {
        let id = Uuid::now_v7();
        let k = due(1_000, &id);
        assert_eq!(parse_due(&k), Some((1_000, id)));
        assert!(due(999, &Uuid::max()) < k);
    }

    #[test]
    fn completed_entries_list_their_jobs() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let k = completed(5, &a);
        assert_eq!(
            completed_ids(&k, &[]),
            vec![a],
            "an empty value is the key's job"
        );
        assert_eq!(completed_ids(&k, &completed_value(&[a, b])), vec![a, b]);
    }

    #[test]
    fn state_keys_round_trip_and_scopes_do_not_overlap() {
        let k = state_value("orders", "o-1");
        assert_eq!(parse_state_value(&k), Some(("orders".into(), "o-1".into())));
        assert!(k.starts_with(&state_scope("orders")));
        assert!(!state_value("ordersx", "").starts_with(&state_scope("orders")));
    }

    #[test]
    fn stream_keys_round_trip_and_nest() {
        let k = stream_item("chat", "room-1", "m1");
        let parsed = parse_stream_item(&k);
        assert_eq!(parsed, Some(("chat".into(), "room-1".into(), "m1".into())));
        assert!(k.starts_with(&stream_group("chat", "room-1")));
        assert!(!stream_item("chatx", "g", "i").starts_with(&stream_prefix("chat")));
        assert!(!stream_item("chat", "room-10", "").starts_with(&stream_group("chat", "room-1")));
    }

    #[test]
    fn cron_positions_have_their_own_table() {
        let k = cron_position("nightly");
        assert_eq!(k[0], CRON_POSITIONS);
        assert_eq!(&k[1..], b"nightly");
    }

    #[test]
    fn topic_subscription_keys_round_trip_and_topics_do_not_overlap() {
        let k = topic_sub("orders", "default", "billing::charge");
        let parsed = parse_topic_sub(&k);
        assert_eq!(
            parsed,
            Some(("orders".into(), "default".into(), "billing::charge".into()))
        );
        assert!(k.starts_with(&topic_prefix("orders")));
        assert!(!topic_sub("ordersx", "default", "f").starts_with(&topic_prefix("orders")));
    }

    #[test]
    fn prefix_end_is_just_past_the_prefix() {
        assert_eq!(prefix_end(&[1, 2]), vec![1, 3]);
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
    }
}
