//! `Attribution` end to end on fixture trees (inode numbers of a temp dir stand in for cgroup ids)
//! and a store filled by hand; the watcher itself is tested against kube's mock service in
//! `agent/tests/k8s_mock_api.rs`.

use std::{
    os::unix::fs::MetadataExt as _,
    path::Path,
    time::{Duration, Instant},
};

use kube::runtime::{reflector::store::Writer, watcher};

use super::*;
use crate::histogram::HIST_SLOTS;

const UID: &str = "0c6e5e9a-3c2b-4f1e-9d8a-7b6c5d4e3f21";
const UID_US: &str = "0c6e5e9a_3c2b_4f1e_9d8a_7b6c5d4e3f21";
const CID: &str = "4a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcdef";

fn ino(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().ino()
}

fn delta(cgroup_id: u64, count: u64) -> CgroupDelta {
    let mut device_slots = [0; HIST_SLOTS];
    device_slots[4] = count;
    CgroupDelta {
        cgroup_id,
        device_id: 259 << 20,
        device_name: "nvme0n1".into(),
        op: "write",
        count,
        device_ns: count * 20_000,
        bytes: count * 4096,
        device_slots,
    }
}

struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        Tree { dir: tempfile::tempdir().unwrap() }
    }
    fn mk(&self, rel: &str) -> u64 {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(&p).unwrap();
        ino(&p)
    }
}

fn pod(uid: &str, cid: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "db-0", "namespace": "data", "uid": uid},
        "status": {"containerStatuses": [{
            "name": "postgres", "image": "pg", "imageID": "", "ready": true, "restartCount": 0,
            "containerID": format!("containerd://{cid}")
        }]}
    }))
    .unwrap()
}

#[test]
fn without_api_pods_carry_the_uid_and_other_cgroups_their_path() {
    let t = Tree::new();
    let ctr = t.mk(&format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{CID}.scope"
    ));
    let svc = t.mk("system.slice/containerd.service");
    let root = ino(t.dir.path());
    let mut a = Attribution::without_api(t.dir.path().to_path_buf(), 50).unwrap();
    let out = a.attribute(&[delta(ctr, 10), delta(svc, 3), delta(root, 2), delta(u64::MAX - 1, 1)]);
    let rows: Vec<_> = out
        .iter()
        .map(|p| (p.pod_uid.as_deref(), p.pod.as_deref(), p.container.as_deref(), p.cgroup.as_deref(), p.count))
        .collect();
    assert_eq!(
        rows,
        vec![
            (Some(UID), None, None, None, 10),
            (None, None, None, Some("/system.slice/containerd.service"), 3),
            (None, None, None, Some("/"), 2),
            (None, None, None, Some(attribution::UNKNOWN), 1),
        ]
    );
    assert_eq!(out[0].device_time.sum_ns, 200_000);
    assert_eq!(out[0].bytes, 40_960);
    assert!(a.attribute(&[]).is_empty());
}

#[test]
fn store_supplies_names_and_container() {
    let t = Tree::new();
    let ctr = t.mk(&format!("kubepods/burstable/pod{UID}/{CID}"));
    let sandbox = t.mk(&format!("kubepods/burstable/pod{UID}/{}", "f".repeat(64)));
    let mut a = Attribution::without_api(t.dir.path().to_path_buf(), 50).unwrap();
    let mut w: Writer<Pod> = Writer::default();
    w.apply_watcher_event(&watcher::Event::Apply(pod(UID, CID)));
    a.pods = PodDirectory::new(Some(w.as_reader()));
    let out = a.attribute(&[delta(ctr, 5), delta(sandbox, 1)]);
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[0].namespace.as_deref(), out[0].pod.as_deref(), out[0].pod_uid.as_deref(), out[0].container.as_deref()),
        (Some("data"), Some("db-0"), Some(UID), Some("postgres"))
    );
    // The pause/sandbox container is in no containerStatuses: the pod, without a container name.
    assert_eq!((out[1].pod.as_deref(), out[1].container.as_deref(), out[1].count), (Some("db-0"), None, 1));
}

#[test]
fn static_pods_resolve_through_the_mirror_annotation() {
    let hash = "9f86d081884c7d659a2feaa0c55ad015";
    let t = Tree::new();
    let ctr =
        t.mk(&format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice/crio-{CID}.scope"));
    let mut a = Attribution::without_api(t.dir.path().to_path_buf(), 50).unwrap();
    let mut mirror = pod(UID, CID);
    mirror.metadata.annotations = Some([(pods::MIRROR_ANNOTATION.to_string(), hash.to_string())].into());
    let mut w: Writer<Pod> = Writer::default();
    w.apply_watcher_event(&watcher::Event::Apply(mirror));
    a.pods = PodDirectory::new(Some(w.as_reader()));
    let out = a.attribute(&[delta(ctr, 1)]);
    // Reported under the API's UID, so it joins with other k8s.pod.uid-labelled data.
    assert_eq!(
        (out[0].pod.as_deref(), out[0].pod_uid.as_deref(), out[0].container.as_deref()),
        (Some("db-0"), Some(UID), Some("postgres"))
    );
}

#[test]
fn containers_of_a_pod_merge_when_names_are_unknown_and_the_limit_holds() {
    let t = Tree::new();
    let mut deltas = Vec::new();
    // 60 pods x 2 containers, pod i does (i + 1) * 2 requests in each container.
    for i in 0..60u64 {
        let uid = format!("{i:08x}-0000-4000-8000-000000000000");
        for c in 0..2 {
            let id = t.mk(&format!("kubepods/besteffort/pod{uid}/{c:064x}"));
            deltas.push(delta(id, (i + 1) * 2));
        }
    }
    let mut a = Attribution::without_api(t.dir.path().to_path_buf(), 10).unwrap();
    let out = a.attribute(&deltas);
    assert_eq!(out.len(), 11, "10 busiest pods + other for the one (device, op)");
    // No API: the two containers of a pod have identical labels, so they are one series.
    assert_eq!(out[0].pod_uid.as_deref(), Some("0000003b-0000-4000-8000-000000000000"));
    assert_eq!(out[0].count, 60 * 4);
    assert_eq!(out[10].cgroup.as_deref(), Some(attribution::OTHER));
    let total_in: u64 = deltas.iter().map(|d| d.count).sum();
    let total_out: u64 = out.iter().map(|p| p.count).sum();
    assert_eq!(total_in, total_out);
    let ns_in: u64 = deltas.iter().map(|d| d.device_ns).sum();
    assert_eq!(ns_in, out.iter().map(|p| p.device_time.sum_ns).sum::<u64>());
}

#[test]
fn a_pod_created_after_the_scan_is_found_by_a_rescan() {
    let t = Tree::new();
    let mut a = Attribution::without_api(t.dir.path().to_path_buf(), 50).unwrap();
    let ctr = t.mk(&format!("kubepods/pod{UID}/{CID}"));
    // Two seconds after the scan in without_api(): the unknown id may trigger a walk.
    let out = a.attribute_at(&[delta(ctr, 4)], Instant::now() + Duration::from_secs(3));
    assert_eq!(out[0].pod_uid.as_deref(), Some(UID));
}

#[test]
fn start_refuses_a_root_that_is_not_cgroup_v2() {
    let t = Tree::new();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for source in [CgroupSource::Task, CgroupSource::Bio] {
        let err = rt.block_on(async {
            Attribution::start(t.dir.path().to_path_buf(), source, "node-a".into(), 50).err().unwrap()
        });
        let msg = err.to_string();
        assert!(msg.contains("not a cgroup v2 mount") && msg.contains("--cgroup-root"), "{msg}");
    }
}

#[test]
fn plan_without_an_io_hierarchy_falls_back_to_task() {
    let t = Tree::new();
    // A plain directory tree is neither a cgroup v1 blkio hierarchy nor cgroup v2.
    assert!(!io_hierarchy(t.dir.path()));
    let auto = CgroupPlan::resolve(None, t.dir.path(), AttributionSource::Auto);
    assert_eq!(auto.preferred, CgroupSource::Task);
    assert_eq!(auto.io_root, None);
    assert_eq!(
        auto.root_for(CgroupSource::Bio),
        auto.task_root,
        "bio without an io hierarchy maps through the v2 root"
    );
    let forced = CgroupPlan::resolve(None, t.dir.path(), AttributionSource::Bio);
    assert_eq!(forced.preferred, CgroupSource::Bio, "an explicit source is what the loader is asked for");
    let explicit = t.dir.path().join("x");
    let plan = CgroupPlan::resolve(Some(&explicit), Path::new("/"), AttributionSource::Task);
    assert_eq!((plan.preferred, plan.task_root.as_path()), (CgroupSource::Task, explicit.as_path()));
}

#[test]
fn resolve_cgroup_root_prefers_the_flag() {
    let t = Tree::new();
    let explicit = t.dir.path().join("x");
    assert_eq!(resolve_cgroup_root(Some(&explicit), Path::new("/")), explicit);
    // A sys root without any cgroup2 mount: the conventional path, which start() then rejects.
    assert_eq!(resolve_cgroup_root(None, t.dir.path()), t.dir.path().join("sys/fs/cgroup"));
    assert!(!is_cgroup2(t.dir.path()));
}

#[test]
fn pod_rows_carry_their_pods_io_pressure_and_other_rows_none() {
    let t = Tree::new();
    let pod_dir = format!("kubepods/burstable/pod{UID}");
    let ctr = t.mk(&format!("{pod_dir}/{CID}"));
    let svc = t.mk("system.slice/containerd.service");
    let psi = |some: u64| {
        format!(
            "some avg10=2.00 avg60=1.00 avg300=0.50 total={some}\nfull avg10=1.00 avg60=0.50 avg300=0.25 total=10\n"
        )
    };
    let file = t.dir.path().join(&pod_dir).join("io.pressure");
    std::fs::write(&file, psi(5000)).unwrap();
    // The baseline is taken when attribution starts.
    let mut a = Attribution::without_api(t.dir.path().to_path_buf(), 50).unwrap();
    std::fs::write(&file, psi(5600)).unwrap();
    let out = a.attribute(&[delta(ctr, 3), delta(svc, 1)]);
    let p = out[0].io_pressure.expect("the pod's io.pressure");
    assert_eq!((p.some.avg10, p.some.total_us, p.some.delta_us, p.full.delta_us), (2.0, 5600, Some(600), Some(0)));
    assert_eq!(out[1].cgroup.as_deref(), Some("/system.slice/containerd.service"));
    assert_eq!(out[1].io_pressure, None, "not a pod");
    // Idle interval: the baseline still moves, so the next delta is for one interval.
    std::fs::write(&file, psi(5700)).unwrap();
    assert!(a.attribute(&[]).is_empty());
    std::fs::write(&file, psi(5750)).unwrap();
    let out = a.attribute(&[delta(ctr, 1)]);
    assert_eq!(out[0].io_pressure.unwrap().some.delta_us, Some(50));
    // PSI unavailable for the pod (or turned off): absent, not zero.
    std::fs::remove_file(&file).unwrap();
    assert_eq!(a.attribute(&[delta(ctr, 1)])[0].io_pressure, None);
    a.set_pressure_root(None);
    std::fs::write(&file, psi(5800)).unwrap();
    assert_eq!(a.attribute(&[delta(ctr, 1)])[0].io_pressure, None);
}
