//! `engine::channels::*`: create a binary channel, and the operator views.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{CallCtx, Reply, args};
use crate::mesh::Mesh;
use crate::protocol::{ErrorBody, codes};

#[derive(Default, Deserialize)]
#[serde(default)]
struct CreateArgs {
    /// Frames the engine may hold; clamped to 1..=`channels.max_buffer_frames`.
    buffer_size: Option<i64>,
}

/// `{buffer_size?}` → `{writer, reader}`, each `{channel_id, access_key, direction}`.
pub fn create(mesh: &Mesh, ctx: &CallCtx, input: Value) -> Reply {
    let a: CreateArgs = args(input)?;
    let frames = match a.buffer_size {
        None => None,
        Some(n) if n >= 0 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        Some(n) => {
            return Err(ErrorBody::new(
                codes::INVALID_ARGUMENTS,
                format!("buffer_size must be a positive number of frames, not {n}"),
            ));
        }
    };
    let channels = mesh.channels();
    let pair = channels.create(Some(ctx.caller), frames).ok_or_else(|| {
        ErrorBody::new(
            codes::TOO_MANY_CHANNELS,
            format!(
                "the engine already holds channels.max_channels ({}) channels",
                channels.config().max_channels
            ),
        )
    })?;
    Ok(serde_json::to_value(pair).expect("refs serialize"))
}

/// `{}` → `{channels: [ChannelInfo]}`, oldest first.
pub fn list(mesh: &Mesh, _ctx: &CallCtx, _input: Value) -> Reply {
    Ok(json!({ "channels": mesh.channels().list() }))
}

#[derive(Default, Deserialize)]
struct InfoArgs {
    channel_id: String,
}

/// `{channel_id}` → ChannelInfo: each end's state, bytes and frames moved,
/// what the engine holds now and at most, age. Never the keys.
pub fn info(mesh: &Mesh, _ctx: &CallCtx, input: Value) -> Reply {
    let a: InfoArgs = args(input)?;
    match mesh.channels().info(&a.channel_id) {
        Some(info) => Ok(serde_json::to_value(info).expect("info serializes")),
        None => Err(ErrorBody::new(
            codes::NOT_FOUND,
            format!("no live channel {:?}", a.channel_id),
        )),
    }
}

/// A job on the durable queue outlives any channel (it may run after the
/// channel expired, or after an engine restart that loses every channel), so
/// a ref in an enqueued payload is almost always a mistake worth a warning.
pub fn warn_if_refs_enqueued(queue: &str, function_id: &str, payload: &str) {
    let ids = crate::protocol::channel::refs_in_payload(payload);
    if !ids.is_empty() {
        tracing::warn!(queue, function_id, channel_ids = ?ids, "a channel ref was enqueued: the job may run after the channel is gone (channels are not durable)");
    }
}
