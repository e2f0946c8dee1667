//! Cgroup -> pod mapping on a fake host cgroup tree holding every supported kubelet layout at
//! once (systemd and cgroupfs drivers; containerd, CRI-O and Docker names; all QoS classes; a
//! kind node nested in a Docker scope), plus the cgroups of a real host that are not pods.
//! Inode numbers of the temp dirs play the cgroup ids.

#![cfg(feature = "ebpf")] // the node agent; absent from the analyzer-only build

use std::{collections::HashMap, os::unix::fs::MetadataExt as _, path::Path};

use blkio_agent::{
    collector::CgroupDelta,
    histogram::HIST_SLOTS,
    k8s::{
        Attribution,
        cgroups::{CgroupIndex, PodCgroup, ScanLimits},
    },
};

fn uid(n: u32) -> String {
    format!("{n:08x}-1111-4222-8333-444444444444")
}

fn cid(n: u32) -> String {
    format!("{n:064x}")
}

/// (relative path, expected pod) for every layout.
fn layouts() -> Vec<(String, Option<PodCgroup>)> {
    let sd = |u: &str| u.replace('-', "_");
    let p = |u: String, c: Option<String>| Some(PodCgroup { pod_uid: u, container_id: c });
    vec![
        // systemd driver, containerd
        (
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope",
                sd(&uid(1)),
                cid(1)
            ),
            p(uid(1), Some(cid(1))),
        ),
        (
            format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{}.scope",
                sd(&uid(2)),
                cid(2)
            ),
            p(uid(2), Some(cid(2))),
        ),
        // guaranteed: directly under kubepods.slice; CRI-O names, and its conmon
        (format!("kubepods.slice/kubepods-pod{}.slice/crio-{}.scope", sd(&uid(3)), cid(3)), p(uid(3), Some(cid(3)))),
        (format!("kubepods.slice/kubepods-pod{}.slice/crio-conmon-{}.scope", sd(&uid(3)), cid(3)), p(uid(3), None)),
        // cri-dockerd under systemd
        (
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/docker-{}.scope",
                sd(&uid(4)),
                cid(4)
            ),
            p(uid(4), Some(cid(4))),
        ),
        // cgroupfs driver: containerd (bare id), CRI-O (crio-<id>), guaranteed directly under kubepods
        (format!("kubepods/burstable/pod{}/{}", uid(5), cid(5)), p(uid(5), Some(cid(5)))),
        (format!("kubepods/besteffort/pod{}/crio-{}", uid(6), cid(6)), p(uid(6), Some(cid(6)))),
        (format!("kubepods/pod{}/{}", uid(7), cid(7)), p(uid(7), Some(cid(7)))),
        // the pod cgroup itself
        (format!("kubepods/pod{}", uid(7)), p(uid(7), None)),
        // a kind node: its own container scope, then kubelet --cgroup-root=/kubelet
        (
            format!(
                "system.slice/docker-{}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{}.slice/cri-containerd-{}.scope",
                cid(99),
                sd(&uid(8)),
                cid(8)
            ),
            p(uid(8), Some(cid(8))),
        ),
        // not pods
        ("system.slice/containerd.service".into(), None),
        ("system.slice/kubelet.service".into(), None),
        ("user.slice/user-0.slice/session-1.scope".into(), None),
        ("kubepods.slice/kubepods-burstable.slice".into(), None),
        (format!("system.slice/docker-{}.scope", cid(99)), None),
    ]
}

fn delta(cgroup_id: u64, count: u64) -> CgroupDelta {
    let mut device_slots = [0; HIST_SLOTS];
    device_slots[6] = count;
    CgroupDelta {
        cgroup_id,
        device_id: 259 << 20,
        device_name: "nvme0n1".into(),
        op: "read",
        count,
        device_ns: count * 70_000,
        bytes: count * 8192,
        device_slots,
    }
}

/// Builds the tree (with the control files a real cgroupfs has, which must not count as cgroups).
fn build(root: &Path) -> HashMap<String, u64> {
    std::fs::write(root.join("cgroup.procs"), "1\n").unwrap();
    let mut ids = HashMap::new();
    for (rel, _) in layouts() {
        let dir = root.join(&rel);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["cgroup.procs", "io.stat", "memory.current"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        ids.insert(rel, std::fs::metadata(&dir).unwrap().ino());
    }
    ids
}

#[test]
fn every_layout_resolves_to_its_pod_and_container() {
    let dir = tempfile::tempdir().unwrap();
    let ids = build(dir.path());
    let mut index = CgroupIndex::new(dir.path().to_path_buf(), ScanLimits::default());
    index.scan().unwrap();
    for (rel, expected) in layouts() {
        let entry = index.resolve(ids[&rel]).unwrap_or_else(|| panic!("{rel} not indexed"));
        assert_eq!(entry.path, format!("/{rel}"));
        assert_eq!(entry.pod, expected, "{rel}");
    }
    // Directories only: every component of every layout plus the root, nothing for files.
    let mut dirs = std::collections::HashSet::new();
    for (rel, _) in layouts() {
        let mut acc = String::new();
        for c in rel.split('/') {
            acc.push('/');
            acc.push_str(c);
            dirs.insert(acc.clone());
        }
    }
    assert_eq!(index.len(), dirs.len() + 1);
}

#[test]
fn deltas_from_the_tree_become_bounded_pod_series_with_exact_totals() {
    let dir = tempfile::tempdir().unwrap();
    let ids = build(dir.path());
    let deltas: Vec<CgroupDelta> =
        layouts().iter().enumerate().map(|(i, (rel, _))| delta(ids[rel], 100 - i as u64)).collect();
    let mut attr = Attribution::without_api(dir.path().to_path_buf(), 4).unwrap();
    let out = attr.attribute(&deltas);
    // Without the API a series is a pod (container names unknown): pod 3's container (98) and
    // its conmon (97) are one series of 195, pod 7's container (93) and pod cgroup (92) one of
    // 185. The 4 busiest, then one `other` for (nvme0n1, read).
    assert_eq!(out.len(), 5);
    let kept: Vec<_> = out[..4].iter().map(|p| (p.pod_uid.clone().unwrap(), p.count)).collect();
    assert_eq!(kept, vec![(uid(3), 195), (uid(7), 185), (uid(1), 100), (uid(2), 99)]);
    assert!(
        out[..4].iter().all(|p| p.pod.is_none() && p.namespace.is_none() && p.cgroup.is_none()),
        "no API: UIDs only"
    );
    assert_eq!(out[4].cgroup.as_deref(), Some("other"));
    let total = |f: &dyn Fn(&CgroupDelta) -> u64| deltas.iter().map(f).sum::<u64>();
    assert_eq!(out.iter().map(|p| p.count).sum::<u64>(), total(&|d| d.count));
    assert_eq!(out.iter().map(|p| p.bytes).sum::<u64>(), total(&|d| d.bytes));
    assert_eq!(out.iter().map(|p| p.device_time.sum_ns).sum::<u64>(), total(&|d| d.device_ns));
    let bucket6: u64 = out.iter().flat_map(|p| &p.device_time.buckets).filter(|b| b.slot == 6).map(|b| b.count).sum();
    assert_eq!(bucket6, total(&|d| d.count));

    // Without a limit, non-pod cgroups are reported by path.
    let mut attr = Attribution::without_api(dir.path().to_path_buf(), 1000).unwrap();
    let out = attr.attribute(&deltas);
    let kubelet = out
        .iter()
        .find(|p| p.cgroup.as_deref() == Some("/system.slice/kubelet.service"))
        .expect("kubelet.service series");
    assert_eq!(kubelet.pod_uid, None);
    assert!(out.iter().all(|p| p.cgroup.as_deref() != Some("other")));
}
