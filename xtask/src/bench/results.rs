//! What `bench-overhead` measured, the summaries derived from it, and its JSON form.

use serde_json::{Value, json};

use super::bpf::{LoadedMap, MapSpec};

pub const NODE_CPUS: u64 = 192;
pub const NODE_DEVICES: u64 = 32;

#[derive(Debug, Default)]
pub struct Meta {
    pub command: String,
    pub date_utc: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cpus_online: u64,
    pub cpus_possible: u64,
    pub mem_total: String,
    pub load_before: String,
    pub load_after: String,
    pub fio: String,
    pub biolatency: Option<String>,
    pub setup: String,
    pub stats_original: String,
    pub runtime_s: u64,
    pub rounds: u32,
    pub elapsed_s: f64,
}

#[derive(Debug, Clone)]
pub struct ProgRow {
    pub tool: &'static str,
    pub name: String,
    pub runs: u64,
    pub run_ns: u64,
    pub jited: u64,
}

#[derive(Debug, Clone)]
pub struct KernelRun {
    pub workload: &'static str,
    pub order: &'static str,
    /// Requests completed by the loop device during the window.
    pub ios: u64,
    pub secs: f64,
    pub fio_iops: f64,
    pub cpu_pressure: Option<f64>,
    /// Hypervisor steal during the run (%, `sys::steal_percent`).
    pub steal: Option<f64>,
    pub progs: Vec<ProgRow>,
}

impl KernelRun {
    fn tool_ns(&self, tool: &str) -> Option<u64> {
        let mut it = self.progs.iter().filter(|p| p.tool == tool).peekable();
        it.peek()?;
        Some(it.map(|p| p.run_ns).sum())
    }
}

#[derive(Debug, Clone)]
pub struct IopsRun {
    pub workload: &'static str,
    pub round: u32,
    pub with_agent: bool,
    pub iops: f64,
    pub cpu_pressure: Option<f64>,
    pub steal: Option<f64>,
}

#[derive(Debug, Clone, Default)]
pub struct SnapshotStats {
    pub devices: usize,
    pub interval_s: f64,
    pub wall_s: f64,
    pub build_us: Vec<u64>,
    pub total_us: Vec<u64>,
    pub cpu_sched_ns: u64,
    pub cpu_tick_ns: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// VmHWM right after the programs were attached (before the first snapshot).
    pub hwm_attach_kib: u64,
}

#[derive(Debug, Clone)]
pub struct MapRow {
    pub spec: MapSpec,
    /// "code" (declared in state.rs or gauge.rs, sizes from blkio-agent-common) or "loaded" (only seen in
    /// the loaded object: globals sections or maps this table does not know yet).
    pub source: &'static str,
    pub loaded: Option<LoadedMap>,
    pub formula_local: Option<u64>,
    pub node_bytes: Option<u64>,
    pub note: String,
}

#[derive(Debug, Default)]
pub struct Results {
    pub meta: Meta,
    pub kernel: Vec<KernelRun>,
    /// The same measurement with the agent attributing I/O to pods (`--attribute-pods`, as the
    /// chart runs it); its source as the agent logged it.
    pub attribution: Vec<KernelRun>,
    pub attribution_mode: Option<String>,
    pub iops: Vec<IopsRun>,
    pub snapshot: Option<SnapshotStats>,
    pub maps: Vec<MapRow>,
}

pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Mean of per-run readings, `None` when any run lacks one (its source was unreadable).
pub fn mean_of(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    v.collect::<Option<Vec<f64>>>().map(|v| mean(&v))
}

pub fn sd(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// Nearest-rank percentile.
pub fn pct(v: &[u64], p: f64) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    if s.is_empty() {
        return 0;
    }
    s[((p / 100.0 * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1]
}

/// Workloads in first-seen order.
pub fn workloads<'a>(names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for n in names {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

pub struct KernelSummary {
    pub workload: String,
    pub ios: u64,
    pub iops: f64,
    pub agent_ns: f64,
    pub bio_ns: Option<f64>,
    pub per_order: Vec<(String, f64)>,
    /// Mean hypervisor steal (%) over the workload's runs.
    pub steal: Option<f64>,
}

pub fn kernel_summary(r: &Results) -> Vec<KernelSummary> {
    summary_of(&r.kernel)
}

/// Per workload, over every run in `kernel`.
pub fn summary_of(kernel: &[KernelRun]) -> Vec<KernelSummary> {
    workloads(kernel.iter().map(|k| k.workload))
        .into_iter()
        .map(|w| {
            let runs: Vec<&KernelRun> = kernel.iter().filter(|k| k.workload == w).collect();
            let ios: u64 = runs.iter().map(|k| k.ios).sum();
            let agent: u64 = runs.iter().filter_map(|k| k.tool_ns("agent")).sum();
            let bio: Option<u64> = runs.iter().map(|k| k.tool_ns("biolatency")).sum();
            let mut per_order: Vec<(String, f64)> = runs
                .iter()
                .filter_map(|k| {
                    Some((k.order.to_string(), k.tool_ns("agent")? as f64 / k.tool_ns("biolatency")?.max(1) as f64))
                })
                .collect();
            // Alone on a node a tool is always first on the tracepoint (cold `struct request`):
            // each tool's cost from the run where it was attached first (two runs, so noise does
            // not cancel here).
            let per_io = |order: &str, tool: &str| {
                let k = runs.iter().find(|k| k.order == order)?;
                Some(k.tool_ns(tool)? as f64 / k.ios.max(1) as f64)
            };
            if let (Some(a), Some(b)) = (per_io("agent first", "agent"), per_io("biolatency first", "biolatency")) {
                per_order.push(("each tool first".into(), a / b));
            }
            KernelSummary {
                workload: w.to_string(),
                ios,
                iops: mean(&runs.iter().map(|k| k.fio_iops).collect::<Vec<_>>()),
                agent_ns: agent as f64 / ios.max(1) as f64,
                bio_ns: bio.map(|b| b as f64 / ios.max(1) as f64),
                per_order,
                steal: mean_of(runs.iter().map(|k| k.steal)),
            }
        })
        .collect()
}

pub struct IopsSummary {
    pub workload: String,
    pub without: Vec<f64>,
    pub with: Vec<f64>,
    /// Mean CPU pressure (PSI `some`, %) over all runs of the workload.
    pub cpu_pressure: Option<f64>,
    /// Mean hypervisor steal (%) over all runs of the workload.
    pub steal: Option<f64>,
}

impl IopsSummary {
    /// Ratio of the means (issue 6's number).
    pub fn ratio(&self) -> f64 {
        mean(&self.with) / mean(&self.without)
    }

    /// with/without of each back-to-back pair.
    pub fn pair_ratios(&self) -> Vec<f64> {
        self.with.iter().zip(&self.without).map(|(w, wo)| w / wo).collect()
    }

    /// Mean of the pair ratios and the half-width of its 95 % confidence interval (Student t).
    pub fn ci95(&self) -> (f64, f64) {
        let r = self.pair_ratios();
        const T: [f64; 10] = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228];
        let df = r.len().saturating_sub(1);
        let t = match df {
            0 => f64::INFINITY,
            1..=10 => T[df - 1],
            11..=20 => 2.2,
            _ => 2.05,
        };
        (mean(&r), t * sd(&r) / (r.len() as f64).sqrt())
    }

    /// Against the 0.98 target: decided only when the confidence interval is on one side.
    pub fn verdict(&self) -> &'static str {
        let (m, h) = self.ci95();
        if m - h >= 0.98 {
            "met"
        } else if m + h < 0.98 {
            "**not met**"
        } else {
            "inconclusive (noise)"
        }
    }
}

pub fn iops_summary(r: &Results) -> Vec<IopsSummary> {
    workloads(r.iops.iter().map(|i| i.workload))
        .into_iter()
        .map(|w| {
            let pick = |with: bool| {
                let mut v: Vec<&IopsRun> = r.iops.iter().filter(|i| i.workload == w && i.with_agent == with).collect();
                v.sort_by_key(|i| i.round);
                v.iter().map(|i| i.iops).collect()
            };
            let runs = || r.iops.iter().filter(move |i| i.workload == w);
            IopsSummary {
                workload: w.to_string(),
                without: pick(false),
                with: pick(true),
                cpu_pressure: mean_of(runs().map(|i| i.cpu_pressure)),
                steal: mean_of(runs().map(|i| i.steal)),
            }
        })
        .collect()
}

pub fn json(r: &Results) -> Value {
    let m = &r.meta;
    json!({
        "meta": {
            "command": m.command, "date_utc": m.date_utc, "kernel": m.kernel, "cpu_model": m.cpu_model,
            "cpus_online": m.cpus_online, "cpus_possible": m.cpus_possible, "mem_total": m.mem_total,
            "load_before": m.load_before, "load_after": m.load_after, "fio": m.fio, "biolatency": m.biolatency, "setup": m.setup,
            "bpf_stats_enabled_original": m.stats_original, "runtime_s": m.runtime_s, "rounds": m.rounds,
            "elapsed_s": m.elapsed_s,
        },
        "kernel": kernel_summary(r).iter().map(|k| json!({
            "workload": k.workload, "ios": k.ios, "iops": k.iops, "agent_ns_per_io": k.agent_ns,
            "biolatency_ns_per_io": k.bio_ns, "ratio": k.bio_ns.map(|b| k.agent_ns / b), "steal_percent_mean": k.steal,
            "ratio_per_order": k.per_order.iter().map(|(o, x)| json!({"order": o, "ratio": x})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "attribution_mode": r.attribution_mode,
        "attribution_kernel": summary_of(&r.attribution).iter().map(|k| json!({
            "workload": k.workload, "ios": k.ios, "agent_ns_per_io": k.agent_ns,
            "biolatency_ns_per_io": k.bio_ns, "ratio": k.bio_ns.map(|b| k.agent_ns / b), "steal_percent_mean": k.steal,
        })).collect::<Vec<_>>(),
        "kernel_runs": r.kernel.iter().chain(&r.attribution).map(|k| json!({
            "workload": k.workload, "order": k.order, "ios": k.ios, "secs": k.secs, "fio_iops": k.fio_iops,
            "cpu_pressure_percent": k.cpu_pressure, "steal_percent": k.steal,
            "programs": k.progs.iter().map(|p| json!({
                "tool": p.tool, "name": p.name, "run_cnt": p.runs, "run_time_ns": p.run_ns, "bytes_jited": p.jited,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "iops": iops_summary(r).iter().map(|i| json!({
            "workload": i.workload, "without": i.without, "with": i.with, "ratio": i.ratio(),
            "cpu_pressure_percent_mean": i.cpu_pressure, "steal_percent_mean": i.steal,
            "pair_ratios": i.pair_ratios(), "pair_ratio_mean": i.ci95().0, "pair_ratio_ci95_half_width": i.ci95().1,
            "verdict": i.verdict().trim_matches('*'),
        })).collect::<Vec<_>>(),
        "snapshot": r.snapshot.as_ref().map(|s| json!({
            "devices": s.devices, "interval_s": s.interval_s, "wall_s": s.wall_s,
            "build_us": s.build_us, "total_us": s.total_us,
            "build_us_median": pct(&s.build_us, 50.0), "build_us_p99": pct(&s.build_us, 99.0),
            "total_us_median": pct(&s.total_us, 50.0), "total_us_p99": pct(&s.total_us, 99.0),
            "cpu_ns": s.cpu_sched_ns, "cpu_tick_ns": s.cpu_tick_ns,
            "cpu_percent_of_one_core": s.cpu_sched_ns as f64 / (s.wall_s * 1e9) * 100.0,
            "rss_kib": s.rss_kib, "hwm_kib": s.hwm_kib, "hwm_at_attach_kib": s.hwm_attach_kib,
        })),
        "maps": {
            "node_cpus": NODE_CPUS, "node_devices": NODE_DEVICES,
            "node_total_bytes": r.maps.iter().filter_map(|m| m.node_bytes).sum::<u64>(),
            "maps": r.maps.iter().map(|row| json!({
                "name": row.spec.name, "source": row.source, "type": row.spec.kind, "flags": row.spec.flags,
                "key": row.spec.key, "value": row.spec.value, "max_entries": row.spec.max_entries,
                "formula_local_bytes": row.formula_local, "memlock_local_bytes": row.loaded.as_ref().map(|l| l.memlock),
                "node_bytes": row.node_bytes, "note": row.note,
            })).collect::<Vec<_>>(),
        },
    })
}
