//! The pod watcher against kube's mock service (tower-test): the requests it makes (this node only,
//! from the watch cache), how list/watch events reach attribution, and how it behaves when RBAC
//! forbids the list (UID-only attribution, retried until the rule appears).

#![cfg(feature = "ebpf")] // the node agent; absent from the analyzer-only build

use std::{os::unix::fs::MetadataExt as _, time::Duration};

use blkio_agent::{collector::CgroupDelta, histogram::HIST_SLOTS, k8s::Attribution, snapshot::PodStats};
use http::{Request, Response, StatusCode};
use kube::{Client, client::Body};
use serde_json::json;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Reply = tower_test::mock::SendResponse<Response<Body>>;

const UID_A: &str = "11111111-2222-4333-8444-555555555555";
const UID_B: &str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
const CID_A: &str = "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a";
const CID_B: &str = "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b";

fn pod(name: &str, uid: &str, cid: &str, rv: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": uid, "resourceVersion": rv},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "nginx"}]},
        "status": {"containerStatuses": [{
            "name": "app", "image": "nginx", "imageID": "", "ready": true, "restartCount": 0,
            "containerID": format!("containerd://{cid}")
        }]}
    })
}

/// A systemd-driver kubepods tree with one container cgroup per pod; returns (dir, id A, id B).
fn tree() -> (tempfile::TempDir, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let mk = |uid: &str, cid: &str| {
        let p = dir.path().join(format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{cid}.scope",
            uid.replace('-', "_")
        ));
        std::fs::create_dir_all(&p).unwrap();
        std::fs::metadata(&p).unwrap().ino()
    };
    let a = mk(UID_A, CID_A);
    let b = mk(UID_B, CID_B);
    (dir, a, b)
}

fn delta(cgroup_id: u64, count: u64) -> CgroupDelta {
    let mut device_slots = [0; HIST_SLOTS];
    device_slots[3] = count;
    CgroupDelta {
        cgroup_id,
        device_id: 8 << 20,
        device_name: "sda".into(),
        op: "read",
        count,
        device_ns: count * 9000,
        bytes: count * 512,
        device_slots,
    }
}

fn labels(p: &PodStats) -> (Option<&str>, Option<&str>, Option<&str>, Option<&str>) {
    (p.namespace.as_deref(), p.pod.as_deref(), p.pod_uid.as_deref(), p.container.as_deref())
}

async fn next(handle: &mut Handle) -> (Request<Body>, Reply) {
    tokio::time::timeout(Duration::from_secs(15), handle.next_request())
        .await
        .expect("the watcher made no request within 15 s")
        .expect("mock service closed")
}

fn query(req: &Request<Body>) -> String {
    assert_eq!(req.method(), http::Method::GET);
    assert_eq!(req.uri().path(), "/api/v1/pods", "pods of all namespaces");
    req.uri().query().unwrap_or_default().to_string()
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    Response::builder().status(status).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap()
}

/// Polls `attribute` until `pred` holds (the watcher runs concurrently), or fails after 10 s.
async fn eventually(
    a: &mut Attribution,
    deltas: &[CgroupDelta],
    what: &str,
    pred: impl Fn(&[PodStats]) -> bool,
) -> Vec<PodStats> {
    let start = std::time::Instant::now();
    loop {
        let out = a.attribute(deltas);
        if pred(&out) {
            return out;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: never happened; last attribution: {out:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn client() -> (Client, Handle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(svc, "default"), handle)
}

#[tokio::test]
async fn watcher_lists_this_nodes_pods_from_the_cache_and_follows_watch_events() {
    let (dir, id_a, id_b) = tree();
    let (client, mut api) = client();
    let mut attr = Attribution::with_client(dir.path().to_path_buf(), "node-a", 50, client).unwrap();
    let deltas = [delta(id_a, 8), delta(id_b, 3)];

    let (req, reply) = next(&mut api).await;
    let q = query(&req);
    assert!(q.contains("fieldSelector=spec.nodeName%3Dnode-a"), "list is limited to this node: {q}");
    assert!(q.contains("resourceVersion=0"), "list is served from the API server's cache: {q}");
    assert!(!q.contains("watch=true"), "first a list: {q}");
    reply.send_response(json_response(
        StatusCode::OK,
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "10"}, "items": [pod("web-0", UID_A, CID_A, "9")]}),
    ));

    let store = attr.pod_store().expect("a watcher runs").clone();
    tokio::time::timeout(Duration::from_secs(10), store.wait_until_ready()).await.expect("store synced").unwrap();
    let out = attr.attribute(&deltas);
    assert_eq!(labels(&out[0]), (Some("shop"), Some("web-0"), Some(UID_A), Some("app")));
    assert_eq!(labels(&out[1]), (None, None, Some(UID_B), None), "not yet in the store: UID only");

    // The watch continues from the list's resourceVersion, still limited to this node.
    let (req, reply) = next(&mut api).await;
    let q = query(&req);
    assert!(q.contains("watch=true") && q.contains("resourceVersion=10"), "{q}");
    assert!(q.contains("fieldSelector=spec.nodeName%3Dnode-a"), "{q}");
    let events = [
        json!({"type": "ADDED", "object": pod("api-0", UID_B, CID_B, "11")}),
        json!({"type": "DELETED", "object": pod("web-0", UID_A, CID_A, "12")}),
    ];
    let body: Vec<u8> = events.iter().flat_map(|e| [serde_json::to_vec(e).unwrap(), b"\n".to_vec()].concat()).collect();
    reply.send_response(Response::new(Body::from(body)));

    let out = eventually(&mut attr, &deltas, "ADDED api-0 and DELETED web-0 applied", |out| {
        out.iter().any(|p| p.pod.as_deref() == Some("api-0")) && store.state().len() == 1
    })
    .await;
    // Deleted from the API, but its last I/O (reported after the deletion) keeps its names.
    assert_eq!(labels(&out[0]), (Some("shop"), Some("web-0"), Some(UID_A), Some("app")), "deleted pod: still named");
    assert_eq!(labels(&out[1]), (Some("shop"), Some("api-0"), Some(UID_B), Some("app")));
    assert_eq!((out[0].count, out[1].count), (8, 3));
    drop(api);
}

#[tokio::test]
async fn forbidden_list_keeps_uid_only_attribution_and_recovers_when_rbac_is_granted() {
    let (dir, id_a, _) = tree();
    let (client, mut api) = client();
    let mut attr = Attribution::with_client(dir.path().to_path_buf(), "node-a", 50, client).unwrap();
    let deltas = [delta(id_a, 5)];

    let (req, reply) = next(&mut api).await;
    assert!(query(&req).contains("fieldSelector=spec.nodeName%3Dnode-a"));
    let forbidden = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Forbidden", "code": 403,
        "message": "pods is forbidden: User \"system:serviceaccount:blkio:blkio-agent\" cannot list resource \"pods\" in API group \"\" at the cluster scope"
    });
    reply.send_response(json_response(StatusCode::FORBIDDEN, forbidden));

    // Attribution goes on without names.
    let out = attr.attribute(&deltas);
    assert_eq!(out.len(), 1);
    assert_eq!(labels(&out[0]), (None, None, Some(UID_A), None));
    assert_eq!(out[0].count, 5);

    // The watcher backs off and lists again; once allowed, names appear without a restart.
    let (req, reply) = next(&mut api).await;
    let q = query(&req);
    assert!(!q.contains("watch=true") && q.contains("fieldSelector=spec.nodeName%3Dnode-a"), "a relist: {q}");
    reply.send_response(json_response(
        StatusCode::OK,
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "20"}, "items": [pod("web-0", UID_A, CID_A, "19")]}),
    ));
    let out = eventually(&mut attr, &deltas, "names after RBAC was granted", |out| out[0].pod.is_some()).await;
    assert_eq!(labels(&out[0]), (Some("shop"), Some("web-0"), Some(UID_A), Some("app")));
    drop(api);
}

#[test]
fn cgroup_only_attribution_has_no_store() {
    let (dir, id_a, _) = tree();
    let mut attr = Attribution::without_api(dir.path().to_path_buf(), 50).unwrap();
    assert!(attr.pod_store().is_none());
    let out = attr.attribute(&[delta(id_a, 2)]);
    assert_eq!(labels(&out[0]), (None, None, Some(UID_A), None));
}

/// A pod the API deletes before its I/O is reported (a short Job, an init-only pod) keeps its
/// names: the watcher remembers the deleted object for a grace period.
#[tokio::test]
async fn a_pod_deleted_before_its_io_is_reported_keeps_its_names() {
    let (dir, id_a, _) = tree();
    let (client, mut api) = client();
    let mut attr = Attribution::with_client(dir.path().to_path_buf(), "node-a", 50, client).unwrap();
    let (_, reply) = next(&mut api).await;
    reply.send_response(json_response(
        StatusCode::OK,
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "10"}, "items": [pod("job-0", UID_A, CID_A, "9")]}),
    ));
    let (_, reply) = next(&mut api).await;
    let ev = json!({"type": "DELETED", "object": pod("job-0", UID_A, CID_A, "11")});
    reply.send_response(Response::new(Body::from([serde_json::to_vec(&ev).unwrap(), b"\n".to_vec()].concat())));
    let store = attr.pod_store().unwrap().clone();
    let start = std::time::Instant::now();
    // Until the list, then the DELETED event, have been applied.
    tokio::time::timeout(Duration::from_secs(10), store.wait_until_ready()).await.expect("store synced").unwrap();
    while !store.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "DELETED never applied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(store.state().is_empty(), "gone from the store");
    let out = attr.attribute(&[delta(id_a, 6)]);
    assert_eq!(labels(&out[0]), (Some("shop"), Some("job-0"), Some(UID_A), Some("app")), "named after deletion");
    assert_eq!(out[0].count, 6);
    drop(api);
}
