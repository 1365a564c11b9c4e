//! Child processes written with the Node and Python SDKs (`tests/node`, `tests/python`).
//! Conventions they follow: the engine URL comes from `III_URL`; `READY` on
//! stdout once registrations are sent; results as one JSON object per line.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn interpreter(lang: &str) -> PathBuf {
    let (path, hint) = match lang {
        "node" => (
            root().join("tests/node/node_modules/iii-sdk"),
            "npm ci in tests/node",
        ),
        _ => (
            root().join("tests/python/.venv/bin/python"),
            "a venv in tests/python/.venv",
        ),
    };
    assert!(
        path.exists(),
        "{} is missing: run scripts/test (it installs {hint})",
        path.display()
    );
    match lang {
        "node" => PathBuf::from("node"),
        _ => path,
    }
}

pub struct Program {
    pub name: String,
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    pub seen: Vec<String>,
}

impl Program {
    /// Starts `tests/<lang>/<script>` with `args` against the engine at `url`.
    pub fn start(lang: &str, script: &str, args: &[&str], url: &str) -> Self {
        Self::start_with_env(lang, script, args, url, &[])
    }

    /// [`Program::start`] with more environment variables (`III_TOKEN`…).
    pub fn start_with_env(
        lang: &str,
        script: &str,
        args: &[&str],
        url: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Command::new(interpreter(lang));
        cmd.envs(env.iter().copied());
        cmd.arg(root().join("tests").join(lang).join(script))
            .args(args)
            .env("III_URL", url)
            .env("OTEL_ENABLED", "false")
            .env("PYTHONUNBUFFERED", "1")
            .current_dir(root().join("tests").join(lang))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {lang} {script}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        Self {
            name: format!("{lang}/{script}"),
            child,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
        }
    }

    /// Next stdout line, failing the test after `within`.
    pub async fn line(&mut self, within: Duration) -> Option<String> {
        let line = tokio::time::timeout(within, self.lines.next_line())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{}: no output within {within:?}; saw {:?}",
                    self.name, self.seen
                )
            })
            .expect("read stdout");
        if let Some(l) = &line {
            self.seen.push(l.clone());
        }
        line
    }

    /// Reads until a line equal to `READY`.
    pub async fn ready(&mut self) {
        self.expect_line("READY", |l| l.trim() == "READY").await;
    }

    /// Reads lines until one satisfies `pred`.
    pub async fn expect_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        loop {
            match self.line(Duration::from_secs(30)).await {
                Some(l) if pred(&l) => return l,
                Some(_) => continue,
                None => panic!("{}: exited before {what}; saw {:?}", self.name, self.seen),
            }
        }
    }

    /// Reads JSON lines until one satisfies `pred`.
    pub async fn expect_json(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let line = self
            .expect_line(what, |l| {
                serde_json::from_str::<Value>(l)
                    .map(|v| pred(&v))
                    .unwrap_or(false)
            })
            .await;
        serde_json::from_str(&line).unwrap()
    }

    /// Waits for exit (closing stdin first, which long-running workers treat as "stop").
    pub async fn finish(mut self) -> (i32, Vec<String>) {
        drop(self.child.stdin.take());
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_secs(30), self.lines.next_line()).await
        {
            self.seen.push(line);
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit", self.name))
            .expect("wait");
        let seen = std::mem::take(&mut self.seen);
        (status.code().unwrap_or(-1), seen)
    }
}

/// A program whose JSON lines are read as they come (a busy program never
/// blocks on a full pipe), for tests that count what it reports.
pub struct Collected {
    pub lines: Arc<Mutex<Vec<Value>>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<(i32, Vec<Value>)>,
}

impl Program {
    /// Reads every JSON line into [`Collected::lines`] from a task.
    pub fn collect(mut self) -> Collected {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = oneshot::channel();
        let into = lines.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    line = self.lines.next_line() => match line {
                        Ok(Some(l)) => {
                            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                                into.lock().unwrap().push(v);
                            }
                        }
                        _ => break,
                    },
                }
            }
            let (code, rest) = self.finish().await;
            let mut all = into.lock().unwrap();
            all.extend(
                rest.iter()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok()),
            );
            (code, all.clone())
        });
        Collected { lines, stop, task }
    }
}

impl Collected {
    /// How many lines so far satisfy `pred`.
    pub fn count(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| pred(v))
            .count()
    }

    /// Stops the program (stdin closed) and returns its exit code and every JSON line.
    pub async fn finish(self) -> (i32, Vec<Value>) {
        let _ = self.stop.send(());
        self.task.await.expect("collector task")
    }
}
