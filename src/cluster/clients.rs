//! Realtime clients connected to another engine: a `channel::*` function
//! naming a client this engine does not hold is asked of the engine known
//! to hold it ([`Holders`], learned from earlier answers), else of every
//! other live engine, core NATS request/reply on
//! `qmesh.<cluster>.engine.<id>.realtime`;
//! the engine holding the client runs it with the rights the caller's engine
//! vouches for and answers; the others answer that they do not hold it.

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
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
    client: async_nats::Client,
    names: Names,
    directory: Arc<Directory>,
    /// Which engine holds which client, as its answers said.
    holders: Arc<Mutex<Holders>>,
}

impl NatsRealtimePeers {
    pub(super) fn new(client: async_nats::Client, names: Names, directory: Arc<Directory>) -> Self {
        Self {
            client,
            names,
            directory,
            holders: Arc::default(),
        }
    }
}

/// Most clients whose engine is remembered; the oldest are forgotten first
/// (asking every engine again finds them).
const MAX_HOLDERS: usize = 65_536;

/// Which engine holds which realtime client, learned from the engine that
/// answered for it. A client never moves (a reconnect is a new client), so
/// an entry stays right until the client goes, when its engine answers
/// that it does not hold it; the entry is then dropped and every engine
/// asked. An entry naming an engine no longer live is not used.
#[derive(Default)]
pub(super) struct Holders {
    by_client: HashMap<String, String>,
    order: VecDeque<String>,
}

impl Holders {
    fn get(&self, client: &str) -> Option<&String> {
        self.by_client.get(client)
    }

    fn insert(&mut self, client: String, engine: String) {
        if self.by_client.insert(client.clone(), engine).is_none() {
            self.order.push_back(client);
            while self.order.len() > MAX_HOLDERS {
                if let Some(oldest) = self.order.pop_front() {
                    self.by_client.remove(&oldest);
                }
            }
        }
    }

    fn forget(&mut self, client: &str) {
        // Its place in `order` goes when it comes up (a missing key is skipped).
        self.by_client.remove(client);
    }
}

fn lock(holders: &Mutex<Holders>) -> std::sync::MutexGuard<'_, Holders> {
    holders.lock().unwrap_or_else(|e| e.into_inner())
}

/// One engine's answer to an [`ActRequest`].
async fn ask_engine(
    client: &async_nats::Client,
    names: &Names,
    engine: &str,
    body: Bytes,
) -> Result<PeerAnswer, String> {
    let r = async_nats::Request::new()
        .payload(body)
        .timeout(Some(ASK_TIMEOUT));
    match client.send_request(names.realtime_subject(engine), r).await {
        Ok(msg) => match serde_json::from_slice::<ActReply>(&msg.payload) {
            Ok(ActReply { held: false, .. }) => Ok(None),
            Ok(ActReply { error: Some(e), .. }) => Ok(Some(Err(e))),
            Ok(ActReply { result, .. }) => Ok(Some(Ok(result.unwrap_or(Value::Null)))),
            Err(e) => Err(format!("engine {engine} answered something else: {e}")),
        },
        // Stopped since the directory saw it: it holds nothing.
        Err(e) if matches!(e.kind(), async_nats::RequestErrorKind::NoResponders) => Ok(None),
        Err(e) => Err(format!("engine {engine} did not answer: {e}")),
    }
}

impl RealtimePeers for NatsRealtimePeers {
    fn ask(
        &self,
        function: &str,
        caller: ClientCaller,
        input: Value,
        client_id: Option<&str>,
    ) -> BoxFuture<'static, Vec<Result<PeerAnswer, String>>> {
        let (client, names) = (self.client.clone(), self.names.clone());
        let engines = self.directory.live_engines();
        let holders = self.holders.clone();
        let client_id = client_id.map(str::to_owned);
        let holder = client_id
            .as_deref()
            .and_then(|c| lock(&holders).get(c).cloned())
            .filter(|e| engines.contains(e));
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
            // The engine known to hold the client first: one request, not one per engine.
            if let (Some(engine), Some(id)) = (&holder, &client_id) {
                match ask_engine(&client, &names, engine, body.clone()).await {
                    Ok(Some(answer)) => return vec![Ok(Some(answer))],
                    Ok(None) => lock(&holders).forget(id),
                    Err(why) => {
                        tracing::debug!(%engine, %why, "a client's engine did not answer; asking every engine")
                    }
                }
            }
            let asked: FuturesUnordered<_> = engines
                .into_iter()
                .map(|engine| {
                    let (client, names, body) = (&client, &names, body.clone());
                    async move {
                        let answer = ask_engine(client, names, &engine, body).await;
                        (engine, answer)
                    }
                })
                .collect();
            let answers: Vec<(String, Result<PeerAnswer, String>)> = asked.collect().await;
            if let Some(id) = client_id
                && let Some((engine, _)) = answers.iter().find(|(_, a)| matches!(a, Ok(Some(_))))
            {
                lock(&holders).insert(id, engine.clone());
            }
            answers.into_iter().map(|(_, a)| a).collect()
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
