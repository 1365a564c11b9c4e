//! The real `qmesh` binary as a child process: for tests that kill -9 it and
//! for the benchmarks. One file for both: tests reach it as
//! `common::launcher`, benches include it with `#[path]`, so it uses nothing
//! else from `tests/common`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The engine binary to run: the one cargo built for this package, or the
/// one `QMESH_BENCH_ENGINE` names (the benches compare builds with it).
fn binary() -> PathBuf {
    std::env::var_os("QMESH_BENCH_ENGINE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_qmesh")))
}

/// A `qmesh serve` process on an ephemeral port. Killed (SIGKILL) when
/// dropped, so a failing test leaves no engine behind holding its output open.
pub struct EngineProcess {
    child: Child,
    /// `ws://127.0.0.1:<port>`, from the engine's first line on stdout.
    pub url: String,
    /// Where browsers reach realtime routes (`realtime=` on that line).
    pub realtime_url: String,
    pub data_dir: PathBuf,
    /// The engine's pid when `child` is `strace` running it.
    traced: Option<u32>,
    _owned: Option<tempfile::TempDir>,
}

impl EngineProcess {
    /// An engine with a fresh store in a temp dir (removed when dropped).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut e = Self::spawn(dir.path(), None);
        e._owned = Some(dir);
        e
    }

    /// An engine on the store in `data_dir`, which outlives it (for restarts).
    pub fn start_in(data_dir: &Path) -> Self {
        Self::spawn(data_dir, None)
    }

    /// An engine with a fresh store in a temp dir and `config` (TOML) as its config file.
    pub fn start_with_config(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("qmesh.toml");
        // HTTP, realtime and streams listeners on free ports unless the config says where.
        let mut config = config.to_owned();
        for section in ["http", "realtime", "streams"] {
            if !config.contains(&format!("[{section}]")) {
                config.push_str(&format!("\n[{section}]\nlisten = \"127.0.0.1:0\"\n"));
            }
        }
        std::fs::write(&file, config).expect("write the config file");
        let mut e = Self::spawn(&dir.path().join("data"), Some(&file));
        e._owned = Some(dir);
        e
    }

    /// An engine on the store in `data_dir`, run by `strace` with `args`
    /// (its output in `log`): for tests that check the order of its system calls.
    pub fn start_traced(data_dir: &Path, args: &[&str], log: &Path) -> Self {
        let mut cmd = Command::new("strace");
        cmd.args(args).arg("-o").arg(log).arg("--").arg(binary());
        let mut e = Self::spawn_cmd(cmd, data_dir, None);
        // strace runs the engine as its only child.
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", e.child.id()))
                .expect("strace's children");
        e.traced = Some(
            children
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
                .expect("the traced engine's pid"),
        );
        e
    }

    /// An engine on the store in `data_dir` whose files cannot grow past
    /// `fsize` bytes (`RLIMIT_FSIZE`, SIGXFSZ ignored so a write past it
    /// fails with EFBIG like a full disk would with ENOSPC): a full disk
    /// without root. Only the soft limit is set, so
    /// [`EngineProcess::lift_file_limit`] can lift it as freeing space would.
    pub fn start_with_file_limit(data_dir: &Path, fsize: u64) -> Self {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "trap '' XFSZ; exec prlimit --fsize={fsize}:unlimited -- \"$0\" \"$@\""
            ))
            .arg(binary());
        Self::spawn_cmd(cmd, data_dir, None)
    }

    /// Lifts the limit [`EngineProcess::start_with_file_limit`] set: room again.
    pub fn lift_file_limit(&self) {
        let lifted = Command::new("prlimit")
            .args(["--fsize=unlimited", "--pid", &self.pid().to_string()])
            .status()
            .expect("run prlimit");
        assert!(
            lifted.success(),
            "prlimit could not lift the file size limit"
        );
    }

    /// `GET /health` (HTTP/1.1 on the worker listener), its JSON body.
    pub fn health(&self) -> serde_json::Value {
        use std::io::{Read, Write};
        let addr = self.url.trim_start_matches("ws://");
        let mut s = std::net::TcpStream::connect(addr).expect("connect for /health");
        write!(
            s,
            "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .expect("send the request");
        let mut body = String::new();
        s.read_to_string(&mut body).expect("read the answer");
        let json = body.split("\r\n\r\n").nth(1).expect("an HTTP body");
        serde_json::from_str(json).expect("health is JSON")
    }

    /// Starts the binary and returns once it printed its address, which it
    /// does when the store is open and the listener accepts.
    fn spawn(data_dir: &Path, config: Option<&Path>) -> Self {
        Self::spawn_cmd(Command::new(binary()), data_dir, config)
    }

    fn spawn_cmd(mut cmd: Command, data_dir: &Path, config: Option<&Path>) -> Self {
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir);
        match config {
            Some(file) => cmd.arg("--config").arg(file),
            // HTTP, realtime and streams listeners on free ports (a config file says where).
            None => cmd.args([
                "--http-listen",
                "127.0.0.1:0",
                "--realtime-listen",
                "127.0.0.1:0",
                "--streams-listen",
                "127.0.0.1:0",
            ]),
        };
        let mut child = cmd
            // `QMESH_ENGINE_LOG` overrides the engine's log filter, to trace a bench's engine.
            .env(
                "RUST_LOG",
                std::env::var("QMESH_ENGINE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the qmesh binary");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("read the engine's first line");
        let url = first
            .split_whitespace()
            .find(|w| w.starts_with("ws://"))
            .unwrap_or_else(|| panic!("no ws:// address in the engine's first line: {first:?}"))
            .to_owned();
        let realtime_url = first
            .split_whitespace()
            .find_map(|w| w.strip_prefix("realtime="))
            .unwrap_or_else(|| panic!("no realtime= address in the engine's first line: {first:?}"))
            .to_owned();
        Self {
            child,
            url,
            realtime_url,
            data_dir: data_dir.to_owned(),
            traced: None,
            _owned: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.traced.unwrap_or_else(|| self.child.id())
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(pid) = self.traced.take() {
            // Killing strace would leave the engine running, detached.
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
