//! Cleanup guards and system readers for the overhead benchmark.
//!
//! Every resource the benchmark creates is owned by a guard whose `Drop` undoes it (child
//! processes stopped, loop devices detached, sysctls restored, scratch files removed), so an
//! error, a panic or Ctrl-C (turned into an error by [`check_interrupted`]) leaves the machine
//! as it was.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM set a flag instead of killing xtask, so the guards still run.
pub fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

pub fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

/// `thread::sleep` that returns early with an error on SIGINT/SIGTERM.
pub fn sleep(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// A child process that is stopped (SIGINT, then SIGKILL after a grace period) when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, stdout: &Path, stderr: &Path) -> anyhow::Result<Proc> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(fs::File::create(stdout)?)
            .stderr(fs::File::create(stderr)?)
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        Ok(Proc { name: name.to_string(), child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the process to exit by itself; SIGINT/SIGTERM to xtask abort the wait (the
    /// guard then stops the process).
    pub fn wait(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            check_interrupted()?;
            if Instant::now() > end {
                bail!("{} did not finish within {limit:?}", self.name);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGINT, wait up to `grace`, then SIGKILL. Returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("xtask: {} ignored SIGINT for {grace:?}; killing it", self.name);
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// Scratch directory on tmpfs, removed with everything in it.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new() -> anyhow::Result<ScratchDir> {
        let dir = PathBuf::from(format!("/dev/shm/blkio-bench.{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("xtask: warning: cannot remove {}: {e}", self.0.display());
        }
    }
}

/// A file of `bytes` fully allocated (tmpfs pages exist before the benchmark writes).
pub fn allocated_file(path: &Path, bytes: u64) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    let f = fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    // SAFETY: fallocate(2) on a file we own.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, bytes as libc::off_t) };
    if rc != 0 {
        bail!("fallocate {}: {}", path.display(), std::io::Error::last_os_error());
    }
    Ok(())
}

/// A loop device, detached when dropped.
pub struct LoopDev {
    /// `/dev/loopN`
    pub dev: String,
    /// `loopN`
    pub name: String,
}

impl LoopDev {
    pub fn attach(file: &Path, direct_io: bool) -> anyhow::Result<LoopDev> {
        let mut cmd = Command::new("losetup");
        cmd.args(["-f", "--show"]);
        if direct_io {
            cmd.arg("--direct-io=on");
        }
        let out = cmd.arg(file).output().context("cannot run losetup")?;
        if !out.status.success() {
            bail!("losetup -f --show {}: {}", file.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        let dev = String::from_utf8(out.stdout)?.trim().to_string();
        let name = dev.trim_start_matches("/dev/").to_string();
        Ok(LoopDev { dev, name })
    }

    fn queue(&self, attr: &str) -> PathBuf {
        PathBuf::from(format!("/sys/block/{}/queue/{attr}", self.name))
    }

    pub fn set_scheduler(&self, sched: &str) -> anyhow::Result<()> {
        fs::write(self.queue("scheduler"), sched)
            .with_context(|| format!("cannot set scheduler {sched} on {}", self.dev))
    }

    /// The active scheduler, as `[x]` in the sysfs list.
    pub fn scheduler(&self) -> String {
        let s = fs::read_to_string(self.queue("scheduler")).unwrap_or_default();
        s.split_whitespace()
            .find(|w| w.starts_with('['))
            .map(|w| w.trim_matches(['[', ']']).to_string())
            .unwrap_or_else(|| s.trim().to_string())
    }

    /// Completed requests (reads + writes + discards + flushes) from `/sys/block/<dev>/stat`.
    pub fn completed_ios(&self) -> anyhow::Result<u64> {
        let s = fs::read_to_string(format!("/sys/block/{}/stat", self.name))?;
        let f: Vec<u64> = s.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
        // Documentation/block/stat.rst: 0 read I/Os, 4 write I/Os, 11 discard I/Os, 15 flush I/Os.
        Ok([0, 4, 11, 15].iter().map(|&i| f.get(i).copied().unwrap_or(0)).sum())
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        match Command::new("losetup").arg("-d").arg(&self.dev).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                eprintln!("xtask: warning: losetup -d {}: {}", self.dev, String::from_utf8_lossy(&o.stderr).trim())
            }
            Err(e) => eprintln!("xtask: warning: losetup -d {}: {e}", self.dev),
        }
    }
}

/// A sysctl set for the benchmark and restored to its original value when dropped.
pub struct Sysctl {
    path: PathBuf,
    pub original: String,
}

impl Sysctl {
    pub fn new(name: &str) -> anyhow::Result<Sysctl> {
        let path = PathBuf::from("/proc/sys").join(name.replace('.', "/"));
        let original = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Sysctl { path, original: original.trim().to_string() })
    }

    pub fn set(&self, value: &str) -> anyhow::Result<()> {
        fs::write(&self.path, value).with_context(|| format!("cannot write {value} to {}", self.path.display()))
    }

    pub fn restore(&self) -> anyhow::Result<()> {
        self.set(&self.original)
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            eprintln!("xtask: warning: cannot restore {}: {e:#}", self.path.display());
        }
    }
}

/// CPU time of a process: `(utime + stime in ns from /proc/<pid>/stat, at tick resolution;
/// sum of on-CPU ns of its live threads from /proc/<pid>/task/*/schedstat)`.
pub fn cpu_time(pid: u32) -> anyhow::Result<(u64, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15 (proc(5)).
    let rest = &stat[stat.rfind(')').context("malformed /proc/<pid>/stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut sched_ns = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let s = fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
        sched_ns += s.split_whitespace().next().and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    }
    Ok((ticks * 1_000_000_000 / hz, sched_ns))
}

/// `(VmRSS, VmHWM)` in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// Number of possible CPUs (what per-CPU map memory is multiplied by).
pub fn possible_cpus() -> anyhow::Result<u64> {
    cpu_count("/sys/devices/system/cpu/possible")
}

/// CPUs in a sysfs CPU list such as `0-3,8`.
pub fn cpu_count(path: &str) -> anyhow::Result<u64> {
    let s = fs::read_to_string(path)?;
    let mut n = 0;
    for range in s.trim().split(',') {
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        n += b.trim().parse::<u64>()? - a.trim().parse::<u64>()? + 1;
    }
    Ok(n)
}

/// Hypervisor steal and all time of every CPU, in ticks, from the `cpu` line of `stat` (a
/// `/proc/stat` text): `user nice system idle iowait irq softirq steal ...`. Guest time is
/// already inside user and nice, so it is not added again.
pub fn steal_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.split_whitespace().next() == Some("cpu"))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    (v.len() == 8).then(|| (v[7], v.iter().sum()))
}

/// Share (%) of all CPUs' time the hypervisor gave to other work between two `steal_ticks`.
pub fn steal_percent(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((s0, t0), (s1, t1)) = (before?, after?);
    (t1 > t0).then(|| s1.saturating_sub(s0) as f64 / (t1 - t0) as f64 * 100.0)
}

/// [`steal_ticks`] of this machine now.
pub fn steal_now() -> Option<(u64, u64)> {
    steal_ticks(&fs::read_to_string("/proc/stat").ok()?)
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    read_trim("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

pub fn read_trim(path: &str) -> String {
    fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

pub fn cpu_model() -> String {
    let info = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

pub fn command_output(cmd: &mut Command) -> String {
    cmd.output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_field_of_the_cpu_line() {
        let before = "cpu  100 5 50 800 10 0 5 30 0 0\ncpu0 50 2 25 400 5 0 2 15 0 0\nintr 1\n";
        let after = "cpu  160 5 70 860 10 0 5 90 7 0\ncpu0 80 2 35 430 5 0 2 45 0 0\n";
        assert_eq!(steal_ticks(before), Some((30, 1000)));
        assert_eq!(steal_ticks(after), Some((90, 1200)));
        // 60 of the 200 ticks that passed were stolen.
        assert_eq!(steal_percent(steal_ticks(before), steal_ticks(after)), Some(30.0));
    }

    #[test]
    fn a_short_or_missing_cpu_line_gives_nothing() {
        assert_eq!(steal_ticks("cpu  1 2 3 4\n"), None);
        assert_eq!(steal_ticks("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(steal_percent(Some((1, 10)), Some((1, 10))), None, "no time passed");
        assert_eq!(steal_percent(None, Some((1, 10))), None);
    }
}
