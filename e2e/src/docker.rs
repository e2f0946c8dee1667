//! The DaemonSet's pod spec translated into `docker run` flags, as the kubelet and a container
//! runtime would apply it on a node: user, capabilities, read-only root, no privilege
//! escalation, hostPath and emptyDir volumes, downward-API and ConfigMap environment, ports,
//! memory/CPU limits. What the translation does not know is an error, never silently dropped,
//! so a manifest change that the docker e2e cannot reproduce fails it.

use std::{collections::BTreeMap, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};

use crate::manifests::quantity;

/// What the node and the API server would supply.
#[derive(Debug, Clone)]
pub struct NodeContext {
    /// `spec.nodeName`.
    pub node_name: String,
    /// `metadata.name` of the pod.
    pub pod_name: String,
    /// `metadata.namespace` of the pod.
    pub namespace: String,
    /// `metadata.uid` of the pod.
    pub pod_uid: String,
    /// `status.hostIP`.
    pub host_ip: String,
    /// ConfigMaps by name (for envFrom / configMapKeyRef).
    pub configmaps: BTreeMap<String, BTreeMap<String, String>>,
    /// Where a hostPath's `path` lives on this machine: the test points the output hostPath at a
    /// scratch directory and leaves /proc and /sys as they are.
    pub host_paths: BTreeMap<String, PathBuf>,
    /// The engine does not know CAP_BPF / CAP_PERFMON by name (Docker < 23, such as Debian 12's
    /// 20.10): they are replaced by CAP_SYS_ADMIN, which the kernel accepts for every check
    /// that CAP_BPF and CAP_PERFMON satisfy (bpf(), perf_event_open(), tracing programs).
    pub legacy_capability_names: bool,
}

/// `docker run` arguments (after `run`) for `container` of `pod`, detached, named `name`.
pub fn run_args(
    pod: &PodSpec,
    container: &str,
    image: &str,
    name: &str,
    ctx: &NodeContext,
) -> anyhow::Result<Vec<String>> {
    let c: &Container = pod
        .containers
        .iter()
        .find(|c| c.name == container)
        .with_context(|| format!("pod spec has no container {container}"))?;
    let mut a: Vec<String> = vec!["--detach".into(), format!("--name={name}"), "--label=blkio-agent-e2e=1".into()];

    // Pod-level settings.
    if pod.host_pid == Some(true) {
        a.push("--pid=host".into());
    }
    if pod.host_network == Some(true) {
        a.push("--network=host".into());
    }
    // serviceAccountName / automountServiceAccountToken: there is no API server here, so no
    // token is mounted even where the pod asks for one (per-pod attribution, the default). The
    // agent must work without API access then: the docker e2e checks that it does.
    let pod_sc = pod.security_context.clone().unwrap_or_default();
    let sc = c.security_context.clone().unwrap_or_default();

    // Identity.
    let uid = sc.run_as_user.or(pod_sc.run_as_user);
    let gid = sc.run_as_group.or(pod_sc.run_as_group);
    match (uid, gid) {
        (Some(u), Some(g)) => a.push(format!("--user={u}:{g}")),
        (Some(u), None) => a.push(format!("--user={u}")),
        (None, Some(_)) => bail!("runAsGroup without runAsUser is not translated"),
        (None, None) => {}
    }

    // Container security context.
    if sc.privileged == Some(true) {
        a.push("--privileged".into());
    }
    if sc.allow_privilege_escalation == Some(false) {
        a.push("--security-opt=no-new-privileges".into());
    }
    if sc.read_only_root_filesystem == Some(true) {
        a.push("--read-only".into());
    }
    if let Some(caps) = &sc.capabilities {
        for d in caps.drop.iter().flatten() {
            a.push(format!("--cap-drop={d}"));
        }
        let mut added: Vec<String> = Vec::new();
        for cap in caps.add.iter().flatten() {
            let cap = match cap.as_str() {
                "BPF" | "PERFMON" if ctx.legacy_capability_names => "SYS_ADMIN".to_string(),
                other => other.to_string(),
            };
            if !added.contains(&cap) {
                added.push(cap);
            }
        }
        a.extend(added.into_iter().map(|c| format!("--cap-add={c}")));
    }
    let seccomp = sc.seccomp_profile.as_ref().or(pod_sc.seccomp_profile.as_ref());
    match seccomp.map(|s| s.type_.as_str()) {
        // Docker's default profile is the runtime default.
        None | Some("RuntimeDefault") => {}
        Some("Unconfined") => a.push("--security-opt=seccomp=unconfined".into()),
        Some(other) => bail!("seccomp profile type {other} is not translated"),
    }
    if sc.se_linux_options.is_some() || sc.app_armor_profile.is_some() {
        bail!("SELinux / AppArmor options are not translated (the default manifests set none)");
    }

    // Volumes.
    let volumes: BTreeMap<&str, &k8s_openapi::api::core::v1::Volume> =
        pod.volumes.iter().flatten().map(|v| (v.name.as_str(), v)).collect();
    for m in c.volume_mounts.iter().flatten() {
        let v = volumes.get(m.name.as_str()).with_context(|| format!("volumeMount {} has no volume", m.name))?;
        if m.sub_path.is_some() || m.mount_propagation.is_some() {
            bail!("volumeMount {}: subPath / mountPropagation are not translated", m.name);
        }
        let ro = m.read_only == Some(true);
        if let Some(hp) = &v.host_path {
            let source = ctx.host_paths.get(&hp.path).cloned().unwrap_or_else(|| PathBuf::from(&hp.path));
            match hp.type_.as_deref().unwrap_or("") {
                "DirectoryOrCreate" => {
                    std::fs::create_dir_all(&source).with_context(|| format!("creating {}", source.display()))?
                }
                "Directory" if !source.is_dir() => {
                    bail!("hostPath {} (type Directory) is not a directory here", hp.path)
                }
                "Directory" | "" => {}
                other => bail!("hostPath type {other} is not translated"),
            }
            // --mount (unlike -v) fails on a missing source instead of creating it, as the
            // kubelet's type check does; bind mounts are recursive, like the runtimes' rbind.
            a.push(format!(
                "--mount=type=bind,source={},target={}{}",
                source.display(),
                m.mount_path,
                if ro { ",readonly" } else { "" }
            ));
        } else if let Some(ed) = &v.empty_dir {
            let mut opts = String::from("rw");
            if let Some(limit) = &ed.size_limit {
                opts.push_str(&format!(",size={}", quantity(&limit.0)? as u64));
            }
            a.push(format!("--tmpfs={}:{opts}", m.mount_path));
        } else {
            bail!("volume {} is neither hostPath nor emptyDir: not translated", v.name);
        }
    }

    // Environment: envFrom first, then env (env wins), with $(VAR) expansion as the kubelet does.
    let mut env: Vec<(String, String)> = Vec::new();
    for src in c.env_from.iter().flatten() {
        let Some(cm) = &src.config_map_ref else { bail!("envFrom other than configMapRef is not translated") };
        let data = match ctx.configmaps.get(&cm.name) {
            Some(d) => d,
            None if cm.optional == Some(true) => continue,
            None => bail!("envFrom ConfigMap {} is not in the manifests", cm.name),
        };
        let prefix = src.prefix.as_deref().unwrap_or("");
        for (k, v) in data {
            set_env(&mut env, format!("{prefix}{k}"), v.clone());
        }
    }
    for e in c.env.iter().flatten() {
        let value = env_value(e, &env, ctx)?;
        set_env(&mut env, e.name.clone(), value);
    }
    for (k, v) in &env {
        a.push(format!("--env={k}={v}"));
    }

    // Ports: published on the loopback only, on a free port (`docker port` tells which).
    for p in c.ports.iter().flatten() {
        if p.host_port.is_some() {
            bail!("hostPort is not translated");
        }
        a.push(format!(
            "--publish=127.0.0.1::{}/{}",
            p.container_port,
            p.protocol.as_deref().unwrap_or("TCP").to_lowercase()
        ));
    }

    // Limits (requests only steer scheduling).
    if let Some(limits) = c.resources.as_ref().and_then(|r| r.limits.as_ref()) {
        for (k, q) in limits {
            match k.as_str() {
                "memory" => a.push(format!("--memory={}", quantity(&q.0)? as u64)),
                "cpu" => a.push(format!("--cpus={}", quantity(&q.0)?)),
                other => bail!("limit {other} is not translated"),
            }
        }
    }

    // Command replaces the entrypoint, args the image's CMD.
    let mut tail: Vec<String> = Vec::new();
    if let Some(cmd) = &c.command {
        let (first, rest) = cmd.split_first().context("empty command")?;
        a.push(format!("--entrypoint={first}"));
        tail.extend(rest.iter().cloned());
    }
    a.push(image.to_string());
    a.extend(tail);
    for arg in c.args.iter().flatten() {
        a.push(expand(arg, &env));
    }
    Ok(a)
}

fn set_env(env: &mut Vec<(String, String)>, k: String, v: String) {
    match env.iter_mut().find(|(name, _)| *name == k) {
        Some(slot) => slot.1 = v,
        None => env.push((k, v)),
    }
}

fn env_value(e: &EnvVar, defined: &[(String, String)], ctx: &NodeContext) -> anyhow::Result<String> {
    if let Some(v) = &e.value {
        return Ok(expand(v, defined));
    }
    let Some(from) = &e.value_from else { return Ok(String::new()) };
    if let Some(f) = &from.field_ref {
        return Ok(match f.field_path.as_str() {
            "spec.nodeName" => ctx.node_name.clone(),
            "metadata.name" => ctx.pod_name.clone(),
            "metadata.namespace" => ctx.namespace.clone(),
            "metadata.uid" => ctx.pod_uid.clone(),
            "status.hostIP" => ctx.host_ip.clone(),
            other => bail!("env {}: fieldRef {other} is not translated", e.name),
        });
    }
    if let Some(k) = &from.config_map_key_ref {
        return ctx
            .configmaps
            .get(&k.name)
            .and_then(|d| d.get(&k.key))
            .cloned()
            .with_context(|| format!("env {}: ConfigMap {} key {} is not in the manifests", e.name, k.name, k.key));
    }
    bail!("env {}: only value, fieldRef and configMapKeyRef are translated", e.name)
}

/// The kubelet's expansion: `$(VAR)` of a variable defined before; `$$` is a literal `$`;
/// an undefined reference stays as written.
pub fn expand(s: &str, defined: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match defined.iter().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&rest[i..i + 2 + end + 1]),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Server major version of the Docker engine (`20` for 20.10).
pub fn server_major_version() -> anyhow::Result<u32> {
    let out = Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]).output()?;
    if !out.status.success() {
        bail!("docker version: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let v = String::from_utf8(out.stdout)?;
    v.trim()
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("docker server version `{}`", v.trim()))
}

/// Runs `docker args...` and returns its stdout; an error carries stderr.
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker").args(args).output().context("cannot run docker")?;
    if !out.status.success() {
        bail!("docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `127.0.0.1:<port>` that `docker run --publish` picked for `container_port`.
pub fn published_addr(container: &str, container_port: i32) -> anyhow::Result<String> {
    let out = docker(&["port", container, &format!("{container_port}/tcp")])?;
    out.lines()
        .find(|l| l.starts_with("127.0.0.1:"))
        .map(|l| l.trim().to_string())
        .with_context(|| format!("no loopback port published for {container_port}: {out}"))
}

/// A minimal HTTP/1.0 GET over a TCP connection: (status code, body).
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad HTTP response from {addr}{path}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// The source a mount flag binds for `target`, if any (for assertions on translations).
pub fn bind_source<'a>(args: &'a [String], target: &str) -> Option<(&'a str, bool)> {
    args.iter().filter_map(|a| a.strip_prefix("--mount=type=bind,source=")).find_map(|rest| {
        let (source, rest) = rest.split_once(",target=")?;
        let (t, ro) = match rest.strip_suffix(",readonly") {
            Some(t) => (t, true),
            None => (rest, false),
        };
        (t == target).then_some((source, ro))
    })
}

/// Path helper for tests: a fresh directory under the system temp dir.
pub fn scratch_dir(tag: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("blkio-e2e-{tag}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn kubelet_style_expansion() {
        let d = vars(&[("HOST_IP", "10.0.0.7"), ("NODE_NAME", "n1")]);
        assert_eq!(expand("http://$(HOST_IP):4318", &d), "http://10.0.0.7:4318");
        assert_eq!(expand("k8s.node.name=$(NODE_NAME),a=b", &d), "k8s.node.name=n1,a=b");
        assert_eq!(expand("$(UNDEFINED)-$$(HOST_IP)-$", &d), "$(UNDEFINED)-$(HOST_IP)-$");
        assert_eq!(expand("$(HOST_IP", &d), "$(HOST_IP");
    }

    #[test]
    fn bind_sources_are_found() {
        let a = vec![
            "--mount=type=bind,source=/proc,target=/host/proc,readonly".to_string(),
            "--mount=type=bind,source=/tmp/out,target=/var/log/blkio-agent".to_string(),
        ];
        assert_eq!(bind_source(&a, "/host/proc"), Some(("/proc", true)));
        assert_eq!(bind_source(&a, "/var/log/blkio-agent"), Some(("/tmp/out", false)));
        assert_eq!(bind_source(&a, "/host"), None);
    }
}
