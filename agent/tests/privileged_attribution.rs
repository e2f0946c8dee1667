//! Privileged: the agent with `--attribute-pods` on a real loop device, the workload running in a
//! kubelet-like pod cgroup under the host's real cgroup mounts (v2 for attribution by task, the io
//! controller's hierarchy for attribution by bio). Without an API server the pod
//! is named by its UID from the cgroup path (the documented no-RBAC behaviour).

#![cfg(feature = "ebpf")] // the node agent; absent from the analyzer-only build

mod privileged_support;

use std::{path::PathBuf, process::Command};

use privileged_support::*;

/// The cgroup v2 mount (hybrid hosts have it at /sys/fs/cgroup/unified).
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split(' ').next() != Some("cgroup2") {
            return None;
        }
        pre.split(' ').nth(4).map(PathBuf::from)
    })
}

/// Removes the test's cgroup tree (bottom-up) even when the test fails.
struct CgroupTree(Vec<PathBuf>);

impl Drop for CgroupTree {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The io controller's hierarchy: the cgroup v2 mount when `io` is enabled in its
/// `cgroup.subtree_control`, else the cgroup v1 hierarchy with `blkio`.
fn io_mount() -> Option<PathBuf> {
    if let Some(v2) = cgroup2_mount() {
        let control = std::fs::read_to_string(v2.join("cgroup.subtree_control")).unwrap_or_default();
        if control.split_whitespace().any(|c| c == "io") {
            return Some(v2);
        }
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mut post = post.split(' ');
        if post.next() != Some("cgroup") || !post.nth(1)?.split(',').any(|o| o == "blkio") {
            return None;
        }
        pre.split(' ').nth(4).map(PathBuf::from)
    })
}

/// Runs a direct-I/O `dd` inside a kubelet-like pod cgroup created under `root`, with the agent
/// attributing by `source` through `root`, and checks the pod's series count it exactly.
/// Returns the agent's log.
fn pod_series_count_the_workload_exactly(root: PathBuf, source: &str) -> String {
    let uid = "4f6c2a1e-9b7d-4c3e-8a5f-0123456789ab";
    let container = "ab".repeat(32);
    let unique = format!("blkio-agent-test-{}", std::process::id());
    let pod_slice = format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_"));
    let mut dirs = vec![root.join(&unique)];
    for part in
        ["kubepods.slice", "kubepods-besteffort.slice", &pod_slice, &format!("cri-containerd-{container}.scope")]
    {
        let next = dirs.last().unwrap().join(part);
        dirs.push(next);
    }
    let tree = CgroupTree(dirs.clone());
    for d in &tree.0 {
        std::fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
    }
    let scope = dirs.last().unwrap().clone();
    // On cgroup v2, bio ids name the closest cgroup with the io controller: enable it down to
    // the container, as the runtime does (v1 blkio has it everywhere).
    if source == "bio" && root.join("cgroup.subtree_control").exists() {
        for d in &dirs[..dirs.len() - 1] {
            std::fs::write(d.join("cgroup.subtree_control"), "+io")
                .unwrap_or_else(|e| panic!("+io in {}: {e}", d.display()));
        }
    }

    let dev = LoopDev::new(32);
    // dd joins the container's cgroup before it submits any I/O.
    let dd = |count: u32| {
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec dd if=/dev/zero of={} bs=4k count={count} oflag=direct",
            scope.display(),
            dev.dev.display()
        );
        let st = Command::new("sh").arg("-c").arg(&script).stderr(std::process::Stdio::null()).status().unwrap();
        assert!(st.success(), "workload in the pod cgroup");
    };
    // Before the agent starts: the kernel creates the cgroup's blkg for this disk on its first
    // bio, with GFP_NOWAIT, and when that allocation fails it charges the bio to the closest
    // ancestor (`blkg_tryget_closest()`; once seen in CI on a fresh machine). The agent reports
    // what the kernel charged. A few writes (each retries the creation) and a pause (a failed
    // atomic per-CPU allocation schedules the refill) make the charge of the counted writes
    // deterministic.
    dd(16);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("out.jsonl");
    let mut agent = Agent::start(&[
        "--attribute-pods",
        "--attribution-source",
        source,
        "--cgroup-root",
        root.to_str().unwrap(),
        "--interval",
        "0.25",
        "--flush-every",
        "1",
        "--output",
        path.to_str().unwrap(),
    ]);
    dd(1500);
    agent.wait_snapshots(2);
    let log = agent.stop(libc::SIGTERM);

    let snaps = read_jsonl(&path);
    let pod_writes: u64 = snaps
        .iter()
        .flat_map(|s| &s.pods)
        .filter(|p| p.pod_uid.as_deref() == Some(uid) && p.device_name == dev.name && p.op == "write")
        .map(|p| p.count)
        .sum();
    let on_dev: Vec<String> = snaps
        .iter()
        .flat_map(|s| &s.pods)
        .filter(|p| p.device_name == dev.name)
        .map(|p| format!("{:?}/{:?} {} {}", p.cgroup, p.pod_uid, p.op, p.count))
        .collect();
    assert_eq!(
        pod_writes, 1500,
        "the pod's writes, attributed at submission ({source}); series on the device: {on_dev:?}"
    );
    let device_writes = op_counts(&snaps, &dev.name).get("write").copied();
    assert_eq!(device_writes, Some(1500), "and the device total agrees");
    drop(tree);
    log
}

/// The slow path: the submitting task's cgroup v2 id kept in the start map.
#[test]
fn pod_series_by_task_count_the_workload_exactly() {
    let Some(_p) = privileged("pod_series_by_task_count_the_workload_exactly") else { return };
    let Some(root) = cgroup2_mount().or_else(|| {
        missing_prerequisite("pod_series_by_task_count_the_workload_exactly: needs a cgroup v2 mount".into())
    }) else {
        return;
    };
    let log = pod_series_count_the_workload_exactly(root, "task");
    assert!(
        log.contains("fast_path=\"unavailable\" attribution=\"task\""),
        "task attribution keeps a start map: {log}"
    );
}

/// The default where the io controller is usable: the block layer's own charge (`bi_blkg`),
/// read at completion, with the fast path still on.
#[test]
fn pod_series_by_bio_count_the_workload_exactly_on_the_fast_path() {
    let Some(_p) = privileged("pod_series_by_bio_count_the_workload_exactly_on_the_fast_path") else { return };
    let Some(root) = io_mount().or_else(|| missing_prerequisite("pod_series_by_bio_count_the_workload_exactly_on_the_fast_path: needs an io controller hierarchy (v2 io or v1 blkio)".into())) else { return };
    let log = pod_series_count_the_workload_exactly(root, "bio");
    assert!(
        log.contains("fast_path=\"on\" stats_flags=\"btf\" attribution=\"bio\""),
        "bio attribution keeps the fast path: {log}"
    );
}

/// Idle attribution entries leave the kernel map, so pods that come and go cannot fill it.
#[test]
fn idle_pod_entries_are_evicted_from_the_kernel_map() {
    use blkio_agent::{
        cli::AttachMode,
        collector::Collector,
        devices::{DeviceFilter, DeviceNames},
        loader::{CgroupSource, LoadOptions, load},
    };
    let Some(_p) = privileged("idle_pod_entries_are_evicted_from_the_kernel_map") else { return };
    let dev = LoopDev::new(16);
    let root = std::path::Path::new("/");
    let probes = load(&LoadOptions { mode: AttachMode::Btf, sys_root: root, attribution: Some(CgroupSource::Task) })
        .expect("load");
    let names = DeviceNames::new(root, root).unwrap();
    let mut collector = Collector::new(probes, names, DeviceFilter::default(), "n".into(), true).unwrap();
    collector.set_cgroup_idle_evict(std::time::Duration::from_millis(300));
    dev.dd_write(50);
    let first = collector.collect().unwrap();
    let ours: u64 = first.cgroups.iter().filter(|c| c.device_name == dev.name).map(|c| c.count).sum();
    assert_eq!(ours, 50, "this test's writes are in the attribution deltas");
    let dev_id = first.cgroups.iter().find(|c| c.device_name == dev.name).unwrap().device_id;
    let on_dev = |c: &Collector| c.cgroup_keys().iter().filter(|k| k.dev == dev_id).count();
    assert!(on_dev(&collector) > 0, "entry in the kernel map");
    // Idle long enough (nothing else writes to this loop device), then read twice more.
    collector.collect().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    collector.collect().unwrap();
    assert_eq!(on_dev(&collector), 0, "idle entry evicted from the kernel map");
    dev.dd_write(10);
    let again = collector.collect().unwrap();
    let ours: u64 = again.cgroups.iter().filter(|c| c.device_name == dev.name).map(|c| c.count).sum();
    assert_eq!(ours, 10, "a cgroup active again after eviction restarts from zero, exactly");
}
