//! Log2 histogram math shared by the collector, the exporters and the analyzer.
//!
//! Slot `k` holds integer values `v` (µs, or bytes) with `floor(log2(v)) == k`; slot 0 also holds
//! 0. So slot `k` spans `[2^k, 2^(k+1) - 1]`, except slot 0 which spans `[0, 1]`. This is the
//! seed's JSON example (`{"slot": 4, "bucket_low": 16, "bucket_high": 31}`), which wins over its
//! prose table.

pub use blkio_agent_common::{HIST_SLOTS, log2_slot};

/// The slot a value of slot index `slot` is counted in: the last slot also holds everything
/// larger (the kernel's `log2_slot` clamps the same way).
pub fn clamp_slot(slot: usize) -> usize {
    slot.min(HIST_SLOTS - 1)
}

/// Nanoseconds to microseconds, the unit of the JSONL `sum_us` fields (one conversion for all).
pub fn ns_to_us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Lowest value of slot `k` (inclusive).
pub fn bucket_low(slot: u32) -> u64 {
    if slot == 0 { 0 } else { 1u64 << slot.min(63) }
}

/// Highest value of slot `k` (inclusive).
pub fn bucket_high(slot: u32) -> u64 {
    if slot >= 63 { u64::MAX } else { (1u64 << (slot + 1)) - 1 }
}

/// Exact upper edge of slot `k` in seconds for a µs histogram, as OTLP/Prometheus bucket bounds:
/// `2^(k+1) / 1e6`. The kernel floors nanoseconds to whole µs before taking the log2, so slot `k`
/// holds real durations in `[2^k, 2^(k+1))` µs: a 31.9 µs request is counted as 31 µs in slot 4,
/// whose real edge is 32 µs, not 31 (the JSONL's integer `bucket_high` stays `2^(k+1) - 1`, the
/// seed's contract). Computed as integer / 1e6 (one rounding) so that e.g. 16 µs is exactly
/// `1.6e-5`.
pub fn upper_bound_seconds(slot: u32) -> f64 {
    (1u64 << (slot + 1).min(63)) as f64 / 1e6
}

/// The value at percentile `p` (0 < p <= 100) of a log2 histogram given as per-slot counts,
/// interpolated linearly inside the bucket that holds the rank.
///
/// The rank is `ceil(p/100 * total)` (nearest-rank, 1-based); within the bucket holding it, the
/// result is `low + (high_excl - low) * (rank - before) / count`, where `high_excl` is the
/// bucket's exclusive upper edge (`bucket_high + 1`). The result always lies inside the bucket
/// that holds the rank: in `[bucket_low, bucket_high + 1]`, i.e. `[low, 2*low]` for slots >= 1.
pub fn percentile(slots: &[u64], p: f64) -> Option<f64> {
    let total: u64 = slots.iter().sum();
    if total == 0 || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let rank = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
    let mut before = 0u64;
    for (slot, &count) in slots.iter().enumerate() {
        if count == 0 {
            continue;
        }
        if before + count >= rank {
            let low = bucket_low(slot as u32) as f64;
            let high_excl = bucket_high(slot as u32) as f64 + 1.0;
            let frac = (rank - before) as f64 / count as f64;
            return Some(low + (high_excl - low) * frac);
        }
        before += count;
    }
    None
}

/// Mean estimated from bucket midpoints, for inputs without an exact sum (the seed's schema).
pub fn estimated_mean(slots: &[u64]) -> Option<f64> {
    let total: u64 = slots.iter().sum();
    if total == 0 {
        return None;
    }
    let weighted: f64 = slots
        .iter()
        .enumerate()
        .map(|(slot, &c)| {
            let mid = (bucket_low(slot as u32) as f64 + bucket_high(slot as u32) as f64 + 1.0) / 2.0;
            mid * c as f64
        })
        .sum();
    Some(weighted / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_edges_match_the_seed_example() {
        assert_eq!((bucket_low(0), bucket_high(0)), (0, 1));
        assert_eq!((bucket_low(1), bucket_high(1)), (2, 3));
        assert_eq!((bucket_low(4), bucket_high(4)), (16, 31));
        assert_eq!((bucket_low(6), bucket_high(6)), (64, 127));
        assert_eq!(bucket_high(63), u64::MAX);
        for v in [0u64, 1, 2, 3, 4, 15, 16, 31, 32, 1023, 1024, (1 << 30) - 1] {
            let s = log2_slot(v) as u32;
            assert!(bucket_low(s) <= v && v <= bucket_high(s), "{v} not in slot {s}");
        }
    }

    #[test]
    fn second_bounds_are_exact_decimals() {
        assert_eq!(upper_bound_seconds(0), 2e-6);
        assert_eq!(upper_bound_seconds(3), 16e-6);
        assert_eq!(upper_bound_seconds(3).to_string(), "0.000016");
        assert_eq!(upper_bound_seconds(9), 1024e-6);
        assert_eq!(upper_bound_seconds(23), 16.777216);
    }

    #[test]
    fn percentile_falls_in_the_bucket_holding_the_rank() {
        // 10 in slot 4 [16,31], 90 in slot 6 [64,127]
        let mut slots = vec![0u64; 32];
        slots[4] = 10;
        slots[6] = 90;
        let p10 = percentile(&slots, 10.0).unwrap();
        assert!((16.0..=32.0).contains(&p10), "{p10}");
        let p11 = percentile(&slots, 11.0).unwrap();
        assert!((64.0..=128.0).contains(&p11), "{p11}");
        let p100 = percentile(&slots, 100.0).unwrap();
        assert_eq!(p100, 128.0);
        assert_eq!(percentile(&slots, 0.0), None);
        assert_eq!(percentile(&[0; 4], 50.0), None);
    }

    #[test]
    fn estimated_mean_uses_midpoints() {
        let mut slots = vec![0u64; 8];
        slots[4] = 2; // midpoint 24
        assert_eq!(estimated_mean(&slots), Some(24.0));
    }
}
