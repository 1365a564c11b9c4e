//! Channel ends driven by another engine instead of a socket: what the
//! cluster carries between two engines when a channel's writer and reader
//! are connected to different ones.
//!
//! Two cases, the same two halves:
//! - the engine holding the channel opens one of its ends for a socket on
//!   another engine ([`ChannelEnds::claim_for_peer`]): the end is claimed
//!   and opened as a socket's would be, and driven through a [`PipeSource`]
//!   (a reader there) or a [`PipeSink`] (a writer there);
//! - the engine where that socket is connected gives it a proxy pipe
//!   (`Channels::proxy`), whose other half is the same kind of source or sink.
//!
//! Each half records how its end finished with `Channels::end_over`, as a
//! socket's pump does, so a socket here closes with the code it would on
//! one engine (1000, 4499, 4410), and the channel leaves the table when
//! both its ends are over.

use futures_util::future::BoxFuture;
use std::sync::Arc;

use super::pipe::{Data, PipeRx, PipeTx};
use super::{Channel, Channels, ClaimError, ClaimedEnd, EndState};
use crate::module::{
    ChannelData, ChannelEnds, EndOutcome, FrameSink, FrameSource, LocalEnd, PeerRefusal,
};
use crate::protocol::channel::Direction;

impl From<ChannelData> for Data {
    fn from(d: ChannelData) -> Self {
        match d {
            ChannelData::Binary(b) => Data::Binary(b),
            ChannelData::Text(t) => Data::Text(t),
        }
    }
}

impl From<Data> for ChannelData {
    fn from(d: Data) -> Self {
        match d {
            Data::Binary(b) => ChannelData::Binary(b),
            Data::Text(t) => ChannelData::Text(t),
        }
    }
}

/// The reader end of a channel (or a proxy), read for another engine.
pub(crate) struct PipeSource {
    channels: Channels,
    channel: Arc<Channel>,
    rx: PipeRx,
}

/// The writer end of a channel (or a proxy), fed from another engine.
pub(crate) struct PipeSink {
    channels: Channels,
    channel: Arc<Channel>,
    tx: PipeTx,
}

pub(super) fn source(channels: &Channels, channel: Arc<Channel>, rx: PipeRx) -> LocalEnd {
    LocalEnd::Source(Box::new(PipeSource {
        channels: channels.clone(),
        channel,
        rx,
    }))
}

pub(super) fn sink(channels: &Channels, channel: Arc<Channel>, tx: PipeTx) -> LocalEnd {
    LocalEnd::Sink(Box::new(PipeSink {
        channels: channels.clone(),
        channel,
        tx,
    }))
}

/// What an end records when the other engine says how its side ended; a
/// channel abandoned here (expiry, shutdown) stays `Cancelled`.
fn end_state(channel: &Channel, how: EndOutcome) -> EndState {
    match how {
        _ if channel.abandoned.is_cancelled() => EndState::Cancelled,
        EndOutcome::Done => EndState::Done,
        EndOutcome::Aborted => EndState::Aborted,
    }
}

impl FrameSource for PipeSource {
    fn next(&mut self) -> BoxFuture<'_, Result<ChannelData, EndOutcome>> {
        Box::pin(async move {
            let frame = tokio::select! {
                biased;
                _ = self.channel.abandoned.cancelled() => return Err(EndOutcome::Aborted),
                frame = self.rx.recv() => frame,
            };
            match frame {
                Some(frame) => {
                    // From here the frame is the link's to carry: the pipe's
                    // budget goes back, the link's credit bounds it now.
                    self.rx.delivered(frame.receipt);
                    Ok(frame.data.into())
                }
                None => Err(match self.channels.writer_state(&self.channel) {
                    EndState::Done => EndOutcome::Done,
                    _ => EndOutcome::Aborted,
                }),
            }
        })
    }

    fn finish(self: Box<Self>, how: EndOutcome) {
        let PipeSource {
            channels,
            channel,
            rx,
        } = *self;
        // Closed first, so a writer here waiting for room stops now.
        drop(rx);
        channels.end_over(&channel, Direction::Read, end_state(&channel, how));
    }
}

impl FrameSink for PipeSink {
    fn push(&self, data: ChannelData) -> BoxFuture<'_, Result<(), ()>> {
        Box::pin(async move {
            if data.len() > self.channel.max_bytes {
                // Another engine's larger `[channels]`: it would never fit.
                return Err(());
            }
            tokio::select! {
                biased;
                _ = self.channel.abandoned.cancelled() => Err(()),
                pushed = self.tx.push(data.into()) => pushed.map_err(|_| ()),
            }
        })
    }

    fn gone(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            tokio::select! {
                _ = self.channel.abandoned.cancelled() => {}
                _ = self.tx.reader_gone() => {}
            }
        })
    }

    fn finish(self: Box<Self>, how: EndOutcome) {
        let PipeSink {
            channels,
            channel,
            tx,
        } = *self;
        // Recorded before the pipe closes: the reader reads it at its end.
        channels.end_over(&channel, Direction::Write, end_state(&channel, how));
        drop(tx);
    }
}

impl ChannelEnds for Channels {
    fn claim_for_peer(
        &self,
        channel_id: &str,
        dir: Direction,
        key: &str,
    ) -> Result<LocalEnd, PeerRefusal> {
        if self.is_shutting_down() {
            return Err(PeerRefusal::Unreachable("engine shutting down".into()));
        }
        let claim = self.claim(channel_id, dir, key).map_err(|e| match e {
            ClaimError::NotFound(_) => PeerRefusal::NotFound,
            ClaimError::Taken(_) => PeerRefusal::Taken,
            ClaimError::Gone(reason) => PeerRefusal::Gone(reason.to_string()),
        })?;
        let channel = claim.channel.clone();
        tracing::debug!(channel_id = %channel.id, dir = %dir, "channel end opened for another engine");
        Ok(match claim.open() {
            ClaimedEnd::Reader(rx) => source(self, channel, rx),
            ClaimedEnd::Writer(tx) => sink(self, channel, tx),
        })
    }
}
