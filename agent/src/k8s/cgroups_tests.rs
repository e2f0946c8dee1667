//! Unit tests of the cgroup path parser and the index, on fixture trees in temp dirs.

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

#[test]
fn pod_dir_is_the_path_up_to_the_pod_component() {
    let systemd = format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice");
    assert_eq!(pod_dir(&format!("{systemd}/cri-containerd-{CID}.scope")), Some(systemd.as_str()));
    assert_eq!(pod_dir(&systemd), Some(systemd.as_str()));
    let nested = format!("/x/kubelet/kubepods/burstable/pod{UID}");
    assert_eq!(pod_dir(&format!("{nested}/{CID}/sub")), Some(nested.as_str()));
    assert_eq!(pod_dir("/kubepods/burstable"), None);
    assert_eq!(pod_dir("/system.slice/containerd.service"), None);
}

/// Polls `drain_events` until `id` resolves (the watcher thread runs concurrently).
fn until_resolved(idx: &mut CgroupIndex, id: u64, now: Instant) {
    let start = Instant::now();
    while idx.resolve(id).is_none() {
        assert!(start.elapsed() < Duration::from_secs(5), "watcher never reported {id}");
        std::thread::sleep(Duration::from_millis(5));
        idx.drain_events(now);
    }
}

#[test]
fn a_removed_container_resolves_to_itself_then_to_its_pod_then_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let pod_path = dir.path().join(format!("kubepods/burstable/pod{UID}"));
    std::fs::create_dir_all(&pod_path).unwrap();
    let limits = ScanLimits { refresh: Duration::from_secs(3600), ..ScanLimits::default() };
    let grace = limits.removed_grace;
    let mut idx = CgroupIndex::new(dir.path().to_path_buf(), limits);
    idx.scan().unwrap();
    idx.watch().unwrap();
    assert!(idx.watching());
    let t0 = Instant::now();

    // Created and removed with no walk in between: known from the watcher alone.
    let ctr = pod_path.join(CID);
    std::fs::create_dir(&ctr).unwrap();
    let id = ino(&ctr);
    until_resolved(&mut idx, id, t0);
    std::thread::sleep(Duration::from_millis(50));
    std::fs::remove_dir(&ctr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    idx.refresh_for([id], t0 + Duration::from_secs(1));
    assert_eq!(idx.resolve(id).unwrap().pod, pod(Some(CID)), "within the grace period: the container");
    let pods: Vec<_> = idx.pod_dirs();
    assert_eq!(pods, vec![(format!("/kubepods/burstable/pod{UID}"), false)]);

    // After the grace period the pod (its cgroup is still there) takes the container's late I/O.
    idx.drain_events(t0 + grace + Duration::from_secs(2));
    let e = idx.resolve(id).expect("charged to the pod, not unknown");
    assert_eq!(e.pod, pod(None));

    // The pod goes too: after its own grace period, both are forgotten.
    let pod_id = ino(&pod_path);
    std::fs::remove_dir(&pod_path).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    idx.drain_events(t0 + grace + Duration::from_secs(3));
    assert!(idx.resolve(id).is_some(), "the pod's own grace period");
    idx.drain_events(t0 + 2 * grace + Duration::from_secs(10));
    assert!(idx.resolve(id).is_none() && !idx.tracked.contains_key(&pod_id));
}

#[test]
fn pods_created_after_the_walk_are_listed_for_pressure_as_new() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("kubepods/besteffort")).unwrap();
    let mut idx = CgroupIndex::new(dir.path().to_path_buf(), ScanLimits::default());
    idx.scan().unwrap();
    idx.watch().unwrap();
    let p = dir.path().join(format!("kubepods/besteffort/pod{UID}"));
    std::fs::create_dir(&p).unwrap();
    until_resolved(&mut idx, ino(&p), Instant::now());
    assert_eq!(idx.pod_dirs(), vec![(format!("/kubepods/besteffort/pod{UID}"), true)]);
}
