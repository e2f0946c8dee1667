//! The one rule for the project's tests that need the machine's help (root, loop devices, real
//! tracepoints, cgroup v2, Docker): a missing prerequisite **fails** the test, with the reasons.
//! Skipping takes an explicit `BLKIO_AGENT_ALLOW_SKIP=1` (a laptop without Docker), never
//! happens under `CI=true`, and is recorded: the `SKIPPED` line goes to stderr past libtest's
//! capture and, when `BLKIO_AGENT_SKIP_LOG` names a file, into that file, so `cargo xtask test`
//! can count the skips instead of reporting them as a green run.
//!
//! It lives in the library (not under `tests/`) so that the agent's and the e2e crate's tests
//! share one implementation.

use std::io::Write as _;

/// Set to `1` (or `true`) to let a test with missing prerequisites skip instead of failing.
pub const ALLOW_SKIP_ENV: &str = "BLKIO_AGENT_ALLOW_SKIP";
/// A file each skip is appended to (one `SKIPPED test: reasons` line); set by `cargo xtask test`.
pub const SKIP_LOG_ENV: &str = "BLKIO_AGENT_SKIP_LOG";

/// What the environment allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// A missing prerequisite panics (the default, and always under `CI=true`).
    Strict,
    /// A missing prerequisite skips the test (`BLKIO_AGENT_ALLOW_SKIP=1` outside CI).
    AllowSkip,
}

impl Policy {
    pub fn from_env() -> Policy {
        let on = |name: &str| std::env::var(name).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        if on(ALLOW_SKIP_ENV) && !on("CI") { Policy::AllowSkip } else { Policy::Strict }
    }
}

/// `true` when the test can go on. With missing prerequisites: panics naming them, or, when
/// skipping is allowed, records the skip and returns `false` (the caller returns at once).
pub fn require(test: &str, missing: &[String]) -> bool {
    decide(test, missing, Policy::from_env())
}

/// [`require`] for tests that hold a value when they can run.
pub fn require_then<T>(test: &str, missing: &[String], value: impl FnOnce() -> T) -> Option<T> {
    require(test, missing).then(value)
}

pub fn decide(test: &str, missing: &[String], policy: Policy) -> bool {
    if missing.is_empty() {
        return true;
    }
    let reasons = missing.join("; ");
    if policy == Policy::Strict {
        panic!(
            "{test}: missing prerequisites: {reasons} (to skip such tests locally set {ALLOW_SKIP_ENV}=1; never under CI=true)"
        );
    }
    let line = format!("SKIPPED {test}: {reasons}\n");
    // Straight to the stream: libtest captures `eprintln!` of passing tests.
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = appended {
            panic!("{test}: cannot record the skip in {}: {e}", std::path::Path::new(&path).display());
        }
    }
    false
}

/// The effective user is root (`/proc/self/status`, no libc binding needed).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_missing_runs_under_any_policy() {
        assert!(decide("t", &[], Policy::Strict));
        assert!(decide("t", &[], Policy::AllowSkip));
    }

    #[test]
    #[should_panic(expected = "t: missing prerequisites: no docker; not root (to skip such tests locally set")]
    fn missing_fails_by_default() {
        decide("t", &["no docker".into(), "not root".into()], Policy::Strict);
    }

    #[test]
    fn missing_skips_only_when_allowed_and_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips");
        // SAFETY: this test binary's other tests do not read this variable.
        unsafe { std::env::set_var(SKIP_LOG_ENV, &log) };
        assert!(!decide("t", &["no docker".into()], Policy::AllowSkip));
        unsafe { std::env::remove_var(SKIP_LOG_ENV) };
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "SKIPPED t: no docker\n");
    }
}
