//! Cgroup id -> cgroup path -> pod UID / container id, from a host cgroup tree (cgroup v2, or
//! the v1 blkio hierarchy for attribution by bio).
//!
//! The kernel side records a cgroup's kernfs id (the bio's blkcg, or
//! `bpf_get_current_cgroup_id()`), which is the inode number of the cgroup directory. Nothing in the kernel maps that id back to a path
//! cheaply, so we walk the cgroup tree and remember `inode -> path`; kubelet encodes the pod UID
//! (and the runtime the container id) in the path, so no API access is needed for the UID.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::{DirEntryExt as _, MetadataExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::watch::{CgroupEvent, CgroupWatcher};
use crate::error::{Error, Result};

/// Pod (and container) a cgroup belongs to, as kubelet and the runtime named it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodCgroup {
    /// `metadata.uid` with dashes (systemd's `_` undone); for static pods the 32-hex config hash
    /// that the mirror pod carries in its `kubernetes.io/config.mirror` annotation.
    pub pod_uid: String,
    /// Runtime container id (hex, no `containerd://` scheme); `None` for the pod cgroup itself and
    /// for runtime helpers such as CRI-O's conmon.
    pub container_id: Option<String>,
}

/// What one cgroup id resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupEntry {
    /// Relative to the cgroup v2 root, with a leading `/` (`/` is the root), as `/proc/<pid>/cgroup`.
    pub path: String,
    pub pod: Option<PodCgroup>,
}

/// Parses kubelet's pod cgroup names, for both cgroup drivers and the common runtimes:
///
/// - systemd: `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`
///   (also `crio-<id>.scope`, `docker-<id>.scope`; guaranteed pods sit directly under `kubepods.slice`;
///   a kubelet `--cgroup-root` adds a prefix such as `kubelet-kubepods-...`)
/// - cgroupfs: `kubepods/burstable/pod<uid>/<id>` and `kubepods/pod<uid>/<id>` (CRI-O: `crio-<id>`)
///
/// Anything above the `kubepods` component (a kind node's own container scope, say) is ignored, and
/// anything below the container component (cgroups a container made itself) belongs to that container.
pub fn parse_pod_path(path: &str) -> Option<PodCgroup> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let kubepods = comps.iter().position(|c| c.contains("kubepods"))?;
    for (i, comp) in comps.iter().enumerate().skip(kubepods) {
        if let Some(pod_uid) = pod_uid_of(comp) {
            let container_id = comps.get(i + 1).and_then(|c| container_id_of(c));
            return Some(PodCgroup { pod_uid, container_id });
        }
    }
    None
}

/// The pod-level cgroup of `path` (the path up to and including the pod component): the parent a
/// container's I/O is charged to once the container's own cgroup is long gone, and the cgroup
/// whose `io.pressure` is the pod's.
pub fn pod_dir(path: &str) -> Option<&str> {
    let kubepods = path.find("kubepods")?;
    let mut end = kubepods;
    for comp in path[kubepods..].split('/') {
        end += comp.len();
        if pod_uid_of(comp).is_some() {
            return Some(&path[..end]);
        }
        end += 1;
    }
    None
}

/// `kubepods-besteffort-pod<uid>.slice` (systemd) or `pod<uid>` (cgroupfs) -> normalised uid.
fn pod_uid_of(comp: &str) -> Option<String> {
    let raw = match comp.strip_suffix(".slice") {
        // The prefix check keeps a unit that merely contains "-pod" from passing as a pod.
        Some(stem) => stem.rsplit_once("-pod").filter(|(prefix, _)| prefix.contains("kubepods"))?.1,
        None => comp.strip_prefix("pod")?,
    };
    let uid = raw.replace('_', "-");
    valid_uid(&uid).then_some(uid)
}

/// A UUID (`8-4-4-4-12` hex) or the 32-hex hash kubelet uses as the UID of static pods.
fn valid_uid(s: &str) -> bool {
    let b = s.as_bytes();
    match b.len() {
        36 => b
            .iter()
            .enumerate()
            .all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { *c == b'-' } else { c.is_ascii_hexdigit() }),
        32 => b.iter().all(u8::is_ascii_hexdigit),
        _ => false,
    }
}

/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`, `crio-<id>`, `<id>` -> id.
fn container_id_of(comp: &str) -> Option<String> {
    let stem = comp.strip_suffix(".scope").unwrap_or(comp);
    // conmon is CRI-O's per-container monitor, not the container: its I/O (log writes) is the pod's.
    if stem.starts_with("crio-conmon-") {
        return None;
    }
    let id = ["cri-containerd-", "crio-", "docker-", "cri-dockerd-"]
        .iter()
        .find_map(|p| stem.strip_prefix(p))
        .unwrap_or(stem);
    // Runtimes use 64-hex ids; shorter hex (>= 12) is accepted for runtimes that abbreviate.
    (id.len() >= 12 && id.len() <= 128 && id.bytes().all(|c| c.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// Bounds on the walk, so a huge or hostile tree cannot take unbounded time or memory.
#[derive(Debug, Clone, Copy)]
pub struct ScanLimits {
    /// Cgroups remembered per scan; the walk stops there (and says so once).
    pub max_entries: usize,
    /// Directory depth below the root; kubelet's deepest layouts are ~6, kind nodes add ~3.
    pub max_depth: usize,
    /// An unknown id triggers a rescan at most this often.
    pub min_rescan: Duration,
    /// Rescan at least this often even without unknown ids, so deleted cgroups are forgotten.
    pub refresh: Duration,
    /// A cgroup the watcher saw removed still resolves to itself this long (requests submitted
    /// before the removal complete later; writeback of a dead container's pages can take
    /// minutes). After that a container's id resolves to its pod while the pod's cgroup exists.
    pub removed_grace: Duration,
}

impl Default for ScanLimits {
    fn default() -> Self {
        ScanLimits {
            max_entries: 32_768,
            max_depth: 16,
            min_rescan: Duration::from_secs(2),
            refresh: Duration::from_secs(60),
            removed_grace: Duration::from_secs(600),
        }
    }
}

/// Cache of cgroup id -> [`CgroupEntry`], rebuilt from the tree on demand (rate-limited), and
/// (with [`CgroupIndex::watch`]) fed by an inotify watcher the moment a pod's cgroup appears.
///
/// Two generations are kept: the last scan and the one before it. A cgroup removed between scans
/// can still have requests completing (they were submitted while it existed), so it stays
/// resolvable for one more scan; after that it is forgotten. Memory is at most twice
/// `max_entries` entries plus the bounded set of ids known to be absent.
pub struct CgroupIndex {
    root: PathBuf,
    limits: ScanLimits,
    current: HashMap<u64, CgroupEntry>,
    previous: HashMap<u64, CgroupEntry>,
    last_scan: Option<Instant>,
    /// Unknown ids and when they were first seen; they wait for a scan that started after that.
    pending: HashMap<u64, Instant>,
    /// Ids a scan started after their first sighting did not find (deleted, or outside this
    /// tree): they no longer trigger rescans, or an id from a dead cgroup would force a walk
    /// every `min_rescan` forever.
    absent: HashSet<u64>,
    truncated_warned: bool,
    failed_warned: bool,
    watcher: Option<CgroupWatcher>,
    /// What the watcher reported: every cgroup of the kubepods hierarchy, however short-lived.
    tracked: HashMap<u64, Tracked>,
}

#[derive(Debug)]
struct Tracked {
    entry: CgroupEntry,
    removed_at: Option<Instant>,
}

/// Caps the pending and absent sets (ids, 8 bytes each); past it they are simply cleared.
const MAX_UNKNOWN_IDS: usize = 4096;

impl CgroupIndex {
    pub fn new(root: PathBuf, limits: ScanLimits) -> Self {
        CgroupIndex {
            root,
            limits,
            current: HashMap::new(),
            previous: HashMap::new(),
            last_scan: None,
            pending: HashMap::new(),
            absent: HashSet::new(),
            truncated_warned: false,
            failed_warned: false,
            watcher: None,
            tracked: HashMap::new(),
        }
    }

    /// Starts the inotify watcher on the root and the `kubepods*` subtrees of the last scan.
    /// Without it (inotify unavailable) attribution still works from walks, but cgroups that
    /// live less than a walk's period are `unknown`.
    pub fn watch(&mut self) -> Result<()> {
        let w = CgroupWatcher::start(&self.root, self.kubepods_roots())?;
        self.watcher = Some(w);
        Ok(())
    }

    /// Whether the watcher runs.
    pub fn watching(&self) -> bool {
        self.watcher.as_ref().is_some_and(CgroupWatcher::is_running)
    }

    /// Outermost `kubepods*` directories of the last scan.
    fn kubepods_roots(&self) -> Vec<String> {
        let mut roots: Vec<String> = self
            .current
            .values()
            .filter_map(|e| {
                let i = e.path.find("kubepods")?;
                let end = e.path[i..].find('/').map_or(e.path.len(), |j| i + j);
                Some(e.path[..end].to_string())
            })
            .collect();
        roots.sort();
        roots.dedup();
        roots
    }

    /// Applies what the watcher saw since the last call, and ages out removed cgroups. Cheap;
    /// called every interval, with or without I/O.
    pub fn drain_events(&mut self, now: Instant) {
        let Some(w) = &self.watcher else { return };
        let mut overflow = false;
        for ev in w.drain() {
            match ev {
                CgroupEvent::Created { id, entry } => {
                    self.pending.remove(&id);
                    self.absent.remove(&id);
                    if self.tracked.len() >= self.limits.max_entries {
                        self.tracked.retain(|_, t| t.removed_at.is_none());
                    }
                    self.tracked.insert(id, Tracked { entry, removed_at: None });
                }
                CgroupEvent::Removed { id } => {
                    if let Some(t) = self.tracked.get_mut(&id) {
                        t.removed_at.get_or_insert(now);
                    }
                }
                CgroupEvent::Overflow => overflow = true,
            }
        }
        if !w.is_running() {
            tracing::warn!("cgroup watcher ended; short-lived containers may show as unknown");
            self.watcher = None;
        }
        if overflow {
            tracing::debug!("cgroup watcher lost events; walking the tree");
            self.last_scan = None;
        }
        self.age_removed(now);
    }

    /// Removed cgroups resolve to themselves for `removed_grace`; then a container's id resolves
    /// to its pod while the pod's cgroup exists (or is itself within its grace), then it is
    /// forgotten.
    fn age_removed(&mut self, now: Instant) {
        let grace = self.limits.removed_grace;
        let live_pods: HashSet<String> = self
            .tracked
            .values()
            .filter(|t| t.removed_at.is_none_or(|r| now.saturating_duration_since(r) < grace))
            .filter(|t| t.entry.pod.as_ref().is_some_and(|p| p.container_id.is_none()))
            .map(|t| t.entry.path.clone())
            .collect();
        self.tracked.retain(|_, t| {
            let Some(removed) = t.removed_at else { return true };
            if now.saturating_duration_since(removed) < grace {
                return true;
            }
            let Some(pod) = t.entry.pod.as_mut() else { return false };
            let alive = pod_dir(&t.entry.path).is_some_and(|d| live_pods.contains(d) && d != t.entry.path);
            if alive {
                pod.container_id = None;
            }
            alive
        });
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Number of cgroups in the last scan.
    pub fn len(&self) -> usize {
        self.current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    pub fn resolve(&self, id: u64) -> Option<&CgroupEntry> {
        // The watcher's record first: after the grace period a dead container's entry there
        // names only its pod, while a walk from before its removal may still hold it.
        self.tracked.get(&id).map(|t| &t.entry).or_else(|| self.current.get(&id)).or_else(|| self.previous.get(&id))
    }

    /// Pod-level cgroups known now (from the last walk and the watcher), for `io.pressure`;
    /// `created_since_start` is true for those the watcher saw being created.
    pub fn pod_dirs(&self) -> Vec<(String, bool)> {
        let is_pod = |e: &CgroupEntry| {
            e.pod.as_ref().is_some_and(|p| p.container_id.is_none()) && pod_dir(&e.path) == Some(e.path.as_str())
        };
        let mut out: HashMap<&str, bool> = HashMap::new();
        for e in self.current.values().filter(|e| is_pod(e)) {
            out.insert(&e.path, false);
        }
        for t in self.tracked.values().filter(|t| t.removed_at.is_none() && is_pod(&t.entry)) {
            out.entry(&t.entry.path).or_insert(true);
        }
        let mut v: Vec<(String, bool)> = out.into_iter().map(|(p, c)| (p.to_string(), c)).collect();
        v.sort();
        v
    }

    /// Makes `ids` resolvable if they can be: rescans when one is unknown (at most every
    /// `min_rescan`), and in any case every `refresh`. Scan errors are logged once and the old
    /// cache is kept; attribution degrades to `unknown`, it does not stop the agent.
    pub fn refresh_for(&mut self, ids: impl IntoIterator<Item = u64>, now: Instant) {
        self.drain_events(now);
        for id in ids {
            if self.resolve(id).is_none() && !self.absent.contains(&id) {
                if self.pending.len() >= MAX_UNKNOWN_IDS {
                    self.pending.clear();
                }
                self.pending.entry(id).or_insert(now);
            }
        }
        let due = match self.last_scan {
            None => true,
            Some(last) => {
                let since = now.saturating_duration_since(last);
                since >= self.limits.refresh || (!self.pending.is_empty() && since >= self.limits.min_rescan)
            }
        };
        if !due {
            return;
        }
        match self.scan_at(now) {
            Ok(()) => self.failed_warned = false,
            Err(e) => {
                // Retry no sooner than min_rescan rather than on every interval.
                self.last_scan = Some(now);
                if !self.failed_warned {
                    tracing::warn!(error = %e, "cannot walk the cgroup tree; pod attribution keeps its last view");
                    self.failed_warned = true;
                }
            }
        }
    }

    /// Walks the tree now (no rate limit).
    pub fn scan(&mut self) -> Result<()> {
        self.scan_at(Instant::now())
    }

    fn scan_at(&mut self, now: Instant) -> Result<()> {
        let (map, truncated) = walk(&self.root, &self.limits)?;
        if truncated && !self.truncated_warned {
            tracing::warn!(
                root = %self.root.display(),
                max = self.limits.max_entries,
                "cgroup tree larger than the cache; some cgroups will show as unknown"
            );
            self.truncated_warned = true;
        }
        self.previous = std::mem::replace(&mut self.current, map);
        self.last_scan = Some(now);
        // Ids first seen before this scan started and still not found are gone for good.
        let pending = std::mem::take(&mut self.pending);
        for (id, first_seen) in pending {
            if self.resolve(id).is_some() {
                continue;
            }
            if first_seen <= now {
                if self.absent.len() >= MAX_UNKNOWN_IDS {
                    self.absent.clear();
                }
                self.absent.insert(id);
            } else {
                self.pending.insert(id, first_seen);
            }
        }
        // An id can come back only if it is reused, which kernfs avoids on 64-bit; drop it anyway.
        let current = &self.current;
        self.absent.retain(|id| !current.contains_key(id));
        if let Some(w) = &self.watcher {
            w.watch_roots(self.kubepods_roots());
        }
        Ok(())
    }
}

/// Walks `root` depth-first: (id -> entry, truncated). Cgroups that vanish mid-walk are skipped.
fn walk(root: &Path, limits: &ScanLimits) -> Result<(HashMap<u64, CgroupEntry>, bool)> {
    let meta = std::fs::metadata(root).map_err(|e| Error::read(root, e))?;
    let mut map = HashMap::new();
    map.insert(meta.ino(), CgroupEntry { path: "/".into(), pod: None });
    // Reading the root itself must work: an unreadable root is a configuration error.
    let first = std::fs::read_dir(root).map_err(|e| Error::read(root, e))?;
    let mut stack: Vec<(PathBuf, String, usize, Option<std::fs::ReadDir>)> =
        vec![(root.to_path_buf(), String::new(), 0, Some(first))];
    let mut truncated = false;
    while let Some((dir, rel, depth, iter)) = stack.pop() {
        let iter = match iter {
            Some(it) => it,
            None => match std::fs::read_dir(&dir) {
                Ok(it) => it,
                // Removed (pod deleted) or unreadable since its parent was listed: skip it.
                Err(_) => continue,
            },
        };
        for entry in iter.flatten() {
            // file_type() comes from readdir: no stat, and symlinks are not followed.
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if map.len() >= limits.max_entries {
                truncated = true;
                break;
            }
            let name = entry.file_name();
            let child_rel = format!("{rel}/{}", name.to_string_lossy());
            // readdir's d_ino on cgroupfs is the kernfs id, the same as stat's st_ino.
            let pod = parse_pod_path(&child_rel);
            map.insert(entry.ino(), CgroupEntry { path: child_rel.clone(), pod });
            if depth + 1 < limits.max_depth {
                stack.push((entry.path(), child_rel, depth + 1, None));
            }
        }
        if truncated {
            break;
        }
    }
    Ok((map, truncated))
}

#[cfg(test)]
#[path = "cgroups_tests.rs"]
mod tests;
