//! Exporter configuration from flags and the standard `OTEL_*` variables.
//!
//! Everything is parsed from a [`Vars`] map, never from the process environment directly, so tests
//! exercise the real parsing without mutating the environment; [`Vars::from_env`] is the thin
//! wrapper the agent uses. Per the OTel spec an empty variable counts as unset, and the
//! `OTEL_EXPORTER_OTLP_METRICS_*` variant of a setting wins over the generic one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

use crate::{Error, Result};

/// Environment variables by name; empty values count as unset.
#[derive(Debug, Clone, Default)]
pub struct Vars(HashMap<String, String>);

impl Vars {
    /// The process environment (variables that are not valid UTF-8 are ignored).
    pub fn from_env() -> Vars {
        Vars(std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    /// `OTEL_EXPORTER_OTLP_METRICS_<suffix>`, else `OTEL_EXPORTER_OTLP_<suffix>`, with the name of
    /// the variable that was used (for error messages).
    fn otlp(&self, suffix: &'static str) -> Option<(&'static str, &str)> {
        let (specific, generic) = names(suffix);
        self.get(specific).map(|v| (specific, v)).or_else(|| self.get(generic).map(|v| (generic, v)))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Vars {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Vars(iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

/// Names of the signal-specific and generic variable for `suffix`. Static strings so that
/// [`Error::Config`] can name them.
fn names(suffix: &'static str) -> (&'static str, &'static str) {
    match suffix {
        "ENDPOINT" => ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        "PROTOCOL" => ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
        "HEADERS" => ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"),
        "TIMEOUT" => ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"),
        "COMPRESSION" => ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"),
        "CERTIFICATE" => ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"),
        "CLIENT_CERTIFICATE" => {
            ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")
        }
        "CLIENT_KEY" => ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY"),
        "TEMPORALITY_PREFERENCE" => {
            ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE")
        }
        _ => unreachable!("unknown OTLP setting {suffix}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    HttpProtobuf,
    Grpc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporality {
    Cumulative,
    Delta,
}

/// PEM files for TLS, read at startup so that a wrong path fails fast.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// Trusted CA certificates; when set they replace the system roots (as in other OTel SDKs).
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate chain and key for mutual TLS.
    pub client_identity: Option<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// Full URL of the metrics endpoint (`…/v1/metrics` for HTTP; scheme and authority for gRPC).
    pub endpoint: Uri,
    pub protocol: Protocol,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeout: Duration,
    pub gzip: bool,
    pub tls: TlsFiles,
    /// `OTEL_METRIC_EXPORT_INTERVAL`; `None`: every snapshot is exported as it is published.
    pub export_interval: Option<Duration>,
    pub temporality: Temporality,
    /// Most batches waiting while the collector is unreachable; the oldest are dropped beyond.
    pub queue_capacity: usize,
    /// Most encoded bytes waiting, whatever the number of batches.
    pub queue_max_bytes: usize,
    /// First retry delay; doubles up to `backoff_max` (a Retry-After from the collector wins).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

/// Everything the exporters need, parsed and validated.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// `None`: OTLP is off (no endpoint configured, or disabled by `OTEL_SDK_DISABLED` /
    /// `OTEL_METRICS_EXPORTER=none`).
    pub otlp: Option<OtlpConfig>,
    /// `None`: `--metrics-addr off`.
    pub metrics_addr: Option<SocketAddr>,
    /// Exported histogram buckets (`--histogram-max`).
    pub ranges: super::metrics::Ranges,
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// 2 hours of 5 s snapshots would be 1440 batches; 120 keeps 10 minutes and bounds memory.
pub const DEFAULT_QUEUE_CAPACITY: usize = 120;
pub const DEFAULT_QUEUE_MAX_BYTES: usize = 32 << 20;

fn config_err(what: &'static str, value: &str, reason: impl Into<String>) -> Error {
    Error::Config { what, value: value.to_string(), reason: reason.into() }
}

impl ExportConfig {
    /// Reads flags and variables. No endpoint anywhere: OTLP off, no error.
    pub fn from_vars(args: &crate::cli::RunArgs, vars: &Vars) -> Result<ExportConfig> {
        Ok(ExportConfig {
            otlp: OtlpConfig::from_vars(args.otlp_endpoint.as_deref(), args.otlp_protocol.as_deref(), vars)?,
            metrics_addr: parse_metrics_addr(&args.metrics_addr)?,
            ranges: super::metrics::Ranges {
                time: super::metrics::BucketRange::time_up_to(args.histogram_max),
                size: super::metrics::BucketRange::SIZE,
            },
        })
    }
}

pub fn parse_metrics_addr(s: &str) -> Result<Option<SocketAddr>> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        config_err("--metrics-addr", s, "expected an address and port like 0.0.0.0:9435 or [::]:9435, or `off`")
    })
}

impl OtlpConfig {
    pub fn from_vars(
        flag_endpoint: Option<&str>,
        flag_protocol: Option<&str>,
        vars: &Vars,
    ) -> Result<Option<OtlpConfig>> {
        if vars.get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        if let Some(list) = vars.get("OTEL_METRICS_EXPORTER")
            && !list.split(',').any(|e| e.trim().eq_ignore_ascii_case("otlp"))
        {
            return Ok(None);
        }
        let protocol = match flag_protocol
            .map(|p| ("--otlp-protocol", p.trim()))
            .filter(|(_, p)| !p.is_empty())
            .or_else(|| vars.otlp("PROTOCOL"))
        {
            None => Protocol::HttpProtobuf,
            Some((what, p)) => parse_protocol(what, p)?,
        };
        let flag = flag_endpoint.map(str::trim).filter(|e| !e.is_empty());
        let endpoint = match (flag, vars.get(names("ENDPOINT").0), vars.get(names("ENDPOINT").1)) {
            (Some(e), _, _) => endpoint_url("--otlp-endpoint", e, protocol, EndpointKind::Flag)?,
            (None, Some(e), _) => endpoint_url(names("ENDPOINT").0, e, protocol, EndpointKind::Signal)?,
            (None, None, Some(e)) => endpoint_url(names("ENDPOINT").1, e, protocol, EndpointKind::Base)?,
            (None, None, None) => return Ok(None),
        };
        let mut headers = Vec::new();
        // Generic headers first, then the metrics ones replace any with the same name.
        for name in [names("HEADERS").1, names("HEADERS").0] {
            if let Some(v) = vars.get(name) {
                for (k, v) in parse_headers(name, v)? {
                    headers.retain(|(old, _)| *old != k);
                    headers.push((k, v));
                }
            }
        }
        let timeout = match vars.otlp("TIMEOUT") {
            None => DEFAULT_TIMEOUT,
            Some((what, v)) => parse_millis(what, v)?,
        };
        let gzip = match vars.otlp("COMPRESSION") {
            None => false,
            Some((_, v)) if v.eq_ignore_ascii_case("gzip") => true,
            Some((_, v)) if v.eq_ignore_ascii_case("none") => false,
            Some((what, v)) => return Err(config_err(what, v, "supported values are `gzip` and `none`")),
        };
        let export_interval = match vars.get("OTEL_METRIC_EXPORT_INTERVAL") {
            None => None,
            Some(v) => Some(parse_millis("OTEL_METRIC_EXPORT_INTERVAL", v)?),
        };
        let temporality = match vars.otlp("TEMPORALITY_PREFERENCE") {
            None => Temporality::Cumulative,
            Some((_, v)) if v.eq_ignore_ascii_case("cumulative") => Temporality::Cumulative,
            // The agent's counters are all synchronous-like (events counted as they happen), so
            // `lowmemory` selects delta for every sum and histogram, as `delta` does.
            Some((_, v)) if v.eq_ignore_ascii_case("delta") || v.eq_ignore_ascii_case("lowmemory") => {
                Temporality::Delta
            }
            Some((what, v)) => {
                return Err(config_err(what, v, "supported values are `cumulative`, `delta` and `lowmemory`"));
            }
        };
        let tls = read_tls(vars)?;
        Ok(Some(OtlpConfig {
            endpoint,
            protocol,
            headers,
            timeout,
            gzip,
            tls,
            export_interval,
            temporality,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            queue_max_bytes: DEFAULT_QUEUE_MAX_BYTES,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }))
    }
}

fn parse_protocol(what: &'static str, p: &str) -> Result<Protocol> {
    match p.to_ascii_lowercase().as_str() {
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        "grpc" => Ok(Protocol::Grpc),
        "http/json" => {
            Err(config_err(what, p, "http/json is not supported; use http/protobuf (port 4318) or grpc (port 4317)"))
        }
        _ => Err(config_err(what, p, "supported protocols are http/protobuf (port 4318) and grpc (port 4317)")),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EndpointKind {
    /// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`: the URL as is.
    Signal,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: a base URL to which `v1/metrics` is appended.
    Base,
    /// `--otlp-endpoint`: a base URL, unless it already ends in `/v1/metrics`.
    Flag,
}

fn endpoint_url(what: &'static str, raw: &str, protocol: Protocol, kind: EndpointKind) -> Result<Uri> {
    let example = match protocol {
        Protocol::HttpProtobuf => "http://collector:4318",
        Protocol::Grpc => "http://collector:4317",
    };
    let uri: Uri = raw.parse().map_err(|_| config_err(what, raw, format!("not a URL; write it like {example}")))?;
    let scheme = uri.scheme_str().unwrap_or("");
    if scheme != "http" && scheme != "https" {
        return Err(config_err(what, raw, format!("needs an http:// or https:// scheme, e.g. {example}")));
    }
    let Some(authority) = uri.authority() else {
        return Err(config_err(what, raw, format!("has no host; write it like {example}")));
    };
    let path = uri.path();
    let path = match (protocol, kind) {
        // gRPC uses only scheme and authority; the service path is fixed.
        (Protocol::Grpc, _) => "/".to_string(),
        (Protocol::HttpProtobuf, EndpointKind::Signal) => path.to_string(),
        (Protocol::HttpProtobuf, EndpointKind::Flag) if path.trim_end_matches('/').ends_with("/v1/metrics") => {
            path.to_string()
        }
        (Protocol::HttpProtobuf, _) => format!("{}/v1/metrics", path.trim_end_matches('/')),
    };
    let path_and_query = match uri.query() {
        Some(q) if protocol == Protocol::HttpProtobuf => format!("{path}?{q}"),
        _ => path,
    };
    Uri::builder()
        .scheme(scheme)
        .authority(authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| config_err(what, raw, format!("not a valid URL ({e}); write it like {example}")))
}

/// `key=value,key2=value2` (W3C baggage style, values percent-decoded). Errors never echo a
/// value: headers usually carry credentials.
pub fn parse_headers(what: &'static str, s: &str) -> Result<Vec<(HeaderName, HeaderValue)>> {
    let mut out = Vec::new();
    for (i, entry) in s.split(',').enumerate().filter(|(_, e)| !e.trim().is_empty()) {
        let position = format!("entry {}", i + 1);
        let Some((k, v)) = entry.split_once('=') else {
            return Err(config_err(
                what,
                &position,
                "expected comma-separated key=value pairs, e.g. `api-key=secret,tenant=a`",
            ));
        };
        let key =
            percent_decode(k.trim()).ok_or_else(|| config_err(what, &position, "bad %-escape in the header name"))?;
        let name = HeaderName::from_bytes(key.as_bytes())
            .map_err(|_| config_err(what, &position, format!("`{}` is not a valid HTTP header name", key.trim())))?;
        let value = percent_decode(v.trim()).ok_or_else(|| config_err(what, &position, "bad %-escape in the value"))?;
        let value = HeaderValue::from_str(&value).map_err(|_| {
            config_err(what, &position, format!("the value of `{name}` has characters not allowed in an HTTP header"))
        })?;
        out.push((name, value));
    }
    Ok(out)
}

/// Decodes `%XX` escapes (the OTel spec's encoding for header and resource attribute values).
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn parse_millis(what: &'static str, v: &str) -> Result<Duration> {
    match v.parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err(config_err(what, v, "expected a positive whole number of milliseconds, e.g. 10000")),
    }
}

fn read_tls(vars: &Vars) -> Result<TlsFiles> {
    let read = |suffix: &'static str| -> Result<Option<(&'static str, Vec<u8>)>> {
        let Some((what, path)) = vars.otlp(suffix) else { return Ok(None) };
        let bytes = std::fs::read(path).map_err(|e| Error::read(PathBuf::from(path), e))?;
        Ok(Some((what, bytes)))
    };
    let ca_pem = match read("CERTIFICATE")? {
        Some((what, pem)) => {
            if super::otlp::tls::certificates(&pem).map_or(true, |c| c.is_empty()) {
                return Err(config_err(what, vars.otlp("CERTIFICATE").map_or("", |v| v.1), "holds no PEM certificate"));
            }
            Some(pem)
        }
        None => None,
    };
    let client_identity = match (read("CLIENT_CERTIFICATE")?, read("CLIENT_KEY")?) {
        (Some((_, cert)), Some((_, key))) => Some((cert, key)),
        (None, None) => None,
        (Some((what, _)), None) | (None, Some((what, _))) => {
            return Err(config_err(
                what,
                vars.otlp(if what.ends_with("KEY") { "CLIENT_KEY" } else { "CLIENT_CERTIFICATE" }).map_or("", |v| v.1),
                "mutual TLS needs both OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY",
            ));
        }
    };
    Ok(TlsFiles { ca_pem, client_identity })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn otlp(vars: &[(&str, &str)]) -> Result<Option<OtlpConfig>> {
        OtlpConfig::from_vars(None, None, &vars.iter().copied().collect())
    }

    #[test]
    fn no_endpoint_means_off() {
        assert!(otlp(&[]).unwrap().is_none());
        assert!(otlp(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]).unwrap().is_none());
        let disabled = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SDK_DISABLED", "true")];
        assert!(otlp(&disabled).unwrap().is_none());
        let none = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_METRICS_EXPORTER", "none")];
        assert!(otlp(&none).unwrap().is_none());
    }

    #[test]
    fn endpoints_follow_the_spec() {
        let c = otlp(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://10.0.0.1:4318")]).unwrap().unwrap();
        assert_eq!(c.endpoint.to_string(), "http://10.0.0.1:4318/v1/metrics");
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!((c.timeout, c.gzip, c.temporality), (DEFAULT_TIMEOUT, false, Temporality::Cumulative));
        let c = otlp(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c/base/")]).unwrap().unwrap();
        assert_eq!(c.endpoint.to_string(), "https://c/base/v1/metrics");
        let c = otlp(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:1"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://b:2/custom"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint.to_string(), "http://b:2/custom");
        let c = otlp(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317/x"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])
            .unwrap()
            .unwrap();
        assert_eq!((c.protocol, c.endpoint.to_string()), (Protocol::Grpc, "http://a:4317/".to_string()));
        let flag = OtlpConfig::from_vars(Some("http://f:4318/v1/metrics"), Some("http/protobuf"), &Vars::default())
            .unwrap()
            .unwrap();
        assert_eq!(flag.endpoint.to_string(), "http://f:4318/v1/metrics");
        let vars: Vars =
            [("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://b:2/x"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]
                .into_iter()
                .collect();
        let flag = OtlpConfig::from_vars(Some("http://f:4317"), Some("grpc"), &vars).unwrap().unwrap();
        assert_eq!((flag.protocol, flag.endpoint.to_string()), (Protocol::Grpc, "http://f:4317/".to_string()));
    }

    #[test]
    fn bad_values_name_the_variable_and_the_fix() {
        let e = otlp(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]).unwrap_err().to_string();
        assert!(e.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && e.contains("http://"), "{e}");
        let e = otlp(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && e.contains("http/protobuf"), "{e}");
        let e = otlp(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "5s")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT") && e.contains("milliseconds"), "{e}");
        let e =
            otlp(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_HEADERS", "a=1,secret-token")])
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_HEADERS") && e.contains("entry 2") && !e.contains("secret-token"),
            "{e}"
        );
        let e = otlp(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("OTEL_EXPORTER_OTLP_COMPRESSION") && e.contains("gzip"), "{e}");
        let e = otlp(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let e = otlp(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_METRIC_EXPORT_INTERVAL", "0")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("OTEL_METRIC_EXPORT_INTERVAL"), "{e}");
        let e = otlp(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
            ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "sometimes"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("TEMPORALITY_PREFERENCE") && e.contains("delta"), "{e}");
        assert!(parse_metrics_addr("9435").unwrap_err().to_string().contains("--metrics-addr"));
        assert_eq!(parse_metrics_addr("OFF").unwrap(), None);
        assert_eq!(parse_metrics_addr("127.0.0.1:0").unwrap(), Some("127.0.0.1:0".parse().unwrap()));
    }

    #[test]
    fn headers_merge_and_decode() {
        let c = otlp(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20abc, x-tenant = a"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-tenant=b"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "GZIP"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "15000"),
            ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "Delta"),
        ])
        .unwrap()
        .unwrap();
        let h: Vec<(String, String)> =
            c.headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string())).collect();
        assert_eq!(h, vec![("authorization".into(), "Bearer abc".into()), ("x-tenant".into(), "b".into())]);
        assert!(c.gzip);
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.export_interval, Some(Duration::from_secs(15)));
        assert_eq!(c.temporality, Temporality::Delta);
        assert_eq!(percent_decode("a%2Cb%3D"), Some("a,b=".into()));
        assert_eq!(percent_decode("bad%zz"), None);
    }
}
