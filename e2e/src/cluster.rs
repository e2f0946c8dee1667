//! Kubernetes checks of the kind e2e, through kube's client (tested against kube's mock
//! service in `e2e/tests/cluster_mock.rs`, since no API server runs in this project's CI).

use std::{
    collections::BTreeMap,
    future::Future,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Node, Pod},
};
use kube::{
    Api, Client,
    api::{ListParams, LogParams},
};

/// Where a DaemonSet stands: its status counters, the cluster's nodes, and which node has a
/// ready pod of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSetState {
    pub nodes: Vec<String>,
    pub desired: i32,
    pub ready: i32,
    pub updated: i32,
    /// Node name -> its pod of the DaemonSet is Ready.
    pub pods: BTreeMap<String, bool>,
}

impl DaemonSetState {
    /// A ready, up-to-date pod on every node of the cluster (the chart tolerates every taint,
    /// so "every node" includes tainted control-plane and GPU nodes).
    pub fn ready_on_every_node(&self) -> bool {
        let n = self.nodes.len() as i32;
        n > 0
            && self.desired == n
            && self.ready == n
            && self.updated == n
            && self.nodes.iter().all(|node| self.pods.get(node) == Some(&true))
    }

    /// Nodes without a ready pod (for failure messages).
    pub fn nodes_not_ready(&self) -> Vec<String> {
        self.nodes.iter().filter(|n| self.pods.get(*n) != Some(&true)).cloned().collect()
    }
}

pub async fn daemonset_state(client: &Client, namespace: &str, name: &str) -> anyhow::Result<DaemonSetState> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node_names: Vec<String> = nodes
        .list(&ListParams::default())
        .await
        .context("listing nodes")?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    let ds: DaemonSet = Api::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .with_context(|| format!("getting DaemonSet {namespace}/{name}"))?;
    let status = ds.status.clone().unwrap_or_default();
    let selector = ds
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .with_context(|| format!("DaemonSet {name} has no matchLabels"))?;
    let selector = selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut by_node = BTreeMap::new();
    for p in pods.list(&ListParams::default().labels(&selector)).await.context("listing the DaemonSet's pods")?.items {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
        by_node.insert(node, pod_ready(&p));
    }
    Ok(DaemonSetState {
        nodes: node_names,
        desired: status.desired_number_scheduled,
        ready: status.number_ready,
        updated: status.updated_number_scheduled.unwrap_or(0),
        pods: by_node,
    })
}

pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The DaemonSet's pod on `node`.
pub async fn pod_on_node(client: &Client, namespace: &str, selector: &str, node: &str) -> anyhow::Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let lp = ListParams::default().labels(selector).fields(&format!("spec.nodeName={node}"));
    let mut items = pods.list(&lp).await?.items;
    match items.len() {
        1 => Ok(items.remove(0)),
        n => bail!("{n} pods match {selector} on node {node}"),
    }
}

pub async fn logs(client: &Client, namespace: &str, pod: &str) -> anyhow::Result<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    Ok(pods.logs(pod, &LogParams::default()).await?)
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with `what` and the last error.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "not yet".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Whether the OpenTelemetry Collector's debug exporter (verbosity: detailed) printed metric
/// `metric` in a ResourceMetrics whose resource has `k8s.node.name` = `node`. The exporter
/// prints one block per ResourceMetrics:
///
/// ```text
/// ResourceMetrics #0
/// Resource attributes:
///      -> k8s.node.name: Str(kind-worker)
/// ScopeMetrics #0
/// Metric #0
/// Descriptor:
///      -> Name: blkio.request.duration
/// ```
pub fn collector_saw_metric(log: &str, metric: &str, node: &str) -> bool {
    let node_attr = format!("-> k8s.node.name: Str({node})");
    let name = format!("-> Name: {metric}");
    log.split("ResourceMetrics #").skip(1).any(|block| {
        let lines: Vec<&str> = block.lines().map(str::trim).collect();
        lines.contains(&node_attr.as_str()) && lines.contains(&name.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBUG_LOG: &str = "2025-10-02T14:20:00Z\tinfo\tMetrics\t{\"resource metrics\": 1}
ResourceMetrics #0
Resource SchemaURL:
Resource attributes:
     -> k8s.node.name: Str(kind-worker)
     -> service.name: Str(blkio-agent)
ScopeMetrics #0
InstrumentationScope blkio-agent 0.1.0
Metric #0
Descriptor:
     -> Name: blkio.request.duration
     -> DataType: Histogram
ResourceMetrics #1
Resource attributes:
     -> k8s.node.name: Str(kind-control-plane)
Metric #0
Descriptor:
     -> Name: blkio.inflight
";

    #[test]
    fn collector_output_is_matched_per_resource() {
        assert!(collector_saw_metric(DEBUG_LOG, "blkio.request.duration", "kind-worker"));
        // The control-plane's resource only has blkio.inflight.
        assert!(!collector_saw_metric(DEBUG_LOG, "blkio.request.duration", "kind-control-plane"));
        assert!(collector_saw_metric(DEBUG_LOG, "blkio.inflight", "kind-control-plane"));
        // A prefix of a node name is not that node.
        assert!(!collector_saw_metric(DEBUG_LOG, "blkio.request.duration", "kind"));
        assert!(!collector_saw_metric("", "blkio.request.duration", "kind-worker"));
    }

    #[test]
    fn ready_everywhere_needs_every_node() {
        let mut s = DaemonSetState {
            nodes: vec!["a".into(), "b".into()],
            desired: 2,
            ready: 2,
            updated: 2,
            pods: [("a".to_string(), true), ("b".to_string(), true)].into(),
        };
        assert!(s.ready_on_every_node());
        s.pods.insert("b".into(), false);
        assert!(!s.ready_on_every_node());
        assert_eq!(s.nodes_not_ready(), vec!["b".to_string()]);
        s.pods.insert("b".into(), true);
        s.desired = 1; // a tainted node the DaemonSet does not tolerate
        assert!(!s.ready_on_every_node());
        s.nodes.clear();
        assert!(!s.ready_on_every_node());
    }
}
