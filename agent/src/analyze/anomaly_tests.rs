use super::*;

const CFG: Config = Config { factor: 4.0, min_requests: 20, min_duration_s: 1.0 };

fn pt(i: usize, p99: f64) -> Point {
    Point { ts: 1000.0 + i as f64, dur: 1.0, requests: 100, p99, size: 4096.0, depth: 1.0 }
}

fn series(p99s: &[f64]) -> Vec<Point> {
    p99s.iter().enumerate().map(|(i, &p99)| pt(i, p99)).collect()
}

fn bounds(r: &[Range]) -> Vec<(usize, usize)> {
    r.iter().map(|r| (r.first, r.last)).collect()
}

/// xorshift: reproducible noise.
fn noise(state: &mut u64) -> f64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state % 10_000) as f64 / 10_000.0
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
fn steady_noisy_load_at_short_intervals_has_no_anomalies() {
    // 32 s at 0.2 s: p99 jumps between log2 buckets, with single-interval spikes up to 8x.
    let mut s = 0x1234_5678u64;
    let pts: Vec<Point> = (0..160)
        .map(|i| {
            let n = noise(&mut s);
            let p99 = if n > 0.97 { 1600.0 } else { 200.0 * (1.0 + 2.0 * noise(&mut s)) };
            Point {
                ts: 1000.0 + i as f64 * 0.2,
                dur: 0.2,
                requests: 20 + (n * 30.0) as u64,
                p99,
                size: 4096.0,
                depth: 0.3,
            }
        })
        .collect();
    assert!(pts.iter().filter(|p| p.p99 >= 4.0 * 300.0).count() >= 2, "the input has spikes");
    assert_eq!(detect(&pts, CFG), vec![]);
}

#[test]
fn an_injected_slow_stretch_is_one_range_with_its_true_bounds() {
    // Noise around 300 µs; 40..=54 (3 s at 0.2 s) are 20x slower and wobble around 4x..30x.
    let mut s = 42u64;
    let pts: Vec<Point> = (0..150)
        .map(|i| {
            let base = 300.0 * (1.0 + noise(&mut s));
            let p99 = if (40..=54).contains(&i) { base * (8.0 + 20.0 * noise(&mut s)) } else { base };
            Point { ts: 1000.0 + i as f64 * 0.2, dur: 0.2, requests: 500, p99, size: 4096.0, depth: 4.0 }
        })
        .collect();
    assert_eq!(bounds(&detect(&pts, CFG)), vec![(40, 54)]);
}

#[test]
fn hysteresis_keeps_a_wobbling_stall_in_one_range() {
    let mut v = vec![100.0; 100];
    for (j, x) in v[30..50].iter_mut().enumerate() {
        *x = if j % 3 == 1 { 250.0 } else { 900.0 }; // dips to 2.5x: below entry, above exit (2x)
    }
    assert_eq!(bounds(&detect(&series(&v), CFG)), vec![(30, 49)]);
}

#[test]
fn short_and_sparse_excursions_are_not_anomalies() {
    let mut v = vec![200.0; 100];
    v[50] = 5000.0; // one interval: shorter than the minimum duration at 0.5 s intervals
    let mut pts: Vec<Point> = series(&v).into_iter().map(|p| Point { dur: 0.5, ..p }).collect();
    pts[60].p99 = 50_000.0;
    pts[60].requests = 3; // too few requests to judge
    assert!(detect(&pts, CFG).is_empty());
    // 4x but only 12 µs above a 4 µs baseline: below the absolute floor.
    assert!(detect(&series(&[4.0, 4.0, 4.0, 16.0, 4.0]), CFG).is_empty());
}

#[test]
fn a_spike_at_the_start_is_judged_against_the_look_ahead_median() {
    let mut v = vec![100.0; 50];
    v[0] = 3000.0;
    v[1] = 3000.0;
    let r = detect(&series(&v), CFG);
    assert_eq!(r, vec![Range { first: 0, last: 1, baseline_p99_us: 100.0 }]);
}

#[test]
fn a_load_step_is_not_a_fault_but_a_stall_after_it_is() {
    // QD1 at 5k IOPS and 100 µs, then QD32 at 40k IOPS and 3 ms: the step is queueing.
    let mut pts = Vec::new();
    for i in 0..60 {
        pts.push(Point { requests: 5000, depth: 1.0, ..pt(i, 100.0) });
    }
    for i in 60..160 {
        pts.push(Point { requests: 40_000, depth: 32.0, ..pt(i, 3200.0) });
    }
    // A saturated device at the same IOPS but 32x the depth: load too.
    for i in 160..220 {
        pts.push(Point { requests: 40_000, depth: 1024.0, ..pt(i, 100_000.0) });
    }
    // 1 MiB writes: fewer, larger, slower requests.
    for i in 220..280 {
        pts.push(Point { requests: 4000, size: 1048576.0, depth: 8.0, ..pt(i, 2_000_000.0) });
    }
    assert_eq!(detect(&pts, CFG), vec![]);
    // The device stalls at the QD32 load: same depth, IOPS collapses, p99 10x.
    for p in &mut pts[100..110] {
        p.requests = 4000;
        p.p99 = 32_000.0;
    }
    assert_eq!(bounds(&detect(&pts, CFG)), vec![(100, 109)]);
}

#[test]
fn a_long_stall_does_not_become_the_baseline() {
    let mut v = vec![100.0; 400];
    for x in &mut v[100..350] {
        *x = 2000.0; // longer than the window
    }
    assert_eq!(bounds(&detect(&series(&v), CFG)), vec![(100, 349)]);
}

#[test]
fn missing_snapshots_and_normal_intervals_split_ranges() {
    let mut v = vec![100.0; 60];
    for i in [20, 21, 22, 24, 25, 40, 41, 42] {
        v[i] = 9000.0; // 23 is normal
    }
    let mut pts = series(&v);
    for p in &mut pts[42..] {
        p.ts += 30.0; // 42 comes 30 s after 41
    }
    pts[43].p99 = 9000.0;
    assert_eq!(bounds(&detect(&pts, CFG)), vec![(20, 22), (24, 25), (40, 41), (42, 43)]);
}

#[test]
fn the_baseline_follows_slow_drift() {
    let v: Vec<f64> = (0..1000).map(|i| 100.0 * 2f64.powf(i as f64 / 500.0)).collect();
    assert!(detect(&series(&v), CFG).is_empty());
}

/// The incremental window gives exactly the medians of collecting and sorting the same last
/// [`WINDOW`] intervals, through pushes past the window, NaN measures, ties and clears.
#[test]
fn the_rolling_window_medians_equal_sorting_the_window() {
    let mut state = 7u64;
    let mut w = Window::default();
    let mut reference: VecDeque<Base> = VecDeque::new();
    for i in 0..2000 {
        let x = noise(&mut state);
        let b = Base {
            p99: (x * 8.0).round(), // many ties
            iops: if i % 7 == 0 { f64::NAN } else { x * 1000.0 },
            size: if i % 3 == 0 { -0.0 } else { 4096.0 * x },
            depth: if i < 50 { f64::NAN } else { x },
        };
        if i == 900 {
            w.clear();
            reference.clear();
        }
        w.push(b);
        reference.push_back(b);
        if reference.len() > WINDOW {
            reference.pop_front();
        }
        let (got, want) = (w.medians(), medians(reference.iter().copied()));
        assert_eq!(w.len(), reference.len());
        for (g, e) in got.fields().into_iter().zip(want.fields()) {
            assert!(g.to_bits() == e.to_bits() || (g.is_nan() && e.is_nan()), "interval {i}: {g} vs {e}");
        }
    }
}
