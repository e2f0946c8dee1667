//! Checks on a parsed snapshot that its types cannot express: a record that fails is skipped
//! whole (so a half-used line never skews totals), and a time disagreement is flagged.

use std::collections::HashMap;

use super::dataset::SLOTS;
use crate::snapshot::Snapshot;

/// Entries of `ops` per device and snapshot the analyzer accepts (the agent writes one per op
/// kind; `Rec::ops_len` is a byte).
const OPS_PER_DEVICE: usize = 64;

/// Checks what the types cannot: a record that fails is skipped whole, so a half-used line
/// never skews totals.
pub fn validate(s: &Snapshot) -> Result<(), String> {
    if !s.timestamp.is_finite() || s.timestamp < 0.0 {
        return Err(format!("timestamp {} is not a Unix time", s.timestamp));
    }
    if !(s.interval_s.is_finite() && s.interval_s > 0.0) {
        return Err(format!("interval_s {} is not a positive number of seconds", s.interval_s));
    }
    for h in &s.latency_histogram {
        if h.buckets.len() > SLOTS {
            return Err(format!("{}: {} buckets (at most {SLOTS})", h.device_name, h.buckets.len()));
        }
        let mut sum = 0u64;
        for b in &h.buckets {
            if b.slot as usize >= SLOTS {
                return Err(format!("{}: slot {} is outside 0..={}", h.device_name, b.slot, SLOTS - 1));
            }
            sum = sum.saturating_add(b.count);
        }
        if sum != h.total {
            return Err(format!(
                "{}: total {} differs from the sum of its bucket counts {sum}",
                h.device_name, h.total
            ));
        }
        if h.sum_us.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
            return Err(format!("{}: sum_us is not a non-negative number", h.device_name));
        }
    }
    let mut per_device: HashMap<(u64, &str), usize> = HashMap::new();
    for o in &s.ops {
        let n = per_device.entry((o.device_id, &o.device_name)).or_default();
        *n += 1;
        if *n > OPS_PER_DEVICE {
            return Err(format!("{}: more than {OPS_PER_DEVICE} ops entries in one snapshot", o.device_name));
        }
        for (what, buckets) in [("device_time", &o.device_time.buckets), ("size", &o.size.buckets)] {
            if buckets.len() > SLOTS || buckets.iter().any(|b| b.slot as usize >= SLOTS) {
                return Err(format!("{} {}: {what} buckets outside slots 0..={}", o.device_name, o.op, SLOTS - 1));
            }
        }
        for (what, h) in [("device_time", &o.device_time), ("queue_time", &o.queue_time)] {
            if !(h.sum_us.is_finite() && h.sum_us >= 0.0) {
                return Err(format!("{} {}: {what}.sum_us is not a non-negative number", o.device_name, o.op));
            }
        }
    }
    Ok(())
}

/// `iso_timestamp` has microseconds, so anything over a millisecond apart is not rounding: one
/// of the two was edited or corrupted (the analyzer goes by `timestamp`).
pub fn time_mismatch(s: &Snapshot) -> Option<String> {
    match super::args::parse_time(&s.iso_timestamp) {
        Ok(t) if (t - s.timestamp).abs() <= 1e-3 => None,
        Ok(t) => Some(format!(
            "timestamp {} and iso_timestamp {} disagree by {:.3} s; using timestamp",
            s.timestamp,
            s.iso_timestamp,
            t - s.timestamp
        )),
        Err(_) => Some(format!("iso_timestamp {:?} is not an ISO 8601 time; using timestamp", s.iso_timestamp)),
    }
}
