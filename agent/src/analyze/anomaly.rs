//! Latency anomalies: intervals whose p99 is far above the device's own recent baseline.
//!
//! Method (also in docs/analyzer.md):
//! - Each interval with at least `min_requests` completions gets its own p99 (from its buckets).
//! - Its baseline is the median p99 of the last [`WINDOW`] judged intervals that were *not*
//!   anomalous; until [`MIN_BASELINE`] such intervals exist, the median p99 of the whole
//!   recording is used instead (so a spike in the first minutes is still caught).
//! - The interval is anomalous when `p99 >= factor * baseline` and `p99 - baseline >=`
//!   [`FLOOR_US`] (a 4 µs -> 16 µs jump on a RAM-backed device is not worth a report).
//! - Consecutive anomalous intervals merge into one range; a normal interval, an interval
//!   with too few requests, or a gap in the data (a missing snapshot) ends the range.
//!
//! Anomalous intervals are kept out of the baseline, so a long stall does not become "normal"
//! halfway through; a lasting shift to a slower level is therefore reported as one long range.

use std::collections::VecDeque;

/// Judged intervals in the rolling baseline.
pub const WINDOW: usize = 120;
/// Baseline intervals needed before the rolling median replaces the recording's median.
pub const MIN_BASELINE: usize = 10;
/// Smallest p99 excess (µs) that can be an anomaly.
pub const FLOOR_US: f64 = 50.0;

#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub factor: f64,
    pub min_requests: u64,
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
}

/// An anomalous stretch: indexes of its first and last interval, and the baseline that its
/// first interval was judged against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub first: usize,
    pub last: usize,
    pub baseline_p99_us: f64,
}

pub fn detect(points: &[Point], cfg: Config) -> Vec<Range> {
    let judged = |p: &Point| p.requests >= cfg.min_requests.max(1) && p.p99.is_finite();
    let mut all: Vec<f64> = points.iter().filter(|p| judged(p)).map(|p| p.p99).collect();
    if all.is_empty() {
        return Vec::new();
    }
    all.sort_by(f64::total_cmp);
    let fallback = median(&all);

    let mut fifo: VecDeque<f64> = VecDeque::with_capacity(WINDOW + 1);
    let mut sorted: Vec<f64> = Vec::with_capacity(WINDOW + 1);
    let mut ranges: Vec<Range> = Vec::new();
    let mut open: Option<Range> = None;

    for (i, p) in points.iter().enumerate() {
        let is_judged = judged(p);
        let baseline = if sorted.len() >= MIN_BASELINE { median(&sorted) } else { fallback };
        let anomalous = is_judged && p.p99 >= cfg.factor * baseline && p.p99 - baseline >= FLOOR_US;
        if anomalous {
            let contiguous = open.is_some_and(|r| {
                let prev = &points[r.last];
                // The next interval starts where the previous ended (half an interval of slack
                // for timer jitter); anything later means snapshots are missing in between.
                p.ts - p.dur <= prev.ts + 0.5 * p.dur.min(prev.dur)
            });
            match (&mut open, contiguous) {
                (Some(r), true) => r.last = i,
                _ => {
                    ranges.extend(open.take());
                    open = Some(Range { first: i, last: i, baseline_p99_us: baseline });
                }
            }
        } else {
            ranges.extend(open.take());
            if is_judged {
                fifo.push_back(p.p99);
                let at = sorted.partition_point(|v| *v < p.p99);
                sorted.insert(at, p.p99);
                if fifo.len() > WINDOW {
                    let old = fifo.pop_front().expect("non-empty");
                    let at = sorted.partition_point(|v| *v < old);
                    sorted.remove(at);
                }
            }
        }
    }
    ranges.extend(open);
    ranges
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if !n.is_multiple_of(2) { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: Config = Config { factor: 4.0, min_requests: 20 };

    fn series(p99s: &[f64]) -> Vec<Point> {
        p99s.iter().enumerate().map(|(i, &p99)| Point { ts: 1000.0 + i as f64, dur: 1.0, requests: 100, p99 }).collect()
    }

    #[test]
    fn a_stretch_far_above_the_baseline_is_one_range() {
        let mut v = vec![200.0; 300];
        for x in &mut v[150..160] {
            *x = 5000.0;
        }
        let r = detect(&series(&v), CFG);
        assert_eq!(r, vec![Range { first: 150, last: 159, baseline_p99_us: 200.0 }]);
    }

    #[test]
    fn small_or_sparse_excursions_are_not_anomalies() {
        let mut v = vec![200.0; 100];
        v[50] = 700.0; // 3.5x: below the factor
        let mut pts = series(&v);
        pts[60].p99 = 50_000.0;
        pts[60].requests = 3; // too few requests to judge
        assert!(detect(&pts, CFG).is_empty());
        // 4x but only 12 µs above a 4 µs baseline: below the absolute floor.
        assert!(detect(&series(&[4.0, 4.0, 4.0, 16.0, 4.0]), CFG).is_empty());
    }

    #[test]
    fn a_spike_at_the_start_uses_the_recording_median() {
        let mut v = vec![100.0; 50];
        v[0] = 3000.0;
        v[1] = 3000.0;
        let r = detect(&series(&v), CFG);
        assert_eq!(r, vec![Range { first: 0, last: 1, baseline_p99_us: 100.0 }]);
    }

    #[test]
    fn a_long_stall_does_not_become_the_baseline() {
        let mut v = vec![100.0; 400];
        for x in &mut v[100..350] {
            *x = 2000.0; // longer than the window
        }
        let r = detect(&series(&v), CFG);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].first, r[0].last), (100, 349));
    }

    #[test]
    fn gaps_and_normal_intervals_split_ranges() {
        let mut v = vec![100.0; 60];
        v[20] = 9000.0;
        v[21] = 9000.0;
        v[23] = 9000.0; // 22 is normal
        let mut pts = series(&v);
        pts[40].p99 = 9000.0;
        // 41 comes 30 s after 40: snapshots are missing in between.
        for p in &mut pts[41..] {
            p.ts += 30.0;
        }
        pts[41].p99 = 9000.0;
        let r: Vec<(usize, usize)> = detect(&pts, CFG).iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(r, vec![(20, 21), (23, 23), (40, 40), (41, 41)]);
    }

    #[test]
    fn the_baseline_follows_slow_drift() {
        // p99 doubles slowly over the recording: never 4x its recent past.
        let v: Vec<f64> = (0..1000).map(|i| 100.0 * 2f64.powf(i as f64 / 500.0)).collect();
        assert!(detect(&series(&v), CFG).is_empty());
    }
}
