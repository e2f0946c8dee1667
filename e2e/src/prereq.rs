//! Prerequisites of tests that need the machine's help (root, Docker, loop devices, a cluster).
//!
//! Under `CI=true` a missing prerequisite is a failure: CI must never report such a test as
//! passed when it did not run. Elsewhere (a developer's laptop without Docker) the test prints
//! why it does not run and returns.

use std::process::{Command, Stdio};

/// `true` when the test can go on. With missing prerequisites: panics under `CI=true`, else
/// prints the reasons and returns `false` (the caller returns at once).
pub fn require(test: &str, missing: &[String]) -> bool {
    decide(test, missing, in_ci())
}

fn decide(test: &str, missing: &[String], ci: bool) -> bool {
    if missing.is_empty() {
        return true;
    }
    let reasons = missing.join("; ");
    if ci {
        panic!("{test}: CI=true but prerequisites are missing: {reasons}");
    }
    eprintln!("SKIPPED {test}: {reasons} (under CI=true this fails)");
    false
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

pub fn is_root() -> bool {
    // /proc/self/status "Uid:\treal\teffective\t..."; no libc binding needed.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// `program args...` runs and exits 0.
pub fn command_works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What the docker-level e2e needs, as reasons for each thing missing.
pub fn docker_e2e_missing() -> Vec<String> {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("not root (the agent loads BPF programs; losetup needs root)".into());
    }
    if !command_works("docker", &["--version"]) {
        missing.push("no docker CLI (apt-get install docker.io)".into());
    }
    if !command_works("dockerd", &["--version"]) && !command_works("docker", &["info"]) {
        missing.push("no Docker engine".into());
    }
    if !command_works("losetup", &["--version"]) {
        missing.push("no losetup (util-linux)".into());
    }
    if !std::path::Path::new("/dev/loop-control").exists() {
        missing.push("no /dev/loop-control (loop devices)".into());
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        missing.push("kernel has no BTF (/sys/kernel/btf/vmlinux)".into());
    }
    if !has_cgroup2_hierarchy() {
        missing.push(
            "no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified (per-pod attribution, on in the manifests)"
                .into(),
        );
    }
    missing
}

/// A cgroup2 filesystem is mounted where the agent's attribution looks for it (unified or hybrid
/// hosts).
pub fn has_cgroup2_hierarchy() -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[2] == "cgroup2" && (f[1] == "/sys/fs/cgroup" || f[1] == "/sys/fs/cgroup/unified")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_missing_runs() {
        assert!(decide("t", &[], true));
        assert!(decide("t", &[], false));
    }

    #[test]
    fn missing_outside_ci_skips() {
        assert!(!decide("t", &["no docker".into()], false));
    }

    #[test]
    #[should_panic(expected = "CI=true but prerequisites are missing: no docker; not root")]
    fn missing_in_ci_fails() {
        decide("t", &["no docker".into(), "not root".into()], true);
    }
}
