//! Whole copies of values the programs update while userspace reads them.
//!
//! A map lookup copies a value while programs on other CPUs may be half-way through updating it:
//! a copy can hold a request's count without its bucket (CI saw `queue_time buckets sum to 252,
//! count is 251` under 32 NVMe queues). Each value carries the counters of [`Framed`], and a copy
//! whose counters differ, or whose buckets do not add up to its count, is read again. Values
//! that were whole are kept from the first read; only the torn ones wait for a later one.

use std::collections::BTreeMap;

use blkio_agent_common::{CgroupStats, DeviceHists, Framed, OpHist};

use crate::error::{Error, Result};

/// Reads of one map before the interval gives up on it. A torn copy needs an update to overlap
/// a copy of a few hundred bytes, so even a value updated every microsecond is whole in almost
/// every read; 64 in a row torn means something else is wrong.
pub const READ_TRIES: usize = 64;

/// A copy no update overlapped.
pub trait Whole {
    fn whole(&self) -> bool;
}

impl Whole for Framed<OpHist> {
    fn whole(&self) -> bool {
        self.settled() && self.value.buckets_agree()
    }
}

impl Whole for Framed<DeviceHists> {
    fn whole(&self) -> bool {
        self.settled() && self.value.ops.iter().all(OpHist::buckets_agree)
    }
}

impl Whole for Framed<CgroupStats> {
    fn whole(&self) -> bool {
        self.settled() && self.value.buckets_agree()
    }
}

/// Calls `read` until every key it returned has had a whole copy, and returns those copies.
/// Fails (the interval is then taken by the next one, nothing lost) after [`READ_TRIES`] reads.
pub fn settle<K: Ord, V: Whole>(what: &str, mut read: impl FnMut() -> Result<Vec<(K, V)>>) -> Result<Vec<(K, V)>> {
    let mut whole: BTreeMap<K, V> = BTreeMap::new();
    let mut torn = 0;
    for _ in 0..READ_TRIES {
        torn = 0;
        for (k, v) in read()? {
            if whole.contains_key(&k) {
                continue;
            }
            if v.whole() {
                whole.insert(k, v);
            } else {
                torn += 1;
            }
        }
        if torn == 0 {
            return Ok(whole.into_iter().collect());
        }
    }
    Err(Error::Other(format!(
        "{torn} value(s) of map {what} were being updated during each of {READ_TRIES} reads; the next interval covers \
         this one"
    )))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use blkio_agent_common::HIST_SLOTS;

    use super::*;

    fn hist(count: u64) -> OpHist {
        let mut h = OpHist::ZERO;
        h.count = count;
        h.device_slots[2] = count as u32;
        h.queue_slots[0] = count as u32;
        h.size_slots[12] = count as u32;
        h
    }

    #[test]
    fn a_copy_is_whole_only_with_equal_counters_and_agreeing_buckets() {
        let f = Framed { done: 7, value: hist(3), started: 7 };
        assert!(f.whole());
        assert!(!Framed { started: 8, ..f }.whole(), "an update had begun and not ended");
        let mut count_ahead = f;
        count_ahead.value.count = 4;
        assert!(!count_ahead.whole(), "count raised, buckets not yet");
        let mut queue_ahead = f;
        queue_ahead.value.queue_slots[5] += 1;
        assert!(!queue_ahead.whole(), "one histogram ahead of the others");
        let mut wrapped = f;
        wrapped.value.count = (1 << 32) + 3;
        assert!(wrapped.whole(), "the u32 slots wrap, the u64 count does not");
        let mut c = CgroupStats::ZERO;
        c.count = 2;
        c.device_slots[HIST_SLOTS - 1] = 2;
        assert!(Framed { done: 1, value: c, started: 1 }.whole());
        c.device_slots[0] = 1;
        assert!(!Framed { done: 1, value: c, started: 1 }.whole());
    }

    #[test]
    fn torn_values_are_read_again_and_whole_ones_kept_from_the_first_read() {
        let reads = Cell::new(0);
        let out = settle("HISTS", || {
            reads.set(reads.get() + 1);
            let n = reads.get();
            // Key 1 is torn in the first two reads; key 2 changes after the first (whole) read,
            // which must be the copy returned.
            let one = Framed { done: 5, value: hist(5), started: if n <= 2 { 6 } else { 5 } };
            let two = Framed { done: n, value: hist(n), started: n };
            Ok(vec![(1u32, one), (2u32, two)])
        })
        .unwrap();
        assert_eq!(reads.get(), 3);
        let counts: Vec<(u32, u64)> = out.iter().map(|(k, v)| (*k, v.value.count)).collect();
        assert_eq!(counts, vec![(1, 5), (2, 1)]);
    }

    #[test]
    fn a_value_torn_in_every_read_fails_the_read_and_says_so() {
        let reads = Cell::new(0);
        let err = settle("DENSE_HISTS", || {
            reads.set(reads.get() + 1);
            Ok(vec![(0u32, Framed { done: 1, value: hist(1), started: 2 })])
        })
        .unwrap_err()
        .to_string();
        assert_eq!(reads.get(), READ_TRIES);
        assert!(err.contains("1 value(s) of map DENSE_HISTS") && err.contains("next interval"), "{err}");
    }

    #[test]
    fn a_failing_read_fails_at_once() {
        let reads = Cell::new(0);
        let r: Result<Vec<(u32, Framed<OpHist>)>> = settle("HISTS", || {
            reads.set(reads.get() + 1);
            Err(Error::Other("EINTR".into()))
        });
        assert!(r.is_err());
        assert_eq!(reads.get(), 1);
    }
}
