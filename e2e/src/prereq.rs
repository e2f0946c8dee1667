//! Prerequisites of tests that need the machine's help (root, Docker, loop devices, a cluster).
//!
//! The rule (fail by default, skip only with `BLKIO_AGENT_ALLOW_SKIP=1` outside CI, every skip
//! recorded) is the agent's one helper, [`blkio_agent::prereq`]; this module lists what the
//! packaging tests need.

use std::process::{Command, Stdio};

pub use blkio_agent::prereq::{is_root, require};

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
