//! `EbpfLoader`s made at process start without aya's own parse of kernel BTF.
//!
//! aya 0.14's `EbpfLoader::new()` always parses all of `/sys/kernel/btf/vmlinux`
//! (`Btf::from_sys_fs().ok()`), about 23 MB of heap for 6.18's 5.5 MB of BTF, although Rust eBPF
//! objects have no CO-RE relocations and the agent drops that copy at once (`.btf(None)`). It was
//! the agent's whole startup peak (31.7 MB, against 10 MB steady). aya offers no constructor
//! without it, so the loaders are made while the file cannot be read into memory: with the
//! address-space limit (`RLIMIT_AS`) lowered to just above what the process maps already,
//! `std::fs::read` cannot reserve the file's size (it reserves fallibly, `Vec::try_with_capacity`)
//! and returns an error, which aya turns into "no BTF". The limit is restored right after.
//!
//! A lowered limit applies to every thread, and an infallible allocation that fails aborts the
//! process. So this runs only while the process has a single thread (the start of `main`, before
//! the async runtime, the writer and the exporters exist), and only when the file is much larger
//! than the headroom left (otherwise aya's parse itself could hit the limit). In any other case
//! the loader is made the ordinary way: more memory, never a different result.
//! <https://github.com/aya-rs/aya/blob/aya-v0.14.0/aya/src/bpf.rs> (`EbpfLoader::new`)

use std::{path::Path, sync::Mutex};

use aya::EbpfLoader;

/// Address space left to the process while the loaders are made: small allocations (a path, a
/// hash map) fit, a kernel BTF file does not.
const HEADROOM: u64 = 1 << 20;

/// Files below this are read and parsed the ordinary way (their parse is cheap, and it must not
/// run into the lowered limit).
const MIN_BTF_BYTES: u64 = 4 * HEADROOM;

/// One loader per load attempt: BTF tracepoints, then the classic-tracepoint fallback.
const LOADERS: usize = 2;

static EARLY: Mutex<Vec<EbpfLoader<'static>>> = Mutex::new(Vec::new());

/// The file `EbpfLoader::new()` parses (`Btf::from_sys_fs`), whatever `--sys-root` says.
const AYA_VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Makes the loaders `take` hands out. Call first thing in `main`, while the process has one
/// thread; a no-op (logged at debug) when it cannot be done safely.
pub fn prepare() {
    let vmlinux = Path::new(AYA_VMLINUX);
    let Ok(size) = std::fs::metadata(vmlinux).map(|m| m.len()) else { return };
    if size < MIN_BTF_BYTES {
        return;
    }
    let Some(loaders) = without_readable_file(vmlinux, || (0..LOADERS).map(|_| EbpfLoader::new()).collect::<Vec<_>>())
    else {
        return;
    };
    *EARLY.lock().unwrap_or_else(|e| e.into_inner()) = loaders;
}

/// A loader without kernel BTF: one made by [`prepare`], else a new one (aya parses vmlinux
/// then; the caller sets `.btf(None)` either way).
pub fn take() -> EbpfLoader<'static> {
    match EARLY.lock().unwrap_or_else(|e| e.into_inner()).pop() {
        Some(loader) => loader,
        None => {
            tracing::debug!("no early loader left: aya parses kernel BTF for this one");
            EbpfLoader::new()
        }
    }
}

/// Runs `f` with the address-space limit just above the current mappings, so that `path` cannot be
/// read into memory. Returns `None` (and does not run `f`) when the process is not single-threaded,
/// the limits cannot be read or set, or `path` can still be read under the limit (free heap the
/// allocator already holds would serve it, and whatever `f` then does with the data could exceed
/// the limit).
pub fn without_readable_file<T>(path: &Path, f: impl FnOnce() -> T) -> Option<T> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
    };
    if field("Threads:")? != 1 {
        tracing::debug!("more than one thread: early loaders not made (aya will parse kernel BTF)");
        return None;
    }
    let mapped = field("VmSize:")? * 1024;
    let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut old) } != 0 {
        return None;
    }
    let lowered = libc::rlimit { rlim_cur: (mapped + HEADROOM).min(old.rlim_max), rlim_max: old.rlim_max };
    // SAFETY: lowering a soft limit is always permitted; the struct is valid.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &lowered) } != 0 {
        return None;
    }
    let unreadable = matches!(std::fs::read(path), Err(e) if e.kind() == std::io::ErrorKind::OutOfMemory);
    let out = unreadable.then(f);
    // SAFETY: restores the soft limit read above (never above the hard limit).
    let restored = unsafe { libc::setrlimit(libc::RLIMIT_AS, &old) } == 0;
    assert!(restored, "cannot restore RLIMIT_AS after making the eBPF loaders");
    if !unreadable {
        tracing::debug!(path = %path.display(), "readable under the lowered limit: early loaders not made");
    }
    out
}
