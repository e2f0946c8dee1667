//! Per-program kernel statistics from `bpf_prog_info`, read with `BPF_OBJ_GET_INFO_BY_FD`.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::Ebpf;

/// Per-program kernel statistics from `bpf_prog_info` (uapi, append-only ABI).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgramStats {
    /// Only advances while `kernel.bpf_stats_enabled=1`.
    pub run_time_ns: u64,
    pub run_cnt: u64,
    pub recursion_misses: u64,
}

/// Reads run statistics of a loaded program with BPF_OBJ_GET_INFO_BY_FD. aya's `ProgramInfo`
/// does not expose `recursion_misses`, so the syscall is made here. A kernel older than a field
/// (recursion_misses is 5.12+) leaves it zero: it copies only the part of the struct it knows.
pub fn program_stats(ebpf: &Ebpf, name: &str) -> Option<ProgramStats> {
    let prog = ebpf.program(name)?;
    let fd = prog.fd().ok()?.as_fd().as_raw_fd();
    // struct bpf_prog_info: run_time_ns @192, run_cnt @200, recursion_misses @208
    // (include/uapi/linux/bpf.h; fields are only ever appended).
    let mut info = [0u8; 256];
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let attr = InfoAttr { bpf_fd: fd as u32, info_len: info.len() as u32, info: info.as_mut_ptr() as u64 };
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // SAFETY: attr points to a valid buffer of info_len bytes for the duration of the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &attr as *const InfoAttr, std::mem::size_of::<InfoAttr>())
    };
    if rc != 0 {
        return None;
    }
    let u64_at = |o: usize| u64::from_le_bytes(info[o..o + 8].try_into().expect("8 bytes"));
    Some(ProgramStats { run_time_ns: u64_at(192), run_cnt: u64_at(200), recursion_misses: u64_at(208) })
}
