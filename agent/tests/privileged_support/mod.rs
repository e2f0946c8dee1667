//! Helpers for the privileged tests: prerequisites, loop devices, the agent as a child process.
//!
//! Like aya's integration tests, these need root, real tracepoints and real block devices. A
//! missing prerequisite fails the test unless skipping is explicitly allowed
//! ([`blkio_agent::prereq`]).

#![allow(dead_code)]

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use blkio_agent::snapshot::Snapshot;

/// Privileged tests attach programs and create loop devices: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub struct Privileged {
    _guard: MutexGuard<'static, ()>,
}

/// `None` when prerequisites are missing and skipping is allowed (see [`blkio_agent::prereq`]);
/// panics when they are missing otherwise.
pub fn privileged(test: &str) -> Option<Privileged> {
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for tool in ["losetup", "dd"] {
        if !Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            missing.push(tool.to_string());
        }
    }
    let missing: Vec<String> = missing.into_iter().map(|m| format!("needs {m}")).collect();
    blkio_agent::prereq::require_then(test, &missing, || Privileged { _guard: guard })
}

/// A test's prerequisite is missing (`msg` is `test: what it needs`): fails, or skips when
/// allowed (see [`blkio_agent::prereq`]).
pub fn missing_prerequisite<T>(msg: String) -> Option<T> {
    let (test, reason) = msg.split_once(": ").unwrap_or(("privileged test", &msg));
    assert!(!blkio_agent::prereq::require(test, &[reason.to_string()]));
    None
}

pub fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_blkio-agent")
}

/// A loop device over a sparse file; detached on drop.
pub struct LoopDev {
    pub dev: PathBuf,
    pub name: String,
    _file: tempfile::NamedTempFile,
}

impl LoopDev {
    pub fn new(size_mb: u64) -> LoopDev {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        file.as_file().set_len(size_mb << 20).expect("size backing file");
        let out = Command::new("losetup").args(["-f", "--show"]).arg(file.path()).output().expect("losetup");
        assert!(out.status.success(), "losetup failed: {}", String::from_utf8_lossy(&out.stderr));
        let dev = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        let name = dev.file_name().unwrap().to_string_lossy().into_owned();
        // Let udev finish its probe reads before anyone measures.
        let _ = Command::new("udevadm").arg("settle").status();
        std::thread::sleep(Duration::from_millis(200));
        LoopDev { dev, name, _file: file }
    }

    /// (reads completed, writes completed) from /proc/diskstats.
    pub fn diskstats(&self) -> (u64, u64) {
        let text = std::fs::read_to_string("/proc/diskstats").unwrap();
        let s = blkio_agent::devices::parse_diskstats(&text)
            .into_iter()
            .find(|d| d.name == self.name)
            .expect("device in diskstats");
        (s.reads_completed, s.writes_completed)
    }

    pub fn dd_write(&self, count: u32) {
        dd(&[
            "if=/dev/zero",
            &format!("of={}", self.dev.display()),
            "bs=4k",
            &format!("count={count}"),
            "oflag=direct",
        ]);
    }

    pub fn dd_read(&self, count: u32) {
        dd(&[
            &format!("if={}", self.dev.display()),
            "of=/dev/null",
            "bs=4k",
            &format!("count={count}"),
            "iflag=direct",
        ]);
    }
}

fn dd(args: &[&str]) {
    let st = Command::new("dd").args(args).stderr(Stdio::null()).status().expect("dd");
    assert!(st.success(), "dd {args:?} failed");
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// The agent running as a child, stderr captured to a file.
pub struct Agent {
    pub child: Child,
    pub stderr_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    pub fn start(args: &[&str]) -> Agent {
        Agent::start_with_env(args, &[])
    }

    /// Starts `blkio-agent run ARGS` with extra environment; `--metrics-addr off` and
    /// `--live log` unless ARGS say otherwise.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let stderr_path = dir.path().join("stderr.log");
        let mut cmd = Command::new(agent_bin());
        cmd.arg("run").args(args);
        if !args.contains(&"--metrics-addr") {
            cmd.args(["--metrics-addr", "off"]);
        }
        if !args.contains(&"--live") {
            cmd.args(["--live", "log"]);
        }
        let child = cmd
            .env("BLKIO_AGENT_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("spawn agent");
        let mut a = Agent { child, stderr_path, _dir: dir };
        a.wait_for_log("attached; collecting", Duration::from_secs(30));
        a
    }

    pub fn stderr(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(&self.stderr_path).and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.stderr().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("agent exited ({status}) before logging {needle:?}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("agent did not log {needle:?} within {timeout:?}:\n{}", self.stderr());
    }

    /// Number of `snapshot` log lines so far.
    pub fn snapshots_logged(&self) -> usize {
        self.stderr().matches(" snapshot ").count()
    }

    /// Waits until `n` more snapshots were taken.
    pub fn wait_snapshots(&mut self, n: usize) {
        let target = self.snapshots_logged() + n;
        let start = Instant::now();
        while self.snapshots_logged() < target {
            assert!(start.elapsed() < Duration::from_secs(30), "no snapshots:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain kill(2) on our child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, sig) }, 0);
    }

    /// Sends `sig` and waits for a clean exit; returns stderr.
    pub fn stop(mut self, sig: libc::c_int) -> String {
        self.signal(sig);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let err = self.stderr();
                assert!(status.success(), "agent exited with {status}:\n{err}");
                return err;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "agent did not exit:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every line of a JSONL file, parsed and checked against docs/snapshot.schema.json; panics on
/// NUL bytes, torn lines, bad JSON or a schema violation.
pub fn read_jsonl(path: &Path) -> Vec<Snapshot> {
    let schema: serde_json::Value = serde_json::from_str(include_str!("../../../docs/snapshot.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(!data.contains(&0), "{} contains NUL bytes", path.display());
    if !data.is_empty() {
        assert!(data.ends_with(b"\n"), "{} ends with a partial line", path.display());
    }
    String::from_utf8(data)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1));
            let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{}:{}: schema: {errors:?}", path.display(), i + 1);
            serde_json::from_value(v).unwrap()
        })
        .collect()
}

/// Sealed `*.jsonl` files of a segment directory, in sequence order.
pub fn sealed_segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    v.sort();
    v
}

/// Completed requests per op for one device, summed over snapshots.
pub fn op_counts(snaps: &[Snapshot], device: &str) -> std::collections::BTreeMap<String, u64> {
    let mut m = std::collections::BTreeMap::new();
    for s in snaps {
        for o in s.ops.iter().filter(|o| o.device_name == device) {
            *m.entry(o.op.clone()).or_insert(0) += o.count;
        }
    }
    m
}

/// Completions of one device that the kernel counted and the agent did not record
/// (`inflight[].unseen_completions`), summed over snapshots.
pub fn unseen(snaps: &[Snapshot], device: &str) -> u64 {
    snaps
        .iter()
        .flat_map(|s| &s.inflight)
        .filter(|i| i.device_name == device)
        .filter_map(|i| i.unseen_completions)
        .sum()
}

/// `agent + unseen == kernel`, with the unseen part bounded (at most 1 in 1000) and printed: this
/// VM's kernel sometimes completes a request without running the BPF programs (GUIDE), and the
/// agent must count those, not hide them.
pub fn assert_reconciled(what: &str, agent: u64, unseen: u64, kernel: u64) {
    eprintln!("{what}: agent {agent} + unseen {unseen} vs diskstats {kernel}");
    assert_eq!(agent + unseen, kernel, "{what}: agent {agent} + unseen_completions {unseen} == diskstats {kernel}");
    assert!(unseen * 1000 <= kernel.max(1), "{what}: {unseen} unseen of {kernel} is more than 1 in 1000");
}
