//! Starting the agent in one attach mode on one device, and stopping it the way a kubelet does
//! (SIGTERM, then wait).

use std::{
    fs,
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

/// The line `blkio-agent run` logs once every program is attached (agent/src/run.rs).
const ATTACHED: &str = "attached; collecting";

pub struct Agent {
    child: Child,
    pub stderr_path: String,
    pub output: String,
}

impl Agent {
    /// Starts `blkio-agent run` and waits for it to log that it attached. An agent that exits
    /// first (a loader error) is an `Err` carrying its last stderr line.
    pub fn start(mode: &str, dev: &str, tag: &str, extra: &[String], timeout: Duration) -> Result<Agent, String> {
        let output = format!("/tmp/{tag}.jsonl");
        let stderr_path = format!("/tmp/{tag}.stderr");
        let _ = fs::remove_file(&output);
        let stderr = fs::File::create(&stderr_path).map_err(|e| format!("{stderr_path}: {e}"))?;
        let child = Command::new("/bin/blkio-agent")
            .args(["run", "--attach", mode, "--interval", "0.5", "--live", "log", "--metrics-addr", "off"])
            .arg("--output")
            .arg(&output)
            .arg("--devices")
            .arg(dev)
            .args(extra)
            .env("BLKIO_AGENT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start /bin/blkio-agent: {e}"))?;
        let mut agent = Agent { child, stderr_path, output };
        let deadline = Instant::now() + timeout;
        loop {
            if fs::read_to_string(&agent.stderr_path).is_ok_and(|s| s.contains(ATTACHED)) {
                return Ok(agent);
            }
            if let Ok(Some(status)) = agent.child.try_wait() {
                return Err(format!("agent exited ({status}) before attaching: {}", agent.error_line()));
            }
            if Instant::now() > deadline {
                agent.kill();
                return Err(format!("agent did not log {ATTACHED:?} within {timeout:?}: {}", agent.error_line()));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait up to `timeout` for the exit status.
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!("agent did not exit within {timeout:?} of SIGTERM"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls the JSONL until a snapshot's `agent.path.fast` is no longer `verifying` and returns
    /// it (`none` without `agent.path`, `timeout` if it stays undecided). The file is mmap-backed
    /// and grown ahead of its data, so only complete lines before the first NUL are read.
    pub fn wait_path_decided(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let bytes = fs::read(&self.output).unwrap_or_default();
            let data = &bytes[..bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len())];
            let text = String::from_utf8_lossy(data);
            let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            if let Some(last) = complete.lines().last() {
                let v: serde_json::Value = serde_json::from_str(last).unwrap_or_default();
                match v.pointer("/agent/path/fast").and_then(|f| f.as_str()) {
                    Some("verifying") => {}
                    Some(f) => return f.to_string(),
                    None => return "none".into(),
                }
            }
            if Instant::now() > deadline {
                return "timeout".into();
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        fs::read_to_string(&self.stderr_path).unwrap_or_default().lines().map(str::to_string).collect()
    }

    /// The agent's error in one line: its `blkio-agent: error:` line and, when a verifier log
    /// follows, the log's last message (where the verifier says why it rejected the program).
    pub fn error_line(&self) -> String {
        summarize(&self.stderr_lines())
    }
}

fn summarize(lines: &[String]) -> String {
    const PREFIX: &str = "blkio-agent: error: ";
    let Some(at) = lines.iter().position(|l| l.starts_with(PREFIX)) else {
        return lines.iter().rev().find(|l| !l.trim().is_empty()).cloned().unwrap_or_else(|| "(no stderr)".into());
    };
    let mut out = lines[at][PREFIX.len()..].to_string();
    let last = lines[at + 1..].iter().map(|l| l.trim()).rev().find(|l| {
        !l.is_empty()
            && !["processed ", "verification time", "stack depth", "mark_precise", "last_idx", "regs="]
                .iter()
                .any(|p| l.starts_with(p))
    });
    if let Some(last) = last
        && !out.contains(last)
    {
        out = format!("{out} … {last}");
    }
    if out.len() > 600 {
        let mut cut = 600;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::summarize;

    #[test]
    fn loader_error_with_verifier_log() {
        let lines: Vec<String> = [
            "INFO blkio_agent::loader: BTF layout resolved",
            "blkio-agent: error: cannot load rq_complete_btf: Permission denied (os error 13). Verifier output: 0: (79) r2",
            "12: (71) r1 = *(u8 *)(r0 +0)",
            "R0 unbounded memory access, make sure to bounds check any such access",
            "processed 12 insns (limit 1000000) max_states_per_insn 0",
            "",
        ]
        .map(String::from)
        .to_vec();
        let s = summarize(&lines);
        assert!(s.starts_with("cannot load rq_complete_btf"), "{s}");
        assert!(s.ends_with("R0 unbounded memory access, make sure to bounds check any such access"), "{s}");
        assert_eq!(summarize(&["x".into(), "last words".into()]), "last words");
    }
}
