//! The names of job states as operators see them, in one place: `queue::stats`
//! counts them, and `queue::get`, `queue::peek`, `queue::explain` and the CLI
//! name a job's state with them.
//!
//! Invariant: a job is shown in exactly the state it is counted in. The store
//! keeps one state, `ready`, for two shown ones: a ready job whose function no
//! connected worker provides is `waiting_for_worker` (it spends no attempt),
//! and only the views can tell, since it depends on the live mesh.

use crate::store::records::JobState;

/// A job's state as shown to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShownState {
    Ready,
    WaitingForWorker,
    Delayed,
    Running,
    Held,
    WaitingForChildren,
    Completed,
    Dead,
    Cancelled,
}

/// The states `queue::stats` counts, in the order the CLI shows them.
pub const COUNTED: [ShownState; 8] = [
    ShownState::Ready,
    ShownState::WaitingForWorker,
    ShownState::Delayed,
    ShownState::Running,
    ShownState::Held,
    ShownState::WaitingForChildren,
    ShownState::Completed,
    ShownState::Dead,
];

impl ShownState {
    /// The shown state of a job stored in `state`; `has_worker` says whether a
    /// connected worker provides its function.
    pub fn of(state: JobState, has_worker: bool) -> Self {
        match state {
            JobState::Ready if has_worker => ShownState::Ready,
            JobState::Ready => ShownState::WaitingForWorker,
            JobState::Delayed => ShownState::Delayed,
            JobState::Running => ShownState::Running,
            JobState::Held => ShownState::Held,
            JobState::Waiting => ShownState::WaitingForChildren,
            JobState::Completed => ShownState::Completed,
            JobState::Dead => ShownState::Dead,
            JobState::Cancelled => ShownState::Cancelled,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ShownState::Ready => "ready",
            ShownState::WaitingForWorker => "waiting_for_worker",
            ShownState::Delayed => "delayed",
            ShownState::Running => "running",
            ShownState::Held => "held",
            ShownState::WaitingForChildren => "waiting_for_children",
            ShownState::Completed => "completed",
            ShownState::Dead => "dead",
            ShownState::Cancelled => "cancelled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_job_without_a_worker_is_shown_as_stats_counts_it() {
        assert_eq!(
            ShownState::of(JobState::Ready, false).as_str(),
            "waiting_for_worker"
        );
        assert_eq!(ShownState::of(JobState::Ready, true).as_str(), "ready");
        // Every other state shows as stored, whoever is connected.
        for s in [
            JobState::Delayed,
            JobState::Running,
            JobState::Held,
            JobState::Dead,
        ] {
            assert_eq!(ShownState::of(s, false), ShownState::of(s, true));
            assert_eq!(ShownState::of(s, false).as_str(), s.as_str());
        }
    }
}
