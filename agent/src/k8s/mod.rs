//! Cgroup -> pod attribution (issue 5). See `docs/attribution.md`.
//!
//! The eBPF programs charge each request to a cgroup recorded at submission, never to "current"
//! at completion (IRQ context: whoever was interrupted): by default the cgroup the block layer
//! itself charged the request to (`bio->bi_blkg`, see [`CgroupPlan`]), else the submitting
//! task's cgroup taken at insert/issue. Here each interval's per-cgroup deltas become per-pod
//! series:
//!
//! 1. cgroup id -> cgroup path, recorded the moment a pod's cgroup appears by an inotify watch on
//!    the `kubepods*` hierarchy ([`watch`]), and by walking the host cgroup tree ([`cgroups`]);
//! 2. path -> pod UID and container id, from kubelet's and the runtime's naming ([`cgroups`]);
//! 3. pod UID -> namespace, pod and container names, from a watcher of this node's pods ([`pods`]),
//!    when the API is reachable; without it, series carry the pod UID only;
//! 4. the busiest `max_pods` series are kept, the rest summed into `other` ([`attribution`]).

pub mod attribution;
pub mod cgroups;
pub mod pods;
pub mod watch;

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    time::Instant,
};

use k8s_openapi::api::core::v1::Pod;
use kube::{Client, runtime::reflector::store::Store};

use crate::{
    cli::AttributionSource,
    collector::CgroupDelta,
    error::{Error, Result},
    loader::CgroupSource,
    pressure::{PodPressure, Pressure},
    snapshot::PodStats,
};
use attribution::{Aggregator, Labels, UNKNOWN};
use cgroups::{CgroupIndex, ScanLimits};
use pods::PodDirectory;

/// `statfs.f_type` of a cgroup v2 mount.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// `statfs.f_type` of a cgroup v1 hierarchy.
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;

/// Which attribution source to ask the loader for, and the cgroup mount whose ids each source
/// produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPlan {
    pub preferred: CgroupSource,
    /// The io controller's hierarchy, when one is usable: the cgroup v2 mount with `io` enabled
    /// down to the pods, else the v1 `blkio` hierarchy.
    pub io_root: Option<PathBuf>,
    /// The cgroup v2 mount (ids of `bpf_get_current_cgroup_id()`).
    pub task_root: PathBuf,
}

impl CgroupPlan {
    /// `explicit` is `--cgroup-root`: both sources then read it.
    pub fn resolve(explicit: Option<&Path>, sys_root: &Path, wanted: AttributionSource) -> CgroupPlan {
        let task_root = resolve_cgroup_root(explicit, sys_root);
        let io_root = match explicit {
            Some(p) => io_hierarchy(p).then(|| p.to_path_buf()),
            None => {
                let base = sys_root.join("sys/fs/cgroup");
                [base.clone(), base.join("blkio"), base.join("unified")].into_iter().find(|p| io_hierarchy(p))
            }
        };
        if wanted == AttributionSource::Bio && io_root.is_none() {
            tracing::warn!(
                "--attribution-source bio, but no io controller hierarchy that names pods was found; cgroup ids \
                 are mapped through {} (pass --cgroup-root with the io controller's mount)",
                task_root.display()
            );
        }
        let preferred = match wanted {
            AttributionSource::Bio => CgroupSource::Bio,
            AttributionSource::Task => CgroupSource::Task,
            AttributionSource::Auto if io_root.is_some() => CgroupSource::Bio,
            AttributionSource::Auto => CgroupSource::Task,
        };
        CgroupPlan { preferred, io_root, task_root }
    }

    /// The mount to map ids through once the loader has said which source is in effect.
    pub fn root_for(&self, source: CgroupSource) -> &Path {
        match (source, &self.io_root) {
            (CgroupSource::Bio, Some(io)) => io,
            _ => &self.task_root,
        }
    }
}

/// Whether the io controller's cgroups at `path` name pods: a v1 `blkio` hierarchy, or a cgroup
/// v2 mount where `io` is enabled for the children of the root, of kubelet's `kubepods*` cgroup
/// and of its QoS-class cgroups, down to the pods (else a pod's I/O is charged to an ancestor,
/// which names no pod). Before kubelet has created `kubepods*`, the root decides.
pub fn io_hierarchy(path: &Path) -> bool {
    match fs_type(path) {
        Some(CGROUP_SUPER_MAGIC) => path.join("blkio.reset_stats").exists(),
        Some(CGROUP2_SUPER_MAGIC) => {
            let enabled = |dir: &Path| {
                std::fs::read_to_string(dir.join("cgroup.subtree_control"))
                    .is_ok_and(|c| c.split_whitespace().any(|w| w == "io"))
            };
            let kubepods = subdirs(path, |n| n.starts_with("kubepods"));
            // systemd driver: kubepods-burstable.slice; cgroupfs driver: burstable.
            let qos = kubepods.iter().flat_map(|k| {
                subdirs(k, |n| {
                    (n.starts_with("kubepods-") && !n.contains("-pod")) || n == "burstable" || n == "besteffort"
                })
            });
            enabled(path) && kubepods.iter().all(|d| enabled(d)) && qos.into_iter().all(|d| enabled(&d))
        }
        _ => false,
    }
}

fn subdirs(dir: &Path, name: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| name(&e.file_name().to_string_lossy()) && e.path().is_dir())
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// The cgroup v2 mount to read: `explicit` (`--cgroup-root`) if given; else
/// `<sys_root>/sys/fs/cgroup` on unified hosts, or its `unified` subdirectory on hybrid ones
/// (v1 controllers at the top, v2 beside them). If neither is cgroup v2, the first is returned
/// and [`Attribution::start`] reports it.
pub fn resolve_cgroup_root(explicit: Option<&Path>, sys_root: &Path) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    let base = sys_root.join("sys/fs/cgroup");
    let unified = base.join("unified");
    if !is_cgroup2(&base) && is_cgroup2(&unified) { unified } else { base }
}

/// True when `path` is the root or a directory of a cgroup v2 filesystem.
pub fn is_cgroup2(path: &Path) -> bool {
    fs_type(path) == Some(CGROUP2_SUPER_MAGIC)
}

/// True when `path` is in a cgroup v1 hierarchy.
pub fn is_cgroup1(path: &Path) -> bool {
    fs_type(path) == Some(CGROUP_SUPER_MAGIC)
}

/// `statfs(path).f_type`.
fn fs_type(path: &Path) -> Option<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statfs is plain integers, for which all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the path is NUL-terminated and statfs only writes into the struct we own.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    #[allow(clippy::unnecessary_cast)] // f_type's integer type differs between libc targets.
    let f_type = st.f_type as i64;
    (rc == 0).then_some(f_type)
}

/// Per-interval pod attribution; owns the cgroup cache and (when the API is reachable) the pod
/// watcher task, which stops when this is dropped.
pub struct Attribution {
    cgroups: CgroupIndex,
    pods: PodDirectory,
    max_pods: usize,
    watcher: Option<tokio::task::JoinHandle<()>>,
    warned_above_pods: bool,
    /// Pods' `io.pressure`, read from the cgroup v2 mount (which may differ from the root ids are
    /// mapped through: v1 blkio for attribution by bio on hybrid hosts).
    pressure: Option<PodPressure>,
}

impl Drop for Attribution {
    fn drop(&mut self) {
        if let Some(task) = self.watcher.take() {
            task.abort();
        }
    }
}

impl Attribution {
    /// For `run --attribute-pods`; call inside the agent's tokio runtime. Checks that
    /// `cgroup_root` is a readable cgroup v2 mount and scans it once, then starts the pod watcher
    /// in the background: the Kubernetes configuration is inferred (`KUBECONFIG`/`~/.kube/config`,
    /// else in-cluster); if there is none, it logs once and attribution runs on cgroups and pod
    /// UIDs alone. API failures (missing RBAC included) never fail the agent.
    pub fn start(cgroup_root: PathBuf, source: CgroupSource, node_name: String, max_pods: usize) -> Result<Self> {
        // Task ids are cgroup v2 ids; bio ids are the io controller's, v1 blkio included.
        let usable = is_cgroup2(&cgroup_root)
            || (source == CgroupSource::Bio
                && is_cgroup1(&cgroup_root)
                && cgroup_root.join("blkio.reset_stats").exists());
        if !usable {
            return Err(Error::Config {
                what: "cgroup root",
                value: cgroup_root.display().to_string(),
                reason: "not a cgroup v2 mount (nor, for --attribution-source bio, a v1 blkio hierarchy); pass \
                         --cgroup-root with the mount point from /proc/self/mountinfo (in a pod: the host's \
                         /sys/fs/cgroup mounted read-only)"
                    .into(),
            });
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Other("pod attribution must be started inside the agent's tokio runtime".into()))?;
        let mut me = Self::without_api(cgroup_root, max_pods)?;
        if node_name.trim().is_empty() {
            // An empty field selector would watch every pod in the cluster.
            tracing::warn!(
                "no node name; not watching pods (set NODE_NAME from the downward API); pods reported by UID only"
            );
            return Ok(me);
        }
        let writer = kube::runtime::reflector::store::Writer::<Pod>::default();
        let deleted = pods::DeletedPods::default();
        me.pods = PodDirectory::new(Some(writer.as_reader())).with_deleted(deleted.clone());
        me.watcher = Some(runtime.spawn(async move {
            // kube's rustls client takes the process default provider; only ring is built in,
            // install it explicitly so a second provider elsewhere cannot make that ambiguous.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let config = match kube::Config::infer().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::info!(
                        reason = %e,
                        "no Kubernetes API configuration (not in a pod, no KUBECONFIG); pods are reported by cgroup and pod UID only"
                    );
                    // Stays parked: for the supervisor, the watcher ending means it failed.
                    return std::future::pending().await;
                }
            };
            match Client::try_from(config) {
                Ok(client) => pods::run_watcher(client, node_name, writer, deleted).await,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot build a Kubernetes client; pods are reported by cgroup and pod UID only");
                    std::future::pending().await
                }
            }
        }));
        Ok(me)
    }

    /// Attribution with a given API client (tests pass kube's mock service). `cgroup_root` is
    /// scanned once now; an unreadable root is an error.
    pub fn with_client(cgroup_root: PathBuf, node_name: &str, max_pods: usize, client: Client) -> Result<Self> {
        let mut me = Self::without_api(cgroup_root, max_pods)?;
        let deleted = pods::DeletedPods::default();
        let (store, task) = pods::spawn_watcher(client, node_name, deleted.clone());
        me.pods = PodDirectory::new(Some(store)).with_deleted(deleted);
        me.watcher = Some(task);
        Ok(me)
    }

    /// Attribution from cgroups alone: series carry pod UIDs and cgroup paths, no names.
    pub fn without_api(cgroup_root: PathBuf, max_pods: usize) -> Result<Self> {
        let mut cgroups = CgroupIndex::new(cgroup_root, ScanLimits::default());
        cgroups.scan()?;
        if let Err(e) = cgroups.watch() {
            tracing::warn!(error = %e, "containers shorter-lived than a walk of the cgroup tree may show as unknown");
        }
        let mut me = Attribution {
            cgroups,
            pods: PodDirectory::default(),
            max_pods,
            watcher: None,
            warned_above_pods: false,
            pressure: None,
        };
        me.set_pressure_root(Some(me.cgroups.root().to_path_buf()));
        Ok(me)
    }

    /// Where pods' `io.pressure` is read: the cgroup v2 mount (`None`: not at all). Takes the
    /// baseline reading of every known pod now, so their first interval has a delta.
    pub fn set_pressure_root(&mut self, root: Option<PathBuf>) {
        self.pressure = root.map(PodPressure::new);
        self.sample_pressure();
    }

    fn sample_pressure(&mut self) -> HashMap<String, Pressure> {
        match &mut self.pressure {
            Some(p) => p.sample(&self.cgroups.pod_dirs()),
            None => HashMap::new(),
        }
    }

    /// The pod watcher task, for supervision (it runs until this is dropped).
    pub fn watcher(&self) -> Option<tokio::task::AbortHandle> {
        self.watcher.as_ref().map(|h| h.abort_handle())
    }

    /// The reflector store of this node's pods, when a watcher runs (empty until it syncs).
    pub fn pod_store(&self) -> Option<&Store<Pod>> {
        self.pods.store()
    }

    /// One interval's per-cgroup deltas -> per-pod series, busiest `max_pods` first, then one
    /// `cgroup: "other"` series per (device, op) for the rest; the sum of `count`, `bytes`,
    /// `sum_ns` and every bucket over the result equals that over `deltas`. Synchronous and cheap:
    /// a cache lookup per delta, plus a walk of the cgroup tree when an unknown id shows up (at
    /// most every 2 s) or every 60 s.
    pub fn attribute(&mut self, deltas: &[CgroupDelta]) -> Vec<PodStats> {
        self.attribute_at(deltas, Instant::now())
    }

    /// [`Attribution::attribute`] as the interval model's series (what the run loop uses).
    pub fn attribute_series(&mut self, deltas: &[CgroupDelta]) -> Vec<crate::interval::PodSeries> {
        self.series_at(deltas, Instant::now())
    }

    fn attribute_at(&mut self, deltas: &[CgroupDelta], now: Instant) -> Vec<PodStats> {
        self.series_at(deltas, now).iter().map(crate::interval::PodSeries::stats).collect()
    }

    fn series_at(&mut self, deltas: &[CgroupDelta], now: Instant) -> Vec<crate::interval::PodSeries> {
        // Every interval, I/O or not: the watcher's queue is bounded, and pressure deltas are
        // per interval.
        self.cgroups.drain_events(now);
        let pressure = self.sample_pressure();
        if deltas.is_empty() {
            return Vec::new();
        }
        self.cgroups.refresh_for(deltas.iter().map(|d| d.cgroup_id), now);
        let cgroups = &self.cgroups;
        let uids: HashSet<&str> = deltas
            .iter()
            .filter_map(|d| cgroups.resolve(d.cgroup_id)?.pod.as_ref())
            .map(|p| p.pod_uid.as_str())
            .collect();
        let known = self.pods.index(&uids, now);
        let mut agg = Aggregator::default();
        // Reported pod UID -> the pod's cgroup, whose io.pressure goes on the pod's rows.
        let mut pod_cgroups: HashMap<String, &str> = HashMap::new();
        for d in deltas {
            let labels = match cgroups.resolve(d.cgroup_id) {
                Some(entry) => match &entry.pod {
                    Some(pod) => {
                        let names = known.get(&pod.pod_uid).and_then(|p| pods::names(p, pod.container_id.as_deref()));
                        let uid = names.as_ref().and_then(|n| n.uid.clone()).unwrap_or_else(|| pod.pod_uid.clone());
                        if let Some(dir) = cgroups::pod_dir(&entry.path) {
                            pod_cgroups.insert(uid.clone(), dir);
                        }
                        Labels {
                            namespace: names.as_ref().map(|n| n.namespace.clone()),
                            pod: names.as_ref().map(|n| n.pod.clone()),
                            // The API's UID when known: static pods' cgroups carry their config hash.
                            pod_uid: Some(uid),
                            container: names.and_then(|n| n.container),
                            cgroup: None,
                        }
                    }
                    None => {
                        // Pods' I/O charged above the pods: the io controller is not enabled down
                        // to them (attribution by bio). Said once; `--attribution-source task` helps.
                        if !self.warned_above_pods && entry.path.contains("kubepods") {
                            self.warned_above_pods = true;
                            tracing::warn!(
                                cgroup = %entry.path,
                                "I/O charged to a kubepods cgroup above the pods; if the io controller is not enabled down \
                                 to the pods, use --attribution-source task"
                            );
                        }
                        Labels { cgroup: Some(entry.path.clone()), ..Labels::default() }
                    }
                },
                None => Labels { cgroup: Some(UNKNOWN.to_string()), ..Labels::default() },
            };
            agg.add(labels, d);
        }
        let mut out = agg.finish_series(self.max_pods);
        for row in out.iter_mut().filter(|r| r.labels.cgroup.is_none()) {
            row.io_pressure = row
                .labels
                .pod_uid
                .as_ref()
                .and_then(|u| pod_cgroups.get(u))
                .and_then(|dir| pressure.get(*dir))
                .copied();
        }
        out
    }
}

#[cfg(test)]
mod tests;
