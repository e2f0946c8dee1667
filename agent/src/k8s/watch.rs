//! Cgroups recorded the moment they appear: an inotify watch on kubelet's `kubepods*` hierarchy.
//!
//! A container that lives less than the time between two walks of the cgroup tree (an init
//! container staging model weights, a one-second job) would otherwise never be seen: its id shows
//! up in the kernel's per-cgroup deltas after the directory is gone, and nothing maps a kernfs id
//! of a removed cgroup back to a path. `mkdir(2)` and `rmdir(2)` on cgroupfs (v1 and v2, both are
//! kernfs) raise `IN_CREATE`/`IN_DELETE` on the parent like on any filesystem (`vfs_mkdir()` calls
//! `fsnotify_mkdir()`, <https://github.com/torvalds/linux/blob/v6.12/fs/namei.c>), and kubelet
//! and the runtimes create pod and container cgroups with mkdir, whatever the cgroup driver. So a
//! thread blocked on the inotify descriptor stats each new directory within microseconds and sends
//! `id -> path` (and the pod and container the path names) to the [`super::cgroups::CgroupIndex`].
//!
//! Watched: the root (for a `kubepods*` directory appearing at the top), and every directory of
//! a `kubepods*` subtree down to the pod level (kubepods, QoS classes, pods). Container cgroups are
//! recorded but not watched: what a container nests inside itself is charged to that container
//! by the path parser anyway. `kubepods*` roots deeper in the tree (a kind node under its own
//! container scope) are handed over by the index after each walk ([`CgroupWatcher::watch_roots`]).
//! inotify needs read access to the directories only, no capability.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    os::unix::fs::{DirEntryExt as _, MetadataExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
};

use super::cgroups::{CgroupEntry, parse_pod_path};
use crate::error::{Error, Result};

/// What the watcher saw; drained by the index at each interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupEvent {
    Created {
        id: u64,
        entry: CgroupEntry,
    },
    Removed {
        id: u64,
    },
    /// The kernel's inotify queue overflowed (or ours filled up): events were lost, walk the tree.
    Overflow,
}

/// Events buffered between two drains; past it the watcher reports an overflow instead.
const CHANNEL_CAP: usize = 65_536;
/// Watches at most this many directories (kubepods, QoS classes and pods: ~ pods + 4).
const MAX_WATCHES: usize = 8192;
/// How long the thread waits in poll(2) before checking for commands and the stop flag.
const POLL_MS: i32 = 100;

enum Command {
    WatchRoots(Vec<String>),
}

/// The inotify thread; stops (and closes its descriptor) when dropped.
pub struct CgroupWatcher {
    events: mpsc::Receiver<CgroupEvent>,
    /// Set by the thread when an event did not fit in the channel.
    lost: Arc<AtomicBool>,
    commands: mpsc::Sender<Command>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for CgroupWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl CgroupWatcher {
    /// Watches `root` and the `kubepods*` subtrees at `kubepods_roots` (paths relative to `root`,
    /// with a leading `/`). Every directory already in a watched directory is reported as
    /// `Created` once the watch is in place, so nothing created during setup is missed.
    pub fn start(root: &Path, kubepods_roots: Vec<String>) -> Result<CgroupWatcher> {
        // SAFETY: plain syscall, no pointers.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(Error::Other(format!(
                "cannot watch the cgroup tree for new pods (inotify_init1: {}); raise fs.inotify.max_user_instances",
                std::io::Error::last_os_error()
            )));
        }
        let (tx, events) = mpsc::sync_channel(CHANNEL_CAP);
        let (commands, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let mut state = Watches::new(fd, root.to_path_buf(), tx);
        let lost = state.lost.clone();
        state.add_tree("");
        for r in &kubepods_roots {
            state.add_tree(r);
        }
        let stop_flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cgroup-watch".into())
            .spawn(move || state.run(&rx, &stop_flag))
            .map_err(|e| Error::Other(format!("cannot start the cgroup watcher thread: {e}")))?;
        Ok(CgroupWatcher { events, lost, commands, stop, thread: Some(thread) })
    }

    /// Also watch these `kubepods*` subtrees (already watched ones are skipped by the thread).
    pub fn watch_roots(&self, roots: Vec<String>) {
        let _ = self.commands.send(Command::WatchRoots(roots));
    }

    /// Everything seen since the last call; ends with `Overflow` when events were lost.
    pub fn drain(&self) -> Vec<CgroupEvent> {
        let mut out: Vec<CgroupEvent> = self.events.try_iter().collect();
        if self.lost.swap(false, Ordering::Relaxed) {
            out.push(CgroupEvent::Overflow);
        }
        out
    }

    /// False once the thread has ended (it only ends on a read error, which it logs).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

/// Whether a directory at `rel` gets a watch of its own: inside a `kubepods*` component, and
/// above the container level (kubepods, QoS, pod).
fn watchable(rel: &str) -> bool {
    rel.split('/').any(|c| c.contains("kubepods")) && parse_pod_path(rel).is_none_or(|p| p.container_id.is_none())
}

/// The thread's state: the descriptor, watch descriptor -> directory, and the ids of the
/// directories it has reported (a removal names the directory, not its id).
struct Watches {
    fd: i32,
    root: PathBuf,
    tx: mpsc::SyncSender<CgroupEvent>,
    lost: Arc<AtomicBool>,
    by_wd: HashMap<i32, String>,
    watched: HashSet<String>,
    ids: HashMap<String, u64>,
    full_warned: bool,
}

impl Drop for Watches {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(self.fd) };
    }
}

impl Watches {
    fn new(fd: i32, root: PathBuf, tx: mpsc::SyncSender<CgroupEvent>) -> Self {
        Watches {
            fd,
            root,
            tx,
            lost: Arc::new(AtomicBool::new(false)),
            by_wd: HashMap::new(),
            watched: HashSet::new(),
            ids: HashMap::new(),
            full_warned: false,
        }
    }

    fn send(&mut self, ev: CgroupEvent) {
        if self.tx.try_send(ev).is_err() {
            // Nobody drained for a long time: the next drain reports an overflow and the index
            // walks the tree.
            self.lost.store(true, Ordering::Relaxed);
        }
    }

    fn abs(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// Watches `rel` (`""` is the root) and, below it, every watchable directory; reports every
    /// directory found in them.
    fn add_tree(&mut self, rel: &str) {
        let mut stack = vec![rel.to_string()];
        while let Some(dir) = stack.pop() {
            if !self.add_watch(&dir) {
                continue;
            }
            let Ok(rd) = std::fs::read_dir(self.abs(&dir)) else { continue };
            for e in rd.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let child = format!("{dir}/{}", e.file_name().to_string_lossy());
                // readdir's d_ino on cgroupfs is the kernfs id, as in the index's walk.
                self.record(&child, e.ino());
                if watchable(&child) {
                    stack.push(child);
                }
            }
        }
    }

    /// inotify_add_watch; false when it failed (gone, or out of watches).
    fn add_watch(&mut self, rel: &str) -> bool {
        if self.watched.contains(rel) {
            return true;
        }
        if self.watched.len() >= MAX_WATCHES {
            if !self.full_warned {
                self.full_warned = true;
                tracing::warn!(
                    max = MAX_WATCHES,
                    "cgroup watcher: too many pod cgroups to watch; new ones are found by walks"
                );
            }
            return false;
        }
        let Ok(c) = CString::new(self.abs(rel).into_os_string().into_encoded_bytes()) else { return false };
        let mask = libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_TO | libc::IN_MOVED_FROM | libc::IN_ONLYDIR;
        // SAFETY: NUL-terminated path, our descriptor.
        let wd = unsafe { libc::inotify_add_watch(self.fd, c.as_ptr(), mask) };
        if wd < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENOSPC) && !self.full_warned {
                self.full_warned = true;
                tracing::warn!(
                    "cgroup watcher: out of inotify watches (raise fs.inotify.max_user_watches); new pods are found by walks"
                );
            }
            return false;
        }
        self.by_wd.insert(wd, rel.to_string());
        self.watched.insert(rel.to_string());
        true
    }

    fn record(&mut self, rel: &str, id: u64) {
        if self.ids.get(rel) == Some(&id) {
            return;
        }
        self.ids.insert(rel.to_string(), id);
        self.send(CgroupEvent::Created { id, entry: CgroupEntry { path: rel.to_string(), pod: parse_pod_path(rel) } });
    }

    fn run(mut self, commands: &mpsc::Receiver<Command>, stop: &AtomicBool) {
        let mut buf = vec![0u8; 64 * 1024];
        while !stop.load(Ordering::Relaxed) {
            for Command::WatchRoots(roots) in commands.try_iter() {
                for r in roots {
                    if !self.watched.contains(&r) {
                        self.add_tree(&r);
                    }
                }
            }
            let mut pfd = libc::pollfd { fd: self.fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one pollfd we own.
            let n = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
            if n <= 0 {
                continue;
            }
            // SAFETY: reads into our buffer, at most its length.
            let len = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if len < 0 {
                let err = std::io::Error::last_os_error();
                if matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
                    continue;
                }
                tracing::warn!(error = %err, "cgroup watcher stopped; new pods are found by walks of the tree");
                return;
            }
            self.handle(&buf[..len as usize]);
        }
    }

    /// Parses a read(2) of `struct inotify_event`s.
    fn handle(&mut self, mut bytes: &[u8]) {
        let header = std::mem::size_of::<libc::inotify_event>();
        while bytes.len() >= header {
            // SAFETY: the kernel wrote whole events; read_unaligned copes with the byte buffer.
            let ev: libc::inotify_event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            let total = header + ev.len as usize;
            if bytes.len() < total {
                break;
            }
            let name = &bytes[header..total];
            let name = String::from_utf8_lossy(&name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())]);
            bytes = &bytes[total..];
            self.event(ev.wd, ev.mask, &name);
        }
    }

    fn event(&mut self, wd: i32, mask: u32, name: &str) {
        if mask & libc::IN_Q_OVERFLOW != 0 {
            self.send(CgroupEvent::Overflow);
            // Report again what is there now: the index forgets nothing it had.
            let dirs: Vec<String> = self.watched.drain().collect();
            self.by_wd.clear();
            for d in dirs {
                self.add_tree(&d);
            }
            return;
        }
        if mask & libc::IN_IGNORED != 0 {
            if let Some(rel) = self.by_wd.remove(&wd) {
                self.watched.remove(&rel);
            }
            return;
        }
        if mask & libc::IN_ISDIR == 0 {
            return;
        }
        let Some(parent) = self.by_wd.get(&wd) else { return };
        let rel = format!("{parent}/{name}");
        if mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
            match std::fs::symlink_metadata(self.abs(&rel)) {
                Ok(m) => {
                    self.record(&rel, m.ino());
                    if watchable(&rel) {
                        self.add_tree(&rel);
                    }
                }
                // Created and removed before we could stat it (microseconds): the walk fallback.
                Err(_) => tracing::debug!(cgroup = %rel, "cgroup gone before it could be recorded"),
            }
        } else if mask & (libc::IN_DELETE | libc::IN_MOVED_FROM) != 0
            && let Some(id) = self.ids.remove(&rel)
        {
            self.send(CgroupEvent::Removed { id });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const UID: &str = "0c6e5e9a-3c2b-4f1e-9d8a-7b6c5d4e3f21";
    const CID: &str = "4a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcdef";

    /// Waits up to `timeout` for an event `pred` accepts; returns all events seen.
    fn wait_for(w: &CgroupWatcher, timeout: Duration, mut pred: impl FnMut(&CgroupEvent) -> bool) -> Vec<CgroupEvent> {
        let start = std::time::Instant::now();
        let mut seen = Vec::new();
        loop {
            for ev in w.drain() {
                let done = pred(&ev);
                seen.push(ev);
                if done {
                    return seen;
                }
            }
            if start.elapsed() >= timeout {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn created(ev: &CgroupEvent, path: &str) -> Option<u64> {
        match ev {
            CgroupEvent::Created { id, entry } if entry.path == path => Some(*id),
            _ => None,
        }
    }

    #[test]
    fn records_a_container_created_and_removed_between_two_drains() {
        let dir = tempfile::tempdir().unwrap();
        let pod = format!("/kubepods/besteffort/pod{UID}");
        std::fs::create_dir_all(dir.path().join(pod.trim_start_matches('/'))).unwrap();
        let w = CgroupWatcher::start(dir.path(), vec![]).unwrap();
        // Setup reports what exists (the kubepods tree is found from the root watch).
        let setup = wait_for(&w, Duration::from_secs(5), |e| created(e, &pod).is_some());
        assert!(setup.iter().any(|e| created(e, &pod).is_some()), "{setup:?}");

        let ctr = dir.path().join(format!("kubepods/besteffort/pod{UID}/{CID}"));
        std::fs::create_dir(&ctr).unwrap();
        let ino = std::fs::metadata(&ctr).unwrap().ino();
        // A container lives at least this long (the runtime starts a process in it); a directory
        // removed within microseconds of its creation is beyond any watcher.
        std::thread::sleep(Duration::from_millis(50));
        std::fs::remove_dir(&ctr).unwrap();
        let path = format!("{pod}/{CID}");
        let evs = wait_for(&w, Duration::from_secs(5), |e| *e == CgroupEvent::Removed { id: ino });
        let got = evs.iter().find_map(|e| created(e, &path));
        assert_eq!(got, Some(ino), "created with its inode: {evs:?}");
        let CgroupEvent::Created { entry, .. } = evs.iter().find(|e| created(e, &path).is_some()).unwrap() else {
            unreachable!()
        };
        assert_eq!(entry.pod.as_ref().unwrap().container_id.as_deref(), Some(CID));
        assert!(evs.contains(&CgroupEvent::Removed { id: ino }), "{evs:?}");
    }

    #[test]
    fn a_kubepods_tree_created_after_start_is_watched_down_to_the_pods() {
        let dir = tempfile::tempdir().unwrap();
        let w = CgroupWatcher::start(dir.path(), vec![]).unwrap();
        let uid_us = UID.replace('-', "_");
        let pod =
            dir.path().join(format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_us}.slice"));
        std::fs::create_dir_all(&pod).unwrap();
        // The pod level may have been created before its parent's watch was in place: then the
        // setup readdir reports it. Either way a container below it is seen.
        std::thread::sleep(Duration::from_millis(300));
        let ctr = pod.join(format!("cri-containerd-{CID}.scope"));
        std::fs::create_dir(&ctr).unwrap();
        let ino = std::fs::metadata(&ctr).unwrap().ino();
        let evs = wait_for(&w, Duration::from_secs(5), |e| matches!(e, CgroupEvent::Created { id, .. } if *id == ino));
        assert!(evs.iter().any(|e| matches!(e, CgroupEvent::Created { id, .. } if *id == ino)), "{evs:?}");
        assert!(w.is_running());
    }

    #[test]
    fn deep_kubepods_roots_are_watched_when_handed_over_and_containers_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let pod = format!("/system.slice/docker-abc.scope/kubelet.slice/kubepods/pod{UID}");
        std::fs::create_dir_all(dir.path().join(pod.trim_start_matches('/'))).unwrap();
        let w = CgroupWatcher::start(dir.path(), vec![]).unwrap();
        w.watch_roots(vec!["/system.slice/docker-abc.scope/kubelet.slice/kubepods".into()]);
        wait_for(&w, Duration::from_secs(5), |e| created(e, &pod).is_some());
        let ctr = dir.path().join(pod.trim_start_matches('/')).join(CID);
        std::fs::create_dir(&ctr).unwrap();
        let path = format!("{pod}/{CID}");
        let evs = wait_for(&w, Duration::from_secs(5), |e| created(e, &path).is_some());
        assert!(evs.iter().any(|e| created(e, &path).is_some()), "{evs:?}");
        // Inside a container: not watched, so not reported (the parser charges it to the container).
        std::fs::create_dir(ctr.join("nested")).unwrap();
        let evs = wait_for(&w, Duration::from_millis(400), |_| false);
        assert!(evs.iter().all(|e| !matches!(e, CgroupEvent::Created { entry, .. } if entry.path.ends_with("nested"))));
        assert!(watchable("/kubepods") && watchable(&format!("/kubepods/pod{UID}")));
        assert!(!watchable(&format!("/kubepods/pod{UID}/{CID}")) && !watchable("/system.slice"));
    }

    #[test]
    fn a_queue_overflow_is_reported_and_what_exists_is_reported_again() {
        let dir = tempfile::tempdir().unwrap();
        let pod = format!("/kubepods/pod{UID}");
        std::fs::create_dir_all(dir.path().join(pod.trim_start_matches('/')).join(CID)).unwrap();
        // SAFETY: plain syscall; the descriptor is owned (and closed) by `Watches`.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        let (tx, rx) = mpsc::sync_channel(16);
        let mut w = Watches::new(fd, dir.path().to_path_buf(), tx);
        w.add_tree("");
        let first: Vec<_> = rx.try_iter().collect();
        assert!(
            first
                .iter()
                .any(|e| matches!(e, CgroupEvent::Created { entry, .. } if entry.path == format!("{pod}/{CID}")))
        );
        // The kernel's overflow event (wd -1): the index is told, and the tree is reported again
        // (ids it had are not repeated; a new one is).
        std::fs::create_dir(dir.path().join(pod.trim_start_matches('/')).join("0123456789ab")).unwrap();
        w.event(-1, libc::IN_Q_OVERFLOW, "");
        let after: Vec<_> = rx.try_iter().collect();
        assert_eq!(after.first(), Some(&CgroupEvent::Overflow), "{after:?}");
        assert!(
            after
                .iter()
                .any(|e| matches!(e, CgroupEvent::Created { entry, .. } if entry.path.ends_with("0123456789ab")))
        );
        assert!(w.watched.contains(&pod), "watches re-established");
        // A full channel (nobody draining) is flagged, so the next drain reports an overflow.
        let (tx, rx) = mpsc::sync_channel(1);
        w.tx = tx;
        w.send(CgroupEvent::Removed { id: 1 });
        w.send(CgroupEvent::Removed { id: 2 });
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![CgroupEvent::Removed { id: 1 }]);
        assert!(w.lost.load(Ordering::Relaxed));
    }
}
