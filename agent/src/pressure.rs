//! I/O stall pressure (PSI): the node's `/proc/pressure/io` and each attributed pod's cgroup v2
//! `io.pressure`. A histogram says how long requests took; PSI says whether the pod's tasks were
//! actually stalled waiting for them (`some`: at least one task, `full`: all non-idle tasks at
//! once), which is the question "is this pod slowed down by I/O".
//!
//! Format (<https://docs.kernel.org/accounting/psi.html>):
//!
//! ```text
//! some avg10=0.00 avg60=1.33 avg300=3.21 total=20514677
//! full avg10=0.00 avg60=0.62 avg300=1.56 total=10673342
//! ```
//!
//! `avgN` are the kernel's running percentages; `total` is cumulative stall time in µs since
//! the cgroup was created (boot for the node). Each interval reports `delta_us`, the stall time
//! during that interval, when a previous reading exists. Where PSI is unavailable (kernel without
//! `CONFIG_PSI`, booted with `psi=0`, cgroup v1 only, `cgroup.pressure` set to 0) the file is
//! missing or unreadable and the snapshot carries no `io_pressure` at all: absent, never zero.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// One `some` or `full` line.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stall {
    /// Percentage of the last 10 s with a stall (the kernel's running average).
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    /// Cumulative stall time, µs, as the kernel reports it (since the cgroup was created).
    pub total_us: u64,
    /// Stall time during this snapshot's interval, µs; absent when there is no earlier reading
    /// (the first snapshot of a cgroup that existed before the agent started watching it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_us: Option<u64>,
}

/// `io.pressure` of a cgroup, or `/proc/pressure/io`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pressure {
    pub some: Stall,
    pub full: Stall,
}

/// Parses a pressure file; `None` unless both lines are well formed.
pub fn parse(text: &str) -> Option<Pressure> {
    let mut some = None;
    let mut full = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let slot = match words.next() {
            Some("some") => &mut some,
            Some("full") => &mut full,
            _ => continue,
        };
        let (mut avg10, mut avg60, mut avg300, mut total) = (None, None, None, None);
        for w in words {
            let (k, v) = w.split_once('=')?;
            match k {
                "avg10" => avg10 = v.parse().ok(),
                "avg60" => avg60 = v.parse().ok(),
                "avg300" => avg300 = v.parse().ok(),
                "total" => total = v.parse().ok(),
                _ => {}
            }
        }
        *slot = Some(Stall { avg10: avg10?, avg60: avg60?, avg300: avg300?, total_us: total?, delta_us: None });
    }
    Some(Pressure { some: some?, full: full? })
}

/// Reads `path` now; `None` when PSI is unavailable there.
pub fn read(path: &Path) -> Option<Pressure> {
    parse(&std::fs::read_to_string(path).ok()?)
}

/// Adds `delta_us` from the previous totals; a total that went backwards (the cgroup was
/// recreated under the same path) has no delta.
fn with_delta(mut p: Pressure, prev: Option<(u64, u64)>) -> Pressure {
    if let Some((some, full)) = prev {
        p.some.delta_us = p.some.total_us.checked_sub(some);
        p.full.delta_us = p.full.total_us.checked_sub(full);
    }
    p
}

/// The node's `/proc/pressure/io` (under `proc_root`, `/host` in a pod), with per-interval deltas.
pub struct NodePressure {
    path: PathBuf,
    prev: Option<(u64, u64)>,
}

impl NodePressure {
    /// Takes the baseline reading now, so the first interval has a delta too.
    pub fn new(proc_root: &Path) -> Self {
        let mut me = NodePressure { path: proc_root.join("proc/pressure/io"), prev: None };
        me.sample();
        me
    }

    /// The reading for the interval that ends now.
    pub fn sample(&mut self) -> Option<Pressure> {
        let Some(p) = read(&self.path) else {
            self.prev = None;
            return None;
        };
        let out = with_delta(p, self.prev);
        self.prev = Some((p.some.total_us, p.full.total_us));
        Some(out)
    }
}

/// Pod cgroups' `io.pressure` under one cgroup v2 mount, with per-interval deltas. Sampled every
/// interval for every pod cgroup the index knows (a pod's baseline must exist before its first
/// I/O, or the first interval that matters would have no delta).
pub struct PodPressure {
    root: PathBuf,
    prev: HashMap<String, (u64, u64)>,
}

impl PodPressure {
    pub fn new(root: PathBuf) -> Self {
        PodPressure { root, prev: HashMap::new() }
    }

    /// `dirs`: pod cgroup paths relative to the root, each with whether it was seen being created
    /// (its totals started at zero since, so the first reading has a delta from zero). Returns the
    /// readings by path; pods without PSI are missing from the map.
    pub fn sample(&mut self, dirs: &[(String, bool)]) -> HashMap<String, Pressure> {
        let mut out = HashMap::with_capacity(dirs.len());
        let mut next = HashMap::with_capacity(dirs.len());
        for (dir, created) in dirs {
            let Some(p) = read(&self.root.join(dir.trim_start_matches('/')).join("io.pressure")) else { continue };
            let prev = self.prev.get(dir).copied().or(created.then_some((0, 0)));
            next.insert(dir.clone(), (p.some.total_us, p.full.total_us));
            out.insert(dir.clone(), with_delta(p, prev));
        }
        // Pods gone since the last interval drop out here: the map holds only existing pods.
        self.prev = next;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PSI: &str =
        "some avg10=1.50 avg60=0.25 avg300=0.05 total=1000\nfull avg10=0.50 avg60=0.10 avg300=0.01 total=400\n";

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn parses_both_lines_and_rejects_malformed_files() {
        let p = parse(PSI).unwrap();
        assert_eq!((p.some.avg10, p.some.avg60, p.some.avg300, p.some.total_us), (1.5, 0.25, 0.05, 1000));
        assert_eq!((p.full.avg10, p.full.total_us, p.full.delta_us), (0.5, 400, None));
        assert_eq!(parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n"), None, "full line missing");
        assert_eq!(parse("some avg10=x avg60=0 avg300=0 total=1\nfull avg10=0 avg60=0 avg300=0 total=1"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn node_pressure_reports_deltas_from_a_fixture_proc_and_is_absent_without_psi() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "proc/pressure/io", PSI);
        let mut node = NodePressure::new(dir.path());
        write(dir.path(), "proc/pressure/io", &PSI.replace("total=1000", "total=1750"));
        let p = node.sample().unwrap();
        assert_eq!((p.some.total_us, p.some.delta_us, p.full.delta_us), (1750, Some(750), Some(0)));
        // psi=0: /proc/pressure does not exist; absent, not zero.
        std::fs::remove_file(dir.path().join("proc/pressure/io")).unwrap();
        assert_eq!(node.sample(), None);
        let mut none = NodePressure::new(Path::new("/nonexistent-proc"));
        assert_eq!(none.sample(), None);
    }

    #[test]
    fn pod_pressure_baselines_new_pods_at_zero_and_old_pods_at_first_sight() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = ("/kubepods/burstable/podA".to_string(), "/kubepods/burstable/podB".to_string());
        write(dir.path(), "kubepods/burstable/podA/io.pressure", PSI);
        write(dir.path(), "kubepods/burstable/podB/io.pressure", PSI);
        let mut t = PodPressure::new(dir.path().to_path_buf());
        let first = t.sample(&[(old.clone(), false), (new.clone(), true)]);
        assert_eq!(first[&old].some.delta_us, None, "existed before: no baseline yet");
        assert_eq!(first[&new].some.delta_us, Some(1000), "created while watched: stalled 1000 µs since");
        write(dir.path(), "kubepods/burstable/podA/io.pressure", &PSI.replace("total=1000", "total=1600"));
        let second = t.sample(&[(old.clone(), false), (new.clone(), true)]);
        assert_eq!((second[&old].some.delta_us, second[&old].full.delta_us), (Some(600), Some(0)));
        assert_eq!(second[&new].some.delta_us, Some(0));
        // A pod cgroup without io.pressure (PSI off for it): missing from the map.
        std::fs::create_dir_all(dir.path().join("kubepods/burstable/podC")).unwrap();
        let third = t.sample(&[("/kubepods/burstable/podC".into(), true)]);
        assert!(third.is_empty());
    }
}
