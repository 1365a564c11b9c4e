//! `engine::channels::*`: create a binary channel, and the operator views.

use serde::Deserialize;
use serde_json::{Value, json};

use super::Channels;
use crate::mesh::provided::args;
use crate::mesh::{CallCtx, Mesh, Reply};
use crate::protocol::{ErrorBody, codes};

#[derive(Default, Deserialize)]
#[serde(default)]
struct CreateArgs {
    /// Frames the engine may hold; clamped to 1..=`channels.max_buffer_frames`.
    buffer_size: Option<i64>,
}

/// `{buffer_size?}` → `{writer, reader}`, each `{channel_id, access_key, direction}`.
pub(crate) fn create(channels: &Channels, _: &Mesh, ctx: &CallCtx, input: Value) -> Reply {
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
    if channels.budget_spent() {
        return Err(ErrorBody::new(
            codes::ENGINE_OVERLOADED,
            "the engine's memory budget (limits.memory_budget) is spent; retry later",
        ));
    }
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
pub(crate) fn list(channels: &Channels, _: &Mesh, _: &CallCtx, _: Value) -> Reply {
    Ok(json!({ "channels": channels.list() }))
}

#[derive(Default, Deserialize)]
struct InfoArgs {
    channel_id: String,
}

/// `{channel_id}` → ChannelInfo: each end's state, bytes and frames moved,
/// what the engine holds now and at most, age. Never the keys.
pub(crate) fn info(channels: &Channels, _: &Mesh, _: &CallCtx, input: Value) -> Reply {
    let a: InfoArgs = args(input)?;
    match channels.info(&a.channel_id) {
        Some(info) => Ok(serde_json::to_value(info).expect("info serializes")),
        None => Err(ErrorBody::new(
            codes::NOT_FOUND,
            format!("no live channel {:?}", a.channel_id),
        )),
    }
}
