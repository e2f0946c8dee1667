//! Fault and lifecycle scenarios (issue 12, item 3): each sets up its device, starts the agent in
//! `btf` mode on it, runs its workload and ends with the check of `exact.rs` — per op, counts and
//! bytes equal to the device's `/proc/diskstats` delta, depth back to 0, no losses.
//!
//! - `null_blk-zoned`: a zoned null_blk (configfs; timer completions like the matrix's null_blk)
//!   with zone open/close/finish/reset ioctls between sequential writes: dataless requests that
//!   the block layer issues and completes with 0 bytes.
//! - `null_blk-discard`: a memory-backed null_blk with discard: BLKDISCARD of 64 MiB and 100 MiB,
//!   one request each (`stats_sectors`, a u16 of sectors, wraps at 32 MiB).
//! - `scsi_debug-faults`: injected transport errors (retried: requeue from MQ_RQ_COMPLETE), host
//!   busy (requeue at dispatch), short transfers (a partial completion, then a requeue of the
//!   rest) and a medium error (partial completion, then failure).
//! - `nvme-qd32`: 32 threads of synchronous O_DIRECT I/O on the emulated NVMe, on both CPUs and
//!   so both hardware queues; every snapshot's in-flight count and peak at most 32, the highest
//!   peak's upper bound (`peak_upper`, the sum of the queues' peaks) at least 16.
//! - `nvme-fio`: fio randrw 4 KiB through libaio on the emulated NVMe, 12 s at iodepth 4, idle,
//!   then 12 s at iodepth 32: every snapshot's in-flight count and peak at most the iodepth of
//!   its phase, each phase's highest peak at least half of it, and the agent's reads and writes
//!   equal to fio's own counts (plus the warm-up reads) as well as to diskstats.
//! - `ext4-fsync`: ext4 (an image the host made with mkfs.ext4, on a second virtio disk) with
//!   fsync/fdatasync: journal writes with PREFLUSH/FUA, flush requests, empty preflushes.

use std::{
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use blkio_guest::plan::{EXT4_SERIAL, SCENARIOS};

use crate::{
    agent::Agent,
    device::{self, DiskStats},
    exact::{self, DepthPhase, Expect},
    faults, fio, workload,
};

/// Reads every scenario runs before its workload (while the agent decides its path).
const WARM_READS: u64 = 96;
/// Length of each fio phase of `nvme-fio` (issue 12's acceptance: at least 12 s each).
const FIO_SECONDS: u32 = 12;

const NULLB: &str = "/sys/kernel/config/nullb";

/// A null_blk device made through configfs with `attrs` (written in order, then `power=1`).
fn nullb(name: &str, attrs: &[(&str, &str)]) -> Result<String, String> {
    if !Path::new(NULLB).is_dir() {
        let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
        let (none, at, fstype) = (c("none"), c("/sys/kernel/config"), c("configfs"));
        // SAFETY: NUL-terminated strings alive for the call.
        let rc = unsafe { libc::mount(none.as_ptr(), at.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
        if rc != 0 || !Path::new(NULLB).is_dir() {
            return Err(format!("cannot mount configfs for {NULLB}: {}", std::io::Error::last_os_error()));
        }
    }
    let dir = format!("{NULLB}/{name}");
    fs::create_dir(&dir).map_err(|e| format!("mkdir {dir}: {e}"))?;
    for (k, v) in attrs.iter().chain(&[("power", "1")]) {
        fs::write(format!("{dir}/{k}"), v).map_err(|e| format!("{dir}/{k} = {v}: {e}"))?;
    }
    let index = fs::read_to_string(format!("{dir}/index")).map_err(|e| format!("{dir}/index: {e}"))?;
    // The disk is `nullb<index>` until 6.0, named after the configfs directory since.
    let names = [format!("nullb{}", index.trim()), name.to_string()];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(dev) = names.iter().find(|n| Path::new("/sys/block").join(n).exists()) {
            return Ok(dev.clone());
        }
        if Instant::now() > deadline {
            return Err(format!("neither {} appeared after {dir}/power = 1", names.join(" nor ")));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Timer completions 20 µs after submission, as the matrix's null_blk.
const TIMER: [(&str, &str); 4] =
    [("queue_mode", "2"), ("irqmode", "2"), ("completion_nsec", "20000"), ("blocksize", "4096")];

fn virtio_by_serial(serial: &str) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for e in fs::read_dir("/sys/block").map_err(|e| e.to_string())?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("vd") && fs::read_to_string(e.path().join("serial")).is_ok_and(|s| s.trim() == serial) {
                return Ok(name);
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no virtio disk with serial {serial} appeared"));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The device of a scenario, set up.
fn setup(name: &str) -> Result<String, String> {
    match name {
        "null_blk-zoned" => {
            let mut a = TIMER.to_vec();
            a.extend([("size", "256"), ("zoned", "1"), ("zone_size", "16"), ("zone_nr_conv", "0")]);
            nullb("zoned", &a)
        }
        "null_blk-discard" => {
            let mut a = TIMER.to_vec();
            a.extend([("size", "512"), ("memory_backed", "1"), ("discard", "1")]);
            nullb("discard", &a)
        }
        "scsi_debug-faults" => device::find("scsi_debug", Duration::from_secs(20)),
        "nvme-qd32" | "nvme-fio" => device::find("nvme", Duration::from_secs(20)),
        "ext4-fsync" => virtio_by_serial(EXT4_SERIAL),
        _ => Err(format!("unknown scenario {name:?} (one of {})", SCENARIOS.join(", "))),
    }
}

/// One scenario: `Ok(what ran)` or `Err(first failure)`, plus the agent's stderr.
pub fn run(name: &str, agent_args: &[String]) -> (Result<String, String>, Vec<String>) {
    let dev = match setup(name) {
        Ok(d) => d,
        Err(e) => return (Err(e), Vec::new()),
    };
    let before = match DiskStats::read(&dev) {
        Ok(s) => s,
        Err(e) => return (Err(e), Vec::new()),
    };
    let tag = format!("scenario-{name}");
    let mut agent = match Agent::start("btf", &dev, &tag, agent_args, Duration::from_secs(90)) {
        Ok(a) => a,
        Err(e) => {
            let stderr = fs::read_to_string(format!("/tmp/{tag}.stderr")).unwrap_or_default();
            return (Err(e), stderr.lines().map(str::to_string).collect());
        }
    };
    thread::sleep(Duration::from_millis(300));
    // Reads, then wait until the agent decided its path (on 5.10/6.1 the fast path waits for
    // its flag self-test: 64 agreeing completions, agent/src/loader/fastpath.rs), so the
    // workload runs on the path the agent decided.
    let warm = workload::run(&dev, 0, WARM_READS as u32, 0, 0);
    let decided = agent.wait_path_decided(Duration::from_secs(6));
    thread::sleep(Duration::from_millis(200));
    let mut exp = Expect::default();
    let mut fio_jobs: Vec<fio::Job> = Vec::new();
    let mut scsi: Option<faults::ScsiFaults> = None;
    let work: Result<String, String> = warm.and_then(|_| match name {
        "null_blk-zoned" => faults::zoned(&dev, 4).map(|n| {
            // diskstats counts zone management as writes of 0 sectors (exact.rs).
            exp.other_as_writes = n;
            format!("{n} zone ops (open, close, finish, reset)")
        }),
        "null_blk-discard" => faults::discard(&dev, &[64 << 20, 100 << 20]).map(|_| "discards: 64 MiB, 100 MiB".into()),
        "scsi_debug-faults" => faults::scsi(&dev).map(|f| {
            scsi = Some(f);
            format!("failed reads: {}, short-transfer phase reads: {}", f.failed_reads, f.short_phase_reads)
        }),
        "nvme-qd32" => {
            // 32 threads run on both CPUs, so on both of the NVMe's hardware queues.
            exp.depth[0] = Some(DepthPhase::spread(32));
            faults::concurrent(&dev, 32, 48).map(|_| "32 threads x 48".into())
        }
        "nvme-fio" => (|| {
            let qd4 = fio::randrw(&dev, 4, FIO_SECONDS)?;
            // Idle between the phases, so that no snapshot holds requests of both.
            thread::sleep(Duration::from_millis(1500));
            let qd32 = fio::randrw(&dev, 32, FIO_SECONDS)?;
            exp.depth[0] = Some(DepthPhase { until: qd32.started, max: 4, spread: false });
            exp.depth[1] = Some(DepthPhase::always(32));
            fio_jobs = vec![qd4, qd32];
            Ok(format!("fio randrw QD4 {:.0} s + QD32 {:.0} s", qd4.ended - qd4.started, qd32.ended - qd32.started))
        })(),
        "ext4-fsync" => faults::ext4(&dev).map(|_| "8 files, fsync/fdatasync, umount".into()),
        _ => unreachable!("setup rejected it"),
    });
    thread::sleep(Duration::from_millis(600));
    let stopped = agent.stop(Duration::from_secs(30));
    let log = agent.stderr_lines();
    let result = (|| {
        let did = work?;
        let status = stopped?;
        if !status.success() {
            return Err(format!("agent exited with {status} after SIGTERM (want 0): {}", agent.error_line()));
        }
        let disk = DiskStats::read(&dev)?.delta(before);
        let jsonl = fs::read_to_string(&agent.output).map_err(|e| format!("{}: {e}", agent.output))?;
        let t = exact::check(&jsonl, &dev, &disk, &exp)?;
        // The fault paths must have run, or the scenario proved nothing.
        // Each failed read is one partial completion; the short transfers must add more.
        if let Some(f) = scsi
            && (t.requeued == 0 || t.partial <= f.failed_reads)
        {
            return Err(format!(
                "no fault seen: requeued={} partial_completion={} for {} failed reads (scsi_debug opts not applied?)",
                t.requeued, t.partial, f.failed_reads
            ));
        }
        if !fio_jobs.is_empty() {
            let (r, w) = fio_jobs.iter().fold((WARM_READS, 0), |(r, w), j| (r + j.reads, w + j.writes));
            if (t.count[0], t.count[1]) != (r, w) {
                return Err(format!(
                    "agent reads/writes {}/{}, fio's own counts (+{WARM_READS} warm-up reads) {r}/{w}",
                    t.count[0], t.count[1]
                ));
            }
        }
        if name == "ext4-fsync" && (disk.flushes == 0 || t.count[1] == 0) {
            return Err(format!("ext4 did no flushes or writes: {disk:?}"));
        }
        Ok(format!(
            "{dev}: {did}; {} (decided: {decided}) peak={}{}{} requeued={} partial={} snapshots={}{}",
            exact::summary(&t),
            t.peak,
            match exp.depth.iter().flatten().count() {
                0 | 1 => String::new(),
                n => format!(" (per phase {:?})", &t.phase_peaks[..n]),
            },
            match t.bounded {
                0 => String::new(),
                n => format!(" peak_upper<={} in {n} snapshots", t.peak_upper),
            },
            t.requeued,
            t.partial,
            t.snapshots,
            if t.recursion_misses > 0 {
                format!(" recursion_misses={} (counts exact)", t.recursion_misses)
            } else {
                String::new()
            }
        ))
    })();
    (result, log)
}
