//! YAML in: chart values and the plain manifests, parsed into JSON values and k8s-openapi types.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::ConfigMap};
use serde::{Deserialize, de::DeserializeOwned};

/// Every document of a (multi-document) YAML text, as JSON values; empty documents are dropped.
pub fn yaml_documents(text: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_json::Value::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

pub fn read_yaml_file(path: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    yaml_documents(&text).with_context(|| format!("parsing {}", path.display()))
}

/// One Kubernetes object and the file it came from.
#[derive(Debug, Clone)]
pub struct Object {
    pub file: PathBuf,
    pub value: serde_json::Value,
}

impl Object {
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }

    /// The object as a k8s-openapi type (rejects fields of the wrong type).
    pub fn typed<T: DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_value(self.value.clone()).with_context(|| {
            format!(
                "{} {} in {} is not a valid {}",
                self.kind(),
                self.name(),
                self.file.display(),
                std::any::type_name::<T>()
            )
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    patches: Vec<PatchRef>,
    #[serde(default)]
    images: Vec<ImageOverride>,
}

/// A `patches:` entry. Only strategic-merge patches from files are understood.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchRef {
    path: String,
}

/// An `images:` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ImageOverride {
    name: String,
    #[serde(default)]
    new_name: Option<String>,
    #[serde(default)]
    new_tag: Option<String>,
    #[serde(default)]
    digest: Option<String>,
}

/// The objects a kustomization builds, for the subset of kustomize that `manifests/` uses:
/// `resources` (files, and directories with their own kustomization, recursively), then
/// `patches` given as files of strategic-merge patches (see [`strategic_merge`]; a document with
/// a top-level `$patch: delete` removes its object), then `images`. Anything else in a
/// kustomization is an error, not ignored; the tests that have kubectl compare the result with
/// `kubectl kustomize`.
pub fn kustomization_objects(dir: &Path) -> anyhow::Result<Vec<Object>> {
    let path = dir.join("kustomization.yaml");
    let k: Kustomization =
        serde_yaml::from_str(&std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?)
            .with_context(|| format!("parsing {}", path.display()))?;
    if k.api_version.as_deref().is_some_and(|v| v != "kustomize.config.k8s.io/v1beta1")
        || k.kind.as_deref().is_some_and(|v| v != "Kustomization")
    {
        bail!("{} is not a kustomize.config.k8s.io/v1beta1 Kustomization", path.display());
    }
    let mut objects = Vec::new();
    for r in &k.resources {
        let p = dir.join(r);
        if p.is_dir() {
            objects.extend(kustomization_objects(&p)?);
        } else if p.is_file() {
            for value in read_yaml_file(&p)? {
                objects.push(Object { file: p.clone(), value });
            }
        } else {
            bail!("{} lists {r}, which does not exist", path.display());
        }
    }
    for patch_ref in &k.patches {
        let p = dir.join(&patch_ref.path);
        for patch in read_yaml_file(&p)? {
            apply_patch(&mut objects, patch).with_context(|| format!("applying {}", p.display()))?;
        }
    }
    for image in &k.images {
        for o in &mut objects {
            set_images(&mut o.value, image);
        }
    }
    Ok(objects)
}

/// One strategic-merge patch document onto the object of the same kind and name.
fn apply_patch(objects: &mut Vec<Object>, mut patch: serde_json::Value) -> anyhow::Result<()> {
    let kind = patch["kind"].as_str().context("patch without kind")?.to_string();
    let name = patch["metadata"]["name"].as_str().context("patch without metadata.name")?.to_string();
    let matches: Vec<usize> =
        objects.iter().enumerate().filter(|(_, o)| o.kind() == kind && o.name() == name).map(|(i, _)| i).collect();
    let [i] = matches[..] else { bail!("the patch for {kind} {name} matches {} objects, not one", matches.len()) };
    if let Some(directive) = patch.as_object_mut().and_then(|m| m.remove("$patch")) {
        match directive.as_str() {
            Some("delete") => {
                objects.remove(i);
                return Ok(());
            }
            _ => bail!("{kind} {name}: `$patch: {directive}` is not supported"),
        }
    }
    strategic_merge(&mut objects[i].value, patch, "")
}

/// The merge key of a list field in the Kubernetes types `manifests/` patches (from the API's
/// `x-kubernetes-patch-merge-key`); lists without one are replaced by the patch's.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers" | "initContainers" | "volumes" | "env" | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "ports" => Some("containerPort"),
        _ => None,
    }
}

/// Strategic merge of `patch` into `target` (`field` is the key `target` sits under): maps merge
/// key by key and `null` deletes a key; lists with a merge key merge item by item, where an item
/// with `$patch: delete` removes the target's item of the same key and new items are appended;
/// everything else is replaced.
pub fn strategic_merge(target: &mut serde_json::Value, patch: serde_json::Value, field: &str) -> anyhow::Result<()> {
    use serde_json::Value;
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if k == "$patch" {
                    bail!("`$patch` in a map under {field} is not supported");
                }
                if v.is_null() {
                    t.remove(&k);
                } else if let Some(slot) = t.get_mut(&k) {
                    strategic_merge(slot, v, &k)?;
                } else {
                    t.insert(k, v);
                }
            }
        }
        (Value::Array(t), Value::Array(p)) if merge_key(field).is_some() => {
            let key = merge_key(field).unwrap();
            for mut item in p {
                let id = item.get(key).cloned().with_context(|| format!("an item of {field} without {key}"))?;
                let pos = t.iter().position(|x| x.get(key) == Some(&id));
                let directive = item.as_object_mut().and_then(|m| m.remove("$patch"));
                match (directive.as_ref().and_then(Value::as_str), pos) {
                    (Some("delete"), Some(i)) => {
                        t.remove(i);
                    }
                    (Some("delete"), None) => bail!("{field}: no item with {key} {id} to delete"),
                    (Some(other), _) => bail!("{field}: `$patch: {other}` is not supported"),
                    (None, Some(i)) => strategic_merge(&mut t[i], item, field)?,
                    (None, None) => t.push(item),
                }
            }
        }
        (slot, v) => *slot = v,
    }
    Ok(())
}

/// kustomize's `images` transformer on the containers of a workload.
fn set_images(object: &mut serde_json::Value, image: &ImageOverride) {
    let Some(spec) = object.pointer_mut("/spec/template/spec").and_then(serde_json::Value::as_object_mut) else {
        return;
    };
    for list in ["initContainers", "containers"] {
        for c in spec.get_mut(list).and_then(serde_json::Value::as_array_mut).into_iter().flatten() {
            let Some(current) = c["image"].as_str() else { continue };
            // name[:tag][@digest]; a registry port's colon comes before the last slash.
            let (without_digest, digest) = match current.split_once('@') {
                Some((n, d)) => (n, Some(d)),
                None => (current, None),
            };
            let slash = without_digest.rfind('/').map_or(0, |i| i + 1);
            let (name, tag) = match without_digest[slash..].rfind(':') {
                Some(i) => (&without_digest[..slash + i], Some(&without_digest[slash + i + 1..])),
                None => (without_digest, None),
            };
            if name != image.name {
                continue;
            }
            let mut new = image.new_name.clone().unwrap_or_else(|| name.to_string());
            if let Some(d) = image.digest.as_deref() {
                new = format!("{new}@{d}");
            } else if let Some(t) = image.new_tag.as_deref().or(tag) {
                new = format!("{new}:{t}");
                if let (None, Some(d)) = (image.new_tag.as_deref(), digest) {
                    new = format!("{new}@{d}");
                }
            } else if let Some(d) = digest {
                new = format!("{new}@{d}");
            }
            c["image"] = serde_json::Value::String(new);
        }
    }
}

/// The single object of `kind` (and `name`, when given).
pub fn find<'a>(objects: &'a [Object], kind: &str, name: Option<&str>) -> anyhow::Result<&'a Object> {
    let mut it = objects.iter().filter(|o| o.kind() == kind && name.is_none_or(|n| o.name() == n));
    let first = it.next().with_context(|| format!("no {kind} {}", name.unwrap_or("")))?;
    if it.next().is_some() {
        bail!("more than one {kind} {}", name.unwrap_or(""));
    }
    Ok(first)
}

/// The plain manifests' DaemonSet and every ConfigMap's data by name (what envFrom reads).
pub struct AgentManifests {
    pub objects: Vec<Object>,
    pub daemonset: DaemonSet,
    pub configmaps: BTreeMap<String, BTreeMap<String, String>>,
}

pub fn agent_manifests(kustomization_dir: &Path) -> anyhow::Result<AgentManifests> {
    let objects = kustomization_objects(kustomization_dir)?;
    let daemonset: DaemonSet = find(&objects, "DaemonSet", None)?.typed()?;
    let mut configmaps = BTreeMap::new();
    for o in objects.iter().filter(|o| o.kind() == "ConfigMap") {
        let cm: ConfigMap = o.typed()?;
        configmaps.insert(o.name().to_string(), cm.data.unwrap_or_default());
    }
    Ok(AgentManifests { objects, daemonset, configmaps })
}

/// Chart values: `values.yaml`, then each override file merged over it the way helm merges
/// `-f` files (maps merge key by key, everything else is replaced).
pub fn chart_values(chart: &Path, overrides: &[&Path]) -> anyhow::Result<serde_json::Value> {
    let mut values = single_document(&chart.join("values.yaml"))?;
    for o in overrides {
        merge(&mut values, single_document(o)?);
    }
    Ok(values)
}

fn single_document(path: &Path) -> anyhow::Result<serde_json::Value> {
    let mut docs = read_yaml_file(path)?;
    match docs.len() {
        0 => Ok(serde_json::json!({})),
        1 => Ok(docs.remove(0)),
        n => bail!("{} has {n} YAML documents, values files have one", path.display()),
    }
}

/// Helm's values merge: objects merge recursively, `null` deletes a key, the rest replaces.
pub fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(&k);
                } else if let Some(slot) = b.get_mut(&k) {
                    merge(slot, v);
                } else {
                    b.insert(k, v);
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Kubernetes quantities as numbers: memory in bytes (`256Mi`, `1G`), CPU in cores (`500m`).
pub fn quantity(q: &str) -> anyhow::Result<f64> {
    let q = q.trim();
    let split = q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().with_context(|| format!("quantity `{q}`"))?;
    let mul = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        other => bail!("quantity `{q}`: unknown suffix `{other}`"),
    };
    Ok(n * mul)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities() {
        assert_eq!(quantity("256Mi").unwrap(), 268_435_456.0);
        assert_eq!(quantity("64Mi").unwrap(), 67_108_864.0);
        assert_eq!(quantity("1G").unwrap(), 1e9);
        assert_eq!(quantity("500m").unwrap(), 0.5);
        assert_eq!(quantity("2").unwrap(), 2.0);
        assert!(quantity("12Qi").is_err());
        assert!(quantity("Mi").is_err());
    }

    #[test]
    fn helm_style_merge() {
        let mut base = json!({"a": {"b": 1, "c": [1, 2]}, "d": "x", "e": 1});
        merge(&mut base, json!({"a": {"c": [3]}, "d": {"new": true}, "e": null}));
        assert_eq!(base, json!({"a": {"b": 1, "c": [3]}, "d": {"new": true}}));
    }

    #[test]
    fn multi_document_yaml() {
        let docs = yaml_documents("a: 1\n---\n---\nb: [x]\n").unwrap();
        assert_eq!(docs, vec![json!({"a": 1}), json!({"b": ["x"]})]);
    }

    #[test]
    fn strategic_merge_subset() {
        let mut ds = json!({"spec": {"template": {"metadata": {"annotations": {"a": "1"}}, "spec": {
            "automountServiceAccountToken": true,
            "containers": [{"name": "agent", "image": "x", "volumeMounts": [
                {"name": "proc", "mountPath": "/host/proc"},
                {"name": "cg", "mountPath": "/host/sys/fs/cgroup", "readOnly": true}]}],
            "volumes": [{"name": "proc"}, {"name": "cg"}]}}}});
        strategic_merge(
            &mut ds,
            json!({"spec": {"template": {"metadata": {"annotations": {"a": "2"}}, "spec": {
                "automountServiceAccountToken": false,
                "containers": [{"name": "agent", "volumeMounts": [
                    {"mountPath": "/host/sys/fs/cgroup", "$patch": "delete"},
                    {"name": "new", "mountPath": "/new"}]}],
                "volumes": [{"name": "cg", "$patch": "delete"}]}}}}),
            "",
        )
        .unwrap();
        assert_eq!(
            ds,
            json!({"spec": {"template": {"metadata": {"annotations": {"a": "2"}}, "spec": {
                "automountServiceAccountToken": false,
                "containers": [{"name": "agent", "image": "x", "volumeMounts": [
                    {"name": "proc", "mountPath": "/host/proc"}, {"name": "new", "mountPath": "/new"}]}],
                "volumes": [{"name": "proc"}]}}}})
        );
        let mut cm = json!({"data": {"A": "true", "B": "50"}});
        strategic_merge(&mut cm, json!({"data": {"A": "false", "B": null}}), "").unwrap();
        assert_eq!(cm, json!({"data": {"A": "false"}}));
        // A list without a merge key is replaced.
        let mut v = json!({"tolerations": [{"operator": "Exists"}]});
        strategic_merge(&mut v, json!({"tolerations": [{"key": "k"}]}), "").unwrap();
        assert_eq!(v, json!({"tolerations": [{"key": "k"}]}));
        // Deleting an item that is not there is an error (the patch is stale).
        let mut v = json!({"volumes": [{"name": "a"}]});
        assert!(strategic_merge(&mut v, json!({"volumes": [{"name": "b", "$patch": "delete"}]}), "").is_err());
    }

    #[test]
    fn object_delete_patch_and_images() {
        let obj = |kind: &str, name: &str| Object {
            file: PathBuf::from("x.yaml"),
            value: json!({"kind": kind, "metadata": {"name": name}}),
        };
        let mut objects = vec![obj("ClusterRole", "a"), obj("ClusterRoleBinding", "a")];
        apply_patch(&mut objects, json!({"$patch": "delete", "kind": "ClusterRole", "metadata": {"name": "a"}}))
            .unwrap();
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].kind(), "ClusterRoleBinding");
        assert!(apply_patch(&mut objects, json!({"kind": "ClusterRole", "metadata": {"name": "a"}})).is_err());

        let image = |i: &str| json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": i}]}}}});
        let over = |name: &str, new_name: Option<&str>, tag: Option<&str>| ImageOverride {
            name: name.into(),
            new_name: new_name.map(Into::into),
            new_tag: tag.map(Into::into),
            digest: None,
        };
        let mut ds = image("registry:5000/org/agent:0.1.0");
        set_images(&mut ds, &over("registry:5000/org/agent", Some("r.example/agent"), Some("0.2.0")));
        assert_eq!(ds["spec"]["template"]["spec"]["containers"][0]["image"], "r.example/agent:0.2.0");
        let mut ds = image("org/agent:0.1.0");
        set_images(&mut ds, &over("org/other", None, Some("9")));
        assert_eq!(ds["spec"]["template"]["spec"]["containers"][0]["image"], "org/agent:0.1.0");
        set_images(&mut ds, &over("org/agent", Some("mirror/agent"), None));
        assert_eq!(ds["spec"]["template"]["spec"]["containers"][0]["image"], "mirror/agent:0.1.0");
    }
}
