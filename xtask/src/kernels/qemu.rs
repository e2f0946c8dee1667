//! Booting one kernel under `qemu-system-x86_64 -accel tcg` (KVM here is a paravirtual stub that
//! dies in early boot) with the matrix's devices, and reading the guest's verdicts from the serial
//! console with a deadline.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use blkio_guest::{
    plan::EXT4_SERIAL,
    protocol::{CellResult, Event},
};

/// Agent stderr lines of one cell echoed to the terminal (without --verbose).
const AGENT_LINES_SHOWN: usize = 25;

pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    /// Disk images and the console log go here.
    pub work: &'a Path,
    pub devices: &'a [String],
    pub scenarios: &'a [String],
    pub timeout: Duration,
    /// Echo every console line.
    pub verbose: bool,
    /// Prefix for echoed lines.
    pub label: &'a str,
}

pub struct Outcome {
    pub release: Option<String>,
    pub btf: Option<bool>,
    /// The guest's BTF facts (`name=yes|no ...`).
    pub facts: Option<String>,
    pub results: Vec<CellResult>,
    /// Set when the guest did not reach its last cell: why (timeout, panic, qemu error).
    pub aborted: Option<String>,
    pub console: PathBuf,
    pub elapsed: Duration,
}

/// 64 MiB sparse raw image, named per process: two runs of the matrix in one worktree (two
/// developers, or a developer and CI) must not share an image (qemu locks it).
fn disk(work: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let p = work.join(format!("{name}.{}", std::process::id()));
    let f = fs::File::create(&p)?;
    f.set_len(64 << 20)?;
    Ok(p)
}

/// A 64 MiB ext4 file system for the `ext4-fsync` scenario, made with the host's mkfs.ext4
/// (busybox has no mkfs.ext4): a journal (its commits are the PREFLUSH/FUA writes), no lazy
/// initialization (no background writes during the scenario), and no metadata_csum (the
/// guests' ext4 would need the crc32c crypto module, which nothing loads without modprobe).
fn ext4_image(work: &Path) -> anyhow::Result<PathBuf> {
    let p = disk(work, "ext4.img")?;
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-O", "^metadata_csum,^metadata_csum_seed,^orphan_file"])
        .args(["-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard"])
        .arg(&p)
        .output()
        .context("cannot run mkfs.ext4 (fix: apt-get install e2fsprogs)")?;
    if !out.status.success() {
        anyhow::bail!("mkfs.ext4 {}: {}", p.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(p)
}

pub fn boot(b: &Boot) -> anyhow::Result<Outcome> {
    fs::create_dir_all(b.work)?;
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-smp", "2", "-m", "1024", "-nodefaults", "-no-user-config", "-display", "none"]);
    cmd.args(["-serial", "stdio", "-no-reboot", "-kernel"]).arg(b.vmlinuz).arg("-initrd").arg(b.initramfs);
    // panic=-1: reboot at once on a panic, which -no-reboot turns into qemu exiting.
    cmd.args(["-append", "console=ttyS0 loglevel=4 panic=-1 oops=panic"]);
    if b.devices.iter().any(|d| d == "virtio") {
        let img = disk(b.work, "virtio.img")?;
        cmd.arg("-drive").arg(format!("file={},if=none,id=vd0,format=raw", img.display()));
        cmd.args(["-device", "virtio-blk-pci,drive=vd0"]);
    }
    if b.devices.iter().any(|d| d == "nvme") || b.scenarios.iter().any(|s| s.starts_with("nvme-")) {
        let img = disk(b.work, "nvme.img")?;
        // Throttled (qemu's I/O limits delay completions), so that concurrent requests pile up
        // in the device as on a busy disk: the nvme-qd32 and nvme-fio scenarios' depth reaches
        // their 32 threads or fio's iodepth.
        cmd.arg("-drive").arg(format!("file={},if=none,id=nv0,format=raw,throttling.iops-total=1000", img.display()));
        // Several I/O queue pairs: the guest uses one per CPU.
        cmd.args(["-device", "nvme,serial=blkio0001,drive=nv0,max_ioqpairs=4"]);
    }
    if b.scenarios.iter().any(|s| s == "ext4-fsync") {
        let img = ext4_image(b.work)?;
        cmd.arg("-drive").arg(format!("file={},if=none,id=vd1,format=raw", img.display()));
        cmd.arg("-device").arg(format!("virtio-blk-pci,drive=vd1,serial={EXT4_SERIAL}"));
    }
    // Written under a per-process name, renamed to console.log when the boot ends.
    let console_path = b.work.join("console.log");
    let console_tmp = b.work.join(format!("console.log.{}", std::process::id()));
    let mut console = fs::File::create(&console_tmp)?;
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-x86_64 (fix: cargo xtask setup, or apt-get install qemu-system-x86)")?;
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("piped");
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            if tx.send(String::from_utf8_lossy(&line).into_owned()).is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().expect("piped");
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let deadline = start + b.timeout;
    let mut out = Outcome {
        release: None,
        btf: None,
        facts: None,
        results: Vec::new(),
        aborted: None,
        console: console_path,
        elapsed: Duration::ZERO,
    };
    let mut done = false;
    let mut agent_lines = std::collections::BTreeMap::new();
    let mut tail: Vec<String> = Vec::new();
    loop {
        let now = Instant::now();
        if now >= deadline {
            out.aborted = Some(format!("timeout: the guest did not finish within {:?}", b.timeout));
            break;
        }
        match rx.recv_timeout(deadline - now) {
            Ok(line) => {
                let _ = writeln!(console, "{line}");
                if b.verbose {
                    eprintln!("[{}] {}", b.label, line.trim_end());
                }
                if !line.trim().is_empty() && !line.contains("BLKIO-AGENT") {
                    tail.push(line.trim_end().to_string());
                    if tail.len() > 6 {
                        tail.remove(0);
                    }
                }
                match Event::parse(&line) {
                    Some(Event::Kernel { release, btf, facts }) => {
                        (out.release, out.btf, out.facts) = (Some(release), Some(btf), Some(facts))
                    }
                    Some(Event::Result(r)) => {
                        if !b.verbose {
                            eprintln!("[{}] {} {} {}", b.label, r.mode, r.device, if r.pass { "pass" } else { "FAIL" });
                        }
                        out.results.push(r);
                    }
                    Some(Event::AgentLog { mode, device, line }) if !b.verbose => {
                        // A verifier log runs to thousands of lines; the console log keeps all.
                        let n = agent_lines.entry((mode.clone(), device.clone())).or_insert(0usize);
                        *n += 1;
                        if *n <= AGENT_LINES_SHOWN {
                            eprintln!("[{}] {mode} {device} agent: {line}", b.label);
                        } else if *n == AGENT_LINES_SHOWN + 1 {
                            eprintln!(
                                "[{}] {mode} {device} agent: … (the rest is in {})",
                                b.label,
                                out.console.display()
                            );
                        }
                    }
                    Some(Event::Done) => done = true,
                    _ => {}
                }
            }
            // qemu's stdout closed: it exited (poweroff, panic, or an error).
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    // After a clean run the guest powers off by itself; give it a moment, then stop it.
    let grace = Instant::now() + Duration::from_secs(if done { 10 } else { 0 });
    while Instant::now() < grace && child.try_wait().ok().flatten().is_none() {
        thread::sleep(Duration::from_millis(100));
    }
    if child.try_wait().ok().flatten().is_none() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let _ = reader.join();
    drop(console);
    fs::rename(&console_tmp, &out.console)?;
    for img in ["virtio.img", "nvme.img", "ext4.img"] {
        let _ = fs::remove_file(b.work.join(format!("{img}.{}", std::process::id())));
    }
    let qemu_err = err_reader.join().unwrap_or_default();
    out.elapsed = start.elapsed();
    if !done && out.aborted.is_none() {
        let why = if qemu_err.trim().is_empty() {
            format!("the guest stopped ({status}) before finishing; last console lines: {}", tail.join(" | "))
        } else {
            format!("qemu failed ({status}): {}", qemu_err.trim().lines().last().unwrap_or_default())
        };
        out.aborted = Some(why);
    } else if let Some(a) = &mut out.aborted {
        *a += &format!("; last console lines: {}", tail.join(" | "));
    }
    Ok(out)
}
