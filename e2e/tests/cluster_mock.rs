//! The kind e2e's kube-client checks against kube's mock service (tower-test): the requests
//! they make (paths, selectors) and how they read the answers, without an API server.

use e2e::cluster::{daemonset_state, logs, pod_on_node, wait_for};
use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use std::time::Duration;
use tower_test::mock::{self, Handle};

type MockHandle = Handle<Request<Body>, Response<Body>>;

fn client() -> (kube::Client, MockHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

/// Answers the next request with `body` after checking its path and query.
async fn expect(handle: &mut MockHandle, path_and_query: &str, body: Value) {
    let (req, send) = handle.next_request().await.expect("the client made a request");
    assert_eq!(req.method(), http::Method::GET);
    let uri = req.uri().to_string();
    assert_eq!(uri, path_and_query, "request URI");
    send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap());
}

fn node(name: &str) -> Value {
    json!({"metadata": {"name": name}})
}

fn agent_pod(name: &str, node: &str, ready: bool) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "blkio-agent"},
        "spec": {"nodeName": node, "containers": [{"name": "agent"}]},
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

fn daemonset(desired: i32, ready: i32) -> Value {
    json!({
        "metadata": {"name": "blkio-agent", "namespace": "blkio-agent"},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/instance": "blkio-agent", "app.kubernetes.io/name": "blkio-agent"}},
            "template": {"spec": {"containers": [{"name": "agent"}]}}
        },
        "status": {"desiredNumberScheduled": desired, "numberReady": ready, "updatedNumberScheduled": desired,
                   "currentNumberScheduled": desired, "numberMisscheduled": 0}
    })
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": format!("{kind}List"), "metadata": {}, "items": items})
}

const POD_SELECTOR: &str =
    "labelSelector=app.kubernetes.io%2Finstance%3Dblkio-agent%2Capp.kubernetes.io%2Fname%3Dblkio-agent";

#[tokio::test]
async fn daemonset_ready_on_every_node() {
    let (client, mut handle) = client();
    let server = tokio::spawn(async move {
        expect(&mut handle, "/api/v1/nodes?", list("Node", vec![node("kind-control-plane"), node("kind-worker")]))
            .await;
        expect(&mut handle, "/apis/apps/v1/namespaces/blkio-agent/daemonsets/blkio-agent", daemonset(2, 2)).await;
        expect(
            &mut handle,
            &format!("/api/v1/namespaces/blkio-agent/pods?&{POD_SELECTOR}"),
            list("Pod", vec![agent_pod("a-1", "kind-control-plane", true), agent_pod("a-2", "kind-worker", true)]),
        )
        .await;
    });
    let state = daemonset_state(&client, "blkio-agent", "blkio-agent").await.unwrap();
    server.await.unwrap();
    assert_eq!(state.nodes, vec!["kind-control-plane", "kind-worker"]);
    assert!(state.ready_on_every_node(), "{state:?}");
}

#[tokio::test]
async fn a_node_without_a_ready_agent_is_reported() {
    let (client, mut handle) = client();
    let server = tokio::spawn(async move {
        expect(&mut handle, "/api/v1/nodes?", list("Node", vec![node("gpu-1"), node("gpu-2"), node("cpu-1")])).await;
        // The status counts two of three, and gpu-2's pod is not Ready.
        expect(&mut handle, "/apis/apps/v1/namespaces/blkio-agent/daemonsets/blkio-agent", daemonset(3, 2)).await;
        expect(
            &mut handle,
            &format!("/api/v1/namespaces/blkio-agent/pods?&{POD_SELECTOR}"),
            list(
                "Pod",
                vec![
                    agent_pod("a-1", "gpu-1", true),
                    agent_pod("a-2", "gpu-2", false),
                    agent_pod("a-3", "cpu-1", true),
                ],
            ),
        )
        .await;
    });
    let state = daemonset_state(&client, "blkio-agent", "blkio-agent").await.unwrap();
    server.await.unwrap();
    assert!(!state.ready_on_every_node());
    assert_eq!(state.nodes_not_ready(), vec!["gpu-2".to_string()]);
}

#[tokio::test]
async fn finds_the_agent_pod_of_a_node_and_reads_its_log() {
    let (client, mut handle) = client();
    let server = tokio::spawn(async move {
        // The field selector keeps the listing to one node, as the agent's own watch does.
        expect(
            &mut handle,
            "/api/v1/namespaces/blkio-agent/pods?&fieldSelector=spec.nodeName%3Dkind-worker&labelSelector=app.kubernetes.io%2Fname%3Dblkio-agent",
            list("Pod", vec![agent_pod("blkio-agent-x7", "kind-worker", true)]),
        )
        .await;
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.uri().to_string(), "/api/v1/namespaces/blkio-agent/pods/blkio-agent-x7/log?");
        send.send_response(Response::builder().body(Body::from(b"attached; collecting\n".to_vec())).unwrap());
    });
    let pod = pod_on_node(&client, "blkio-agent", "app.kubernetes.io/name=blkio-agent", "kind-worker").await.unwrap();
    let name = pod.metadata.name.unwrap();
    assert_eq!(name, "blkio-agent-x7");
    assert_eq!(logs(&client, "blkio-agent", &name).await.unwrap(), "attached; collecting\n");
    server.await.unwrap();
}

#[tokio::test]
async fn two_agent_pods_on_one_node_is_an_error() {
    let (client, mut handle) = client();
    let server = tokio::spawn(async move {
        let (_, send) = handle.next_request().await.unwrap();
        let body = list("Pod", vec![agent_pod("a", "n", true), agent_pod("b", "n", true)]);
        send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap());
    });
    let err = pod_on_node(&client, "blkio-agent", "x=y", "n").await.unwrap_err().to_string();
    server.await.unwrap();
    assert!(err.contains("2 pods match"), "{err}");
}

#[tokio::test]
async fn api_errors_surface_with_context() {
    let (client, mut handle) = client();
    let server = tokio::spawn(async move {
        let (_, send) = handle.next_request().await.unwrap();
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "nodes is forbidden", "reason": "Forbidden", "code": 403});
        send.send_response(
            Response::builder().status(403).body(Body::from(serde_json::to_vec(&status).unwrap())).unwrap(),
        );
    });
    let err = format!("{:#}", daemonset_state(&client, "blkio-agent", "blkio-agent").await.unwrap_err());
    server.await.unwrap();
    assert!(err.contains("listing nodes") && err.contains("forbidden"), "{err}");
}

#[tokio::test]
async fn wait_for_reports_the_last_error_on_timeout() {
    let mut calls = 0;
    let ok = wait_for("third time", Duration::from_secs(30), || {
        calls += 1;
        let n = calls;
        async move { Ok((n >= 2).then_some(n)) }
    })
    .await
    .unwrap();
    assert_eq!(ok, 2);
    let err = wait_for::<(), _, _>("never", Duration::from_millis(10), || async { anyhow::bail!("still broken") })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("waiting for never") && err.contains("still broken"), "{err}");
}
