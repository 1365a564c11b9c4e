//! The store's promise at the level of system calls: the real `qmesh` binary
//! runs under `strace`, and for an enqueue of 1 KB and one of 900 KB (which
//! sled writes to a file of its own under `store/blobs/`) every file the
//! engine wrote for the job is fsynced (and the directory of every file it
//! created) before the receipt goes out on the worker's socket, and before
//! the job is dispatched; and the blob before sled writes the log entry
//! pointing at it. Order only, read from strace's output: no timing.

mod common;

use common::{EngineProcess, RawClient};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;

/// One system call as strace reports it, its start and end as positions in
/// the output (a call another thread interrupts is split over two lines).
#[derive(Debug)]
struct Call {
    name: String,
    /// The text of the call: arguments and result (`-y` names each fd's file).
    text: String,
    start: usize,
    end: usize,
}

impl Call {
    /// The file of the call's first argument (`12</path>`), or for `openat`
    /// the file it opened (its result).
    fn path(&self) -> Option<&str> {
        let s = if self.name == "openat" {
            let ret = self.text.rsplit_once(") = ")?.1;
            ret.split_once('<')?.1
        } else {
            self.text.split_once('(')?.1.split_once('<')?.1
        };
        s.split_once('>').map(|(p, _)| p)
    }

    fn is_write(&self) -> bool {
        matches!(
            self.name.as_str(),
            "write" | "writev" | "pwrite64" | "pwritev" | "sendto" | "sendmsg"
        )
    }

    fn is_sync(&self) -> bool {
        matches!(self.name.as_str(), "fsync" | "fdatasync") && self.text.ends_with("= 0")
    }
}

/// Parses `strace -f -o` output (lines start with the thread id).
fn parse(log: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut pending: HashMap<&str, (String, String, usize)> = HashMap::new();
    for (pos, line) in log.lines().enumerate() {
        let Some((pid, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(resumed) = rest.strip_prefix("<... ") {
            let Some((name, tail)) = resumed.split_once(" resumed>") else {
                continue;
            };
            if let Some((n, head, start)) = pending.remove(pid)
                && n == name
            {
                calls.push(Call {
                    name: n,
                    text: format!("{head}{tail}"),
                    start,
                    end: pos,
                });
            }
        } else if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            let name = head.split('(').next().unwrap_or_default().to_owned();
            pending.insert(pid, (name, head.to_owned(), pos));
        } else if let Some((name, _)) = rest.split_once('(') {
            calls.push(Call {
                name: name.to_owned(),
                text: rest.to_owned(),
                start: pos,
                end: pos,
            });
        }
    }
    calls.sort_by_key(|c| c.start);
    calls
}

/// The first write on a socket whose bytes contain every one of `needles`.
fn socket_write<'a>(calls: &'a [Call], after: usize, needles: &[&str]) -> &'a Call {
    calls
        .iter()
        .filter(|c| c.start > after && c.is_write())
        .filter(|c| {
            c.path()
                .is_some_and(|p| p.contains("socket") || p.contains("TCP"))
        })
        .find(|c| needles.iter().all(|n| c.text.contains(n)))
        .unwrap_or_else(|| panic!("no socket write with {needles:?} after line {after}"))
}

/// Asserts that every file under `data_dir` written between `from` and
/// `until` is fsynced after its last write and before `until`, and the
/// directory of every file created there too. Returns the files written.
fn assert_synced_before(
    calls: &[Call],
    data_dir: &str,
    from: usize,
    until: usize,
    what: &str,
) -> Vec<String> {
    let in_window = || calls.iter().filter(|c| c.start > from && c.start < until);
    let mut last_write: HashMap<String, usize> = HashMap::new();
    let mut created: HashMap<String, usize> = HashMap::new();
    for c in in_window() {
        let Some(path) = c.path().filter(|p| p.starts_with(data_dir)) else {
            continue;
        };
        if c.is_write() {
            last_write.insert(path.to_owned(), c.end);
        } else if c.name == "openat" && c.text.contains("O_CREAT") {
            let dir = Path::new(path)
                .parent()
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            created.insert(dir, c.end);
        }
    }
    let synced_after = |path: &str, after: usize| {
        in_window()
            .any(|c| c.is_sync() && c.path() == Some(path) && c.start > after && c.end < until)
    };
    for (path, at) in last_write.iter().chain(created.iter()) {
        assert!(
            synced_after(path, *at),
            "{what}: {path} (written or given an entry at line {at}) is not fsynced before line {until}"
        );
    }
    last_write.into_keys().collect()
}

/// Asserts that `blob`, written between `from` and `until`, is fsynced
/// before sled next writes its log (the write that holds the pointer to
/// it): a power cut between the two must not leave the log pointing at a
/// blob that is not on disk.
fn assert_synced_before_the_log_points_at(
    calls: &[Call],
    blob: &str,
    data_dir: &str,
    from: usize,
    until: usize,
) {
    let log = format!("{data_dir}/store/db");
    let in_window = || calls.iter().filter(|c| c.start > from && c.start < until);
    let written = in_window()
        .filter(|c| c.is_write() && c.path() == Some(blob))
        .map(|c| c.end)
        .max()
        .expect("the blob's writes");
    let log_write = in_window()
        .find(|c| c.is_write() && c.path() == Some(log.as_str()) && c.start > written)
        .unwrap_or_else(|| panic!("no write to the log after {blob}'s"));
    assert!(
        in_window().any(|c| c.is_sync()
            && c.path() == Some(blob)
            && c.start > written
            && c.end < log_write.start),
        "{blob} is not fsynced before the log write at line {} that follows it",
        log_write.start
    );
}

/// Sends an enqueue of `data` to `function_id` (which `c` provides) and
/// reads both its receipt and the job's dispatch, in whichever order they
/// come; returns the enqueue's invocation id.
async fn enqueue_and_run(c: &mut RawClient, function_id: &str, data: Value) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    c.send(
        json!({"type":"invokefunction","invocation_id":id,"function_id":function_id,
        "data":data,"action":{"type":"enqueue","queue":"durable"}}),
    )
    .await;
    let (mut receipt, mut dispatch) = (false, false);
    while !(receipt && dispatch) {
        let v = c.recv().await.expect("the engine closed the socket");
        receipt |= v["type"] == "invocationresult" && v["invocation_id"] == id.as_str();
        dispatch |= v["type"] == "invokefunction" && v["function_id"] == function_id;
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_of_a_job_is_synced_before_its_receipt_and_its_dispatch() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let log = dir.path().join("strace.log");
    let trace = [
        "-f",
        "-qq",
        "-y",
        "-s",
        // Whole buffers: the engine may write several frames (a 900 KB dispatch,
        // then the receipt) in one call.
        "2000000",
        "-e",
        "trace=openat,write,writev,pwrite64,pwritev,sendto,sendmsg,fsync,fdatasync",
    ];
    let mut engine = EngineProcess::start_traced(&data_dir, &trace, &log);
    let mut w = RawClient::worker(&engine.url, "durable-worker").await;
    let mut markers = Vec::new();
    let mut jobs = Vec::new();
    for (size, function) in [(1_000, "durable::small"), (900_000, "durable::large")] {
        w.register_function(function).await;
        // A call whose answer marks where this job's window starts in the trace.
        let marker = w.call("engine::functions::list", json!({})).await;
        markers.push(marker["invocation_id"].as_str().unwrap().to_owned());
        let id = enqueue_and_run(&mut w, function, json!({"pad": "x".repeat(size)})).await;
        jobs.push((id, function, size));
    }
    engine.kill();

    let calls = parse(&std::fs::read_to_string(&log).unwrap());
    let data_dir = data_dir.to_str().unwrap();
    // sled never fsyncs the files and directories it creates: the engine
    // does at open, before it accepts anyone.
    let first = socket_write(&calls, 0, &[markers[0].as_str()]).start;
    for part in ["", "/store", "/store/blobs", "/store/conf", "/store/db"] {
        let path = format!("{data_dir}{part}");
        assert!(
            calls
                .iter()
                .any(|c| c.is_sync() && c.path() == Some(path.as_str()) && c.end < first),
            "{path} is not fsynced at open"
        );
    }
    for ((id, function, size), marker) in jobs.iter().zip(&markers) {
        let from = socket_write(&calls, 0, &[marker.as_str()]).start;
        let receipt = socket_write(&calls, from, &[id.as_str()]).start;
        let dispatch = socket_write(&calls, from, &["invokefunction", function]).start;
        let what = format!("{size} B job");
        let written = assert_synced_before(
            &calls,
            data_dir,
            from,
            receipt,
            &format!("{what}'s receipt"),
        );
        assert!(
            written.iter().any(|p| p.ends_with("/store/db")),
            "{what}: the trace shows no write to the log before the receipt: {written:?}"
        );
        if *size > 200_000 {
            let blob = (written.iter())
                .find(|p| p.contains("/store/blobs/"))
                .unwrap_or_else(|| {
                    panic!("{what}: sled is expected to write it to a blob: {written:?}")
                });
            assert_synced_before_the_log_points_at(&calls, blob, data_dir, from, receipt);
        }
        assert_synced_before(
            &calls,
            data_dir,
            from,
            dispatch,
            &format!("{what}'s dispatch"),
        );
    }
}
