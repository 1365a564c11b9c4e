//! How a client subcommand fails: one line on stderr (or one JSON object on
//! stdout with `--json`), and an exit code scripts can rely on.

use qmesh::client::ClientError;
use serde_json::json;
use std::process::ExitCode;

/// Exit codes of every subcommand that talks to an engine (also in `--help`).
pub mod exit {
    // 0: the engine answered, or the bench ran with no failed operation.
    /// The engine (or the function's worker) answered with an error, or a bench had failures.
    pub const ENGINE_ERROR: u8 = 1;
    /// Bad usage or bad input (clap uses 2 for usage errors too).
    pub const USAGE: u8 = 2;
    /// The engine could not be reached, or the connection was lost.
    pub const UNREACHABLE: u8 = 3;
    /// No answer within `--timeout`.
    pub const TIMEOUT: u8 = 4;
    /// A destructive action was not confirmed (declined, or no TTY and no `--yes`).
    pub const NOT_CONFIRMED: u8 = 5;
}

/// The exit-code table printed at the end of `qmesh --help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  the engine answered with an error (or a bench had failed operations)
  2  bad usage or bad input
  3  the engine is unreachable, or the connection was lost
  4  no answer within --timeout
  5  a destructive action was not confirmed (use --yes)";

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("engine error {code}: {message}")]
    Engine { code: String, message: String },
    #[error("cannot reach the engine at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("lost the connection to the engine")]
    ConnectionLost,
    #[error("no answer from the engine within {0}")]
    Timeout(String),
    #[error("{0}")]
    NotConfirmed(String),
    /// Something else went wrong that the engine caused (bad frames, bench failures).
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub fn usage(msg: impl Into<String>) -> Self {
        CliError::Usage(msg.into())
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::Engine { .. } | CliError::Failed(_) => exit::ENGINE_ERROR,
            CliError::Unreachable { .. } | CliError::ConnectionLost => exit::UNREACHABLE,
            CliError::Timeout(_) => exit::TIMEOUT,
            CliError::NotConfirmed(_) => exit::NOT_CONFIRMED,
        }
    }

    /// The `kind` field of the JSON error object.
    fn kind(&self) -> &'static str {
        match self {
            CliError::Usage(_) => "usage",
            CliError::Engine { .. } => "engine",
            CliError::Unreachable { .. } | CliError::ConnectionLost => "unreachable",
            CliError::Timeout(_) => "timeout",
            CliError::NotConfirmed(_) => "not_confirmed",
            CliError::Failed(_) => "failed",
        }
    }

    /// Prints the error (`{"error":{kind, code?, message}}` on stdout with
    /// `--json`, else `qmesh: ...` on stderr) and returns its exit code.
    pub fn report(&self, json: bool) -> ExitCode {
        if json {
            let (code, message) = match self {
                CliError::Engine { code, message } => (Some(code.as_str()), message.clone()),
                other => (None, other.to_string()),
            };
            let v = json!({ "error": { "kind": self.kind(), "code": code, "message": message } });
            println!("{v}");
        } else {
            eprintln!("qmesh: {self}");
        }
        ExitCode::from(self.exit_code())
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Remote { code, message } => CliError::Engine { code, message },
            ClientError::Connect { url, reason } => CliError::Unreachable { url, reason },
            ClientError::Closed => CliError::ConnectionLost,
            ClientError::Timeout(d) => CliError::Timeout(humantime::format_duration(d).to_string()),
            ClientError::Protocol(msg) => CliError::Failed(format!("unexpected answer: {msg}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn client_errors_map_to_documented_exit_codes() {
        let code = |e: ClientError| CliError::from(e).exit_code();
        let remote = ClientError::Remote {
            code: "x".into(),
            message: "y".into(),
        };
        assert_eq!(code(remote), exit::ENGINE_ERROR);
        let connect = ClientError::Connect {
            url: "ws://h".into(),
            reason: "refused".into(),
        };
        assert_eq!(code(connect), exit::UNREACHABLE);
        assert_eq!(code(ClientError::Closed), exit::UNREACHABLE);
        assert_eq!(
            code(ClientError::Timeout(Duration::from_secs(1))),
            exit::TIMEOUT
        );
        assert_eq!(code(ClientError::Protocol("?".into())), exit::ENGINE_ERROR);
        assert_eq!(CliError::usage("bad").exit_code(), exit::USAGE);
        assert_eq!(
            CliError::NotConfirmed("no".into()).exit_code(),
            exit::NOT_CONFIRMED
        );
    }

    #[test]
    fn engine_errors_show_code_and_message() {
        let e = CliError::Engine {
            code: "function_not_found".into(),
            message: "nope".into(),
        };
        assert_eq!(e.to_string(), "engine error function_not_found: nope");
        let t = CliError::from(ClientError::Timeout(Duration::from_millis(1500)));
        assert_eq!(t.to_string(), "no answer from the engine within 1s 500ms");
    }
}
