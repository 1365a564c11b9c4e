//! The `qmesh` binary's client subcommands, run as a process against an
//! engine's URL (through `QMESH_URL`), for `tests/cli.rs` and the cluster's
//! queue tests.

use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

use super::wait_for;

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {self:?}"))
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `qmesh ARGS` against `url` (through `QMESH_URL`), with `stdin` piped in.
pub async fn qmesh_with_stdin(url: &str, args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_qmesh"))
        .args(args)
        .env("QMESH_URL", url)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run qmesh");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await.unwrap();
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("qmesh finishes")
        .unwrap();
    Run {
        code: out.status.code().expect("exited"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub async fn qmesh(url: &str, args: &[&str]) -> Run {
    qmesh_with_stdin(url, args, None).await
}

/// Like [`qmesh`], asserting exit 0 and returning the JSON on stdout.
pub async fn ok_json(url: &str, args: &[&str]) -> Value {
    let r = qmesh(url, args).await;
    assert_eq!(r.code, 0, "{args:?}: {r:?}");
    r.json()
}

/// Polls `qmesh ARGS --json` until `check` holds on its output.
pub async fn until(url: &str, args: &[&str], check: impl Fn(&Value) -> bool) -> Value {
    wait_for(
        &format!("{args:?} to match"),
        Duration::from_secs(10),
        async || {
            let v = ok_json(url, args).await;
            if check(&v) { Ok(v) } else { Err(v.to_string()) }
        },
    )
    .await
}
