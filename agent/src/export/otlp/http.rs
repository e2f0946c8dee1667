//! OTLP/HTTP with protobuf bodies (hyper 1, rustls for https).

use std::io::Write;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use prost::Message;

use super::{Outcome, SendError};
use crate::Result;
use crate::export::config::OtlpConfig;

/// Collector responses are small; anything larger is cut (memory stays bounded).
const MAX_RESPONSE_BYTES: usize = 1 << 20;

pub struct HttpTransport {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: Uri,
    headers: HeaderMap,
    gzip: bool,
    timeout: Duration,
}

impl HttpTransport {
    pub fn new(cfg: &OtlpConfig) -> Result<HttpTransport> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(cfg.timeout));
        tcp.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(super::tls::client_config(&cfg.tls)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            // A collector restarted behind the same address must not be reached through a dead
            // pooled connection for long.
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .build(connector);
        let mut headers = HeaderMap::new();
        for (k, v) in &cfg.headers {
            headers.insert(k.clone(), v.clone());
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"));
        headers.insert(USER_AGENT, HeaderValue::from_static(concat!("blkio-agent/", env!("CARGO_PKG_VERSION"))));
        if cfg.gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        Ok(HttpTransport { client, url: cfg.endpoint.clone(), headers, gzip: cfg.gzip, timeout: cfg.timeout })
    }

    pub async fn send(&self, req: &ExportMetricsServiceRequest) -> Result<Outcome, SendError> {
        let mut body = req.encode_to_vec();
        if self.gzip {
            let mut enc =
                flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
            enc.write_all(&body)
                .and_then(|_| enc.finish())
                .map(|gz| body = gz)
                .map_err(|e| SendError::permanent("gzip", e.to_string()))?;
        }
        let mut request =
            Request::post(self.url.clone()).body(Full::new(Bytes::from(body))).expect("valid request parts");
        *request.headers_mut() = self.headers.clone();
        let exchange = async {
            let resp = self
                .client
                .request(request)
                .await
                .map_err(|e| SendError::retry("transport", crate::error::chain(&e), None))?;
            let status = resp.status();
            let retry_after = resp.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
            let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, SendError>((status, retry_after, body))
        };
        let (status, retry_after, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| SendError::retry("timeout", format!("no response within {:?}", self.timeout), None))??;
        classify(status, retry_after, &body)
    }
}

fn classify(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> Result<Outcome, SendError> {
    if status.is_success() {
        let partial = ExportMetricsServiceResponse::decode(body).ok().and_then(|r| r.partial_success);
        return Ok(Outcome {
            rejected_points: partial.as_ref().map_or(0, |p| p.rejected_data_points.max(0) as u64),
            message: partial.map(|p| p.error_message).unwrap_or_default(),
        });
    }
    let detail = format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)]).trim());
    let reason = status.as_u16().to_string();
    // The OTLP/HTTP spec's retryable statuses; everything else will fail the same way again.
    match status.as_u16() {
        429 | 502 | 503 | 504 => Err(SendError::retry_owned(reason, detail, retry_after)),
        _ => Err(SendError::permanent_owned(reason, detail)),
    }
}

/// `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_per_spec() {
        for code in [429u16, 502, 503, 504] {
            let e = classify(StatusCode::from_u16(code).unwrap(), Some(Duration::from_secs(3)), b"busy").unwrap_err();
            assert!(e.retryable, "{code}");
            assert_eq!(e.retry_after, Some(Duration::from_secs(3)));
            assert_eq!(e.error_type, code.to_string());
        }
        for code in [400u16, 401, 404, 413, 500] {
            assert!(!classify(StatusCode::from_u16(code).unwrap(), None, b"").unwrap_err().retryable, "{code}");
        }
        let partial = ExportMetricsServiceResponse {
            partial_success: Some(opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsPartialSuccess {
                rejected_data_points: 3,
                error_message: "bad".into(),
            }),
        };
        let ok = classify(StatusCode::OK, None, &partial.encode_to_vec()).unwrap();
        assert_eq!((ok.rejected_points, ok.message.as_str()), (3, "bad"));
        assert_eq!(classify(StatusCode::OK, None, b"").unwrap().rejected_points, 0);
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let d = parse_retry_after(&soon).unwrap();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120), "{d:?}");
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
