//! What the kernel must let the agent do before anything is loaded: capabilities, and on
//! kernels before 5.11 a large enough `RLIMIT_MEMLOCK`.

use crate::error::{Error, Result};

/// Capabilities (bit numbers from include/uapi/linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Loading tracing programs needs CAP_BPF + CAP_PERFMON (kernel >= 5.8) or CAP_SYS_ADMIN.
/// Checked up front so the error names the capability instead of a bare EPERM from the verifier.
pub fn check_privileges() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| Error::read("/proc/self/status", e))?;
    let eff = effective_caps(&status).unwrap_or(0);
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    Err(Error::MissingPrivilege {
        what: "loading eBPF tracing programs",
        needs: format!("{} (or CAP_SYS_ADMIN)", missing.join(" and ")),
    })
}

pub fn effective_caps(proc_status: &str) -> Option<u64> {
    proc_status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// `major.minor` of a kernel release string (`5.10.0-43-cloud-amd64` -> `(5, 10)`).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The running kernel's release (`uname -r`).
pub fn running_release() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_string())
}

/// Below 5.11 the kernel charges BPF maps to `RLIMIT_MEMLOCK` instead of the memory cgroup
/// (<https://elixir.bootlin.com/linux/v5.10/source/kernel/bpf/syscall.c>, `bpf_map_charge_init`;
/// replaced by memcg accounting in 5.11), and the default 64 KiB (8 MiB on newer distributions)
/// is far below what the maps take. Raise it to unlimited there; on newer kernels leave it alone.
pub fn raise_memlock_if_charged(release: Option<&str>) -> Result<()> {
    let Some((major, minor)) = release.and_then(kernel_version) else { return Ok(()) };
    if (major, minor) >= (5, 11) {
        return Ok(());
    }
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: valid pointer to an initialized rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        tracing::debug!("raised RLIMIT_MEMLOCK to unlimited (kernel {major}.{minor} charges BPF maps to it)");
        return Ok(());
    }
    Err(Error::MissingPrivilege {
        what: "loading eBPF maps on kernels before 5.11 (they are charged to RLIMIT_MEMLOCK)",
        needs: "CAP_SYS_RESOURCE or an unlimited RLIMIT_MEMLOCK (ulimit -l unlimited, LimitMEMLOCK=infinity)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_parsing() {
        let status = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(status), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_caps("Name: x\n"), None);
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("5.10.0-43-cloud-amd64"), Some((5, 10)));
        assert_eq!(kernel_version("6.18.0"), Some((6, 18)));
        assert_eq!(kernel_version("7.2.13+deb14-cloud-amd64"), Some((7, 2)));
        assert_eq!(kernel_version("garbage"), None);
        // Nothing to do on new kernels (and nothing attempted without a version).
        assert!(raise_memlock_if_charged(Some("6.1.0")).is_ok());
        assert!(raise_memlock_if_charged(None).is_ok());
    }
}
