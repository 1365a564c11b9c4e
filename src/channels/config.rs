//! The `[channels]` section of the configuration.

use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelConfig {
    /// A channel whose ends have not both connected this long after creation
    /// is removed (connected ends are closed with 4408).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// `buffer_size` (frames) when `engine::channels::create` gives none.
    pub default_buffer_frames: usize,
    /// Larger `buffer_size` requests are lowered to this (iii's cap).
    pub max_buffer_frames: usize,
    /// Bytes one channel may hold between its writer and its reader.
    pub max_buffer_bytes: usize,
    /// Largest frame a channel socket accepts (bigger closes with 1009). The
    /// SDKs send 64 KiB chunks; text messages are one frame each.
    pub max_frame_size: usize,
    /// Channels alive at once; `engine::channels::create` fails beyond it.
    pub max_channels: usize,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            default_buffer_frames: 64,
            max_buffer_frames: 1024,
            max_buffer_bytes: 4 << 20,
            max_frame_size: 1 << 20,
            max_channels: 10_000,
        }
    }
}

impl ChannelConfig {
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("channels.ttl", self.ttl.as_nanos() as usize),
            ("channels.default_buffer_frames", self.default_buffer_frames),
            ("channels.max_buffer_frames", self.max_buffer_frames),
            ("channels.max_frame_size", self.max_frame_size),
            ("channels.max_channels", self.max_channels),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be greater than 0"));
        }
        if self.default_buffer_frames > self.max_buffer_frames {
            return Err("channels.default_buffer_frames must not exceed max_buffer_frames".into());
        }
        // A frame must fit the budget, or a writer could wait forever for room.
        if self.max_buffer_bytes < self.max_frame_size || self.max_buffer_bytes > u32::MAX as usize
        {
            return Err(
                "channels.max_buffer_bytes must be at least max_frame_size and below 4 GiB".into(),
            );
        }
        Ok(())
    }
}
