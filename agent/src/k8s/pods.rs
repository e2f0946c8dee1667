//! Pod names from the API: a kube-rs watcher of this node's pods feeding a reflector store.
//!
//! Only pods with `spec.nodeName=<this node>` are watched (a field selector, evaluated by the API
//! server), so memory and API load scale with one node's pods, not the cluster's. The objects are
//! slimmed before they enter the store: we keep only what maps a cgroup to names.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodStatus};
use kube::{
    Api, Client,
    runtime::{
        WatchStreamExt as _, reflector,
        reflector::store::{Store, Writer},
        watcher,
    },
};

/// Static pods run under the UID kubelet derived from their manifest; the API's mirror pod has
/// its own UID and carries the manifest's in this annotation.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Names for one pod (and container) from the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNames {
    /// The API's `metadata.uid` (differs from the cgroup's for static pods).
    pub uid: Option<String>,
    pub namespace: String,
    pub pod: String,
    pub container: Option<String>,
}

/// The field selector that limits the watch to one node's pods.
pub fn node_selector(node_name: &str) -> String {
    format!("spec.nodeName={node_name}")
}

/// Watcher configuration: this node only, listed from the API server's watch cache
/// (`resourceVersion=0`), since a DaemonSet relisting from etcd on every node is what hurts
/// large clusters. kube drops `resourceVersion=0` from paginated lists, so pagination is off:
/// one node's pods (kubelet's max-pods, 110 by default) fit one response.
pub fn watcher_config(node_name: &str) -> watcher::Config {
    let mut config = watcher::Config::default().fields(&node_selector(node_name)).any_semantic();
    config.page_size = None;
    config
}

/// Starts the watcher task; the returned store fills as the task runs. The task ends when its
/// handle is aborted.
pub fn spawn_watcher(
    client: Client,
    node_name: &str,
    deleted: DeletedPods,
) -> (Store<Pod>, tokio::task::JoinHandle<()>) {
    let writer: Writer<Pod> = Writer::default();
    let store = writer.as_reader();
    let task = tokio::spawn(run_watcher(client, node_name.to_string(), writer, deleted));
    (store, task)
}

/// Pods the API deleted recently, by UID and static-pod hash: the I/O a pod submitted just
/// before it went (a short Job, an init-only pod deleted at once) is reported after the watch has
/// dropped it from the store. Kept [`DELETED_POD_GRACE`], at most [`MAX_DELETED_PODS`].
#[derive(Clone, Default)]
pub struct DeletedPods(Arc<Mutex<DeletedMap>>);

/// UID (or static-pod hash) -> the deleted object and when the deletion was seen.
type DeletedMap = HashMap<String, (Arc<Pod>, Instant)>;

/// How long a deleted pod still names its I/O: longer than any interval, and than the time the
/// last requests of a dead container take to complete (writeback included).
pub const DELETED_POD_GRACE: Duration = Duration::from_secs(600);
pub const MAX_DELETED_PODS: usize = 4096;

impl DeletedPods {
    pub fn insert(&self, pod: Pod, now: Instant) {
        let pod = Arc::new(pod);
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (_, t)| now.saturating_duration_since(*t) < DELETED_POD_GRACE);
        if map.len() >= MAX_DELETED_PODS {
            map.clear();
        }
        let meta = &pod.metadata;
        for key in [meta.uid.clone(), meta.annotations.as_ref().and_then(|a| a.get(MIRROR_ANNOTATION).cloned())]
            .into_iter()
            .flatten()
        {
            map.insert(key, (pod.clone(), now));
        }
    }

    fn get(&self, key: &str, now: Instant) -> Option<Arc<Pod>> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).filter(|(_, t)| now.saturating_duration_since(*t) < DELETED_POD_GRACE).map(|(p, _)| p.clone())
    }
}

/// Watches this node's pods into `writer` forever, retrying with kube's default backoff (a
/// missing RBAC rule can be fixed without restarting the agent).
pub async fn run_watcher(client: Client, node_name: String, writer: Writer<Pod>, deleted: DeletedPods) {
    let store = writer.as_reader();
    let api: Api<Pod> = Api::all(client);
    let events = watcher(api, watcher_config(&node_name)).map_ok(|ev| ev.modify(slim)).default_backoff();
    let mut stream = std::pin::pin!(reflector(writer, events));
    let mut failing = false;
    let mut synced = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                if let watcher::Event::Delete(pod) = &event {
                    deleted.insert(pod.clone(), Instant::now());
                }
                if failing {
                    failing = false;
                    tracing::info!(node = %node_name, "pod watch recovered; pod names are back");
                }
                if matches!(event, watcher::Event::InitDone) && !synced {
                    synced = true;
                    let pods = store.len();
                    if pods == 0 {
                        // The usual cause is a node name that is the hostname, not the node's name.
                        tracing::warn!(
                            node = %node_name,
                            "no pods with spec.nodeName={node_name}; if pods run here, set NODE_NAME from the downward API (spec.nodeName)"
                        );
                    } else {
                        tracing::info!(node = %node_name, pods, "pod watch synced");
                    }
                }
            }
            // Logged once per outage: the backoff retries every few seconds to minutes.
            Err(e) if !failing => {
                failing = true;
                log_watch_error(&e, &node_name);
            }
            Err(e) => tracing::debug!(error = %e, "pod watch still failing"),
        }
    }
}

fn log_watch_error(e: &watcher::Error, node: &str) {
    let status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    };
    if matches!(status, Some(401 | 403)) {
        tracing::warn!(
            node = %node,
            error = %e,
            "cannot list/watch pods: grant the agent's service account get, list and watch on pods \
             (the chart's ClusterRole does); until then pods are reported by UID only"
        );
    } else {
        tracing::warn!(node = %node, error = %e, "pod watch failed; retrying with backoff, pods reported by UID only meanwhile");
    }
}

/// Drops everything the lookup does not use: a pod object is mostly spec, status conditions and
/// managed fields, none of which names a cgroup.
pub fn slim(pod: &mut Pod) {
    pod.spec = None;
    let meta = &mut pod.metadata;
    meta.managed_fields = None;
    meta.labels = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.generate_name = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.retain(|k, _| k == MIRROR_ANNOTATION);
    }
    let Some(status) = pod.status.take() else { return };
    let keep = |list: Option<Vec<ContainerStatus>>| list.map(|l| l.into_iter().map(slim_container).collect::<Vec<_>>());
    pod.status = Some(PodStatus {
        container_statuses: keep(status.container_statuses),
        init_container_statuses: keep(status.init_container_statuses),
        ephemeral_container_statuses: keep(status.ephemeral_container_statuses),
        ..PodStatus::default()
    });
}

fn slim_container(c: ContainerStatus) -> ContainerStatus {
    // The previous instance's id: requests it submitted can complete after a restart.
    let last = c.last_state.and_then(|s| s.terminated).and_then(|t| t.container_id);
    ContainerStatus {
        name: c.name,
        container_id: c.container_id,
        last_state: last.map(|id| ContainerState {
            terminated: Some(ContainerStateTerminated { container_id: Some(id), ..Default::default() }),
            ..Default::default()
        }),
        ..ContainerStatus::default()
    }
}

/// Lookup side of the store; `None` store means no API access (cgroup/UID only).
#[derive(Clone, Default)]
pub struct PodDirectory {
    store: Option<Store<Pod>>,
    deleted: DeletedPods,
}

impl PodDirectory {
    pub fn new(store: Option<Store<Pod>>) -> Self {
        PodDirectory { store, deleted: DeletedPods::default() }
    }

    /// Also look in these recently deleted pods (filled by the watcher).
    pub fn with_deleted(mut self, deleted: DeletedPods) -> Self {
        self.deleted = deleted;
        self
    }

    pub fn store(&self) -> Option<&Store<Pod>> {
        self.store.as_ref()
    }

    /// Index of the pods whose UID (or static-pod config hash) is in `uids`, built from one pass
    /// over the store: the store is keyed by namespace/name, and one node has at most a few
    /// hundred pods, so a pass per interval is cheaper than keeping a second index in sync.
    /// Pods deleted from the API within [`DELETED_POD_GRACE`] are found too.
    pub fn index(&self, uids: &HashSet<&str>, now: Instant) -> HashMap<String, Arc<Pod>> {
        let mut out = HashMap::new();
        let Some(store) = &self.store else { return out };
        if uids.is_empty() {
            return out;
        }
        for pod in store.state() {
            let meta = &pod.metadata;
            if let Some(uid) = meta.uid.as_deref().filter(|u| uids.contains(u)) {
                out.insert(uid.to_string(), pod.clone());
            }
            if let Some(hash) = meta.annotations.as_ref().and_then(|a| a.get(MIRROR_ANNOTATION))
                && uids.contains(hash.as_str())
            {
                out.insert(hash.clone(), pod.clone());
            }
        }
        for uid in uids {
            if !out.contains_key(*uid)
                && let Some(pod) = self.deleted.get(uid, now)
            {
                out.insert(uid.to_string(), pod);
            }
        }
        out
    }
}

/// Names for `pod`, and the name of the container whose runtime id is `container_id`.
pub fn names(pod: &Pod, container_id: Option<&str>) -> Option<PodNames> {
    let meta = &pod.metadata;
    let namespace = meta.namespace.clone()?;
    let name = meta.name.clone()?;
    let container = container_id.and_then(|id| container_name(pod, id));
    Some(PodNames { uid: meta.uid.clone(), namespace, pod: name, container })
}

fn container_name(pod: &Pod, id: &str) -> Option<String> {
    let status = pod.status.as_ref()?;
    let lists = [&status.container_statuses, &status.init_container_statuses, &status.ephemeral_container_statuses];
    let matches = |full: Option<&String>| {
        // `containerd://<id>`, `cri-o://<id>`, `docker://<id>`: the scheme is the runtime.
        full.is_some_and(|f| f.rsplit_once("://").map_or(f.as_str(), |(_, i)| i).eq_ignore_ascii_case(id))
    };
    lists.into_iter().flatten().flatten().find_map(|c| {
        let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()).and_then(|t| t.container_id.as_ref());
        (matches(c.container_id.as_ref()) || matches(last)).then(|| c.name.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_json(uid: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-0", "namespace": "shop", "uid": uid, "resourceVersion": "7",
                "labels": {"app": "web"},
                "annotations": {"big": "x".repeat(1000), MIRROR_ANNOTATION: "9f86d081884c7d659a2feaa0c55ad015"},
                "managedFields": [{"manager": "kubelet"}]
            },
            "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "nginx"}]},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{
                    "name": "app", "image": "nginx", "imageID": "sha", "ready": true, "restartCount": 1,
                    "containerID": "containerd://aaaa1111bbbb2222",
                    "lastState": {"terminated": {"exitCode": 1, "containerID": "containerd://cccc3333dddd4444"}}
                }],
                "initContainerStatuses": [{
                    "name": "init", "image": "busybox", "imageID": "sha", "ready": false, "restartCount": 0,
                    "containerID": "cri-o://eeee5555ffff6666"
                }]
            }
        })
    }

    #[test]
    fn slim_keeps_only_what_names_cgroups() {
        let mut pod: Pod = serde_json::from_value(pod_json("u-1")).unwrap();
        slim(&mut pod);
        assert!(pod.spec.is_none());
        assert!(pod.metadata.labels.is_none() && pod.metadata.managed_fields.is_none());
        let ann = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann.keys().collect::<Vec<_>>(), vec![MIRROR_ANNOTATION]);
        let st = pod.status.as_ref().unwrap();
        assert!(st.conditions.is_none() && st.phase.is_none());
        assert_eq!(names(&pod, Some("aaaa1111bbbb2222")).unwrap().container.as_deref(), Some("app"));
        assert_eq!(
            names(&pod, Some("cccc3333dddd4444")).unwrap().container.as_deref(),
            Some("app"),
            "previous instance"
        );
        assert_eq!(names(&pod, Some("eeee5555ffff6666")).unwrap().container.as_deref(), Some("init"));
        let n = names(&pod, Some("0000")).unwrap();
        assert_eq!((n.namespace.as_str(), n.pod.as_str(), n.container), ("shop", "web-0", None));
    }

    #[test]
    fn selector_and_config_limit_the_watch_to_this_node() {
        assert_eq!(node_selector("node-a"), "spec.nodeName=node-a");
        let c = watcher_config("node-a");
        assert_eq!(c.field_selector.as_deref(), Some("spec.nodeName=node-a"));
        assert_eq!(c.list_semantic, watcher::ListSemantic::Any);
        assert_eq!(c.page_size, None, "kube drops resourceVersion=0 from paginated lists");
    }

    #[test]
    fn index_finds_pods_by_uid_and_static_pod_hash() {
        let mut writer: Writer<Pod> = Writer::default();
        let pod: Pod = serde_json::from_value(pod_json("u-1")).unwrap();
        writer.apply_watcher_event(&watcher::Event::Apply(pod));
        let dir = PodDirectory::new(Some(writer.as_reader()));
        let hash = "9f86d081884c7d659a2feaa0c55ad015";
        let idx = dir.index(&["u-1", hash, "u-2"].into_iter().collect(), Instant::now());
        assert_eq!(idx.len(), 2);
        assert_eq!(idx["u-1"].metadata.name.as_deref(), Some("web-0"));
        assert_eq!(idx[hash].metadata.name.as_deref(), Some("web-0"));
        assert!(PodDirectory::new(None).index(&["u-1"].into_iter().collect(), Instant::now()).is_empty());
    }

    #[test]
    fn deleted_pods_still_name_their_io_for_a_grace_period() {
        let mut writer: Writer<Pod> = Writer::default();
        let deleted = DeletedPods::default();
        let dir = PodDirectory::new(Some(writer.as_reader())).with_deleted(deleted.clone());
        let pod: Pod = serde_json::from_value(pod_json("u-9")).unwrap();
        writer.apply_watcher_event(&watcher::Event::Apply(pod.clone()));
        writer.apply_watcher_event(&watcher::Event::Delete(pod.clone()));
        let t0 = Instant::now();
        let want: HashSet<&str> = ["u-9"].into_iter().collect();
        assert!(dir.index(&want, t0).is_empty(), "gone from the store, not yet recorded");
        deleted.insert(pod, t0);
        assert_eq!(dir.index(&want, t0 + Duration::from_secs(30))["u-9"].metadata.name.as_deref(), Some("web-0"));
        let hash: HashSet<&str> = ["9f86d081884c7d659a2feaa0c55ad015"].into_iter().collect();
        assert_eq!(dir.index(&hash, t0).len(), 1, "static pods by their config hash too");
        assert!(dir.index(&want, t0 + DELETED_POD_GRACE).is_empty(), "forgotten after the grace period");
    }
}
