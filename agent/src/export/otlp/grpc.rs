//! OTLP/gRPC with tonic. The channel connects lazily and reconnects by itself, so a collector
//! that is down at start or restarts later needs nothing from us but retries.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataMap;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use super::{Outcome, SendError};
use crate::export::config::OtlpConfig;
use crate::{Error, Result};

pub struct GrpcTransport {
    client: MetricsServiceClient<Channel>,
    metadata: MetadataMap,
    timeout: Duration,
}

impl GrpcTransport {
    pub fn new(cfg: &OtlpConfig) -> Result<GrpcTransport> {
        let url = cfg.endpoint.to_string();
        let bad = |e: tonic::transport::Error| Error::Config {
            what: "OTEL_EXPORTER_OTLP_ENDPOINT",
            value: url.clone(),
            reason: format!("unusable gRPC endpoint ({e}); write it like http://collector:4317"),
        };
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(bad)?
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .tcp_nodelay(true)
            .user_agent(concat!("blkio-agent/", env!("CARGO_PKG_VERSION")))
            .map_err(bad)?;
        if cfg.endpoint.scheme_str() == Some("https") {
            let mut tls = ClientTlsConfig::new();
            tls = match &cfg.tls.ca_pem {
                Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
                None => tls.with_native_roots(),
            };
            if let Some((cert, key)) = &cfg.tls.client_identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| Error::Config {
                what: "OTEL_EXPORTER_OTLP_CERTIFICATE",
                value: "(TLS setup)".into(),
                reason: format!("cannot set up TLS for gRPC: {e}"),
            })?;
        }
        let mut client = MetricsServiceClient::new(endpoint.connect_lazy());
        if cfg.gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        let mut headers = http::HeaderMap::new();
        for (k, v) in &cfg.headers {
            headers.insert(k.clone(), v.clone());
        }
        Ok(GrpcTransport { client, metadata: MetadataMap::from_headers(headers), timeout: cfg.timeout })
    }

    pub async fn send(&self, req: &ExportMetricsServiceRequest) -> Result<Outcome, SendError> {
        let mut request = tonic::Request::new(req.clone());
        *request.metadata_mut() = self.metadata.clone();
        request.set_timeout(self.timeout);
        // The channel is a cheap handle; a clone per call keeps `send` usable through `&self`.
        let mut client = self.client.clone();
        let reply = tokio::time::timeout(self.timeout, client.export(request))
            .await
            .map_err(|_| SendError::retry("timeout", format!("no response within {:?}", self.timeout), None))?;
        match reply {
            Ok(resp) => {
                let partial = resp.into_inner().partial_success;
                Ok(Outcome {
                    rejected_points: partial.as_ref().map_or(0, |p| p.rejected_data_points.max(0) as u64),
                    message: partial.map(|p| p.error_message).unwrap_or_default(),
                })
            }
            Err(status) => Err(classify(&status)),
        }
    }
}

fn classify(status: &Status) -> SendError {
    let retry_after = retry_delay(status);
    let reason = format!("{:?}", status.code()).to_uppercase();
    let detail = format!("gRPC {:?}: {}", status.code(), status.message());
    // The OTLP/gRPC spec's retryable codes; RESOURCE_EXHAUSTED only when the server says when.
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => SendError::retry_owned(reason, detail, retry_after),
        Code::ResourceExhausted if retry_after.is_some() => SendError::retry_owned(reason, detail, retry_after),
        _ => SendError::permanent_owned(reason, detail),
    }
}

/// `google.rpc.Status` and `google.rpc.RetryInfo`, the two messages needed to read the delay a
/// collector asks for (declared here rather than pulling in a crate of Google types).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types_any::Any>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<prost_types_any::ProtoDuration>,
}

mod prost_types_any {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Any {
        #[prost(string, tag = "1")]
        pub type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ProtoDuration {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }
}

const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

fn retry_delay(status: &Status) -> Option<Duration> {
    let details = RpcStatus::decode(status.details()).ok()?;
    let any = details.details.iter().find(|a| a.type_url == RETRY_INFO_TYPE)?;
    let d = RetryInfo::decode(any.value.as_slice()).ok()?.retry_delay?;
    Some(Duration::from_secs(d.seconds.max(0) as u64) + Duration::from_nanos(d.nanos.max(0) as u64))
}

/// Builds the `grpc-status-details-bin` payload a collector sends with a retry delay (tests and
/// in-process receivers use it).
pub fn retry_info_details(delay: Duration) -> Vec<u8> {
    let info = RetryInfo {
        retry_delay: Some(prost_types_any::ProtoDuration {
            seconds: delay.as_secs() as i64,
            nanos: delay.subsec_nanos() as i32,
        }),
    };
    RpcStatus {
        code: Code::Unavailable as i32,
        message: String::new(),
        details: vec![prost_types_any::Any { type_url: RETRY_INFO_TYPE.into(), value: info.encode_to_vec() }],
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified_per_spec() {
        let e = classify(&Status::unavailable("down"));
        assert!(e.retryable);
        assert_eq!(e.error_type, "UNAVAILABLE");
        assert!(!classify(&Status::invalid_argument("bad")).retryable);
        assert!(!classify(&Status::resource_exhausted("full")).retryable, "no RetryInfo: permanent");
        let with_delay = Status::with_details(
            Code::ResourceExhausted,
            "slow down",
            retry_info_details(Duration::from_millis(1500)).into(),
        );
        let e = classify(&with_delay);
        assert!(e.retryable);
        assert_eq!(e.retry_after, Some(Duration::from_millis(1500)));
    }
}
