//! The command line as a user meets it: flags and `BLKIO_AGENT_*` variables, one-line errors.
//! None of these attach anything, so they need no privileges.

#![cfg(feature = "ebpf")] // the node agent; absent from the analyzer-only build

use std::process::Command;

fn agent(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_blkio-agent")).args(args).envs(env.iter().copied()).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn env_variables_are_validated_like_flags() {
    let (code, err) = agent(&["run"], &[("BLKIO_AGENT_INTERVAL", "-1")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("positive number of seconds"), "{err}");
    let (code, err) = agent(&["run"], &[("BLKIO_AGENT_FLUSH_EVERY", "0")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--flush-every"), "{err}");
}

#[test]
fn bad_device_pattern_is_one_clear_line() {
    let (code, err) = agent(&["run", "--devices", "nvme[", "--no-output", "--metrics-addr", "off"], &[]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("invalid --devices pattern `nvme[`"), "{err}");
}

#[test]
fn unwritable_output_fails_before_attaching() {
    let (code, err) = agent(&["run", "--output", "/nonexistent-dir/out.jsonl", "--metrics-addr", "off"], &[]);
    assert_eq!(code, 1, "{err}");
    let last = err.trim().lines().last().unwrap();
    assert!(last.starts_with("blkio-agent: error: cannot write /nonexistent-dir/out.jsonl"), "{err}");
    assert!(!err.contains("attached"), "{err}");
}

#[test]
fn missing_proc_root_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = agent(
        &["run", "--proc-root", dir.path().to_str().unwrap(), "--no-output"],
        &[("BLKIO_AGENT_METRICS_ADDR", "off")],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("proc/diskstats"), "{err}");
}
