//! Kernel modules for the matrix's devices, with their dependencies resolved from each module's
//! own `.modinfo` `depends=` (the packages ship no modules.dep: depmod runs at install), loaded
//! in dependency order by the guest's `/init`. Compressed modules (`.ko.xz`, `.ko.zst`) are
//! decompressed here: busybox's insmod passes the file to `init_module`, and in-kernel
//! decompression is not configured everywhere.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The modules a device kind needs (dependencies come from modinfo) and their parameters.
pub fn for_device(kind: &str) -> &'static [(&'static str, &'static str)] {
    match kind {
        // virtio_pci is a module on 5.10/6.1 cloud kernels, built in later.
        "virtio" => &[("virtio_pci", ""), ("virtio_blk", "")],
        "nvme" => &[("nvme", "")],
        // One multi-queue device completing from a timer 20 µs after submission.
        "null_blk" => &[("null_blk", "nr_devices=1 queue_mode=2 irqmode=2 completion_nsec=20000 gb=1 bs=4096")],
        // sd_mod first, so the disk scsi_debug adds is attached as it is scanned.
        "scsi_debug" | "scsi_debug-faults" => &[("sd_mod", ""), ("scsi_debug", "dev_size_mb=64 num_tgts=1 max_luns=1")],
        // The scenarios' null_blk devices are made through configfs (xtask/guest/src/scenario.rs);
        // the module's own device is the matrix's.
        "null_blk-zoned" | "null_blk-discard" => for_device("null_blk"),
        "nvme-qd32" | "nvme-fio" => for_device("nvme"),
        "ext4-fsync" => &[("virtio_pci", ""), ("virtio_blk", ""), ("ext4", "")],
        _ => &[],
    }
}

/// A module to put into the initramfs: its name, uncompressed bytes and insmod parameters.
pub struct Module {
    pub name: String,
    pub bytes: Vec<u8>,
    pub params: String,
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem =
        file.strip_suffix(".ko").or_else(|| file.strip_suffix(".ko.xz")).or_else(|| file.strip_suffix(".ko.zst"))?;
    Some(normalize(stem))
}

fn index(dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> anyhow::Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            index(&p, out)?;
        } else if let Some(n) = module_name(&p) {
            out.insert(n, p);
        }
    }
    Ok(())
}

fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        _ => return fs::read(path).with_context(|| format!("reading {}", path.display())),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("cannot run {tool} (fix: apt-get install xz-utils zstd)"))?;
    if !out.status.success() {
        bail!("{tool} -dc {}: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}

/// The `depends=` value of a module's `.modinfo` (NUL-separated `key=value` strings).
fn depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = ko.windows(KEY.len()).position(|w| w == KEY) else { return Vec::new() };
    let rest = &ko[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).split(',').filter(|s| !s.is_empty()).map(normalize).collect()
}

/// The modules for `kinds`, dependencies first, skipping what `modules.builtin` lists.
pub fn resolve(modules_dir: &Path, kinds: &[String]) -> anyhow::Result<Vec<Module>> {
    let builtin: BTreeSet<String> = fs::read_to_string(modules_dir.join("modules.builtin"))
        .with_context(|| format!("{}/modules.builtin", modules_dir.display()))?
        .lines()
        .filter_map(|l| module_name(Path::new(l)))
        .collect();
    let mut files = BTreeMap::new();
    index(&modules_dir.join("kernel"), &mut files)?;
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for kind in kinds {
        for (name, params) in for_device(kind) {
            add(name, params, &builtin, &files, &mut seen, &mut out)?;
        }
    }
    Ok(out)
}

fn add(
    name: &str,
    params: &str,
    builtin: &BTreeSet<String>,
    files: &BTreeMap<String, PathBuf>,
    seen: &mut BTreeSet<String>,
    out: &mut Vec<Module>,
) -> anyhow::Result<()> {
    let name = normalize(name);
    if builtin.contains(&name) || !seen.insert(name.clone()) {
        return Ok(());
    }
    let path = files.get(&name).with_context(|| format!("module {name} is neither built in nor shipped"))?;
    let bytes = read_module(path)?;
    for dep in depends(&bytes) {
        add(&dep, "", builtin, files, seen, out)?;
    }
    out.push(Module { name, bytes, params: params.to_string() });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_depends() {
        let ko = b"\x7fELF...\0license=GPL\0depends=virtio,virtio_ring,nvme-core\0intree=Y\0";
        assert_eq!(depends(ko), ["virtio", "virtio_ring", "nvme_core"]);
        assert!(depends(b"\0depends=\0").is_empty());
        assert_eq!(module_name(Path::new("kernel/drivers/nvme/host/nvme-core.ko.xz")).unwrap(), "nvme_core");
    }
}
