//! Binary channels whose two ends are on different engines: a *link* on
//! core NATS carries one channel's frames from the engine where its writer
//! is to the engine where its reader is.
//!
//! Opening. A socket connects to engine B for a channel B does not know
//! (the channels module asks through `module::ChannelPeers`). B picks a
//! link id, subscribes to `qmesh.<cluster>.link.<link>.peer`, and asks every
//! live engine on `qmesh.<cluster>.engine.<id>.channel` to open end `dir`
//! with the key the socket gave. Only the engine holding the channel can
//! (the key is checked there, in constant time); it claims the end as a
//! socket would, subscribes to `….link.<link>.owner` and answers `ok`;
//! the others answer `not_found`. Both subscriptions exist before any frame
//! is sent, so nothing sent on the link finds nobody.
//!
//! Carrying. The engine with the writer's frames (a [`FrameSource`]) is the
//! *sender*, the other (a [`FrameSink`]) the *receiver*, whichever holds
//! the channel. The sender cuts frames into pieces of at most [`PIECE`]
//! bytes (well under NATS's 1 MB `max_payload`), numbers them, and sends
//! one only while the bytes sent stay within the credit the receiver
//! granted: the receiver grants [`WINDOW`] bytes at first, then more as it
//! hands pieces on into its pipe (credit is a running total, so a lost
//! grant is made good by the next). Each engine thus holds at most its
//! pipe (`channels.max_buffer_bytes`) plus one window in flight, and when
//! the reader stops reading, the receiver's pipe fills, credit stops, the
//! sender stops taking from its pipe, and that pipe's writer socket is no
//! longer read: TCP pushes back on the writer, as on one engine.
//!
//! Ending. The sender's `end` (the writer's outcome and how many pieces it
//! sent) is a request the receiver acknowledges; the receiver's `gone` (its
//! reader left) tells the sender to stop. Core NATS delivers at most once:
//! a piece out of sequence, or an `end` whose count differs, fails the
//! channel (the reader gets 4499) rather than hand on a stream with a hole.
//! Each side also sends something every `[cluster] heartbeat` (a ping, a
//! grant) and gives up on a side unheard for `engine_timeout` (that engine
//! died, or NATS is out of reach), and a loss of this engine's NATS
//! connection fails its links at once: the sockets then close as when the
//! other end vanishes on one engine (4499 to a reader, 4410 to a writer).

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

use super::Names;
use super::directory::Directory;
use crate::module::{
    ChannelData, ChannelEnds, ChannelPeers, EndOutcome, FrameSink, FrameSource, LocalEnd,
    PeerRefusal,
};
use crate::protocol::channel::Direction;

/// The most bytes of a frame one NATS message carries.
pub(super) const PIECE: usize = 128 << 10;
/// The credit a receiver grants at first, and keeps ahead of what it took.
pub(super) const WINDOW: u64 = 1 << 20;
/// How long an open waits for the engines' answers.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the sender waits for its `end` to be acknowledged, each time.
const END_TIMEOUT: Duration = Duration::from_secs(2);
const END_ATTEMPTS: u32 = 3;

/// The link's two sides, as subject suffixes.
const OWNER: &str = "owner";
const PEER: &str = "peer";

/// Message tags (the first byte of every link message).
const DATA: u8 = b'D';
const END: u8 = b'E';
const PING: u8 = b'P';
const CREDIT: u8 = b'C';
const GONE: u8 = b'G';

/// Flags of a data piece.
const TEXT: u8 = 1;
const FIN: u8 = 2;

#[derive(Serialize, Deserialize)]
struct OpenRequest {
    channel_id: String,
    dir: Direction,
    key: String,
    link: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "answer")]
enum OpenReply {
    Ok,
    NotFound,
    Taken,
    Gone { reason: String },
    Unreachable { reason: String },
}

/// How a link's timing is set: from `[cluster] heartbeat` and `engine_timeout`.
#[derive(Clone, Copy)]
pub(super) struct Timing {
    pub tick: Duration,
    pub timeout: Duration,
}

/// The NATS side of one link, for one engine.
struct Link {
    client: async_nats::Client,
    /// The other side's subject.
    to: String,
    /// This side's subject's messages.
    from: async_nats::Subscriber,
    disconnects: watch::Receiver<u64>,
    timing: Timing,
    /// The largest text message (`channels.max_frame_size`) a receiver reassembles.
    max_text: usize,
    channel_id: String,
}

impl Link {
    async fn send(&self, message: Bytes) -> bool {
        self.client.publish(self.to.clone(), message).await.is_ok()
    }

    /// Runs this engine's half until the channel ends on either side.
    async fn run(self, end: LocalEnd) {
        match end {
            LocalEnd::Source(source) => self.send_frames(source).await,
            LocalEnd::Sink(sink) => self.receive_frames(sink).await,
        }
    }

    /// The sender: frames from `source`, in pieces, within the credit.
    async fn send_frames(mut self, mut source: Box<dyn FrameSource>) {
        self.disconnects.borrow_and_update();
        let mut tick = ticker(self.timing.tick);
        let (mut granted, mut sent, mut seq) = (0u64, 0u64, 0u64);
        let mut pieces: VecDeque<(u8, Bytes)> = VecDeque::new();
        let mut heard = Instant::now();
        let how = loop {
            while let Some((flags, piece)) = pieces.front() {
                if sent + piece.len() as u64 > granted {
                    break;
                }
                if !self.send(data_message(*flags, seq, piece)).await {
                    break;
                }
                sent += piece.len() as u64;
                seq += 1;
                pieces.pop_front();
            }
            tokio::select! {
                biased;
                Ok(()) = self.disconnects.changed() => {
                    tracing::info!(channel_id = %self.channel_id, "channel link failed: this engine lost NATS");
                    break EndOutcome::Aborted;
                }
                msg = self.from.next() => {
                    let Some(msg) = msg else { break EndOutcome::Aborted };
                    heard = Instant::now();
                    match parse(&msg.payload) {
                        Some(Parsed::Credit(total)) => granted = granted.max(total),
                        Some(Parsed::Gone(how)) => break how,
                        _ => {}
                    }
                }
                _ = tick.tick() => {
                    if heard.elapsed() > self.timing.timeout {
                        tracing::info!(channel_id = %self.channel_id, "channel link failed: the reader's engine is silent");
                        break EndOutcome::Aborted;
                    }
                    self.send(Bytes::from_static(&[PING])).await;
                }
                next = source.next(), if pieces.is_empty() => match next {
                    Ok(data) => split(data, &mut pieces),
                    Err(how) => break self.end(how, seq).await,
                },
            }
        };
        source.finish(how);
    }

    /// Tells the receiver the writer ended (`how`, after `count` pieces),
    /// until it acknowledges; what the reader's end then is.
    async fn end(&self, how: EndOutcome, count: u64) -> EndOutcome {
        let mut m = BytesMut::with_capacity(10);
        m.put_u8(END);
        m.put_u8(outcome_byte(how));
        m.put_u64(count);
        let message = m.freeze();
        for _ in 0..END_ATTEMPTS {
            let request = async_nats::Request::new()
                .payload(message.clone())
                .timeout(Some(END_TIMEOUT));
            match self.client.send_request(self.to.clone(), request).await {
                Ok(_) => return how,
                Err(e) => {
                    use async_nats::RequestErrorKind as K;
                    if matches!(e.kind(), K::NoResponders) {
                        break;
                    }
                }
            }
        }
        tracing::info!(channel_id = %self.channel_id, "channel link: the end of the stream was not acknowledged");
        EndOutcome::Aborted
    }

    /// The receiver: pieces in order into `sink`, granting credit as they
    /// are handed on.
    async fn receive_frames(mut self, sink: Box<dyn FrameSink>) {
        self.disconnects.borrow_and_update();
        let mut tick = ticker(self.timing.tick);
        // Credit: `taken` bytes handed on, `granted` announced (taken + WINDOW at most).
        let (mut taken, mut granted) = (0u64, WINDOW);
        self.send(credit_message(granted)).await;
        let mut expected = 0u64;
        let mut queue: VecDeque<(u8, Bytes)> = VecDeque::new();
        let mut text = BytesMut::new();
        let mut ending: Option<EndOutcome> = None;
        let mut heard = Instant::now();
        let mut pushing: Option<(BoxFuture<'_, Result<(), ()>>, u64)> = None;
        let how = loop {
            while pushing.is_none()
                && let Some((flags, piece)) = queue.pop_front()
            {
                let len = piece.len() as u64;
                if flags & TEXT == 0 {
                    pushing = Some((sink.push(ChannelData::Binary(piece)), len));
                    continue;
                }
                taken += len;
                if text.len() + piece.len() > self.max_text {
                    tracing::info!(channel_id = %self.channel_id, "channel link failed: a text message over channels.max_frame_size");
                    self.send(gone_message(EndOutcome::Aborted)).await;
                    ending = Some(EndOutcome::Aborted);
                    queue.clear();
                    break;
                }
                text.extend_from_slice(&piece);
                if flags & FIN != 0 {
                    pushing = Some((sink.push(ChannelData::Text(text.split().freeze())), 0));
                }
            }
            if pushing.is_none()
                && queue.is_empty()
                && let Some(how) = ending
            {
                break how;
            }
            if taken + WINDOW - granted >= WINDOW / 4 {
                granted = taken + WINDOW;
                self.send(credit_message(granted)).await;
            }
            tokio::select! {
                biased;
                Ok(()) = self.disconnects.changed() => {
                    tracing::info!(channel_id = %self.channel_id, "channel link failed: this engine lost NATS");
                    break EndOutcome::Aborted;
                }
                pushed = async { pushing.as_mut().expect("pushing").0.as_mut().await }, if pushing.is_some() => {
                    let (_, len) = pushing.take().expect("pushing");
                    if pushed.is_err() {
                        self.send(gone_message(EndOutcome::Aborted)).await;
                        break EndOutcome::Aborted;
                    }
                    taken += len;
                }
                () = sink.gone(), if pushing.is_none() => {
                    self.send(gone_message(EndOutcome::Aborted)).await;
                    break EndOutcome::Aborted;
                }
                msg = self.from.next(), if ending.is_none() => {
                    let Some(msg) = msg else { break EndOutcome::Aborted };
                    heard = Instant::now();
                    match parse(&msg.payload) {
                        Some(Parsed::Data(flags, seq, piece)) => {
                            if seq != expected {
                                tracing::warn!(channel_id = %self.channel_id, expected, got = seq, "channel link failed: a piece was lost (core NATS is at most once)");
                                self.send(gone_message(EndOutcome::Aborted)).await;
                                break EndOutcome::Aborted;
                            }
                            expected += 1;
                            queue.push_back((flags, piece));
                        }
                        Some(Parsed::End(how, count)) => {
                            if let Some(reply) = msg.reply {
                                let _ = self.client.publish(reply, Bytes::new()).await;
                            }
                            ending = Some(if count == expected { how } else {
                                tracing::warn!(channel_id = %self.channel_id, expected, count, "channel link failed: pieces were lost at the end");
                                EndOutcome::Aborted
                            });
                        }
                        _ => {}
                    }
                }
                _ = tick.tick() => {
                    if ending.is_none() && heard.elapsed() > self.timing.timeout {
                        tracing::info!(channel_id = %self.channel_id, "channel link failed: the writer's engine is silent");
                        break EndOutcome::Aborted;
                    }
                    // A grant repeated is a keepalive, and repairs a lost one.
                    self.send(credit_message(granted)).await;
                }
            }
        };
        drop(pushing);
        sink.finish(how);
    }
}

fn ticker(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// `data` as pieces of at most [`PIECE`] bytes (the payload slices, not copies).
fn split(data: ChannelData, pieces: &mut VecDeque<(u8, Bytes)>) {
    let (kind, bytes) = match data {
        ChannelData::Binary(b) => (0, b),
        ChannelData::Text(t) => (TEXT, t),
    };
    let mut at = 0;
    loop {
        let upto = (at + PIECE).min(bytes.len());
        let fin = if upto == bytes.len() { FIN } else { 0 };
        pieces.push_back((kind | fin, bytes.slice(at..upto)));
        if fin != 0 {
            return;
        }
        at = upto;
    }
}

fn data_message(flags: u8, seq: u64, piece: &Bytes) -> Bytes {
    let mut m = BytesMut::with_capacity(10 + piece.len());
    m.put_u8(DATA);
    m.put_u8(flags);
    m.put_u64(seq);
    m.extend_from_slice(piece);
    m.freeze()
}

fn credit_message(total: u64) -> Bytes {
    let mut m = BytesMut::with_capacity(9);
    m.put_u8(CREDIT);
    m.put_u64(total);
    m.freeze()
}

fn gone_message(how: EndOutcome) -> Bytes {
    Bytes::from(vec![GONE, outcome_byte(how)])
}

fn outcome_byte(how: EndOutcome) -> u8 {
    match how {
        EndOutcome::Done => 0,
        EndOutcome::Aborted => 1,
    }
}

fn outcome_of(b: u8) -> EndOutcome {
    if b == 0 {
        EndOutcome::Done
    } else {
        EndOutcome::Aborted
    }
}

enum Parsed {
    Data(u8, u64, Bytes),
    End(EndOutcome, u64),
    Credit(u64),
    Gone(EndOutcome),
    Ping,
}

fn parse(m: &Bytes) -> Option<Parsed> {
    let u64_at = |at: usize| -> Option<u64> {
        m.get(at..at + 8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
    };
    Some(match *m.first()? {
        DATA => Parsed::Data(*m.get(1)?, u64_at(2)?, m.slice(10..)),
        END => Parsed::End(outcome_of(*m.get(1)?), u64_at(2)?),
        CREDIT => Parsed::Credit(u64_at(1)?),
        GONE => Parsed::Gone(outcome_of(*m.get(1)?)),
        PING => Parsed::Ping,
        _ => return None,
    })
}

/// The cluster's `ChannelPeers`: opens ends of channels other engines hold.
pub(super) struct NatsChannelPeers {
    pub client: async_nats::Client,
    pub names: Names,
    pub directory: Arc<Directory>,
    pub disconnects: watch::Receiver<u64>,
    pub timing: Timing,
    pub max_text: usize,
}

impl ChannelPeers for NatsChannelPeers {
    fn open(
        &self,
        channel_id: &str,
        dir: Direction,
        key: &str,
        here: LocalEnd,
    ) -> BoxFuture<'static, Result<(), PeerRefusal>> {
        let (client, names, directory) = (
            self.client.clone(),
            self.names.clone(),
            self.directory.clone(),
        );
        let (disconnects, timing, max_text) =
            (self.disconnects.clone(), self.timing, self.max_text);
        let link = uuid::Uuid::new_v4().simple().to_string();
        let request = OpenRequest {
            channel_id: channel_id.to_owned(),
            dir,
            key: key.to_owned(),
            link: link.clone(),
        };
        Box::pin(async move {
            let state = client.connection_state();
            if !matches!(state, async_nats::connection::State::Connected) {
                return Err(PeerRefusal::Unreachable(format!(
                    "this engine is not connected to NATS ({state}): the engine holding the channel cannot be asked"
                )));
            }
            let from = client
                .subscribe(names.link_subject(&link, PEER))
                .await
                .map_err(|e| PeerRefusal::Unreachable(format!("cannot subscribe: {e}")))?;
            let body = Bytes::from(serde_json::to_vec(&request).expect("a request encodes"));
            let mut asked: FuturesUnordered<_> = directory
                .live_engines()
                .into_iter()
                .map(|engine| {
                    let r = async_nats::Request::new()
                        .payload(body.clone())
                        .timeout(Some(OPEN_TIMEOUT));
                    client.send_request(names.channel_subject(&engine), r)
                })
                .collect();
            let mut refusal = PeerRefusal::NotFound;
            let mut unanswered = None;
            while let Some(answer) = asked.next().await {
                let reply = match answer {
                    Ok(msg) => serde_json::from_slice::<OpenReply>(&msg.payload).ok(),
                    Err(e) if matches!(e.kind(), async_nats::RequestErrorKind::NoResponders) => {
                        None
                    }
                    Err(e) => {
                        unanswered = Some(e.to_string());
                        None
                    }
                };
                match reply {
                    Some(OpenReply::Ok) => {
                        drop(asked);
                        let link = Link {
                            to: names.link_subject(&link, OWNER),
                            client,
                            from,
                            disconnects,
                            timing,
                            max_text,
                            channel_id: request.channel_id,
                        };
                        tokio::spawn(link.run(here));
                        return Ok(());
                    }
                    Some(OpenReply::Taken) => refusal = PeerRefusal::Taken,
                    Some(OpenReply::Gone { reason }) => refusal = PeerRefusal::Gone(reason),
                    Some(OpenReply::Unreachable { reason }) => unanswered = Some(reason),
                    Some(OpenReply::NotFound) | None => {}
                }
            }
            match (refusal, unanswered) {
                (PeerRefusal::NotFound, Some(why)) => Err(PeerRefusal::Unreachable(format!(
                    "an engine of the cluster did not answer: {why}"
                ))),
                (refusal, _) => Err(refusal),
            }
        })
    }
}

/// Answers other engines' opens of this engine's channels, until the
/// subscription ends: each claimed as a socket would claim it, then carried.
pub(super) async fn serve(
    ends: Arc<dyn ChannelEnds>,
    client: async_nats::Client,
    names: Names,
    disconnects: watch::Receiver<u64>,
    timing: Timing,
    max_text: usize,
    mut opens: async_nats::Subscriber,
) {
    while let Some(msg) = opens.next().await {
        let Some(reply_to) = msg.reply.clone() else {
            continue;
        };
        let Ok(req) = serde_json::from_slice::<OpenRequest>(&msg.payload) else {
            continue;
        };
        let (ends, client, names, disconnects) = (
            ends.clone(),
            client.clone(),
            names.clone(),
            disconnects.clone(),
        );
        tokio::spawn(async move {
            let answer = match ends.claim_for_peer(&req.channel_id, req.dir, &req.key) {
                Err(PeerRefusal::NotFound) => OpenReply::NotFound,
                Err(PeerRefusal::Taken) => OpenReply::Taken,
                Err(PeerRefusal::Gone(reason)) => OpenReply::Gone { reason },
                Err(PeerRefusal::Unreachable(reason)) => OpenReply::Unreachable { reason },
                Ok(end) => match client.subscribe(names.link_subject(&req.link, OWNER)).await {
                    Ok(from) => {
                        let link = Link {
                            to: names.link_subject(&req.link, PEER),
                            client: client.clone(),
                            from,
                            disconnects,
                            timing,
                            max_text,
                            channel_id: req.channel_id.clone(),
                        };
                        tracing::debug!(channel_id = %req.channel_id, dir = %req.dir, "channel end linked to another engine");
                        tokio::spawn(link.run(end));
                        OpenReply::Ok
                    }
                    Err(e) => {
                        finish(end);
                        OpenReply::Unreachable {
                            reason: format!("cannot subscribe: {e}"),
                        }
                    }
                },
            };
            let body = serde_json::to_vec(&answer).expect("a reply encodes");
            if let Err(e) = client.publish(reply_to, body.into()).await {
                tracing::warn!(error = %e, "cannot answer another engine's channel open");
            }
        });
    }
}

/// An end opened for nobody: over at once.
fn finish(end: LocalEnd) {
    match end {
        LocalEnd::Source(s) => s.finish(EndOutcome::Aborted),
        LocalEnd::Sink(s) => s.finish(EndOutcome::Aborted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_into_pieces_and_read_back() {
        let mut pieces = VecDeque::new();
        split(
            ChannelData::Text(Bytes::from(vec![b'a'; PIECE * 2 + 5])),
            &mut pieces,
        );
        let flags: Vec<u8> = pieces.iter().map(|(f, _)| *f).collect();
        assert_eq!(flags, vec![TEXT, TEXT, TEXT | FIN]);
        assert_eq!(pieces[2].1.len(), 5);
        split(ChannelData::Binary(Bytes::new()), &mut pieces);
        assert_eq!(pieces.back().unwrap(), &(FIN, Bytes::new()));

        let m = data_message(TEXT | FIN, 7, &Bytes::from_static(b"hi"));
        let Some(Parsed::Data(f, seq, piece)) = parse(&m) else {
            panic!("data")
        };
        assert_eq!((f, seq, &piece[..]), (TEXT | FIN, 7, &b"hi"[..]));
        assert!(matches!(parse(&credit_message(9)), Some(Parsed::Credit(9))));
        assert!(matches!(
            parse(&gone_message(EndOutcome::Aborted)),
            Some(Parsed::Gone(EndOutcome::Aborted))
        ));
        assert!(parse(&Bytes::from_static(&[DATA, 0])).is_none());
    }
}
