//! fio in the guest (the `nvme-fio` scenario): the host copies Debian's `/usr/bin/fio` and the
//! shared libraries it needs into the initramfs (`xtask/src/kernels/initramfs.rs`), so the depth
//! bounds are checked against the load generator users run, not only against this driver's own
//! threads.

use std::{
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

/// Where the initramfs puts fio and its libraries (`xtask/src/kernels/initramfs.rs`).
pub const FIO: &str = "/bin/fio";
pub const FIO_LIBS: &str = "/usr/lib/fio";

/// One fio job as it ran: wall-clock bounds and fio's own completed I/O counts.
#[derive(Debug, Clone, Copy)]
pub struct Job {
    pub started: f64,
    pub ended: f64,
    pub reads: u64,
    pub writes: u64,
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// `fio` randrw of 4 KiB O_DIRECT requests through libaio at `iodepth` for `seconds` on
/// `/dev/<dev>`.
pub fn randrw(dev: &str, iodepth: u32, seconds: u32) -> Result<Job, String> {
    let started = now();
    let out = Command::new(FIO)
        .env("LD_LIBRARY_PATH", FIO_LIBS)
        .arg(format!("--name=qd{iodepth}"))
        .arg(format!("--filename=/dev/{dev}"))
        .args(["--rw=randrw", "--bs=4k", "--direct=1", "--ioengine=libaio", "--thread", "--invalidate=0"])
        .arg(format!("--iodepth={iodepth}"))
        .args(["--time_based", &format!("--runtime={seconds}"), "--output-format=json"])
        .output()
        .map_err(|e| format!("cannot run {FIO}: {e}"))?;
    let ended = now();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("fio exited with {}: {}", out.status, err.lines().last().unwrap_or("").trim()));
    }
    let json = String::from_utf8_lossy(&out.stdout);
    let (reads, writes) = totals(&json)?;
    Ok(Job { started, ended, reads, writes })
}

/// fio's completed reads and writes (`jobs[].read.total_ios`, `.write.total_ios`) from its JSON
/// output, which may follow non-JSON notes on stdout.
fn totals(out: &str) -> Result<(u64, u64), String> {
    let start = out.find('{').ok_or("fio printed no JSON")?;
    let v: Value = serde_json::from_str(&out[start..]).map_err(|e| format!("fio's JSON: {e}"))?;
    let jobs = v.get("jobs").and_then(Value::as_array).ok_or("fio's JSON has no `jobs`")?;
    let sum = |dir: &str| -> Result<u64, String> {
        jobs.iter()
            .map(|j| {
                j.get(dir)
                    .and_then(|d| d.get("total_ios"))
                    .and_then(Value::as_u64)
                    .ok_or_else(|| format!("fio's JSON: no jobs[].{dir}.total_ios"))
            })
            .sum()
    };
    Ok((sum("read")?, sum("write")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_come_from_fios_json() {
        let out = "note: both iodepth >= 1 and synchronous I/O engine are selected\n{\"jobs\": [\
                   {\"read\": {\"total_ios\": 7}, \"write\": {\"total_ios\": 5}},\
                   {\"read\": {\"total_ios\": 1}, \"write\": {\"total_ios\": 2}}]}";
        assert_eq!(totals(out).unwrap(), (8, 7));
        assert!(totals("fio: no JSON").unwrap_err().contains("no JSON"));
        assert!(totals("{\"jobs\": [{\"read\": {}}]}").unwrap_err().contains("read.total_ios"));
    }
}
