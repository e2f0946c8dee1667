//! Docker-level e2e: the DaemonSet pod spec of `manifests/` (parsed with k8s-openapi) run by
//! Docker as a node would run it, against a loop-device workload, then checked the way the
//! kind e2e checks a cluster node: sealed JSONL with the node's name and the workload's device,
//! probes answering, a clean SIGTERM, and no BPF program left behind.
//!
//! The manifests have per-pod attribution on (the chart's default): the host's cgroup hierarchy
//! is mounted and `--attribute-pods` set. Docker has no API server and mounts no token, so the
//! agent runs as it must without API access: requests are attributed by cgroup (and pod UID,
//! for pods) alone, and the workload's show up under this test's own cgroup.
//!
//! Needs root, a Docker engine, loop devices, kernel BTF and a cgroup v2 hierarchy. A missing
//! one fails the test unless skipping is explicitly allowed (`BLKIO_AGENT_ALLOW_SKIP=1`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use blkio_agent::{
    devices::parse_diskstats,
    snapshot::{PodStats, Snapshot},
};
use e2e::{
    bpf::agent_programs,
    docker::{self, NodeContext, bind_source, docker, http_get, published_addr, run_args, scratch_dir},
    docs::{install_steps, normalize_image},
    manifests::{AgentManifests, agent_manifests, quantity},
    manifests_dir,
    prereq::{command_works, docker_e2e_missing, require},
    segments::{device_total, device_unseen, leftover_staging, read_sealed},
    workspace_root,
};

const IMAGE: &str = "blkio-agent:e2e";
const NODE: &str = "docker-e2e-node";
const OUTPUT_HOST_PATH: &str = "/var/log/blkio-agent";
/// The limit on the image size.
const MAX_IMAGE_BYTES: u64 = 40 << 20;
/// The workload: 4 KiB direct writes, one request each.
const WRITES: u64 = 3000;

fn manifests() -> AgentManifests {
    agent_manifests(&manifests_dir().join("base")).unwrap()
}

fn context(m: &AgentManifests, output: &Path, legacy_caps: bool) -> NodeContext {
    NodeContext {
        node_name: NODE.into(),
        pod_name: "blkio-agent-e2e".into(),
        namespace: "blkio-agent".into(),
        pod_uid: "00000000-0000-4000-8000-00000000e2e0".into(),
        host_ip: "127.0.0.1".into(),
        configmaps: m.configmaps.clone(),
        host_paths: BTreeMap::from([(OUTPUT_HOST_PATH.to_string(), output.to_path_buf())]),
        legacy_capability_names: legacy_caps,
    }
}

/// The translation itself, checked without Docker: every part of the pod spec that matters for
/// the agent shows up as the flag a runtime would apply.
#[test]
fn manifest_pod_spec_translates_to_docker_flags() {
    let m = manifests();
    let out = scratch_dir("translate").unwrap();
    let pod = m.daemonset.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    for legacy in [false, true] {
        let a = run_args(pod, "agent", IMAGE, "c", &context(&m, &out, legacy)).unwrap();
        let has = |f: &str| a.iter().any(|x| x == f);
        assert!(has("--user=0:0") && has("--read-only") && has("--security-opt=no-new-privileges"), "{a:?}");
        assert!(has("--cap-drop=ALL") && !has("--privileged"), "{a:?}");
        if legacy {
            // Docker < 23 does not know BPF/PERFMON; SYS_ADMIN covers both (see NodeContext).
            assert!(has("--cap-add=SYS_ADMIN") && !has("--cap-add=BPF"), "{a:?}");
            assert_eq!(a.iter().filter(|x| x.starts_with("--cap-add=")).count(), 1);
        } else {
            assert!(has("--cap-add=BPF") && has("--cap-add=PERFMON") && !has("--cap-add=SYS_ADMIN"), "{a:?}");
        }
        assert_eq!(bind_source(&a, "/host/proc"), Some(("/proc", true)));
        assert_eq!(bind_source(&a, "/host/sys/kernel/btf"), Some(("/sys/kernel/btf", true)));
        assert_eq!(bind_source(&a, "/host/sys/block"), Some(("/sys/block", true)));
        assert_eq!(bind_source(&a, "/host/sys/devices"), Some(("/sys/devices", true)));
        assert_eq!(bind_source(&a, "/host/sys/dev/block"), Some(("/sys/dev/block", true)));
        assert_eq!(bind_source(&a, OUTPUT_HOST_PATH), Some((out.to_str().unwrap(), false)));
        // Per-pod attribution (the default): the cgroup hierarchy, read-only.
        assert_eq!(bind_source(&a, "/host/sys/fs/cgroup"), Some(("/sys/fs/cgroup", true)));
        assert!(a.iter().any(|x| x.starts_with("--tmpfs=/tmp:rw,size=")), "{a:?}");
        for env in [
            format!("--env=NODE_NAME={NODE}"),
            "--env=POD_NAMESPACE=blkio-agent".into(),
            "--env=POD_UID=00000000-0000-4000-8000-00000000e2e0".into(),
            "--env=HOST_IP=127.0.0.1".into(),
            "--env=BLKIO_AGENT_PROC_ROOT=/host".into(),
            "--env=BLKIO_AGENT_ATTRIBUTE_PODS=true".into(),
            format!("--env=BLKIO_AGENT_OUTPUT_DIR={OUTPUT_HOST_PATH}"),
        ] {
            assert!(has(&env), "{env} missing from {a:?}");
        }
        assert!(has("--publish=127.0.0.1::9435/tcp") && has("--memory=268435456"), "{a:?}");
        // The image, then the container's args.
        let i = a.iter().position(|x| x == IMAGE).unwrap();
        assert_eq!(&a[i + 1..], &["run".to_string()]);
    }

    // What the translation cannot reproduce is an error, not silently dropped.
    let mut pod = pod.clone();
    pod.containers[0].security_context.as_mut().unwrap().se_linux_options = Some(Default::default());
    let err = run_args(&pod, "agent", IMAGE, "c", &context(&m, &out, false)).unwrap_err().to_string();
    assert!(err.contains("SELinux"), "{err}");
    std::fs::remove_dir_all(out).unwrap();
}

struct LoopDevice(String);

impl LoopDevice {
    fn attach(backing: &Path) -> LoopDevice {
        let f = std::fs::File::create(backing).unwrap();
        f.set_len(64 << 20).unwrap();
        let out = Command::new("losetup").args(["-f", "--show"]).arg(backing).output().unwrap();
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        LoopDevice(String::from_utf8(out.stdout).unwrap().trim().to_string())
    }

    fn name(&self) -> &str {
        self.0.trim_start_matches("/dev/")
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        if thread::panicking() {
            // What the agent said is the first thing to read when this test fails.
            if let Ok(out) = Command::new("docker").args(["logs", "--tail", "60", &self.0]).output() {
                eprintln!(
                    "--- agent container log ---\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

/// Completed requests of `dev` so far, as the kernel counts them (reads + writes + discards +
/// flushes, /proc/diskstats).
fn kernel_completed(dev: &str) -> u64 {
    let stats = parse_diskstats(&std::fs::read_to_string("/proc/diskstats").unwrap());
    let s = stats.iter().find(|s| s.name == dev).unwrap_or_else(|| panic!("{dev} not in /proc/diskstats"));
    s.reads_completed + s.writes_completed + s.discards_completed.unwrap_or(0) + s.flushes_completed.unwrap_or(0)
}

fn now_epoch() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn container_running(name: &str) -> bool {
    docker(&["inspect", "-f", "{{.State.Running}}", name]).is_ok_and(|s| s.trim() == "true")
}

/// Polls `GET path` until 200, like a kubelet probe, for at most `budget`.
fn probe_until_ok(container: &str, addr: &str, path: &str, budget: Duration) -> String {
    let deadline = Instant::now() + budget;
    loop {
        assert!(container_running(container), "the agent exited while waiting for {path}");
        match http_get(addr, path) {
            Ok((200, body)) => return body,
            Ok((code, body)) if Instant::now() >= deadline => {
                panic!("{path} still answers {code} after {budget:?}: {body}")
            }
            Err(e) if Instant::now() >= deadline => panic!("{path} not answering after {budget:?}: {e}"),
            _ => thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Highest memory use of the container's cgroup so far (v2 `memory.peak`, v1
/// `memory.max_usage_in_bytes`), where the host exposes it.
fn peak_memory(container: &str) -> Option<u64> {
    let id = docker(&["inspect", "-f", "{{.Id}}", container]).ok()?;
    let id = id.trim();
    [
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/memory.peak"),
        format!("/sys/fs/cgroup/docker/{id}/memory.peak"),
        format!("/sys/fs/cgroup/memory/docker/{id}/memory.max_usage_in_bytes"),
        format!("/sys/fs/cgroup/memory/system.slice/docker-{id}.scope/memory.max_usage_in_bytes"),
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
}

/// This process's cgroup v2 path (`0::<path>` in /proc/self/cgroup), which dd inherits.
fn own_cgroup() -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    text.lines().find_map(|l| l.strip_prefix("0::")).expect("a cgroup v2 line in /proc/self/cgroup").to_string()
}

/// docs/kubernetes.md's install steps, run as written where Docker stands in for a node: the
/// image step verbatim; the node import step verbatim against the engine's own containerd (where
/// `ctr` exists); the image the chart renders with the docs' install values must be the one
/// built. Returns that image.
fn build_image_as_the_docs_say() -> String {
    let steps = install_steps(&std::fs::read_to_string(workspace_root().join("docs/kubernetes.md")).unwrap())
        .unwrap_or_else(|e| panic!("docs/kubernetes.md: {e:#}"));
    let sh = |line: &str, env: &[(&str, &str)]| {
        let status = Command::new("sh")
            .arg("-c")
            .arg(line)
            .current_dir(workspace_root())
            .envs(env.iter().copied())
            .status()
            .unwrap();
        assert!(status.success(), "the docs' step `{line}` failed");
    };
    // `cargo` here is this toolchain's (the docs' step runs the xtask alias from .cargo/config).
    sh(&steps.build, &[]);
    let image = steps.built_image.clone();
    let helm = e2e::tools::helm().unwrap_or_else(|e| panic!("{e:#}"));
    let out = Command::new(helm).current_dir(workspace_root()).args(steps.template_args()).output().unwrap();
    assert!(out.status.success(), "the docs' install as helm template: {}", String::from_utf8_lossy(&out.stderr));
    let rendered = String::from_utf8(out.stdout).unwrap();
    let chart_image = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("image: "))
        .map(|i| i.trim_matches('"').to_string())
        .expect("an image in the rendering");
    assert_eq!(
        normalize_image(&chart_image),
        normalize_image(&image),
        "docs/kubernetes.md builds {image} but the chart, with the docs' values, deploys {chart_image}"
    );
    // Docker's engine runs its own containerd; the docs' `ctr -n k8s.io images import -` goes to it.
    let socket = "/var/run/docker/containerd/containerd.sock";
    if command_works("ctr", &["--version"]) && Path::new(socket).exists() {
        sh(&steps.import, &[("CONTAINERD_ADDRESS", socket)]);
        let listed = Command::new("ctr")
            .args(["-n", "k8s.io", "images", "ls", "-q"])
            .env("CONTAINERD_ADDRESS", socket)
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&listed.stdout);
        assert!(
            listed.lines().any(|l| l == normalize_image(&image)),
            "after the docs' import step, containerd's k8s.io namespace lacks {}: {listed}",
            normalize_image(&image)
        );
        eprintln!("docker_e2e: the docs' import step put {} into containerd (k8s.io)", normalize_image(&image));
        let _ = Command::new("ctr")
            .args(["-n", "k8s.io", "images", "rm", &normalize_image(&image)])
            .env("CONTAINERD_ADDRESS", socket)
            .output();
    } else {
        eprintln!("docker_e2e: no ctr or no engine containerd socket at {socket}: the import step is not run");
    }
    image
}

fn check_image(image: &str) {
    let size: u64 = docker(&["image", "inspect", "-f", "{{.Size}}", image]).unwrap().trim().parse().unwrap();
    eprintln!("docker_e2e: image {image} is {:.1} MiB", size as f64 / (1 << 20) as f64);
    assert!(size <= MAX_IMAGE_BYTES, "image is {size} bytes, over 40 MiB");
    let config: serde_json::Value =
        serde_json::from_str(&docker(&["image", "inspect", "-f", "{{json .Config}}", image]).unwrap()).unwrap();
    assert_eq!(config["Entrypoint"], serde_json::json!(["/usr/local/bin/blkio-agent"]));
    let cmd: Vec<&str> = config["Cmd"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(cmd[0], "run", "default args run the agent");
    assert!(cmd.contains(&"--output-dir=/var/log/blkio-agent"), "default args use segment mode: {cmd:?}");
    for label in [
        "org.opencontainers.image.source",
        "org.opencontainers.image.version",
        "org.opencontainers.image.revision",
        "org.opencontainers.image.licenses",
    ] {
        assert!(
            config["Labels"][label].as_str().is_some_and(|v| !v.is_empty()),
            "label {label} missing: {}",
            config["Labels"]
        );
    }
    let help = docker(&["run", "--rm", "--network=none", image, "--help"]).unwrap();
    assert!(help.contains("Usage: blkio-agent"), "{help}");
    // No shell in the image.
    let shell = Command::new("docker")
        .args(["run", "--rm", "--network=none", "--entrypoint=/bin/sh", image, "-c", "true"])
        .output()
        .unwrap();
    assert!(!shell.status.success(), "the image has a shell");
}

#[test]
fn docker_e2e_daemonset_spec_on_a_loop_device() {
    if !require("docker_e2e_daemonset_spec_on_a_loop_device", &docker_e2e_missing()) {
        return;
    }
    let image = build_image_as_the_docs_say();
    check_image(&image);

    let m = manifests();
    let pod = m.daemonset.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let agent = &pod.containers[0];
    let settings = m.configmaps.values().next().unwrap();
    let interval: f64 = settings["BLKIO_AGENT_INTERVAL"].parse().unwrap();
    let grace = pod.termination_grace_period_seconds.unwrap();
    let startup = agent.startup_probe.as_ref().unwrap();
    let startup_budget =
        Duration::from_secs((startup.period_seconds.unwrap() * startup.failure_threshold.unwrap()) as u64);
    let memory_limit = quantity(&agent.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0).unwrap();

    let scratch: PathBuf = scratch_dir("docker").unwrap();
    let output = scratch.join("var-log-blkio-agent");
    let dev = LoopDevice::attach(&scratch.join("disk.img"));
    let legacy = docker::server_major_version().unwrap() < 23;
    let name = format!("blkio-agent-e2e-{}", std::process::id());
    let args = run_args(pod, &agent.name, &image, &name, &context(&m, &output, legacy)).unwrap();
    eprintln!("docker_e2e: docker run {}", args.join(" "));

    let before_start = kernel_completed(dev.name());
    let ours_before: Vec<u32> = agent_programs().unwrap().into_iter().map(|(id, _)| id).collect();
    let mut run = vec!["run"];
    run.extend(args.iter().map(String::as_str));
    docker(&run).unwrap();
    let container = Container(name.clone());
    let addr = published_addr(&container.0, agent.ports.as_ref().unwrap()[0].container_port).unwrap();

    // startupProbe: /healthz (the server is up) within periodSeconds x failureThreshold; then
    // readinessProbe: /readyz (programs attached, a recent snapshot, output writable).
    probe_until_ok(&container.0, &addr, "/healthz", startup_budget);
    probe_until_ok(&container.0, &addr, "/readyz", Duration::from_secs_f64(interval * 3.0 + 10.0));
    let loaded: Vec<(u32, String)> =
        agent_programs().unwrap().into_iter().filter(|(id, _)| !ours_before.contains(id)).collect();
    assert!(!loaded.is_empty(), "the agent is ready but no program of it is loaded");
    eprintln!("docker_e2e: programs loaded by the agent: {loaded:?}");

    let dd = Command::new("dd")
        .args(["if=/dev/zero", &format!("of={}", dev.0), "bs=4k", &format!("count={WRITES}"), "oflag=direct"])
        .output()
        .unwrap();
    assert!(dd.status.success(), "dd: {}", String::from_utf8_lossy(&dd.stderr));
    // Let a periodic snapshot cover the workload (the SIGTERM one would too; this checks both).
    thread::sleep(Duration::from_secs_f64(interval * 1.5));
    let (code, metrics) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.lines().any(|l| l.starts_with("blkio_")), "no blkio_* series in /metrics");

    let usage = docker(&["stats", "--no-stream", "--format", "{{.MemUsage}}", &container.0]).unwrap();
    let peak = peak_memory(&container.0);
    eprintln!("docker_e2e: agent memory (cgroup, BPF maps included): now {}, peak {peak:?} bytes", usage.trim());
    if let Some(peak) = peak {
        assert!((peak as f64) < memory_limit * 0.75, "peak {peak} bytes is close to the {memory_limit}-byte limit");
    }

    // SIGTERM, as the kubelet does, with the pod's grace period.
    let stop_at = now_epoch();
    docker(&["stop", "-t", &grace.to_string(), &container.0]).unwrap();
    let stopped_within = now_epoch() - stop_at;
    let state = docker(&["inspect", "-f", "{{.State.ExitCode}} {{.State.OOMKilled}}", &container.0]).unwrap();
    assert_eq!(state.trim(), "0 false", "exit code / OOM-killed after SIGTERM (limit {memory_limit} bytes)");
    assert!(stopped_within < grace as f64, "took {stopped_within:.1}s of the {grace}s grace period");
    let after_stop = kernel_completed(dev.name());

    // No program of the agent survives it.
    let left: Vec<_> =
        agent_programs().unwrap().into_iter().filter(|(id, _)| loaded.iter().any(|(l, _)| l == id)).collect();
    assert!(left.is_empty(), "programs still loaded after the agent exited: {left:?}");

    // The JSONL, as a log shipper on the node finds it.
    assert!(leftover_staging(&output).unwrap().is_empty(), "staging segments left after a clean stop");
    let segments = read_sealed(&output, NODE).unwrap();
    assert!(!segments.is_empty(), "no sealed segment in the output hostPath");
    let snapshots: Vec<&Snapshot> = segments.iter().flat_map(|s| &s.snapshots).collect();
    assert!(snapshots.len() >= 2, "{} snapshots", snapshots.len());
    for s in &snapshots {
        assert_eq!(s.node.as_deref(), Some(NODE), "every snapshot names the node (NODE_NAME from the downward API)");
    }
    // PSI: the node's /proc/pressure/io through the /host/proc mount, where the kernel has it.
    if Path::new("/proc/pressure/io").exists() {
        assert!(snapshots.iter().all(|s| s.io_pressure.is_some()), "a snapshot without the node's io_pressure");
        assert!(snapshots.iter().skip(1).all(|s| s.io_pressure.unwrap().some.delta_us.is_some()));
    } else {
        assert!(snapshots.iter().all(|s| s.io_pressure.is_none()), "no PSI on this kernel: absent, not zero");
    }
    let total = device_total(&snapshots, dev.name());
    let kernel = after_stop - before_start;
    // Unseen completions are bounded loosely here (3000 requests; the privileged tests and the
    // kernel matrix hold 1 in 1000 over far more).
    let unseen = device_unseen(&snapshots, dev.name());
    assert!(
        total + unseen >= WRITES && unseen * 100 <= WRITES,
        "{}: {total} requests in the JSONL + {unseen} unseen, the workload made {WRITES}",
        dev.name()
    );
    assert!(total <= kernel, "{}: {total} requests in the JSONL, the kernel completed only {kernel}", dev.name());
    assert!(
        snapshots.iter().any(|s| s.inflight.iter().any(|i| i.device_name == dev.name())),
        "{} never in inflight[]",
        dev.name()
    );

    // Per-pod attribution without API access: the workload's requests are in `pods`, by cgroup
    // path, with no pod names (nothing to ask for them).
    assert_eq!(settings["BLKIO_AGENT_ATTRIBUTE_PODS"], "true", "the manifests' default");
    let series: Vec<&PodStats> =
        snapshots.iter().flat_map(|s| &s.pods).filter(|p| p.device_name == dev.name()).collect();
    let attributed: u64 = series.iter().map(|p| p.count).sum();
    let mut by_cgroup: BTreeMap<String, u64> = BTreeMap::new();
    for p in &series {
        assert!(p.namespace.is_none() && p.pod.is_none(), "a pod name without an API server: {p:?}");
        *by_cgroup.entry(p.cgroup.clone().or(p.pod_uid.clone()).unwrap_or_default()).or_default() += p.count;
    }
    eprintln!("docker_e2e: attribution of {}: {by_cgroup:?} (this test's cgroup: {})", dev.name(), own_cgroup());
    assert!(
        attributed + unseen >= WRITES && attributed <= kernel,
        "{}: {attributed} requests in pods[], the workload made {WRITES}, the kernel completed {kernel}",
        dev.name()
    );
    assert!(
        by_cgroup.get(&own_cgroup()).is_some_and(|&n| n > 0),
        "no request of {} attributed to dd's cgroup {}: {by_cgroup:?}",
        dev.name(),
        own_cgroup()
    );
    // The final snapshot was taken at SIGTERM and sealed.
    let last = segments.last().unwrap().snapshots.last().unwrap();
    assert!(
        last.timestamp >= stop_at - 0.5,
        "last snapshot at {} is older than the SIGTERM at {stop_at}",
        last.timestamp
    );
    eprintln!(
        "docker_e2e: {} segments, {} snapshots, {total} requests on {} (kernel: {kernel})",
        segments.len(),
        snapshots.len(),
        dev.name()
    );
    drop(container);
    drop(dev);
    std::fs::remove_dir_all(&scratch).unwrap();
}
