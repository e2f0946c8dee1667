//! The OTel resource that describes this agent, built with `opentelemetry_sdk::Resource` so that
//! merging and `OTEL_RESOURCE_ATTRIBUTES` / `OTEL_SERVICE_NAME` behave as in other SDKs.
//!
//! Precedence, lowest first: SDK telemetry attributes, what the agent detects itself (host, node,
//! pod), then `OTEL_RESOURCE_ATTRIBUTES`, then `OTEL_SERVICE_NAME`. The SDK's own env detector
//! reads the process environment; [`VarsResourceDetector`] is the same detector over [`Vars`].

use opentelemetry::KeyValue;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue as ProtoKeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::resource::{ResourceDetector, TelemetryResourceDetector};

use super::AgentIdentity;
use super::config::{Vars, percent_decode};
use crate::{Error, Result};

pub const DEFAULT_SERVICE_NAME: &str = "blkio-agent";

/// `OTEL_RESOURCE_ATTRIBUTES` from [`Vars`]: `key=value` pairs separated by commas, trimmed,
/// values percent-decoded as the spec asks. A malformed entry is a configuration error (the spec
/// says to discard the whole value; the agent refuses to start instead so that the typo is seen).
#[derive(Debug)]
pub struct VarsResourceDetector(Vec<KeyValue>);

impl VarsResourceDetector {
    pub fn new(vars: &Vars) -> Result<Self> {
        let mut attrs = Vec::new();
        for (i, entry) in vars.get("OTEL_RESOURCE_ATTRIBUTES").unwrap_or("").split(',').enumerate() {
            if entry.trim().is_empty() {
                continue;
            }
            let bad = |reason: &str| Error::Config {
                what: "OTEL_RESOURCE_ATTRIBUTES",
                value: format!("entry {}: {}", i + 1, entry.trim()),
                reason: format!(
                    "{reason}; write comma-separated key=value pairs, e.g. deployment.environment.name=prod"
                ),
            };
            let (k, v) = entry.split_once('=').ok_or_else(|| bad("no `=`"))?;
            if k.trim().is_empty() {
                return Err(bad("empty key"));
            }
            let v = percent_decode(v.trim()).ok_or_else(|| bad("bad %-escape in the value"))?;
            attrs.push(KeyValue::new(k.trim().to_string(), v));
        }
        Ok(VarsResourceDetector(attrs))
    }
}

impl ResourceDetector for VarsResourceDetector {
    fn detect(&self) -> Resource {
        Resource::builder_empty().with_attributes(self.0.clone()).build()
    }
}

pub fn build(identity: &AgentIdentity, vars: &Vars) -> Result<Resource> {
    let mut detected = vec![
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("host.name", identity.host_name.clone()),
    ];
    // The downward API variables of the agent's own pod (see the DaemonSet manifest).
    for (key, var) in [
        ("k8s.node.name", "NODE_NAME"),
        ("k8s.pod.name", "POD_NAME"),
        ("k8s.namespace.name", "POD_NAMESPACE"),
        ("k8s.pod.uid", "POD_UID"),
    ] {
        if let Some(v) = vars.get(var) {
            detected.push(KeyValue::new(key, v.to_string()));
        }
    }
    let from_env = VarsResourceDetector::new(vars)?;
    let service_name = vars
        .get("OTEL_SERVICE_NAME")
        .map(str::to_string)
        .or_else(|| from_env.0.iter().find(|kv| kv.key.as_str() == "service.name").map(|kv| kv.value.to_string()))
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string());
    Ok(Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_attributes(detected)
        .with_detector(Box::new(from_env))
        .with_service_name(service_name)
        .build())
}

pub fn to_proto(resource: &Resource) -> ProtoResource {
    let mut attributes: Vec<ProtoKeyValue> = resource
        .iter()
        .map(|(k, v)| ProtoKeyValue {
            key: k.to_string(),
            value: Some(AnyValue::from(v.clone())),
            ..Default::default()
        })
        .collect();
    // Stable order makes requests reproducible (the SDK keeps a hash map).
    attributes.sort_by(|a, b| a.key.cmp(&b.key));
    ProtoResource { attributes, ..Default::default() }
}

/// Resource attributes as strings (for Prometheus `target_info`).
pub fn string_attributes(resource: &Resource) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = resource.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(r: &Resource) -> std::collections::BTreeMap<String, String> {
        string_attributes(r).into_iter().collect()
    }

    #[test]
    fn identity_env_and_service_name_precedence() {
        let id = AgentIdentity { node_name: "node-a".into(), host_name: "host-a".into() };
        let downward: Vars = [("NODE_NAME", "node-a"), ("POD_NAME", "blkio-agent-x1"), ("POD_NAMESPACE", "monitoring")]
            .into_iter()
            .collect();
        let r = build(&id, &downward).unwrap();
        let a = attrs(&r);
        assert_eq!(a["service.name"], "blkio-agent");
        assert_eq!(a["service.version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(a["host.name"], "host-a");
        assert_eq!(a["k8s.node.name"], "node-a");
        assert_eq!(a["k8s.pod.name"], "blkio-agent-x1");
        assert_eq!(a["k8s.namespace.name"], "monitoring");
        assert_eq!(a["telemetry.sdk.language"], "rust");
        assert!(!a.contains_key("k8s.pod.uid"));

        let vars: Vars = [(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=prod, service.name=from-attrs,host.name=over%2Cridden,",
        )]
        .into_iter()
        .collect();
        let a = attrs(&build(&id, &vars).unwrap());
        assert_eq!(a["service.name"], "from-attrs");
        assert_eq!(a["deployment.environment.name"], "prod");
        assert_eq!(a["host.name"], "over,ridden", "user attributes win over detection");

        for bad in ["a=1,oops", "=v", "k=%zz"] {
            let e = build(&id, &[("OTEL_RESOURCE_ATTRIBUTES", bad)].into_iter().collect()).unwrap_err().to_string();
            assert!(e.contains("OTEL_RESOURCE_ATTRIBUTES") && e.contains("key=value"), "{e}");
        }

        let vars: Vars = [("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs"), ("OTEL_SERVICE_NAME", "svc")]
            .into_iter()
            .collect();
        let r = build(&AgentIdentity::default(), &vars).unwrap();
        assert_eq!(attrs(&r)["service.name"], "svc");
        assert!(!attrs(&r).contains_key("k8s.node.name"));
        let p = to_proto(&r);
        assert!(p.attributes.windows(2).all(|w| w[0].key < w[1].key));
    }
}
