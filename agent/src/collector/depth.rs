//! A device's depth from its lines, one per hardware queue (`DENSE_INFLIGHT`,
//! `blkio_agent_common::QUEUE_LINES`), and the bounds of its interval peak.
//!
//! Each line is a gauge of its own: the requests of one hardware queue in flight and the highest
//! value the line reached in each epoch. The device's depth is the sum of the lines. Its peak is
//! at least the highest line peak (that line alone held that many requests at that moment) and at
//! most the sum over lines of the highest value each held during the interval. With one line
//! (single-queue devices, tracepoint mode, a multi-queue device whose I/O stayed on one queue)
//! the two are equal and the peak is exact, as before lines existed.

use std::collections::HashMap;

use blkio_agent_common::{DeviceInflight as KernelInflight, DeviceQueues, QUEUE_LINES};

/// Lines of one device's [`Gauge`] at most: its dense lines and the fallback entry.
const GAUGE_LINES: usize = QUEUE_LINES + 1;

/// One device's gauge as read: `merged` is the whole device (depth and evictions summed; per
/// epoch parity the lower bound of the peak, see `read::merge_inflight`), `lines` each dense
/// line and then the fallback entry, raw, for the upper bound.
#[derive(Clone, Debug, Default)]
pub struct Gauge {
    pub merged: KernelInflight,
    pub lines: Vec<KernelInflight>,
}

/// The dense lines as one gauge: depth and evictions summed, and per epoch parity the newest
/// epoch a line holds with the highest peak among the lines raised in it.
pub fn collapse(q: &DeviceQueues) -> KernelInflight {
    let mut out = KernelInflight::default();
    for l in q.lines.iter().map(|l| &l.gauge) {
        out.inflight += l.inflight;
        out.evicted += l.evicted;
        for p in 0..2 {
            if l.peak_epoch[p] > out.peak_epoch[p] {
                (out.peak_epoch[p], out.peak[p]) = (l.peak_epoch[p], l.peak[p]);
            } else if l.peak_epoch[p] == out.peak_epoch[p] {
                out.peak[p] = out.peak[p].max(l.peak[p]);
            }
        }
    }
    out
}

/// Each device's line values at the previous read.
#[derive(Default)]
pub struct LineHistory {
    prev: HashMap<u32, [i64; GAUGE_LINES]>,
}

impl LineHistory {
    /// Upper bound of `dev`'s depth during epoch `ended`, or `None` when at most one line can
    /// have held a request then (the lower bound is exact).
    ///
    /// A line raised in that epoch reached at most its peak (the programs raise it at every
    /// issue there). A line with no issue in it only went down, from its value at the epoch's
    /// start, which is its value at the previous read (taken right after that epoch began) plus
    /// the completions of the microseconds between the epoch switch and that read; the larger of
    /// that read and the current value stands for it. Lines below zero (a device given its dense
    /// slot with requests in flight counts them down there) add nothing.
    pub fn upper(&mut self, dev: u32, g: &Gauge, ended: u64) -> Option<i64> {
        let slot = (ended & 1) as usize;
        let mut now = [0i64; GAUGE_LINES];
        for (n, l) in now.iter_mut().zip(&g.lines) {
            *n = l.inflight;
        }
        let prev = self.prev.insert(dev, now).unwrap_or([0; GAUGE_LINES]);
        let bounds = g.lines.iter().zip(prev).map(|(l, before)| {
            let raised = if l.peak_epoch[slot] == ended { l.peak[slot] } else { 0 };
            raised.max(l.inflight).max(before).max(0)
        });
        let (mut sum, mut busy) = (0, 0);
        for b in bounds.filter(|&b| b > 0) {
            sum += b;
            busy += 1;
        }
        (busy > 1).then_some(sum)
    }

    /// Forgets a device's lines (its gauge was set aside by a resync).
    pub fn forget(&mut self, dev: u32) {
        self.prev.remove(&dev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(inflight: i64, peak: [i64; 2], peak_epoch: [u64; 2]) -> KernelInflight {
        KernelInflight { inflight, peak, peak_epoch, evicted: 1 }
    }

    fn queues(lines: &[(usize, KernelInflight)]) -> DeviceQueues {
        let mut q = DeviceQueues::default();
        for &(i, l) in lines {
            q.lines[i].gauge = l;
        }
        q
    }

    fn gauge(lines: &[KernelInflight]) -> Gauge {
        Gauge { merged: KernelInflight::default(), lines: lines.to_vec() }
    }

    #[test]
    fn lines_sum_and_the_newest_epoch_gives_the_lower_bound() {
        let q = queues(&[
            (0, line(3, [5, 9], [4, 3])),
            (7, line(2, [6, 1], [4, 1])),
            (QUEUE_LINES - 1, line(-1, [2, 8], [2, 3])),
        ]);
        let c = collapse(&q);
        assert_eq!((c.inflight, c.evicted), (4, 3));
        assert_eq!((c.peak[0], c.peak_epoch[0]), (6, 4), "lines 0 and 7 were raised in epoch 4");
        assert_eq!((c.peak[1], c.peak_epoch[1]), (9, 3), "line 63's epoch 3 peak is lower");
        let idle = collapse(&DeviceQueues::default());
        assert_eq!((idle.inflight, idle.peak, idle.peak_epoch), (0, [0, 0], [0, 0]));
    }

    #[test]
    fn one_busy_line_is_exact_and_several_are_summed() {
        let mut h = LineHistory::default();
        // Epoch 4 (slot 0): one line reached 5, the rest stayed empty.
        assert_eq!(h.upper(1, &gauge(&[line(2, [5, 0], [4, 0]), line(0, [0, 0], [0, 0])]), 4), None);
        // Epoch 5 (slot 1): line 0 went 2 -> 0 without an issue, line 1 reached 3: at most 2 + 3.
        assert_eq!(h.upper(1, &gauge(&[line(0, [5, 0], [4, 0]), line(1, [0, 3], [0, 5])]), 5), Some(5));
        // Epoch 6: both empty now, line 1 was at 1 at the last read; line 0 had nothing.
        assert_eq!(h.upper(1, &gauge(&[line(0, [5, 0], [4, 0]), line(0, [0, 3], [0, 5])]), 6), None);
    }

    #[test]
    fn a_line_below_zero_adds_nothing_and_devices_are_apart() {
        let mut h = LineHistory::default();
        let g = gauge(&[line(-4, [-1, 0], [2, 0]), line(6, [7, 0], [2, 0]), line(4, [4, 0], [1, 0])]);
        // Line 2 holds 4 with no issue in epoch 2: 7 + 4.
        assert_eq!(h.upper(9, &g, 2), Some(11));
        assert_eq!(h.upper(10, &gauge(&[line(1, [1, 0], [2, 0])]), 2), None, "another device");
        h.forget(9);
        assert_eq!(h.prev.get(&9), None);
    }
}
