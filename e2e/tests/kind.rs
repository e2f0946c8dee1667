//! The kind e2e's assertions, run by `cargo xtask e2e` against the cluster it creates (kind,
//! the image loaded, the node-local collector from manifests/examples, `helm install --wait`
//! with e2e/kind/values.yaml, per-pod attribution on as the chart's default).
//! `#[ignore]`d: without that cluster there is nothing to test.
//! KUBECONFIG points at the cluster; kind's node containers are reached with `docker`.

use std::{path::Path, time::Duration};

use blkio_agent::snapshot::Snapshot;
use e2e::{
    bpf::agent_programs,
    cluster::{collector_saw_metric, daemonset_state, logs, pod_on_node, pod_ready, wait_for},
    docker::{docker, scratch_dir},
    segments::{device_total, pod_device_count, read_sealed},
};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Namespace, Node, Pod},
    rbac::v1::ClusterRole,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::json;

const NAMESPACE: &str = "blkio-agent";
const RELEASE: &str = "blkio-agent";
const WORKLOAD_NS: &str = "blkio-e2e";
const WORKLOAD: &str = "blkio-e2e-workload";
const WRITES: u64 = 3000;
const OUTPUT: &str = "/var/log/blkio-agent";

/// A privileged pod (loop devices need it) that writes WRITES direct 4 KiB requests to a loop
/// device of its own, prints the device, and keeps running (so the agent can name it) until
/// deleted, when it detaches the device.
fn workload(node: &str) -> Pod {
    let script = format!(
        r#"set -eu
truncate -s 64M /data/disk.img
dev=$(losetup -f)
[ -b "$dev" ] || mknod "$dev" b 7 "${{dev#/dev/loop}}"
losetup "$dev" /data/disk.img
trap 'losetup -d "$dev"; exit 0' TERM
echo "LOOP_DEVICE=${{dev#/dev/}}"
dd if=/dev/zero of="$dev" bs=4k count={WRITES} oflag=direct
echo WORKLOAD_DONE
while true; do sleep 1; done
"#
    );
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": WORKLOAD, "namespace": WORKLOAD_NS},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 10,
            "containers": [{
                "name": "dd",
                "image": "busybox:1.37",
                "command": ["sh", "-c", script],
                "securityContext": {"privileged": true},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]
            }],
            "volumes": [{"name": "data", "emptyDir": {}}]
        }
    }))
    .unwrap()
}

async fn worker_node(client: &Client) -> String {
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes.list(&ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .find(|n| !n.metadata.labels.as_ref().is_some_and(|l| l.contains_key("node-role.kubernetes.io/control-plane")))
        .and_then(|n| n.metadata.name)
        .expect("a worker node")
}

/// The node's output hostPath, copied out of kind's node container.
fn node_segments(node: &str, dest: &Path) -> anyhow::Result<Vec<e2e::segments::Segment>> {
    let local = dest.join(node);
    if local.exists() {
        std::fs::remove_dir_all(&local)?;
    }
    docker(&["cp", &format!("{node}:{OUTPUT}"), local.to_str().unwrap()])?;
    read_sealed(&local, node)
}

#[tokio::test]
#[ignore = "needs the kind cluster of `cargo xtask e2e`"]
async fn kind_agent_on_every_node_measures_the_workload() {
    let client = Client::try_default().await.expect("KUBECONFIG of the kind cluster");

    // DaemonSet ready on every node (control-plane included: it tolerates the taint).
    let state = wait_for("the DaemonSet on every node", Duration::from_secs(180), || {
        let client = client.clone();
        async move {
            let s = daemonset_state(&client, NAMESPACE, RELEASE).await?;
            Ok(s.ready_on_every_node().then_some(s))
        }
    })
    .await
    .unwrap();
    assert!(state.nodes.len() >= 2, "{state:?}");
    // Per-pod attribution is the chart's default (e2e/kind/values.yaml does not set it): its
    // ClusterRole is installed and the agent's pods carry the API token.
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let role = roles.get(RELEASE).await.expect("the attribution ClusterRole of the chart's defaults");
    assert_eq!(role.rules.unwrap()[0].resources.as_deref(), Some(&["pods".to_string()][..]));
    let ds = Api::<DaemonSet>::namespaced(client.clone(), NAMESPACE).get(RELEASE).await.unwrap();
    assert_eq!(ds.spec.unwrap().template.spec.unwrap().automount_service_account_token, Some(true));

    // The workload.
    let node = worker_node(&client).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = serde_json::from_value(
        json!({"metadata": {"name": WORKLOAD_NS, "labels": {"pod-security.kubernetes.io/enforce": "privileged"}}}),
    )
    .unwrap();
    let _ = namespaces.create(&PostParams::default(), &ns).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), WORKLOAD_NS);
    let _ = pods.delete(WORKLOAD, &DeleteParams::default()).await;
    wait_for("the previous workload pod to go", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move { Ok(pods.get_opt(WORKLOAD).await?.is_none().then_some(())) }
    })
    .await
    .unwrap();
    pods.create(&PostParams::default(), &workload(&node)).await.unwrap();
    let device = wait_for("the workload to finish writing", Duration::from_secs(180), || {
        let client = client.clone();
        async move {
            let log = logs(&client, WORKLOAD_NS, WORKLOAD).await.unwrap_or_default();
            let dev = log.lines().find_map(|l| l.strip_prefix("LOOP_DEVICE=")).map(str::to_string);
            Ok(dev.filter(|_| log.contains("WORKLOAD_DONE")))
        }
    })
    .await
    .unwrap();

    // JSONL on the node's hostPath: the node's name, the workload's device, and the workload pod
    // by name in the per-pod section.
    let scratch = scratch_dir("kind").unwrap();
    let node_for_check = node.clone();
    let device_for_check = device.clone();
    let (total, by_pod) =
        wait_for("the workload's requests in the node's sealed JSONL", Duration::from_secs(120), || {
            let (node, device, scratch) = (node_for_check.clone(), device_for_check.clone(), scratch.clone());
            async move {
                let segments = node_segments(&node, &scratch)?;
                let snapshots: Vec<&Snapshot> = segments.iter().flat_map(|s| &s.snapshots).collect();
                anyhow::ensure!(
                    snapshots.iter().all(|s| s.node.as_deref() == Some(node.as_str())),
                    "a snapshot without node {node}"
                );
                let total = device_total(&snapshots, &device);
                let by_pod = pod_device_count(&snapshots, WORKLOAD_NS, WORKLOAD, &device);
                Ok((total >= WRITES && by_pod >= WRITES).then_some((total, by_pod)))
            }
        })
        .await
        .unwrap();
    eprintln!("kind e2e: {device} on {node}: {total} requests, {by_pod} attributed to {WORKLOAD_NS}/{WORKLOAD}");

    // The node-local collector received blkio.request.duration from this node.
    let collector = pod_on_node(&client, "otel", "app.kubernetes.io/name=otel-node-collector", &node).await.unwrap();
    assert!(pod_ready(&collector), "the collector on {node} is not ready");
    let collector_name = collector.metadata.name.unwrap();
    wait_for("blkio.request.duration with k8s.node.name in the collector", Duration::from_secs(120), || {
        let (client, name, node) = (client.clone(), collector_name.clone(), node.clone());
        async move {
            Ok(collector_saw_metric(&logs(&client, "otel", &name).await?, "blkio.request.duration", &node)
                .then_some(()))
        }
    })
    .await
    .unwrap();

    pods.delete(WORKLOAD, &DeleteParams::default()).await.unwrap();
    std::fs::remove_dir_all(scratch).unwrap();
}

/// After `helm uninstall --wait`: the DaemonSet is gone and no program of the agent is left in
/// the (shared) kernel. Needs root for the BPF listing.
#[tokio::test]
#[ignore = "needs the kind cluster of `cargo xtask e2e`, after `helm uninstall`"]
async fn kind_uninstall_leaves_no_programs_attached() {
    let client = Client::try_default().await.expect("KUBECONFIG of the kind cluster");
    let ds: Api<DaemonSet> = Api::namespaced(client.clone(), NAMESPACE);
    assert!(ds.get_opt(RELEASE).await.unwrap().is_none(), "the DaemonSet is still there");
    // Pods get their grace period to detach; the programs go when the last fd closes.
    wait_for("the agent's BPF programs to be unloaded", Duration::from_secs(90), || async {
        let left = agent_programs()?;
        Ok(left.is_empty().then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", agent_programs()));
}
