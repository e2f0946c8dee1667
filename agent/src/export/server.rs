//! The HTTP server for `/metrics`, `/healthz` and `/readyz` (hyper 1, HTTP/1.1 only: that is
//! what Prometheus and kubelet probes speak).

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::Shared;

/// Scrapers and probes are few; this caps what a misbehaving client can make us hold.
const MAX_CONNECTIONS: usize = 64;

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "metrics server cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&req, &shared)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => conn.as_mut().graceful_shutdown(),
            }
            drop(permit);
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

fn handle(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let body = shared.render_prometheus();
            let gzip = req
                .headers()
                .get(ACCEPT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
            let mut resp =
                Response::builder().status(StatusCode::OK).header(CONTENT_TYPE, super::prometheus::CONTENT_TYPE);
            let body = if gzip {
                let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                match enc.write_all(body.as_bytes()).and_then(|_| enc.finish()) {
                    Ok(gz) => {
                        resp = resp.header(CONTENT_ENCODING, "gzip");
                        gz
                    }
                    Err(_) => body.into_bytes(),
                }
            } else {
                body.into_bytes()
            };
            resp.body(Full::new(Bytes::from(body))).expect("valid response")
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match shared.health.readiness(super::now_unix_ms()) {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
        },
        _ => text(StatusCode::NOT_FOUND, "not found; try /metrics, /healthz or /readyz\n".into()),
    }
}
