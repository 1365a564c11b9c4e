//! What can go wrong on the caller's side of a call.

use std::time::Duration;

use crate::protocol::ErrorBody;
use crate::protocol::codes;

/// Every way a [`Client`](super::Client) operation can fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be opened, or the engine did not greet it with
    /// `workerregistered`.
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The connection is gone (closed by [`close`](super::Client::close), by
    /// the engine, or by the network) before the operation finished.
    #[error("connection closed")]
    Closed,
    /// The engine or the executing worker answered with an error.
    #[error("{code}: {message}")]
    Remote { code: String, message: String },
    /// No answer within the call's timeout. The engine is not told; a late
    /// answer is dropped.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The engine sent something this client cannot make sense of.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The wire error code of a [`Remote`](ClientError::Remote) error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Remote { code, .. } => Some(code),
            _ => None,
        }
    }

    pub(crate) fn connect(url: &str, reason: impl ToString) -> Self {
        ClientError::Connect {
            url: url.to_owned(),
            reason: reason.to_string(),
        }
    }
}

impl From<ErrorBody> for ClientError {
    fn from(e: ErrorBody) -> Self {
        ClientError::Remote {
            code: e.code,
            message: e.message,
        }
    }
}

/// Lets a handler that calls other functions propagate their failures with `?`:
/// a remote error keeps its code, anything local becomes `invocation_failed`.
impl From<ClientError> for ErrorBody {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Remote { code, message } => ErrorBody::new(&code, message),
            other => ErrorBody::new(INVOCATION_FAILED, other.to_string()),
        }
    }
}

/// The code the SDKs use when a handler fails; qmesh handlers use it for panics too.
pub const INVOCATION_FAILED: &str = "invocation_failed";

/// True for the error a caller gets when nothing is registered under the id.
pub(crate) fn is_not_found(e: &ClientError) -> bool {
    matches!(e.code(), Some(codes::FUNCTION_NOT_FOUND | codes::NOT_FOUND))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_errors_round_trip_through_error_body() {
        let e = ClientError::from(ErrorBody::new("bad_input", "x is missing"));
        assert_eq!(e.code(), Some("bad_input"));
        assert_eq!(e.to_string(), "bad_input: x is missing");
        let back = ErrorBody::from(e);
        assert_eq!(back, ErrorBody::new("bad_input", "x is missing"));
    }

    #[test]
    fn local_errors_become_invocation_failed() {
        let body = ErrorBody::from(ClientError::Timeout(Duration::from_secs(1)));
        assert_eq!(body.code, INVOCATION_FAILED);
        assert!(body.message.contains("1s"), "{}", body.message);
        assert_eq!(ClientError::Closed.code(), None);
    }

    #[test]
    fn not_found_covers_functions_and_engine_lookups() {
        assert!(is_not_found(
            &ErrorBody::new("function_not_found", "").into()
        ));
        assert!(is_not_found(&ErrorBody::new("NOT_FOUND", "").into()));
        assert!(!is_not_found(&ClientError::Closed));
    }
}
