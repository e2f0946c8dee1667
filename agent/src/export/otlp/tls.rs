//! TLS for OTLP: system roots, or the CA of `OTEL_EXPORTER_OTLP_CERTIFICATE` instead; optional
//! client certificate. rustls with the ring provider (no C toolchain needed to build).

use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::export::config::TlsFiles;
use crate::{Error, Result};

/// Certificates in a PEM bundle.
pub fn certificates(pem: &[u8]) -> std::result::Result<Vec<CertificateDer<'static>>, rustls_pki_types::pem::Error> {
    CertificateDer::pem_slice_iter(pem).collect()
}

fn tls_err(reason: String) -> Error {
    Error::Config { what: "OTEL_EXPORTER_OTLP_CERTIFICATE", value: "(TLS setup)".into(), reason }
}

pub fn client_config(tls: &TlsFiles) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    match &tls.ca_pem {
        Some(pem) => {
            for cert in certificates(pem).map_err(|e| tls_err(format!("cannot parse the CA bundle: {e}")))? {
                roots.add(cert).map_err(|e| tls_err(format!("unusable CA certificate: {e}")))?;
            }
        }
        None => {
            // Unreadable system certificates are skipped, as every TLS client does; an empty store
            // then fails the handshake, which is logged and counted like any export failure.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .with_root_certificates(roots);
    match &tls.client_identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert_pem, key_pem)) => {
            let what = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE";
            let chain = certificates(cert_pem).map_err(|e| Error::Config {
                what,
                value: "(client certificate)".into(),
                reason: format!("cannot parse PEM: {e}"),
            })?;
            let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| Error::Config {
                what: "OTEL_EXPORTER_OTLP_CLIENT_KEY",
                value: "(client key)".into(),
                reason: format!("no PEM private key: {e}"),
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| Error::Config {
                what,
                value: "(client certificate)".into(),
                reason: e.to_string(),
            })
        }
    }
}
