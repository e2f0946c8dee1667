//! Privileged: a kubelet-like tree under the host's real cgroup v2 mount, a real process moved
//! into its container cgroup, and the cgroup id the kernel would report for that process resolved
//! back to the pod UID and container id.
//!
//! Needs a cgroup v2 mount, and for the first test root and a read-write mount. A missing
//! prerequisite fails the test unless skipping is explicitly allowed ([`blkio_agent::prereq`]).

#![cfg(feature = "ebpf")] // the node agent; absent from the analyzer-only build

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{SystemTime, UNIX_EPOCH},
};

use blkio_agent::{
    collector::CgroupDelta,
    histogram::HIST_SLOTS,
    k8s::{
        Attribution,
        cgroups::{CgroupIndex, ScanLimits},
        is_cgroup2, resolve_cgroup_root,
    },
    loader::CgroupSource,
};

/// The cgroup v2 mount point from /proc/self/mountinfo and whether it is mounted read-write
/// (field 5 is the mount point, field 6 its options; the filesystem type follows ` - `).
fn cgroup2_mount() -> Option<(PathBuf, bool)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split(' ').next() != Some("cgroup2") {
            return None;
        }
        let mut fields = pre.split(' ').skip(4);
        let mount = PathBuf::from(fields.next()?);
        let rw = fields.next()?.split(',').any(|o| o == "rw");
        Some((mount, rw))
    })
}

/// `Some(v2 root)` when the test can run; otherwise fails, or skips when allowed.
/// `write`: the test creates cgroups and moves a process (root, read-write mount).
fn prerequisites(test: &str, write: bool) -> Option<PathBuf> {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if write && unsafe { libc::geteuid() } != 0 {
        missing.push("root (to create cgroups and move a process)".to_string());
    }
    let mount = cgroup2_mount();
    match &mount {
        None => missing.push("a cgroup v2 mount in /proc/self/mountinfo".to_string()),
        Some((m, false)) if write => {
            missing.push(format!("a read-write cgroup v2 mount ({} is read-only)", m.display()))
        }
        Some(_) => {}
    }
    let missing: Vec<String> = missing.into_iter().map(|m| format!("needs {m}")).collect();
    blkio_agent::prereq::require(test, &missing).then(|| mount.map(|(m, _)| m)).flatten()
}

/// The kernel's cgroup id of `path`, as `bpf_get_current_cgroup_id()` reports it: cgroupfs file
/// handles carry the 64-bit kernfs id (this is how systemd and bpftool get it from userspace).
fn kernel_cgroup_id(path: &Path) -> u64 {
    #[repr(C)]
    struct Handle {
        handle_bytes: libc::c_uint,
        handle_type: libc::c_int,
        id: u64,
    }
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut h = Handle { handle_bytes: 8, handle_type: 0, id: 0 };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `h` starts with `struct file_handle` and has room for the 8 bytes announced.
    let rc = unsafe { libc::name_to_handle_at(libc::AT_FDCWD, c.as_ptr(), (&raw mut h).cast(), &mut mount_id, 0) };
    assert_eq!(rc, 0, "name_to_handle_at({}): {}", path.display(), std::io::Error::last_os_error());
    assert_eq!(h.handle_bytes, 8);
    h.id
}

/// The test's cgroups and child; on drop (also on panic) the child is moved out and killed and
/// the cgroups removed bottom-up, so a failed run leaves nothing behind.
struct Fixture {
    root: PathBuf,
    dirs: Vec<PathBuf>,
    child: Option<Child>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::fs::write(self.root.join("cgroup.procs"), child.id().to_string());
            let _ = child.kill();
            let _ = child.wait();
        }
        for d in self.dirs.iter().rev() {
            if let Err(e) = std::fs::remove_dir(d) {
                eprintln!("cleanup: cannot remove {}: {e}", d.display());
            }
        }
    }
}

fn delta(cgroup_id: u64, count: u64) -> CgroupDelta {
    let mut device_slots = [0; HIST_SLOTS];
    device_slots[5] = count;
    CgroupDelta {
        cgroup_id,
        device_id: 7 << 20,
        device_name: "loop0".into(),
        op: "write",
        count,
        device_ns: count * 40_000,
        bytes: count * 4096,
        device_slots,
    }
}

#[test]
fn process_in_a_real_kubepods_cgroup_resolves_to_its_pod_and_container() {
    let Some(v2) = prerequisites("process_in_a_real_kubepods_cgroup_resolves_to_its_pod_and_container", true) else {
        return;
    };
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    // Unique per run; the last 12 uid digits and the container id carry the run's identity.
    let uid = format!("5e1f0c2a-7b3d-4e8f-9a0b-{:012x}", (nanos as u64 ^ std::process::id() as u64) & 0xffff_ffff_ffff);
    let cid = format!("{:064x}", nanos);
    let top = format!("blkio-agent-test-{}-{nanos}", std::process::id());
    let rel_parts = [
        top.clone(),
        "kubepods.slice".into(),
        "kubepods-besteffort.slice".into(),
        format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_")),
        format!("cri-containerd-{cid}.scope"),
    ];
    let mut fx = Fixture { root: v2.clone(), dirs: Vec::new(), child: None };
    let mut dir = v2.clone();
    for part in &rel_parts {
        dir.push(part);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        fx.dirs.push(dir.clone());
    }
    let scope = dir;
    let rel = format!("/{}", rel_parts.join("/"));

    let child = Command::new("sleep").arg("60").stdin(Stdio::null()).spawn().expect("spawn sleep");
    let pid = child.id();
    fx.child = Some(child);
    std::fs::write(scope.join("cgroup.procs"), pid.to_string()).expect("move the child into the container cgroup");

    // The kernel agrees that the process is in that cgroup ...
    let procs = std::fs::read_to_string(scope.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == pid.to_string()), "pid {pid} not in cgroup.procs: {procs:?}");
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v2_line = own.lines().find_map(|l| l.strip_prefix("0::")).expect("a cgroup v2 line in /proc/pid/cgroup");
    assert!(v2_line.ends_with(&rel), "/proc/{pid}/cgroup says {v2_line:?}, expected a path ending in {rel}");

    // ... and its id for the process is the directory's inode, which is what the walk records.
    let id = std::fs::metadata(&scope).unwrap().ino();
    assert_eq!(kernel_cgroup_id(&scope), id, "cgroup id (file handle) == inode number");

    let mut index = CgroupIndex::new(v2.clone(), ScanLimits::default());
    index.scan().expect("walk the real cgroup tree");
    let entry = index.resolve(id).expect("the container cgroup is in the index");
    assert_eq!(entry.path, rel);
    let pod = entry.pod.as_ref().expect("recognised as a pod cgroup");
    assert_eq!(pod.pod_uid, uid);
    assert_eq!(pod.container_id.as_deref(), Some(cid.as_str()));
    let pod_dir_id = std::fs::metadata(scope.parent().unwrap()).unwrap().ino();
    assert_eq!(
        index.resolve(pod_dir_id).and_then(|e| e.pod.as_ref()).map(|p| (p.pod_uid.as_str(), p.container_id.is_none())),
        Some((uid.as_str(), true))
    );
    let root_id = std::fs::metadata(&v2).unwrap().ino();
    assert_eq!(index.resolve(root_id).map(|e| e.path.as_str()), Some("/"));

    // Through the public API the run loop uses: a delta from that cgroup becomes a pod series.
    let mut attr = Attribution::without_api(v2.clone(), 50).unwrap();
    let out = attr.attribute(&[delta(id, 5), delta(root_id, 1)]);
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[0].pod_uid.as_deref(), out[0].pod.as_deref(), out[0].cgroup.as_deref()),
        (Some(uid.as_str()), None, None)
    );
    assert_eq!((out[1].pod_uid.as_deref(), out[1].cgroup.as_deref()), (None, Some("/")));
    assert_eq!((out[0].count, out[1].count), (5, 1));

    drop(fx);
    assert!(!v2.join(&top).exists(), "cleanup removed the test's cgroups");
}

#[test]
fn the_default_cgroup_root_is_the_hosts_v2_mount_and_start_accepts_it() {
    let Some(v2) = prerequisites("the_default_cgroup_root_is_the_hosts_v2_mount_and_start_accepts_it", false) else {
        return;
    };
    assert!(is_cgroup2(&v2));
    let default = resolve_cgroup_root(None, Path::new("/"));
    if v2 == Path::new("/sys/fs/cgroup") || v2 == Path::new("/sys/fs/cgroup/unified") {
        assert_eq!(default, v2, "unified or hybrid host: the default finds the v2 mount");
    } else {
        eprintln!("note: cgroup v2 is mounted at {}, not a default location; checking start() only", v2.display());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        // A node name no pod has: whether or not a kubeconfig exists here, nothing is named.
        let mut attr = Attribution::start(v2.clone(), CgroupSource::Task, "blkio-agent-test-no-such-node".into(), 50)
            .expect("start on the real v2 mount");
        let root_id = std::fs::metadata(&v2).unwrap().ino();
        let out = attr.attribute(&[delta(root_id, 3)]);
        assert_eq!((out[0].cgroup.as_deref(), out[0].count), (Some("/"), 3));
    });
}
