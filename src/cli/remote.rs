//! What every client subcommand shares: `--url`, `--json`, `--timeout`, one
//! connection to the engine for the command's life, and turning the outcome
//! into an exit code.

use clap::Args;
use qmesh::client::{Client, ClientOptions, engine_url};
use serde_json::Value;
use std::process::ExitCode;
use std::time::Duration;

use super::error::CliError;

pub const DEFAULT_URL: &str = "ws://127.0.0.1:49134";

#[derive(Args, Debug, Clone)]
pub struct Remote {
    /// Engine address: ws://host:port (host:port and http:// are accepted too).
    #[arg(long, env = "QMESH_URL", default_value = DEFAULT_URL, global = true)]
    pub url: String,
    /// Print one JSON value on stdout instead of text; errors become {"error":{kind,code,message}}.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to wait for the engine to connect and to answer.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Duration,
    /// Token for an engine with `[auth]` tokens (operator commands need an
    /// operator's); the SDKs read the same variable.
    #[arg(long, env = "III_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

impl Remote {
    /// Options for the client: `--timeout` bounds each call, and the
    /// connection (at most 10 s).
    pub fn options(&self) -> ClientOptions {
        ClientOptions {
            call_timeout: self.timeout,
            connect_timeout: self.timeout.min(Duration::from_secs(10)),
            token: self.token.clone().filter(|t| !t.trim().is_empty()),
        }
    }

    /// The engine's WebSocket URL, or a usage error.
    pub fn engine_url(&self) -> Result<String, CliError> {
        engine_url(&self.url).map_err(|e| CliError::usage(format!("--url: {e}")))
    }

    pub async fn connect(&self) -> Result<Session, CliError> {
        let url = self.engine_url()?;
        let client = Client::connect_with(&url, self.options()).await?;
        Ok(Session { client })
    }
}

/// One connection to the engine, for one command.
pub struct Session {
    pub client: Client,
}

impl Session {
    /// Calls a function; an engine error keeps its code and message.
    pub async fn call(&self, function_id: &str, data: Value) -> Result<Value, CliError> {
        Ok(self.client.call(function_id, data).await?)
    }
}

/// Runs `f` on a fresh connection, then closes it; prints any error and
/// returns the exit code.
pub fn execute<F>(remote: &Remote, f: F) -> ExitCode
where
    F: AsyncFnOnce(&Session) -> Result<(), CliError>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return CliError::Failed(format!("cannot start the runtime: {e}")).report(remote.json);
        }
    };
    let outcome = runtime.block_on(async {
        let session = remote.connect().await?;
        let outcome = f(&session).await;
        session.client.close().await;
        outcome
    });
    finish(outcome, remote.json)
}

/// The exit code of an outcome, printing the error if there is one.
pub fn finish(outcome: Result<(), CliError>, json: bool) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(json),
    }
}
