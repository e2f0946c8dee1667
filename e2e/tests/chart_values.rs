//! The chart's `values.schema.json` against its values: the defaults and every override file in
//! `charts/blkio-agent/ci/` are accepted, typical mistakes are rejected, and the schema and
//! values.yaml describe exactly the same keys (helm applies the schema on install, upgrade,
//! lint and template; helm itself cannot run in this project's CI).

use std::path::PathBuf;

use e2e::{chart_dir, manifests::chart_values};
use serde_json::{Value, json};

fn schema() -> Value {
    let path = chart_dir().join("values.schema.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&schema()).expect("values.schema.json is a valid JSON Schema")
}

fn errors(values: &Value) -> Vec<String> {
    validator().iter_errors(values).map(|e| format!("{}: {e}", e.instance_path())).collect()
}

fn defaults() -> Value {
    chart_values(&chart_dir(), &[]).unwrap()
}

/// The defaults with `patch` merged over them the way `helm -f` / `--set` do.
fn with(patch: Value) -> Value {
    let mut v = defaults();
    e2e::manifests::merge(&mut v, patch);
    v
}

fn ci_value_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart_dir().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn schema_is_draft_07_and_closed() {
    let s = schema();
    assert_eq!(s["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(s["additionalProperties"], false, "unknown top-level values must be rejected");
}

#[test]
fn default_values_are_valid() {
    let e = errors(&defaults());
    assert!(e.is_empty(), "values.yaml violates values.schema.json: {e:#?}");
}

#[test]
fn every_ci_override_file_is_valid() {
    let files = ci_value_files();
    let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    // The variants the issue names must stay covered.
    for expected in [
        "privileged-values.yaml",
        "otlp-values.yaml",
        "attribution-values.yaml",
        "no-attribution-values.yaml",
        "old-kernel-values.yaml",
    ] {
        assert!(names.iter().any(|n| n == expected), "charts/blkio-agent/ci/{expected} is missing: {names:?}");
    }
    // The kind e2e installs with these too.
    let kind_values = e2e::workspace_root().join("e2e/kind/values.yaml");
    for f in files.iter().chain([&kind_values]) {
        let v = chart_values(&chart_dir(), &[f.as_path()]).unwrap();
        let e = errors(&v);
        assert!(e.is_empty(), "{} violates the schema: {e:#?}", f.display());
    }
}

#[test]
fn override_files_change_what_they_say() {
    let ci = chart_dir().join("ci");
    let privileged = chart_values(&chart_dir(), &[&ci.join("privileged-values.yaml")]).unwrap();
    assert_eq!(privileged["securityContext"]["privileged"], true);
    let otlp = chart_values(&chart_dir(), &[&ci.join("otlp-values.yaml")]).unwrap();
    assert_eq!(otlp["otlp"]["nodeLocalCollector"], true);
    assert_eq!(otlp["otlp"]["protocol"], "grpc");
    // Merged, not replaced: untouched otlp keys keep their defaults.
    assert_eq!(otlp["otlp"]["timeoutMs"], defaults()["otlp"]["timeoutMs"]);
}

/// Issue #5: per-pod attribution is off in a plain `blkio-agent run` and on in the chart; the
/// chart's cheapest mode (no start map, no RBAC) is one value away.
#[test]
fn attribution_is_off_in_plain_runs_and_on_in_the_chart() {
    use clap::Parser as _;
    let cli = blkio_agent::cli::Cli::try_parse_from(["blkio-agent", "run"]).unwrap();
    let blkio_agent::cli::Command::Run(args) = cli.command else { panic!("not `run`") };
    if std::env::var_os("BLKIO_AGENT_ATTRIBUTE_PODS").is_none() {
        assert!(!args.attribute_pods, "`blkio-agent run` attributes pods without --attribute-pods");
    }
    assert_eq!(defaults()["attribution"]["enabled"], true, "the chart's default");
    assert_eq!(defaults()["rbac"]["create"], true);
    // The kind e2e installs the chart's default attribution, not an override of it.
    let kind = chart_values(&chart_dir(), &[&e2e::workspace_root().join("e2e/kind/values.yaml")]).unwrap();
    let kind_file = e2e::manifests::read_yaml_file(&e2e::workspace_root().join("e2e/kind/values.yaml")).unwrap();
    assert!(kind_file[0].get("attribution").is_none(), "e2e/kind/values.yaml overrides attribution");
    assert_eq!(kind["attribution"]["enabled"], true);
    let off = chart_values(&chart_dir(), &[&chart_dir().join("ci/no-attribution-values.yaml")]).unwrap();
    assert_eq!(off["attribution"]["enabled"], false);
    assert!(errors(&off).is_empty());
}

/// Typical mistakes, each of which the schema must reject with an error at the right place.
#[test]
fn schema_rejects_mistakes() {
    let cases: Vec<(&str, Value, &str)> = vec![
        ("typo in a key", json!({"agent": {"intervall": 5}}), "/agent"),
        ("unknown top-level key", json!({"hostPID": true}), ""),
        ("attach mode", json!({"agent": {"attach": "kprobe"}}), "/agent/attach"),
        ("interval zero", json!({"agent": {"interval": 0}}), "/agent/interval"),
        ("interval as string", json!({"agent": {"interval": "5s"}}), "/agent/interval"),
        ("port out of range", json!({"agent": {"metricsPort": 70000}}), "/agent/metricsPort"),
        ("device glob with a comma", json!({"agent": {"devices": ["nvme*,sd*"]}}), "/agent/devices/0"),
        ("relative output path", json!({"output": {"hostPath": "var/log"}}), "/output/hostPath"),
        ("tiny segments", json!({"output": {"segmentMaxBytes": 100}}), "/output/segmentMaxBytes"),
        ("privileged as string", json!({"securityContext": {"privileged": "yes"}}), "/securityContext/privileged"),
        (
            "CAP_ prefix",
            json!({"securityContext": {"capabilities": {"extra": ["CAP_NET_ADMIN"]}}}),
            "/securityContext/capabilities/extra/0",
        ),
        (
            "lowercase capability",
            json!({"securityContext": {"capabilities": {"extra": ["net_admin"]}}}),
            "/securityContext/capabilities/extra/0",
        ),
        (
            "Localhost seccomp without profile",
            json!({"securityContext": {"seccompProfile": {"type": "Localhost"}}}),
            "/securityContext/seccompProfile",
        ),
        (
            "AppArmor type",
            json!({"securityContext": {"appArmorProfile": {"type": "Enforce"}}}),
            "/securityContext/appArmorProfile/type",
        ),
        ("OTLP protocol", json!({"otlp": {"protocol": "http/json"}}), "/otlp/protocol"),
        ("OTLP endpoint without scheme", json!({"otlp": {"endpoint": "collector:4318"}}), "/otlp/endpoint"),
        ("header value not a string", json!({"otlp": {"headers": {"x-n": 1}}}), "/otlp/headers/x-n"),
        ("maxUnavailable 0", json!({"updateStrategy": {"maxUnavailable": 0}}), "/updateStrategy/maxUnavailable"),
        (
            "maxUnavailable 150%",
            json!({"updateStrategy": {"maxUnavailable": "150%"}}),
            "/updateStrategy/maxUnavailable",
        ),
        ("short grace period", json!({"terminationGracePeriodSeconds": 1}), "/terminationGracePeriodSeconds"),
        (
            "memory limit not a quantity",
            json!({"resources": {"limits": {"memory": "lots"}}}),
            "/resources/limits/memory",
        ),
        ("tolerations not a list", json!({"tolerations": {"key": "x"}}), "/tolerations"),
        (
            "ServiceMonitor without Service",
            json!({"serviceMonitor": {"enabled": true}, "service": {"enabled": false}}),
            "/service/enabled",
        ),
        ("scrape interval", json!({"podMonitor": {"interval": "30"}}), "/podMonitor/interval"),
        ("image digest", json!({"image": {"digest": "latest"}}), "/image/digest"),
    ];
    for (what, patch, path) in cases {
        let e = errors(&with(patch.clone()));
        assert!(!e.is_empty(), "schema accepted: {what} ({patch})");
        assert!(
            e.iter().any(|m| m.starts_with(&format!("{path}:"))),
            "{what}: expected an error at `{path}`, got {e:#?}"
        );
    }
    // And the same kinds of values, correct, pass (the cases above fail for their mistake only).
    let ok = with(json!({
        "agent": {"interval": 0.5, "devices": ["nvme*", "!loop*"]},
        "securityContext": {"capabilities": {"extra": ["NET_ADMIN"]},
                            "seccompProfile": {"type": "Localhost", "localhostProfile": "blkio.json"}},
        "otlp": {"endpoint": "https://collector:4318", "headers": {"x-n": "1"}},
        "updateStrategy": {"maxUnavailable": "10%"},
        "resources": {"limits": {"memory": "512Mi", "cpu": "500m"}},
        "image": {"digest": format!("sha256:{}", "a".repeat(64))},
    }));
    assert!(errors(&ok).is_empty(), "{:#?}", errors(&ok));
}

/// Walks values and schema together: every key of values.yaml is described (with a
/// description) and every property of the schema is a key of values.yaml, so the schema covers
/// every value and documents no phantom ones. Values that are Kubernetes API objects passed
/// through as they are (their schema lists the API's optional fields) are checked by
/// validation only.
#[test]
fn schema_and_values_describe_the_same_keys() {
    const KUBERNETES_OBJECTS: [&str; 3] =
        ["/securityContext/seccompProfile", "/securityContext/appArmorProfile", "/securityContext/seLinuxOptions"];
    fn walk(values: &Value, schema: &Value, path: &str, problems: &mut Vec<String>) {
        if KUBERNETES_OBJECTS.contains(&path) {
            return;
        }
        let Some(props) = schema.get("properties").and_then(Value::as_object) else { return };
        let Some(obj) = values.as_object() else {
            problems.push(format!("{path}: schema has properties, values has {values}"));
            return;
        };
        for (k, v) in obj {
            match props.get(k) {
                None => problems.push(format!("{path}/{k}: in values.yaml, not in the schema")),
                Some(p) => {
                    if p.get("description").is_none() && p.get("properties").is_none() {
                        problems.push(format!("{path}/{k}: no description in the schema"));
                    }
                    walk(v, p, &format!("{path}/{k}"), problems);
                }
            }
        }
        for k in props.keys() {
            if !obj.contains_key(k) {
                problems.push(format!("{path}/{k}: in the schema, not in values.yaml"));
            }
        }
    }
    let mut problems = Vec::new();
    walk(&defaults(), &schema(), "", &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
}
