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
struct Kustomization {
    #[serde(default)]
    resources: Vec<String>,
}

/// The objects of a kustomization's `resources` (files, and directories with their own
/// kustomization, recursively). Patches and transformers are not applied: this is meant for
/// `manifests/base`, which has none; the overlays are compared with `kubectl kustomize` in the
/// tests that have kubectl.
pub fn kustomization_objects(dir: &Path) -> anyhow::Result<Vec<Object>> {
    let path = dir.join("kustomization.yaml");
    let k: Kustomization =
        serde_yaml::from_str(&std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?)
            .with_context(|| format!("parsing {}", path.display()))?;
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
    Ok(objects)
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
}
