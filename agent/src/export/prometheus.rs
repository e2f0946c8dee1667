//! Prometheus text exposition (format 0.0.4) of the cumulative points.
//!
//! Names follow the OTel-to-Prometheus compatibility rules: dots become underscores, the unit is
//! appended (`_seconds`, `_bytes`; `{…}` annotations are dropped) and counters end in `_total`.
//! Histograms use the same exact bounds as OTLP (`Collected::ranges`), as cumulative `le` buckets
//! plus `+Inf`.

use std::fmt::Write;

use super::metrics::{self, Kind, MetricDef, Scale, explicit_bounds, scaled};
use super::model::{Collected, Point, Value};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn metric_name(def: &MetricDef) -> String {
    let mut name = sanitize(def.name);
    let suffix = match def.unit {
        "s" => "_seconds",
        "By" => "_bytes",
        _ => "",
    };
    if !name.ends_with(suffix) {
        name.push_str(suffix);
    }
    if def.kind == Kind::Counter {
        name.push_str("_total");
    }
    name
}

/// Metric and label names allow `[a-zA-Z0-9_:]` (no leading digit); everything else becomes `_`.
pub fn sanitize(s: &str) -> String {
    let mut out: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' }).collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

fn labels(p: &Point, extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = p.attrs.iter().map(|(k, v)| format!("{}=\"{}\"", sanitize(k), escape(v))).collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() { String::new() } else { format!("{{{}}}", parts.join(",")) }
}

/// Prometheus float syntax: Rust's shortest round-trip form, which the Go parser reads back to
/// the same `f64`.
fn float(v: f64) -> String {
    if v.is_infinite() { if v > 0.0 { "+Inf".into() } else { "-Inf".into() } } else { format!("{v}") }
}

fn value(v: u128, scale: Scale) -> String {
    match scale {
        Scale::Unit => v.to_string(),
        Scale::NanosToSeconds => float(scaled(v, scale)),
    }
}

/// Renders every point; `resource` becomes a `target_info` series, as OTel recommends.
pub fn render(c: &Collected, resource: &[(String, String)]) -> String {
    let mut out = String::with_capacity(16 * 1024);
    if !resource.is_empty() {
        let l: Vec<String> = resource.iter().map(|(k, v)| format!("{}=\"{}\"", sanitize(k), escape(v))).collect();
        let _ =
            writeln!(out, "# HELP target_info Target metadata (the agent's OTel resource).\n# TYPE target_info gauge");
        let _ = writeln!(out, "target_info{{{}}} 1", l.join(","));
    }
    for def in metrics::ALL {
        let points: Vec<&Point> = c.points.iter().filter(|p| p.metric.name == def.name).collect();
        if points.is_empty() {
            continue;
        }
        let name = metric_name(def);
        let kind = match def.kind {
            Kind::Histogram => "histogram",
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(out, "# HELP {name} {}", def.description.replace('\\', r"\\").replace('\n', r"\n"));
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for p in points {
            match &p.value {
                Value::Hist(h) => {
                    let range = c.ranges.for_scale(def.scale);
                    let bounds = explicit_bounds(def.scale, range);
                    let mut cumulative = 0u64;
                    for (b, n) in bounds.iter().zip(range.counts(&h.slots)) {
                        cumulative += n;
                        let _ = writeln!(out, "{name}_bucket{} {cumulative}", labels(p, Some(("le", &float(*b)))));
                    }
                    let count = h.count();
                    let _ = writeln!(out, "{name}_bucket{} {count}", labels(p, Some(("le", "+Inf"))));
                    let _ = writeln!(out, "{name}_sum{} {}", labels(p, None), float(scaled(h.sum, def.scale)));
                    let _ = writeln!(out, "{name}_count{} {count}", labels(p, None));
                }
                Value::Counter(v) | Value::Gauge(v) => {
                    let _ = writeln!(out, "{name}{} {}", labels(p, None), value(*v, def.scale));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_otel_compatibility_rules() {
        assert_eq!(metric_name(&metrics::REQUEST_DURATION), "blkio_request_duration_seconds");
        assert_eq!(metric_name(&metrics::REQUEST_SIZE), "blkio_request_size_bytes");
        assert_eq!(metric_name(&metrics::DISK_OPERATIONS), "system_disk_operations_total");
        assert_eq!(metric_name(&metrics::DISK_OPERATION_TIME), "system_disk_operation_time_seconds_total");
        assert_eq!(metric_name(&metrics::INFLIGHT), "blkio_inflight");
        assert_eq!(sanitize("k8s.pod.name"), "k8s_pod_name");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(float(16e-6), "0.000016");
    }
}
