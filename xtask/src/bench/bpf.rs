//! eBPF programs and maps of a process, their run statistics, and the kernel memory of maps.
//!
//! Programs and maps are attributed to a process through the fds it holds
//! (`/proc/<pid>/fdinfo/*`: `prog_id:` for program and link fds, `map_id:` for map fds), so
//! nothing depends on program names and other tools' programs on the machine are never mixed in.
//! Names, `run_time_ns`/`run_cnt` (with `kernel.bpf_stats_enabled=1`) and map sizes come from
//! `bpftool -j`.

use std::{collections::BTreeMap, collections::BTreeSet, fs, process::Command};

use anyhow::{Context as _, bail};
use serde_json::Value;

#[derive(Debug, Default, Clone)]
pub struct Owned {
    pub prog_ids: BTreeSet<u32>,
    pub map_ids: BTreeSet<u32>,
    /// bpf_link fds (attached programs).
    pub links: usize,
}

pub fn owned_by(pid: u32) -> anyhow::Result<Owned> {
    let mut owned = Owned::default();
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
        // fds come and go while we read: skip the ones that vanished.
        let Ok(info) = fs::read_to_string(entry?.path()) else { continue };
        let field =
            |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u32>().ok());
        if let Some(id) = field("prog_id:") {
            owned.prog_ids.insert(id);
        }
        if let Some(id) = field("map_id:") {
            owned.map_ids.insert(id);
        }
        if info.lines().any(|l| l.starts_with("link_type:")) {
            owned.links += 1;
        }
    }
    Ok(owned)
}

fn bpftool_json(args: &[&str]) -> anyhow::Result<Vec<Value>> {
    let out = Command::new("bpftool").args(args).arg("-j").output().context("cannot run bpftool")?;
    if !out.status.success() {
        bail!("bpftool {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    match serde_json::from_slice(&out.stdout).context("bpftool printed no JSON")? {
        Value::Array(v) => Ok(v),
        other => bail!("bpftool {}: expected an array, got {other}", args.join(" ")),
    }
}

fn u64_field(v: &Value, name: &str) -> u64 {
    v.get(name).and_then(Value::as_u64).unwrap_or(0)
}

#[derive(Debug, Clone)]
pub struct ProgStat {
    pub name: String,
    /// Cumulative since load, while bpf_stats were on (bpftool omits zeros).
    pub run_time_ns: u64,
    pub run_cnt: u64,
    pub bytes_jited: u64,
}

/// Current statistics of the programs with these ids.
pub fn prog_stats(ids: &BTreeSet<u32>) -> anyhow::Result<BTreeMap<u32, ProgStat>> {
    let mut stats = BTreeMap::new();
    for p in bpftool_json(&["prog", "show"])? {
        let id = u64_field(&p, "id") as u32;
        if !ids.contains(&id) {
            continue;
        }
        stats.insert(
            id,
            ProgStat {
                name: p.get("name").and_then(Value::as_str).unwrap_or("?").to_string(),
                run_time_ns: u64_field(&p, "run_time_ns"),
                run_cnt: u64_field(&p, "run_cnt"),
                bytes_jited: u64_field(&p, "bytes_jited"),
            },
        );
    }
    Ok(stats)
}

/// A map's shape: what its kernel memory depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapSpec {
    pub name: String,
    /// bpftool's type name: `hash`, `percpu_hash`, `array`, `percpu_array`, ...
    pub kind: String,
    pub flags: u64,
    pub key: u64,
    pub value: u64,
    pub max_entries: u64,
}

#[derive(Debug, Clone)]
pub struct LoadedMap {
    pub spec: MapSpec,
    pub id: u32,
    /// bpftool's `bytes_memlock`: the kernel's own `map->ops->map_mem_usage()` since 6.4.
    pub memlock: u64,
}

pub fn maps(ids: &BTreeSet<u32>) -> anyhow::Result<Vec<LoadedMap>> {
    let mut maps = Vec::new();
    for m in bpftool_json(&["map", "show"])? {
        let id = u64_field(&m, "id") as u32;
        if !ids.contains(&id) {
            continue;
        }
        maps.push(LoadedMap {
            id,
            memlock: u64_field(&m, "bytes_memlock"),
            spec: MapSpec {
                name: m.get("name").and_then(Value::as_str).unwrap_or("?").to_string(),
                kind: m.get("type").and_then(Value::as_str).unwrap_or("?").to_string(),
                flags: u64_field(&m, "flags"),
                key: u64_field(&m, "bytes_key"),
                value: u64_field(&m, "bytes_value"),
                max_entries: u64_field(&m, "max_entries"),
            },
        });
    }
    Ok(maps)
}

/// The agent's maps as the code declares them (agent-ebpf/src/state.rs and gauge.rs), with sizes and
/// capacities taken from `blkio-agent-common`, so this stays true when the layout changes.
/// Flags are 0 (preallocated) there but for `DENSE_INFLIGHT`'s `BPF_F_MMAPABLE`; a loaded
/// map's real flags replace them.
pub fn code_maps() -> Vec<MapSpec> {
    use std::mem::size_of;

    use blkio_agent_common as c;
    let spec = |name: &str, kind: &str, key: usize, value: usize, max_entries: u32| MapSpec {
        name: name.into(),
        kind: kind.into(),
        flags: 0,
        key: key as u64,
        value: value as u64,
        max_entries: max_entries.into(),
    };
    vec![
        spec("REQUESTS", "hash", size_of::<c::RequestKey>(), size_of::<c::RequestStart>(), c::MAX_INFLIGHT_REQUESTS),
        spec("DEVICE_INDEX", "array", size_of::<u32>(), size_of::<u64>(), c::DEVICE_INDEX_SIZE),
        spec(
            "DENSE_HISTS",
            "percpu_array",
            size_of::<u32>(),
            size_of::<c::Framed<c::DeviceHists>>(),
            c::MAX_DENSE_DEVICES,
        ),
        MapSpec {
            flags: BPF_F_MMAPABLE,
            ..spec("DENSE_INFLIGHT", "array", size_of::<u32>(), size_of::<c::DeviceQueues>(), c::MAX_DENSE_DEVICES)
        },
        spec("HISTS", "hash", size_of::<c::HistKey>(), size_of::<c::Framed<c::OpHist>>(), c::MAX_HIST_KEYS),
        spec("INFLIGHT", "hash", size_of::<u32>(), size_of::<c::DeviceInflight>(), c::MAX_DEVICES),
        spec("CGROUPS", "hash", size_of::<c::CgroupKey>(), size_of::<c::Framed<c::CgroupStats>>(), c::MAX_CGROUP_KEYS),
        spec("COUNTERS", "percpu_array", size_of::<u32>(), size_of::<[u64; c::COUNTER_SLOTS as usize]>(), 1),
        spec("OUTSTANDING", "array", size_of::<u32>(), size_of::<u64>(), c::OUTSTANDING_SIZE),
        spec("SCRATCH", "percpu_array", size_of::<u32>(), size_of::<u64>(), 1),
        spec("CONTROL", "array", size_of::<u32>(), size_of::<u64>(), c::CONTROL_SLOTS),
    ]
}

/// In-flight requests per device assumed for a non-preallocated REQUESTS map (NVMe-like depth).
pub const INFLIGHT_PER_DEVICE: u64 = 1024;

/// Entries a map holds on a node with `devices` busy devices and attribution off. Only used for
/// maps created with `BPF_F_NO_PREALLOC`; preallocated maps cost their full capacity regardless.
pub fn occupancy(spec: &MapSpec, devices: u64) -> u64 {
    let n = match spec.name.as_str() {
        "REQUESTS" => devices * INFLIGHT_PER_DEVICE,
        "HISTS" => devices * blkio_agent_common::OP_COUNT as u64,
        "INFLIGHT" => devices,
        "CGROUPS" => 0,
        _ => spec.max_entries,
    };
    n.min(spec.max_entries)
}

const BPF_F_NO_PREALLOC: u64 = 1 << 0;
const BPF_F_MMAPABLE: u64 = 1 << 10;
const PAGE: u64 = 4096;

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// Kernel memory of a map with `ncpu` possible CPUs, following the kernel's allocation (Linux
/// v6.18), without the fixed `struct bpf_htab` / `struct bpf_array` header (under 1 KiB; it
/// shows up as the residual against bpftool's `bytes_memlock`):
///
/// kernel/bpf/hashtab.c, `htab_map_alloc()` / `htab_map_mem_usage()`:
/// - buckets: `roundup_pow_of_two(max_entries) * sizeof(struct bucket)` (16 B: nulls head + lock)
/// - `elem_size = sizeof(struct htab_elem) (48 B on 64-bit) + round_up(key, 8)`, plus
///   `round_up(value, 8)` inline, or an 8 B per-CPU pointer for per-CPU maps
/// - preallocated (default): `max_entries` elements, `+ num_possible_cpus()` extra elements for
///   plain (non-LRU, non-per-CPU) hashes, plus `8 * ncpu` for their `extra_elems` pointers;
///   per-CPU maps add `round_up(value, 8) * ncpu` per element
/// - `BPF_F_NO_PREALLOC`: `(elem_size + 8) * count`, per-CPU adding `(8 + value) * ncpu * count`
///
/// kernel/bpf/arraymap.c, `array_map_mem_usage()`: `max_entries * round_up(value, 8)`; per-CPU
/// arrays `max_entries * (8 + round_up(value, 8) * ncpu)`; mmapable arrays page-aligned.
///
/// `None` for map types this does not model.
pub fn kernel_bytes(spec: &MapSpec, ncpu: u64, entries_if_not_prealloc: u64) -> Option<u64> {
    let value = round_up(spec.value, 8);
    let entries = spec.max_entries;
    match spec.kind.as_str() {
        "hash" | "percpu_hash" | "lru_hash" | "lru_percpu_hash" => {
            let percpu = spec.kind.contains("percpu");
            let lru = spec.kind.starts_with("lru");
            let elem = 48 + round_up(spec.key, 8) + if percpu { 8 } else { value };
            let mut usage = entries.next_power_of_two() * 16;
            if spec.flags & BPF_F_NO_PREALLOC == 0 || lru {
                let n = entries + if !lru && !percpu { ncpu } else { 0 };
                usage += elem * n;
                if percpu {
                    usage += value * ncpu * n;
                } else if !lru {
                    usage += 8 * ncpu;
                }
            } else {
                let n = entries_if_not_prealloc;
                usage += (elem + 8) * n;
                if percpu {
                    usage += (8 + value) * ncpu * n;
                }
            }
            Some(usage)
        }
        "array" if spec.flags & BPF_F_MMAPABLE != 0 => Some(PAGE + round_up(entries * value, PAGE)),
        "array" => Some(entries * value),
        "percpu_array" => Some(entries * (8 + value * ncpu)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str, flags: u64, key: u64, value: u64, max_entries: u64) -> MapSpec {
        MapSpec { name: "x".into(), kind: kind.into(), flags, key, value, max_entries }
    }

    #[test]
    fn formula_matches_memlock_seen_on_6_18() {
        // libbpf-tools biolatency's maps on a 2-CPU 6.18 machine; bpftool reported memlock
        // 918544 and 1983712: the formula plus the 896 B `struct bpf_htab`.
        assert_eq!(kernel_bytes(&spec("hash", 0, 8, 8, 10240), 2, 0), Some(918544 - 896));
        assert_eq!(kernel_bytes(&spec("hash", 0, 8, 108, 10240), 2, 0), Some(1983712 - 896));
        // .rodata (BPF_F_MMAPABLE | BPF_F_RDONLY_PROG): 8192.
        assert_eq!(kernel_bytes(&spec("array", 1152, 4, 12, 1), 2, 0), Some(8192));
    }

    #[test]
    fn per_cpu_values_scale_with_cpus() {
        let one = kernel_bytes(&spec("percpu_hash", 0, 8, 416, 1280), 1, 0).unwrap();
        let two = kernel_bytes(&spec("percpu_hash", 0, 8, 416, 1280), 2, 0).unwrap();
        assert_eq!(two - one, 416 * 1280);
    }
}
