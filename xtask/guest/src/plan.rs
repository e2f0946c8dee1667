//! What the host asks the guest to run: written by `cargo xtask kernels` into the initramfs as
//! `/etc/blkio-plan.json`. The same struct is the contract on both sides (the host serializes it
//! with serde_json from `xtask/src/kernels/`).

use serde::{Deserialize, Serialize};

/// The fault scenarios the guest knows (`xtask/guest/src/scenario.rs`).
pub const SCENARIOS: &[&str] =
    &["null_blk-zoned", "null_blk-discard", "scsi_debug-faults", "nvme-qd32", "nvme-fio", "ext4-fsync"];

/// The serial of the ext4 scenario's virtio disk (`-device virtio-blk-pci,serial=...`).
pub const EXT4_SERIAL: &str = "blkioext4";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// `auto`, `btf`, `tracepoint` (passed to `blkio-agent run --attach`).
    pub modes: Vec<String>,
    /// Device kinds: `virtio`, `nvme`, `null_blk`, `scsi_debug`.
    pub devices: Vec<String>,
    /// 4 KiB O_DIRECT writes per cell.
    pub writes: u32,
    /// 4 KiB O_DIRECT reads per cell.
    pub reads: u32,
    /// Threads of the concurrent phase, and requests per thread (alternating write, read).
    #[serde(default)]
    pub threads: u32,
    #[serde(default)]
    pub per_thread: u32,
    /// Echo every agent stderr line, not only those of failing cells.
    pub verbose: bool,
    /// Fault and lifecycle scenarios (`xtask/guest/src/scenario.rs`), each run once in `btf`
    /// mode after the device cells.
    #[serde(default)]
    pub scenarios: Vec<String>,
    /// Extra arguments appended to `blkio-agent run`.
    #[serde(default)]
    pub agent_args: Vec<String>,
}
