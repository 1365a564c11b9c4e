//! The queues' settings as this engine knows them: `[queue]`'s, and those
//! other modules give queues of their own at run time (durable topics'
//! subscriptions, through [`crate::queue::QueueBackend::define`]). Every
//! engine binds a cluster-wide subscription, so each one defines its queue
//! alike, whichever engine pulls the job.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::queue::settings::{QueueConfig, QueueOverrides, QueueSettings};

pub(super) struct Declared {
    config: QueueConfig,
    defined: RwLock<HashMap<String, QueueSettings>>,
}

impl Declared {
    pub(super) fn new(config: QueueConfig) -> Self {
        Self {
            config,
            defined: RwLock::new(HashMap::new()),
        }
    }

    /// A queue's settings: defined at run time, else `[queue]`'s own, else
    /// the defaults (`None` in strict mode: not declared).
    pub(super) fn settings(&self, queue: &str) -> Option<QueueSettings> {
        let defined = self.defined.read().unwrap_or_else(|e| e.into_inner());
        match defined.get(queue) {
            Some(s) => Some(s.clone()),
            None => self.config.settings(queue),
        }
    }

    /// A queue's settings, or the defaults for one no longer declared (a
    /// job enqueued before a restart with another config still runs).
    pub(super) fn or_defaults(&self, queue: &str) -> QueueSettings {
        self.settings(queue).unwrap_or_else(|| self.defaults())
    }

    /// `[queue]`'s defaults.
    pub(super) fn defaults(&self) -> QueueSettings {
        self.config.defaults.clone()
    }

    /// Gives `name` these overrides on top of the defaults; replaces any
    /// earlier definition.
    pub(super) fn define(&self, name: String, overrides: QueueOverrides) {
        let settings = overrides.apply(&self.config.defaults);
        let mut defined = self.defined.write().unwrap_or_else(|e| e.into_inner());
        defined.insert(name, settings);
    }
}
