//! The published Rust SDK reconnecting to a real engine, in process: a
//! client closed by the engine reconnects with `reattach`, and a `reattach`
//! evicts a half-open connection the engine still holds. A small WebSocket
//! [`Proxy`] sits between the SDK client and the engine to see the client's
//! frames and cut its socket.
//!
//! Every SDK client runs its own connection thread; each test shuts its
//! clients down before it stops the engine. Waits are on conditions
//! ([`wait_until`]); nothing sleeps.

mod common;

use common::sdk::{DEADLINE, call, sdk_worker, stop};
use common::{TestEngine, WAIT, wait_until};
use futures_util::{SinkExt, StreamExt};
use iii_sdk::runtime::IIIConnectionState;
use iii_sdk::{Error as SdkError, IIIClient, RegisterFunction};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use uuid::Uuid;

/// A WebSocket relay between SDK clients and the engine. It records every
/// JSON frame a client sends, and the close code the engine ends each
/// upstream connection with; [`Proxy::cut_client`] drops only the client's
/// side, leaving the engine a connection that looks alive (half-open).
struct Proxy {
    url: String,
    sent: Arc<Mutex<Vec<Vec<Value>>>>,
    engine_close: Arc<Mutex<HashMap<usize, Option<u16>>>>,
    cuts: Arc<Mutex<Vec<Arc<Notify>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let sent: Arc<Mutex<Vec<Vec<Value>>>> = Arc::default();
        let engine_close: Arc<Mutex<HashMap<usize, Option<u16>>>> = Arc::default();
        let cuts: Arc<Mutex<Vec<Arc<Notify>>>> = Arc::default();
        let (s, e, c, up) = (
            sent.clone(),
            engine_close.clone(),
            cuts.clone(),
            upstream.to_owned(),
        );
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let index = {
                    let mut sent = s.lock().unwrap();
                    sent.push(Vec::new());
                    sent.len() - 1
                };
                let cut = Arc::new(Notify::new());
                c.lock().unwrap().push(cut.clone());
                let (s, e, up) = (s.clone(), e.clone(), up.clone());
                tokio::spawn(async move {
                    let Ok(client) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    let Ok((engine, _)) = tokio_tungstenite::connect_async(up.as_str()).await
                    else {
                        return;
                    };
                    relay(index, client, engine, s, e, cut).await;
                });
            }
        });
        Self {
            url,
            sent,
            engine_close,
            cuts,
            accept,
        }
    }

    fn connections(&self) -> usize {
        self.sent.lock().unwrap().len()
    }

    /// Frames the client sent on connection `index`, in order.
    fn sent(&self, index: usize) -> Vec<Value> {
        self.sent.lock().unwrap()[index].clone()
    }

    /// `Some(code)` once the engine closed upstream connection `index`.
    fn engine_closed(&self, index: usize) -> Option<Option<u16>> {
        self.engine_close.lock().unwrap().get(&index).copied()
    }

    fn cut_client(&self, index: usize) {
        self.cuts.lock().unwrap()[index].notify_one();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay<C, E>(
    index: usize,
    client: tokio_tungstenite::WebSocketStream<C>,
    engine: tokio_tungstenite::WebSocketStream<E>,
    sent: Arc<Mutex<Vec<Vec<Value>>>>,
    engine_close: Arc<Mutex<HashMap<usize, Option<u16>>>>,
    cut: Arc<Notify>,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    E: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut c_tx, mut c_rx) = client.split();
    let (mut e_tx, mut e_rx) = engine.split();
    let record_close = |msg: Option<&WsMessage>| {
        let code = match msg {
            Some(WsMessage::Close(Some(f))) => Some(u16::from(f.code)),
            _ => None,
        };
        engine_close.lock().unwrap().insert(index, code);
    };
    loop {
        tokio::select! {
            _ = cut.notified() => {
                // Drop the client's socket; keep reading the engine's side
                // (answering its pings) until the engine closes it.
                drop((c_tx, c_rx));
                loop {
                    match e_rx.next().await {
                        Some(Ok(m @ WsMessage::Close(_))) => return record_close(Some(&m)),
                        Some(Ok(_)) => continue,
                        _ => return record_close(None),
                    }
                }
            }
            m = c_rx.next() => match m {
                Some(Ok(m @ (WsMessage::Text(_) | WsMessage::Binary(_)))) => {
                    if let WsMessage::Text(t) = &m
                        && let Ok(v) = serde_json::from_str(t.as_str())
                    {
                        sent.lock().unwrap()[index].push(v);
                    }
                    if e_tx.send(m).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                _ => {
                    let _ = e_tx.close().await;
                    return;
                }
            },
            m = e_rx.next() => match m {
                Some(Ok(m @ (WsMessage::Text(_) | WsMessage::Binary(_)))) => {
                    if c_tx.send(m).await.is_err() {
                        return;
                    }
                }
                Some(Ok(m @ WsMessage::Close(_))) => {
                    record_close(Some(&m));
                    let _ = c_tx.close().await;
                    return;
                }
                Some(Ok(_)) => {}
                _ => {
                    record_close(None);
                    let _ = c_tx.close().await;
                    return;
                }
            },
        }
    }
}

/// An SDK worker `name` serving the echo `function` through a [`Proxy`] (so
/// the test can cut or watch its socket), a caller connected directly, and
/// the worker's current id once the engine knows both.
struct ReattachSetup {
    engine: TestEngine,
    proxy: Proxy,
    worker: IIIClient,
    caller: IIIClient,
    old: Uuid,
}

impl ReattachSetup {
    async fn start(name: &str, function: &str) -> Self {
        let engine = TestEngine::start().await;
        let proxy = Proxy::start(&engine.url).await;
        let worker = sdk_worker(&proxy.url, name);
        worker.register_function(
            function,
            RegisterFunction::new_async(|input: Value| async move { Ok::<_, SdkError>(input) }),
        );
        let caller = sdk_worker(&engine.url, &format!("{name}-caller"));
        engine.wait_for_providers(function, 1).await;
        wait_until("the worker's name", WAIT, async || {
            engine.worker_ids_named(name).len() == 1
        })
        .await;
        let old = engine.worker_id_named(name);
        Self {
            engine,
            proxy,
            worker,
            caller,
            old,
        }
    }
}

/// The engine closes an SDK client's socket (1011): the client reconnects,
/// opens with `reattach{previous_worker_id, reattach_token}` naming its old
/// connection, replays its function, and is callable again; the old worker
/// entry is gone (one worker with that name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_closed_by_the_engine_reconnects_and_reattaches() {
    let ReattachSetup {
        engine,
        proxy,
        worker,
        caller,
        old,
    } = ReattachSetup::start("t8-reattach", "re::echo").await;
    let token = engine.reattach_token(old);

    engine.close_worker(old, 1011, "test");
    wait_until("the SDK to reconnect and replay", WAIT, async || {
        let named = engine.worker_ids_named("t8-reattach");
        named.len() == 1 && named[0] != old && engine.providers("re::echo").len() == 1
    })
    .await;
    assert_eq!(proxy.engine_closed(0), Some(Some(1011)));
    assert_eq!(proxy.connections(), 2);
    let opening = &proxy.sent(1)[0];
    assert_eq!(
        opening,
        &json!({"type":"reattach","previous_worker_id":old.to_string(),
            "reattach_token":token}),
    );
    assert!(!engine.has_worker(old));
    assert_eq!(worker.get_connection_state(), IIIConnectionState::Connected);
    let out = call(&caller, "re::echo", json!({ "again": true }))
        .await
        .expect("re::echo after the reconnect");
    assert_eq!(out["again"], true, "{out}");

    stop(worker).await;
    stop(caller).await;
    engine.stop().await;
}

/// The client loses its socket while the engine still holds the old
/// connection (half-open: only the client's side is cut). Its `reattach`
/// makes the engine evict the stale connection (closed with 4000) before
/// the replay, so exactly one worker and one provider remain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reattach_evicts_a_stale_connection_the_engine_still_holds() {
    let ReattachSetup {
        engine,
        proxy,
        worker,
        caller,
        old,
    } = ReattachSetup::start("t8b-reattach", "stale::echo").await;

    proxy.cut_client(0);
    wait_until("the SDK to reconnect", WAIT, async || {
        engine
            .worker_ids_named("t8b-reattach")
            .iter()
            .any(|id| *id != old)
    })
    .await;
    wait_until("one worker and one provider", WAIT, async || {
        engine.worker_ids_named("t8b-reattach").len() == 1
            && engine.providers("stale::echo").len() == 1
    })
    .await;
    assert!(!engine.has_worker(old));
    assert_eq!(proxy.sent(1)[0]["type"], "reattach");
    wait_until("the stale connection to be closed", DEADLINE, async || {
        proxy.engine_closed(0).is_some()
    })
    .await;
    assert_eq!(proxy.engine_closed(0), Some(Some(4000)));
    let out = call(&caller, "stale::echo", json!({ "n": 1 }))
        .await
        .expect("stale::echo after the reattach");
    assert_eq!(out["n"], 1, "{out}");

    stop(worker).await;
    stop(caller).await;
    engine.stop().await;
}
