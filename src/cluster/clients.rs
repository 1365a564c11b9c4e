//! Realtime clients connected to another engine: a `channel::*` function
//! naming a client this engine does not hold is asked of every other live
//! engine, core NATS request/reply on `qmesh.<cluster>.engine.<id>.realtime`;
//! the engine holding the client runs it with the rights the caller's engine
//! vouches for and answers; the others answer that they do not hold it.

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

use super::Names;
use super::directory::Directory;
use crate::module::{ClientCaller, PeerAnswer, RealtimeClients, RealtimePeers};
use crate::protocol::ErrorBody;

/// How long an engine has to answer: it answers inline (nothing it runs
/// waits on a client), so this is NATS's round trip with room to spare.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Serialize, Deserialize)]
struct ActRequest {
    function: String,
    caller: ClientCaller,
    input: Value,
}

/// `held: false` when none of the clients named is on the answering engine.
#[derive(Serialize, Deserialize)]
struct ActReply {
    held: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<ErrorBody>,
}

/// The cluster's `RealtimePeers`.
pub(super) struct NatsRealtimePeers {
    pub client: async_nats::Client,
    pub names: Names,
    pub directory: Arc<Directory>,
}

impl RealtimePeers for NatsRealtimePeers {
    fn ask(
        &self,
        function: &str,
        caller: ClientCaller,
        input: Value,
    ) -> BoxFuture<'static, Vec<Result<PeerAnswer, String>>> {
        let (client, names) = (self.client.clone(), self.names.clone());
        let engines = self.directory.live_engines();
        let request = ActRequest {
            function: function.to_owned(),
            caller,
            input,
        };
        let body = Bytes::from(serde_json::to_vec(&request).expect("a request encodes"));
        Box::pin(async move {
            let state = client.connection_state();
            if !matches!(state, async_nats::connection::State::Connected) {
                return vec![Err(format!(
                    "this engine is not connected to NATS ({state}): the other engines cannot be asked"
                ))];
            }
            let asked: FuturesUnordered<_> = engines
                .into_iter()
                .map(|engine| {
                    let r = async_nats::Request::new()
                        .payload(body.clone())
                        .timeout(Some(ASK_TIMEOUT));
                    let sent = client.send_request(names.realtime_subject(&engine), r);
                    async move { (engine, sent.await) }
                })
                .collect();
            asked
                .map(|(engine, answer)| match answer {
                    Ok(msg) => match serde_json::from_slice::<ActReply>(&msg.payload) {
                        Ok(ActReply { held: false, .. }) => Ok(None),
                        Ok(ActReply { error: Some(e), .. }) => Ok(Some(Err(e))),
                        Ok(ActReply { result, .. }) => Ok(Some(Ok(result.unwrap_or(Value::Null)))),
                        Err(e) => Err(format!("engine {engine} answered something else: {e}")),
                    },
                    // Stopped since the directory saw it: it holds nothing.
                    Err(e) if matches!(e.kind(), async_nats::RequestErrorKind::NoResponders) => {
                        Ok(None)
                    }
                    Err(e) => Err(format!("engine {engine} did not answer: {e}")),
                })
                .collect()
                .await
        })
    }
}

/// Answers other engines' questions about this engine's clients until the
/// subscription ends; inline, in the order they came.
pub(super) async fn serve(
    clients: Arc<dyn RealtimeClients>,
    client: async_nats::Client,
    mut asks: async_nats::Subscriber,
) {
    while let Some(msg) = asks.next().await {
        let Some(reply_to) = msg.reply.clone() else {
            continue;
        };
        let reply = match serde_json::from_slice::<ActRequest>(&msg.payload) {
            Err(e) => ActReply {
                held: false,
                result: None,
                error: Some(ErrorBody::new(
                    crate::protocol::codes::INVALID_ARGUMENTS,
                    format!("not a realtime client request: {e}"),
                )),
            },
            Ok(req) => match clients.act_for_peer(&req.function, &req.caller, req.input) {
                None => ActReply {
                    held: false,
                    result: None,
                    error: None,
                },
                Some(Ok(result)) => ActReply {
                    held: true,
                    result: Some(result),
                    error: None,
                },
                Some(Err(e)) => ActReply {
                    held: true,
                    result: None,
                    error: Some(e),
                },
            },
        };
        let body = serde_json::to_vec(&reply).expect("a reply encodes");
        if let Err(e) = client.publish(reply_to, body.into()).await {
            tracing::warn!(error = %e, "cannot answer another engine's realtime request");
        }
    }
}
