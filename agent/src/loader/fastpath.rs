//! When the fast path (no start map, `agent-ebpf/src/fast.rs`) is trusted.
//!
//! With the stats flags from BTF enumerators it is on from arming. With flags from the
//! kernel-version table ([`super::layout::STATS_FLAG_TABLE`]) the programs first run on the start
//! map, checking at every completion that `QUEUE_FLAG_STATS`, `RQF_STATS` and `io_start_time_ns`
//! agree; the collector feeds the counts here each interval, and the fast path is turned on after
//! [`SELFTEST_MIN_AGREE`] agreeing completions and no disagreement, or never.

use blkio_agent_common::ARM_LEAD_NS;

use super::FlagSource;

/// Agreeing completions needed before the table's flag values are trusted. A wrong bit would
/// have to match `RQF_STATS` on every one of them, across every device that did I/O.
pub const SELFTEST_MIN_AGREE: u64 = 64;

/// State of the fast path, reported in each snapshot (`agent.path.fast`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastState {
    /// This kernel lacks a field or flag value, the mode is classic tracepoints, or attribution
    /// by task keeps every request in the start map.
    Unavailable,
    /// Flags from the version table, self-test still counting.
    Verifying,
    On,
    /// The self-test saw the flags disagree: the start map for good.
    Failed,
}

impl FastState {
    pub fn as_str(self) -> &'static str {
        match self {
            FastState::Unavailable => "unavailable",
            FastState::Verifying => "verifying",
            FastState::On => "on",
            FastState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FastPath {
    pub state: FastState,
    /// Where the stats flag values came from (`None` when unavailable).
    pub flags_from: Option<FlagSource>,
}

impl FastPath {
    pub fn unavailable() -> FastPath {
        FastPath { state: FastState::Unavailable, flags_from: None }
    }

    pub fn new(flags_from: FlagSource) -> FastPath {
        let state = match flags_from {
            FlagSource::Btf => FastState::On,
            FlagSource::KernelTable => FastState::Verifying,
        };
        FastPath { state, flags_from: Some(flags_from) }
    }

    /// Feeds the cumulative self-test counts (all CPUs); returns the `CONTROL_FAST_SINCE` time
    /// to write when the fast path turns on now (`now_ns`: `CLOCK_MONOTONIC`).
    pub fn update(&mut self, agree: u64, disagree: u64, now_ns: u64) -> Option<u64> {
        if self.state != FastState::Verifying {
            return None;
        }
        if disagree > 0 {
            self.state = FastState::Failed;
            tracing::warn!(
                agree,
                disagree,
                "stats flag self-test failed (QUEUE_FLAG_STATS/RQF_STATS from the kernel-version table disagree with io_start_time_ns); staying on the start map"
            );
            return None;
        }
        if agree < SELFTEST_MIN_AGREE {
            return None;
        }
        self.state = FastState::On;
        tracing::info!(agree, "stats flag self-test passed; fast path on");
        // Ahead of the write, like arming: requests allocated from then on take the fast path at
        // both ends (blkio_agent_common::CONTROL_FAST_SINCE).
        Some(now_ns + ARM_LEAD_NS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_flags_wait_for_agreement_and_one_disagreement_fails_for_good() {
        let mut f = FastPath::new(FlagSource::KernelTable);
        assert_eq!(f.update(SELFTEST_MIN_AGREE - 1, 0, 10), None);
        assert_eq!(f.state, FastState::Verifying);
        assert_eq!(f.update(SELFTEST_MIN_AGREE, 0, 10), Some(10 + ARM_LEAD_NS));
        assert_eq!(f.state, FastState::On);
        assert_eq!(f.update(SELFTEST_MIN_AGREE * 2, 0, 20), None, "turned on once");

        let mut f = FastPath::new(FlagSource::KernelTable);
        assert_eq!(f.update(1000, 1, 10), None);
        assert_eq!(f.state, FastState::Failed);
        assert_eq!(f.update(2000, 1, 10), None, "never retried");

        let mut f = FastPath::new(FlagSource::Btf);
        assert_eq!(f.state, FastState::On);
        assert_eq!(f.update(0, 0, 1), None, "BTF flags are on from arming");
        assert_eq!(FastPath::unavailable().update(100, 0, 1), None);
    }
}
