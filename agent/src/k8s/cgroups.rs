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
}

impl Default for ScanLimits {
    fn default() -> Self {
        ScanLimits {
            max_entries: 32_768,
            max_depth: 16,
            min_rescan: Duration::from_secs(2),
            refresh: Duration::from_secs(60),
        }
    }
}

/// Cache of cgroup id -> [`CgroupEntry`], rebuilt from the tree on demand (rate-limited).
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
        }
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
        self.current.get(&id).or_else(|| self.previous.get(&id))
    }

    /// Makes `ids` resolvable if they can be: rescans when one is unknown (at most every
    /// `min_rescan`), and in any case every `refresh`. Scan errors are logged once and the old
    /// cache is kept; attribution degrades to `unknown`, it does not stop the agent.
    pub fn refresh_for(&mut self, ids: impl IntoIterator<Item = u64>, now: Instant) {
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
mod tests {
    use super::*;

    const UID: &str = "0c6e5e9a-3c2b-4f1e-9d8a-7b6c5d4e3f21";
    const UID_US: &str = "0c6e5e9a_3c2b_4f1e_9d8a_7b6c5d4e3f21";
    const CID: &str = "4a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcdef";

    fn pod(cid: Option<&str>) -> Option<PodCgroup> {
        Some(PodCgroup { pod_uid: UID.into(), container_id: cid.map(str::to_string) })
    }

    #[test]
    fn systemd_driver_layouts() {
        for qos in ["burstable", "besteffort"] {
            let base = format!("/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{UID_US}.slice");
            assert_eq!(parse_pod_path(&base), pod(None), "{base}");
            for prefix in ["cri-containerd-", "crio-", "docker-"] {
                let p = format!("{base}/{prefix}{CID}.scope");
                assert_eq!(parse_pod_path(&p), pod(Some(CID)), "{p}");
            }
        }
        // Guaranteed pods sit directly under kubepods.slice.
        let g = format!("/kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-{CID}.scope");
        assert_eq!(parse_pod_path(&g), pod(Some(CID)));
        // A container that made cgroups of its own: still that container.
        let nested = format!("{g}/init.scope");
        assert_eq!(parse_pod_path(&nested), pod(Some(CID)));
        // CRI-O's monitor belongs to the pod, not to a container.
        let conmon = format!("/kubepods.slice/kubepods-pod{UID_US}.slice/crio-conmon-{CID}.scope");
        assert_eq!(parse_pod_path(&conmon), pod(None));
    }

    #[test]
    fn cgroupfs_driver_layouts() {
        assert_eq!(parse_pod_path(&format!("/kubepods/burstable/pod{UID}/{CID}")), pod(Some(CID)));
        assert_eq!(parse_pod_path(&format!("/kubepods/besteffort/pod{UID}/crio-{CID}")), pod(Some(CID)));
        assert_eq!(parse_pod_path(&format!("/kubepods/pod{UID}/{CID}")), pod(Some(CID)));
        assert_eq!(parse_pod_path(&format!("/kubepods/pod{UID}")), pod(None));
    }

    #[test]
    fn kind_and_cgroup_root_prefixes() {
        // A kind node: the node's own container scope above, kubelet --cgroup-root=/kubelet.
        let p = format!(
            "/system.slice/docker-{CID}.scope/kubelet.slice/kubelet-kubepods.slice/\
             kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_US}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(parse_pod_path(&p), pod(Some(CID)));
        assert_eq!(parse_pod_path(&format!("/kubelet/kubepods/burstable/pod{UID}/{CID}")), pod(Some(CID)));
    }

    #[test]
    fn static_pod_config_hash_uid() {
        let hash = "9f86d081884c7d659a2feaa0c55ad015";
        let p = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice/crio-{CID}.scope");
        assert_eq!(parse_pod_path(&p).unwrap().pod_uid, hash);
    }

    #[test]
    fn non_pod_cgroups_are_not_pods() {
        for p in [
            "/",
            "/system.slice/containerd.service",
            "/kubepods.slice",
            "/kubepods.slice/kubepods-burstable.slice",
            "/kubepods/burstable",
            // pod-like names outside kubepods, and malformed uids inside it
            &format!("/system.slice/foo-pod{UID_US}.slice"),
            &format!("/user.slice/pod{UID}"),
            "/kubepods/burstable/podnot-a-uid",
            "/kubepods.slice/kubepods-podabc.slice",
        ] {
            assert_eq!(parse_pod_path(p), None, "{p}");
        }
        // A sub-cgroup that is not a container id leaves the container unknown.
        assert_eq!(parse_pod_path(&format!("/kubepods/pod{UID}/not-hex")), pod(None));
    }

    fn ino(p: &Path) -> u64 {
        std::fs::metadata(p).unwrap().ino()
    }

    #[test]
    fn walk_maps_inodes_to_paths_and_pods() {
        let dir = tempfile::tempdir().unwrap();
        let pod_dir = dir.path().join(format!("kubepods/burstable/pod{UID}"));
        let ctr = pod_dir.join(CID);
        std::fs::create_dir_all(&ctr).unwrap();
        std::fs::create_dir_all(dir.path().join("system.slice/kubelet.service")).unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), "").unwrap();
        let mut idx = CgroupIndex::new(dir.path().to_path_buf(), ScanLimits::default());
        idx.scan().unwrap();
        assert_eq!(idx.resolve(ino(dir.path())).unwrap().path, "/");
        let c = idx.resolve(ino(&ctr)).unwrap();
        assert_eq!(c.path, format!("/kubepods/burstable/pod{UID}/{CID}"));
        assert_eq!(c.pod, pod(Some(CID)));
        assert_eq!(idx.resolve(ino(&pod_dir)).unwrap().pod, pod(None));
        let svc = idx.resolve(ino(&dir.path().join("system.slice/kubelet.service"))).unwrap();
        assert_eq!((svc.path.as_str(), svc.pod.as_ref()), ("/system.slice/kubelet.service", None));
        // root, kubepods, burstable, pod, container, system.slice, kubelet.service; files are not cgroups
        assert_eq!(idx.len(), 7);
    }

    #[test]
    fn walk_respects_entry_and_depth_limits() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b/c/d/e")).unwrap();
        let limits = ScanLimits { max_depth: 2, ..ScanLimits::default() };
        let mut idx = CgroupIndex::new(dir.path().to_path_buf(), limits);
        idx.scan().unwrap();
        // root + a + a/b
        assert_eq!(idx.len(), 3);
        assert!(idx.resolve(ino(&dir.path().join("a/b"))).is_some());
        assert!(idx.resolve(ino(&dir.path().join("a/b/c"))).is_none());
        let limits = ScanLimits { max_entries: 4, ..ScanLimits::default() };
        let mut idx = CgroupIndex::new(dir.path().to_path_buf(), limits);
        idx.scan().unwrap();
        assert_eq!(idx.len(), 4);
    }

    #[test]
    fn unreadable_root_is_an_error_naming_the_path() {
        let mut idx = CgroupIndex::new(PathBuf::from("/nonexistent/cgroup"), ScanLimits::default());
        let err = idx.scan().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/cgroup"), "{err}");
    }

    #[test]
    fn unknown_ids_trigger_rate_limited_rescans_and_deleted_ids_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let limits =
            ScanLimits { min_rescan: Duration::from_secs(2), refresh: Duration::from_secs(60), ..Default::default() };
        let mut idx = CgroupIndex::new(dir.path().to_path_buf(), limits);
        let t0 = Instant::now();
        idx.refresh_for([], t0);
        assert_eq!(idx.len(), 1, "first call scans");

        // A cgroup created after the scan: unknown until a rescan, which waits for min_rescan.
        let a = dir.path().join(format!("kubepods/pod{UID}"));
        std::fs::create_dir_all(&a).unwrap();
        let a_id = ino(&a);
        idx.refresh_for([a_id], t0 + Duration::from_secs(1));
        assert!(idx.resolve(a_id).is_none(), "rate-limited: no rescan 1 s after the last");
        idx.refresh_for([a_id], t0 + Duration::from_secs(3));
        assert_eq!(idx.resolve(a_id).unwrap().pod, pod(None));

        // An id no scan can find stops triggering rescans once a scan has missed it.
        let ghost = u64::MAX - 7;
        idx.refresh_for([ghost], t0 + Duration::from_secs(6));
        let scanned = idx.last_scan;
        assert!(idx.absent.contains(&ghost));
        idx.refresh_for([ghost], t0 + Duration::from_secs(9));
        assert_eq!(idx.last_scan, scanned, "an absent id does not force a walk");

        // Deleted: still resolvable for one more scan (late completions), then forgotten.
        std::fs::remove_dir(&a).unwrap();
        idx.refresh_for([], t0 + Duration::from_secs(70));
        assert!(idx.resolve(a_id).is_some(), "kept one generation");
        idx.refresh_for([], t0 + Duration::from_secs(140));
        assert!(idx.resolve(a_id).is_none(), "forgotten after two scans");
    }
}
