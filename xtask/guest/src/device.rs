//! Finding the guest's test devices by kind, and the kernel's own I/O counts for them.

use std::{
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

/// The block device (name under /sys/block) of one device kind, waiting for it to appear
/// (SCSI and NVMe scans finish asynchronously after the module is loaded).
pub fn find(kind: &str, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(name) = find_now(kind)? {
            return Ok(name);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no {kind} block device appeared within {timeout:?} (module not loaded? see the console log)"
            ));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn find_now(kind: &str) -> Result<Option<String>, String> {
    let mut names: Vec<String> = fs::read_dir("/sys/block")
        .map_err(|e| format!("/sys/block: {e}"))?
        .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
        .collect();
    names.sort();
    let found = names.into_iter().find(|n| match kind {
        "virtio" => n.starts_with("vd"),
        "nvme" => n.starts_with("nvme") && n.contains('n'),
        "null_blk" => n.starts_with("nullb"),
        // sd* whose SCSI model is scsi_debug's ("scsi_debug", space-padded).
        "scsi_debug" => {
            n.starts_with("sd")
                && fs::read_to_string(Path::new("/sys/block").join(n).join("device/model"))
                    .is_ok_and(|m| m.trim() == "scsi_debug")
        }
        _ => false,
    });
    match kind {
        "virtio" | "nvme" | "null_blk" | "scsi_debug" => Ok(found),
        _ => Err(format!("unknown device kind {kind:?} (virtio, nvme, null_blk, scsi_debug)")),
    }
}

/// Completed requests and sectors from one `/proc/diskstats` line (the kernel's own counts;
/// Documentation/admin-guide/iostats.rst: fields 1, 3, 5 and 7 after the name; discards are
/// fields 12 and 14 (since 4.18), flushes field 16 (since 5.5): 0 when the line is shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskStats {
    pub reads: u64,
    pub read_sectors: u64,
    pub writes: u64,
    pub write_sectors: u64,
    pub discards: u64,
    pub discard_sectors: u64,
    pub flushes: u64,
}

impl DiskStats {
    pub fn read(dev: &str) -> Result<DiskStats, String> {
        let text = fs::read_to_string("/proc/diskstats").map_err(|e| format!("/proc/diskstats: {e}"))?;
        parse(&text, dev).ok_or_else(|| format!("{dev} is not in /proc/diskstats"))
    }

    pub fn delta(self, before: DiskStats) -> DiskStats {
        DiskStats {
            reads: self.reads - before.reads,
            read_sectors: self.read_sectors - before.read_sectors,
            writes: self.writes - before.writes,
            write_sectors: self.write_sectors - before.write_sectors,
            discards: self.discards - before.discards,
            discard_sectors: self.discard_sectors - before.discard_sectors,
            flushes: self.flushes - before.flushes,
        }
    }
}

fn parse(text: &str, dev: &str) -> Option<DiskStats> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 11 || f[2] != dev {
            return None;
        }
        let n = |i: usize| f[i].parse::<u64>().ok();
        let opt = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Some(DiskStats {
            reads: n(3)?,
            read_sectors: n(5)?,
            writes: n(7)?,
            write_sectors: n(9)?,
            discards: opt(14),
            discard_sectors: opt(16),
            flushes: opt(18),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diskstats_line() {
        let text =
            " 254       0 vda 120 3 4096 50 7 0 56 9 0 60 70 3 0 600 5 2 1\n 259 0 nvme0n1 1 0 8 0 2 0 16 0 0 0 0\n";
        assert_eq!(
            parse(text, "vda"),
            Some(DiskStats {
                reads: 120,
                read_sectors: 4096,
                writes: 7,
                write_sectors: 56,
                discards: 3,
                discard_sectors: 600,
                flushes: 2
            })
        );
        assert_eq!(
            parse(text, "nvme0n1"),
            Some(DiskStats { reads: 1, read_sectors: 8, writes: 2, write_sectors: 16, ..DiskStats::default() })
        );
        assert_eq!(parse(text, "vdb"), None);
    }
}
