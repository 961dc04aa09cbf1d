//! Listeners: accept loop with TCP_NODELAY, optional TLS (rustls, ALPN h2 + http/1.1), HTTP/1.1
//! and HTTP/2 (h2c by prior knowledge, or ALPN) on one port, slowloris header timeouts, and
//! graceful shutdown that drains in-flight responses under a deadline.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::meter::body::BoxError;

/// Connection-level settings of one listener.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Time a client has to send complete request headers (HTTP/1.1) or finish a TLS handshake.
    pub header_read_timeout: Duration,
    /// How long in-flight responses may take to finish after shutdown starts.
    pub drain_timeout: Duration,
}

/// Loads a certificate chain and private key (PEM) into a TLS acceptor offering h2 and http/1.1.
pub fn tls_acceptor(cert_file: &Path, key_file: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| anyhow::anyhow!("tls.cert_file {}: {e}", cert_file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("tls.cert_file {}: {e}", cert_file.display()))?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| anyhow::anyhow!("tls.key_file {}: {e}", key_file.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// How long responses cut at the drain deadline get to send their closing error event.
const CUT_GRACE: Duration = Duration::from_secs(2);

/// Serves `handler` on `listener` until `shutdown` turns true, then drains: in-flight responses get
/// `drain_timeout`; then `at_deadline` runs (it tells streams to end with an error event), and what
/// is still open after a short grace is dropped.
pub async fn serve<H, Fut, B>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    opts: ServeOptions,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
    at_deadline: impl FnOnce(),
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(opts.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    // Tokens must leave as soon as they are written: no Nagle delay.
                    let _ = stream.set_nodelay(true);
                    let watcher = graceful.watcher();
                    let builder = builder.clone();
                    let tls = tls.clone();
                    let handler = handler.clone();
                    let handshake_timeout = opts.header_read_timeout;
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| {
                            let fut = handler(req);
                            async move { Ok::<_, Infallible>(fut.await) }
                        });
                        let result = match tls {
                            None => watcher.watch(builder.serve_connection(TokioIo::new(stream), svc).into_owned()).await,
                            Some(acceptor) => match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => watcher.watch(builder.serve_connection(TokioIo::new(tls), svc).into_owned()).await,
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => return,
                            },
                        };
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
        }
    }
    drop(listener);
    let drained = graceful.shutdown();
    tokio::pin!(drained);
    if tokio::time::timeout(opts.drain_timeout, drained.as_mut()).await.is_err() {
        tracing::warn!(
            drain_timeout_ms = opts.drain_timeout.as_millis() as u64,
            "drain deadline passed: ending the streams still open"
        );
        at_deadline();
        let _ = tokio::time::timeout(CUT_GRACE, drained).await;
    }
}
