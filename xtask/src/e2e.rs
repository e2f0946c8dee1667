//! `cargo xtask e2e`: the end-to-end test on a kind cluster (needs docker, kind, kubectl, helm
//! and root -- the last check lists the kernel's BPF programs).
//!
//! 1. kind cluster (e2e/kind/cluster.yaml: a tainted control-plane and a worker);
//! 2. the image (`cargo xtask image --tag blkio-agent:e2e`), `kind load`ed;
//! 3. the node-local OpenTelemetry Collector from manifests/examples/otel-collector.yaml;
//! 4. `helm install --wait` with e2e/kind/values.yaml (OTLP on; per-pod attribution on as the
//!    chart's default), `helm test`;
//! 5. the Rust assertions in e2e/tests/kind.rs (DaemonSet ready on every node, JSONL on the
//!    node's hostPath with the node name and the workload's device, the collector received
//!    `blkio.request.duration` with `k8s.node.name`, the workload pod named by the default
//!    attribution);
//! 6. the chart/manifests sync checks that need helm and kubectl (e2e/tests/manifests.rs);
//! 7. `helm uninstall --wait`, then no program of the agent is left in the kernel;
//! 8. the cluster is deleted (kept with BLKIO_E2E_KEEP_CLUSTER=1 for debugging).

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{
    image::{build_image, ensure_docker},
    setup::{is_root, run, workspace_root},
};

const CLUSTER: &str = "blkio-e2e";
const IMAGE: &str = "blkio-agent:e2e";
const NAMESPACE: &str = "blkio-agent";
const RELEASE: &str = "blkio-agent";

/// The tools this needs and where to get them (none is installed by `cargo xtask setup`: they
/// are not Debian packages, and this project's own machines cannot download them).
const TOOLS: &[(&str, &[&str], &str)] = &[
    ("docker", &["--version"], "apt-get install docker.io"),
    ("kind", &["version"], "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"),
    ("kubectl", &["version", "--client"], "https://kubernetes.io/docs/tasks/tools/"),
    ("helm", &["version"], "https://helm.sh/docs/intro/install/"),
];

pub fn kind_e2e() -> anyhow::Result<()> {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(tool, args, _)| !Command::new(tool).args(*args).output().is_ok_and(|o| o.status.success()))
        .map(|(tool, _, hint)| format!("{tool} ({hint})"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the kind e2e needs {}; missing: {}. The docker-level e2e (`cargo test -p e2e --test docker_e2e`) \
             runs without them.",
            TOOLS.iter().map(|t| t.0).collect::<Vec<_>>().join(", "),
            missing.join(", ")
        );
    }
    if !is_root() {
        bail!("run it as root (sudo -E cargo xtask e2e): the last check lists the kernel's BPF programs");
    }
    ensure_docker()?;
    let root = workspace_root();
    let kubeconfig = root.join("target/e2e/kubeconfig");
    std::fs::create_dir_all(kubeconfig.parent().unwrap())?;

    let _ = Command::new("kind").args(["delete", "cluster", "--name", CLUSTER]).output();
    run(Command::new("kind")
        .args(["create", "cluster", "--name", CLUSTER, "--wait", "180s", "--kubeconfig"])
        .arg(&kubeconfig)
        .arg("--config")
        .arg(root.join("e2e/kind/cluster.yaml")))?;
    let result = in_cluster(&root, &kubeconfig);
    if std::env::var_os("BLKIO_E2E_KEEP_CLUSTER").is_some() {
        eprintln!("xtask: keeping cluster {CLUSTER} (KUBECONFIG={})", kubeconfig.display());
    } else {
        run(Command::new("kind").args(["delete", "cluster", "--name", CLUSTER]))?;
    }
    result
}

fn in_cluster(root: &Path, kubeconfig: &Path) -> anyhow::Result<()> {
    let kubectl = || {
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", kubeconfig);
        c
    };
    let helm = || {
        let mut c = Command::new("helm");
        c.env("KUBECONFIG", kubeconfig);
        c
    };
    let e2e_test = |filter: &str| {
        let mut c = Command::new("cargo");
        c.current_dir(root)
            .args(["test", "-p", "e2e", "--test", "kind", "--", "--ignored", "--exact", "--nocapture", filter])
            .env("KUBECONFIG", kubeconfig);
        c
    };

    build_image(IMAGE)?;
    run(Command::new("kind").args(["load", "docker-image", IMAGE, "--name", CLUSTER]))?;

    // The collector the agent's OTLP goes to (otlp.nodeLocalCollector: $(HOST_IP):4318).
    run(kubectl().arg("apply").arg("-f").arg(root.join("manifests/examples/otel-collector.yaml")))?;
    run(kubectl().args(["-n", "otel", "rollout", "status", "daemonset/otel-node-collector", "--timeout=180s"]))?;

    // The namespace as NOTES.txt tells users to prepare it (Pod Security: privileged).
    run(kubectl().args(["create", "namespace", NAMESPACE]))?;
    run(kubectl().args(["label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=privileged"]))?;
    run(helm()
        .args(["install", RELEASE])
        .arg(root.join("charts/blkio-agent"))
        .args(["--namespace", NAMESPACE, "--wait", "--timeout", "5m", "--values"])
        .arg(root.join("e2e/kind/values.yaml")))
    .context("helm install --wait (the DaemonSet did not become ready)")?;
    run(helm().args(["test", RELEASE, "--namespace", NAMESPACE, "--logs"]))?;

    let checks = run(&mut e2e_test("kind_agent_on_every_node_measures_the_workload"));
    if checks.is_err() {
        // What the agents said, for the CI log.
        let _ = run(kubectl().args([
            "-n",
            NAMESPACE,
            "logs",
            "-l",
            "app.kubernetes.io/name=blkio-agent",
            "--tail=50",
            "--prefix",
        ]));
    }
    checks?;
    run(Command::new("cargo")
        .current_dir(root)
        .args(["test", "-p", "e2e", "--test", "manifests", "--", "--ignored"])
        .env("KUBECONFIG", kubeconfig))?;

    run(helm().args(["uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "3m"]))?;
    run(&mut e2e_test("kind_uninstall_leaves_no_programs_attached"))?;
    eprintln!("xtask: kind e2e passed");
    Ok(())
}
