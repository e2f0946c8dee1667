//! Time columns: a node's snapshots grouped so that a chart has at most about one column per
//! pixel. A column never spans a gap in the data, so a stopped agent shows as a gap, not as a
//! stretched column.

use super::super::dataset::{DeviceSeries, NONE, SLOTS, Tick};

#[derive(Debug, Default)]
pub struct Columns {
    /// Start of the first and end of the last interval of each column (epoch s).
    pub start: Vec<f64>,
    pub end: Vec<f64>,
    /// Timestamp of the last snapshot in the column (records are matched on it).
    pub last_ts: Vec<f64>,
    /// Seconds of observation in the column (sum of `interval_s`).
    pub seconds: Vec<f64>,
    /// Whether data is missing between this column and the previous one.
    pub gap_before: Vec<bool>,
    /// Snapshots per column (the same for all but the columns next to gaps).
    pub per_column: usize,
}

impl Columns {
    pub fn new(timeline: &[Tick], max: usize) -> Columns {
        let per_column = timeline.len().div_ceil(max.max(1)).max(1);
        let mut c = Columns { per_column, ..Default::default() };
        let mut in_col = 0usize;
        let mut prev: Option<&Tick> = None;
        for t in timeline {
            let gap = prev.is_some_and(|p| t.ts - t.dur > p.ts + 0.5 * t.dur.min(p.dur));
            if prev.is_none() || gap || in_col == per_column {
                c.start.push(t.ts - t.dur);
                c.end.push(t.ts);
                c.last_ts.push(t.ts);
                c.seconds.push(0.0);
                c.gap_before.push(gap);
                in_col = 0;
            }
            let i = c.end.len() - 1;
            c.end[i] = t.ts;
            c.last_ts[i] = t.ts;
            c.seconds[i] += t.dur;
            in_col += 1;
            prev = Some(t);
        }
        c
    }

    pub fn len(&self) -> usize {
        self.start.len()
    }

    pub fn center(&self, i: usize) -> f64 {
        (self.start[i] + self.end[i]) / 2.0
    }

    /// Indexes `0..len` split where data is missing, for drawing lines with real gaps.
    pub fn runs(&self) -> Vec<std::ops::Range<usize>> {
        let mut runs = Vec::new();
        let mut from = 0;
        for i in 1..self.len() {
            if self.gap_before[i] {
                runs.push(from..i);
                from = i;
            }
        }
        if self.len() > 0 {
            runs.push(from..self.len());
        }
        runs
    }
}

/// One device's data per column.
#[derive(Debug)]
pub struct DeviceColumns {
    pub heat: Vec<[u64; SLOTS]>,
    pub requests: Vec<u64>,
    /// Completions and bytes per op (dataset::OPS order), when the input has `ops`.
    pub ops: Option<Vec<[u64; 5]>>,
    pub bytes: Option<Vec<[u64; 5]>>,
    /// Exact device-time sum (µs) of the column's completions; NaN when the input has none.
    pub lat_sum_us: Vec<f64>,
    /// Highest end-of-interval in-flight count and highest peak in the column (NONE: no data).
    pub inflight: Vec<u64>,
    pub peak: Vec<u64>,
}

impl DeviceColumns {
    pub fn new(cols: &Columns, dev: &DeviceSeries) -> DeviceColumns {
        let n = cols.len();
        let mut d = DeviceColumns {
            heat: vec![[0; SLOTS]; n],
            requests: vec![0; n],
            ops: dev.has_ops().then(|| vec![[0; 5]; n]),
            bytes: dev.has_ops().then(|| vec![[0; 5]; n]),
            lat_sum_us: vec![0.0; n],
            inflight: vec![NONE; n],
            peak: vec![NONE; n],
        };
        let mut c = 0usize;
        for r in &dev.recs {
            // Records are a subset of the node's snapshots, both in time order.
            while c + 1 < n && cols.last_ts[c] < r.ts {
                c += 1;
            }
            if n == 0 {
                break;
            }
            dev.add_into(r, &mut d.heat[c]);
            d.requests[c] += r.total;
            if let (Some(ops), Some(bytes)) = (d.ops.as_mut(), d.bytes.as_mut()) {
                for o in dev.rec_op_detail(r) {
                    ops[c][o.op as usize] += o.count;
                    bytes[c][o.op as usize] += o.bytes;
                }
            }
            // NaN (no sum in the input) stays NaN for the whole column: no partial means.
            d.lat_sum_us[c] += if r.total > 0 { r.sum_us } else { 0.0 };
            for (col, v) in [(&mut d.inflight, r.inflight), (&mut d.peak, r.peak)] {
                if v != NONE {
                    col[c] = if col[c] == NONE { v } else { col[c].max(v) };
                }
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticks(ts: &[f64]) -> Vec<Tick> {
        ts.iter().map(|&ts| Tick { ts, dur: 1.0, origin: 0 }).collect()
    }

    #[test]
    fn columns_group_snapshots_and_stop_at_gaps() {
        let mut ts: Vec<f64> = (1..=10).map(|i| i as f64).collect();
        ts.extend((40..=44).map(|i| i as f64)); // 29 s without snapshots
        let c = Columns::new(&ticks(&ts), 5);
        assert_eq!(c.per_column, 3);
        assert_eq!(c.start, vec![0.0, 3.0, 6.0, 9.0, 39.0, 42.0]);
        assert_eq!(c.end, vec![3.0, 6.0, 9.0, 10.0, 42.0, 44.0]);
        assert_eq!(c.seconds, vec![3.0, 3.0, 3.0, 1.0, 3.0, 2.0]);
        assert_eq!(c.gap_before, vec![false, false, false, false, true, false]);
        assert_eq!(c.runs(), vec![0..4, 4..6]);
        // Few snapshots: one column each.
        let c = Columns::new(&ticks(&[1.0, 2.0, 3.0]), 1000);
        assert_eq!((c.len(), c.per_column), (3, 1));
    }
}
