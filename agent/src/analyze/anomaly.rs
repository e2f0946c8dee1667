//! Latency anomalies: stretches where a device's p99 is far above its own recent baseline
//! *at the same load*. The rule (also in docs/analyzer.md and in every report):
//!
//! - Each interval with at least `min_requests` completions is *judged*: it gets its own p99
//!   (from its buckets), its IOPS, its mean request size and its mean depth (exact device time
//!   over the interval, Little's law; the peak in-flight count for inputs without sums).
//! - The baseline is the median of those four over the last [`WINDOW`] normal judged
//!   intervals. While fewer than [`MIN_BASELINE`] exist (at the start, after a load change),
//!   the median of the next [`MIN_BASELINE`] judged intervals is used, so an early stall is
//!   still caught.
//! - **Load change**: IOPS at least [`LOAD_RATIO`]× the baseline's, a mean request size
//!   [`LOAD_RATIO`]× larger or smaller, or a mean depth [`LOAD_RATIO`]× higher while IOPS did not
//!   drop by [`LOAD_RATIO`]. Latency that rises with the load is queueing, not a fault (a QD1 to
//!   QD32 step, 4 KiB to 1 MiB requests): the baseline restarts there.
//! - **Enter** an anomaly when `p99 >= factor × baseline` and `p99 - baseline >=` [`FLOOR_US`];
//!   **stay** in it while `p99 >= sqrt(factor) × baseline` (hysteresis: a stall that wobbles
//!   around the threshold is one range, not many). Intervals with too few completions (a stuck
//!   device completes little) neither end nor extend a range; missing snapshots end it.
//! - A range is reported only when it lasts at least `min_duration_s` (one noisy interval
//!   at 0.2 s is not a fault). Anomalous intervals never enter the baseline.
//!
//! A device that slows down while an open-loop load keeps its IOPS looks like a depth increase
//! at constant IOPS, i.e. like a load change; block-layer data alone cannot tell the two apart.

use std::collections::VecDeque;

/// Normal judged intervals in the rolling baseline.
pub const WINDOW: usize = 120;
/// Baseline intervals needed before the rolling median replaces the look-ahead median.
pub const MIN_BASELINE: usize = 10;
/// Smallest p99 excess (µs) that can be an anomaly.
pub const FLOOR_US: f64 = 50.0;
/// How much IOPS, request size or depth must change to count as a different load.
pub const LOAD_RATIO: f64 = 2.0;

#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub factor: f64,
    pub min_requests: u64,
    pub min_duration_s: f64,
}

/// One interval of one device, in time order.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    /// End of the interval (epoch s) and its length.
    pub ts: f64,
    pub dur: f64,
    pub requests: u64,
    /// This interval's p99 in µs (NaN when it had no completions).
    pub p99: f64,
    /// Mean bytes per request and mean depth; NaN when the input cannot tell.
    pub size: f64,
    pub depth: f64,
}

/// An anomalous stretch: indexes of its first and last interval, and the baseline that its
/// first interval was judged against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub first: usize,
    pub last: usize,
    pub baseline_p99_us: f64,
}

#[derive(Debug, Clone, Copy)]
struct Base {
    p99: f64,
    iops: f64,
    size: f64,
    depth: f64,
}

pub fn detect(points: &[Point], cfg: Config) -> Vec<Range> {
    let judged: Vec<usize> = (0..points.len())
        .filter(|&i| points[i].requests >= cfg.min_requests.max(1) && points[i].p99.is_finite())
        .collect();
    let exit = cfg.factor.sqrt();
    let mut window = Window::default();
    let mut ranges: Vec<Range> = Vec::new();
    let mut open: Option<Range> = None;
    let close = |r: Range, ranges: &mut Vec<Range>| {
        let (a, b) = (&points[r.first], &points[r.last]);
        if b.ts - (a.ts - a.dur) >= cfg.min_duration_s - 1e-9 {
            ranges.push(r);
        }
    };
    // Judged intervals from `k` on seed the baseline while the window is short.
    let mut seed_from = 0usize;
    for (k, &i) in judged.iter().enumerate() {
        let p = &points[i];
        let here = Base { p99: p.p99, iops: p.requests as f64 / p.dur, size: p.size, depth: p.depth };
        if let Some(r) = open.as_mut() {
            // No snapshots missing since the range's last interval (unjudged ones in between
            // were observed, so they do not break it).
            let contiguous = (r.last + 1..=i).all(|j| !gap(&points[j - 1], &points[j]));
            if contiguous && p.p99 >= exit * r.baseline_p99_us && p.p99 - r.baseline_p99_us >= FLOOR_US {
                r.last = i;
                continue;
            }
            close(open.take().expect("open"), &mut ranges);
        }
        let base = if window.len() >= MIN_BASELINE {
            window.medians()
        } else {
            medians(judged[seed_from..].iter().take(MIN_BASELINE).map(|&j| {
                let q = &points[j];
                Base { p99: q.p99, iops: q.requests as f64 / q.dur, size: q.size, depth: q.depth }
            }))
        };
        if window.len() >= MIN_BASELINE && load_changed(&here, &base) {
            window.clear();
            window.push(here);
            seed_from = k;
            continue;
        }
        if p.p99 >= cfg.factor * base.p99 && p.p99 - base.p99 >= FLOOR_US {
            open = Some(Range { first: i, last: i, baseline_p99_us: base.p99 });
        } else {
            window.push(here);
        }
    }
    if let Some(r) = open {
        close(r, &mut ranges);
    }
    ranges
}

/// Snapshots are missing between `a` and `b` (half an interval of slack for timer jitter).
fn gap(a: &Point, b: &Point) -> bool {
    b.ts - b.dur > a.ts + 0.5 * a.dur.min(b.dur)
}

fn load_changed(p: &Base, base: &Base) -> bool {
    let more = |a: f64, b: f64| a.is_finite() && b.is_finite() && b > 0.0 && a >= LOAD_RATIO * b;
    more(p.iops, base.iops)
        || more(p.size, base.size)
        || more(base.size, p.size)
        || (more(p.depth, base.depth.max(1.0)) && p.iops * LOAD_RATIO > base.iops)
}

impl Base {
    fn fields(&self) -> [f64; 4] {
        [self.p99, self.iops, self.size, self.depth]
    }
}

/// The rolling baseline: the last [`WINDOW`] normal intervals in order, and each of the four
/// measures' finite values kept sorted, so that the medians cost O(1) per interval and an
/// update a binary search and a move of at most [`WINDOW`] floats. (Collecting and sorting the
/// window for every judged interval was a fifth of a whole `analyze` run: 4 sorts of 120 values
/// per interval, 1.4 M intervals in a day of 16 devices.)
#[derive(Default)]
struct Window {
    order: VecDeque<Base>,
    sorted: [Vec<f64>; 4],
}

impl Window {
    fn len(&self) -> usize {
        self.order.len()
    }

    fn clear(&mut self) {
        self.order.clear();
        self.sorted.iter_mut().for_each(Vec::clear);
    }

    fn push(&mut self, b: Base) {
        for (v, x) in self.sorted.iter_mut().zip(b.fields()) {
            if x.is_finite() {
                let at = v.partition_point(|&y| y.total_cmp(&x).is_lt());
                v.insert(at, x);
            }
        }
        self.order.push_back(b);
        if self.order.len() > WINDOW {
            let old = self.order.pop_front().expect("non-empty");
            for (v, x) in self.sorted.iter_mut().zip(old.fields()) {
                if x.is_finite() {
                    let at = v.partition_point(|&y| y.total_cmp(&x).is_lt());
                    v.remove(at);
                }
            }
        }
    }

    fn medians(&self) -> Base {
        let [p99, iops, size, depth] = self.sorted.each_ref().map(|v| median_of_sorted(v));
        Base { p99, iops, size, depth }
    }
}

fn median_of_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn medians(it: impl Iterator<Item = Base>) -> Base {
    let all: Vec<Base> = it.collect();
    let med = |f: fn(&Base) -> f64| {
        let mut v: Vec<f64> = all.iter().map(f).filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(f64::total_cmp);
        median_of_sorted(&v)
    };
    Base { p99: med(|b| b.p99), iops: med(|b| b.iops), size: med(|b| b.size), depth: med(|b| b.depth) }
}

#[cfg(test)]
#[path = "anomaly_tests.rs"]
mod tests;
