//! Configured backends at run time: a pooled keep-alive HTTP/1.1 + HTTP/2 client per backend
//! (rustls with the webpki roots plus an optional custom CA), TCP_NODELAY, and per-phase timeouts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::time::Instant;

use crate::config::Backend;
use crate::metrics::{BackendSeries, UpstreamErrorKind};

/// A backend ready to take requests.
#[derive(Debug)]
pub struct Upstream {
    pub cfg: Backend,
    pub series: Arc<BackendSeries>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    health: Health,
}

/// Passive health: consecutive failures eject the backend for a cool-down; after it, the next
/// request probes it (and is retried elsewhere if the probe fails), and a success restores it.
#[derive(Debug)]
struct Health {
    epoch: Instant,
    failures: AtomicU32,
    /// Milliseconds after `epoch` until which the backend is out of rotation (0: in rotation).
    ejected_until_ms: AtomicU64,
}

/// The pooled HTTP/1.1 + HTTP/2 client tollgate makes outgoing calls with: rustls with the webpki
/// roots plus the CAs in `ca_file`, TCP_NODELAY, keep-alive, a connect timeout.
pub fn http_client(
    ca_file: Option<&std::path::Path>,
    connect_timeout: Duration,
) -> anyhow::Result<Client<HttpsConnector<HttpConnector>, Full<Bytes>>> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(ca) = ca_file {
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| anyhow::anyhow!("cannot read ca_file {}: {e}", ca.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| anyhow::anyhow!("bad certificate in {}: {e}", ca.display()))?;
            roots.add(cert).map_err(|e| anyhow::anyhow!("unusable CA in {}: {e}", ca.display()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .timer(TokioTimer::new())
        .build(https))
}

/// Why a request got no response headers from its backend.
#[derive(Debug)]
pub enum SendError {
    /// Connection refused, DNS, TLS or the connection died before headers.
    Connect { kind: UpstreamErrorKind, detail: String },
    /// No response headers within the backend's `header_timeout_ms`.
    HeaderTimeout,
}

impl Upstream {
    pub fn new(cfg: Backend, series: Arc<BackendSeries>) -> anyhow::Result<Upstream> {
        let client = http_client(cfg.ca_file.as_deref(), cfg.connect_timeout)
            .map_err(|e| anyhow::anyhow!("backend `{}`: {e}", cfg.name))?;
        let health = Health { epoch: Instant::now(), failures: AtomicU32::new(0), ejected_until_ms: AtomicU64::new(0) };
        Ok(Upstream { cfg, series, client, health })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.health.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the backend is in rotation (not ejected, or its cool-down is over).
    pub fn available(&self) -> bool {
        self.health.ejected_until_ms.load(Relaxed) <= self.now_ms()
    }

    /// A request got a usable answer: the backend is healthy.
    pub fn on_success(&self) {
        if self.health.failures.swap(0, Relaxed) > 0 || self.health.ejected_until_ms.load(Relaxed) > 0 {
            self.health.ejected_until_ms.store(0, Relaxed);
            self.series.set_up(true);
        }
    }

    /// A request failed before any response byte (refused, 502/503, 429). Enough of these in a
    /// row eject the backend for the cool-down, or for `retry_after` when the backend said so.
    pub fn on_failure(&self, retry_after: Option<Duration>) {
        let failures = self.health.failures.fetch_add(1, Relaxed) + 1;
        if failures >= self.cfg.eject_after_failures || retry_after.is_some() {
            let cooldown = retry_after.map_or(self.cfg.eject_cooldown, |r| r.max(self.cfg.eject_cooldown));
            let until = self.now_ms().saturating_add(u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX));
            self.health.ejected_until_ms.store(until.max(1), Relaxed);
            self.series.set_up(false);
            tracing::warn!(backend = %self.cfg.name, failures, cooldown_ms = cooldown.as_millis() as u64, "backend ejected");
        }
    }

    /// The backend URI for a client's path and query: origin + configured prefix + path. A prefix
    /// ending in `/v1` is not doubled when the client's path starts with `/v1` too.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let prefix = self.cfg.path_prefix.as_str();
        let rest = match prefix.strip_suffix("/v1") {
            Some(_) if path_and_query.starts_with("/v1/") => &path_and_query[3..],
            _ => path_and_query,
        };
        let mut parts = self.cfg.origin.clone().into_parts();
        parts.path_and_query = Some(format!("{prefix}{rest}").parse()?);
        Ok(Uri::from_parts(parts)?)
    }

    /// Sends a request and waits for the response headers under the header timeout.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, SendError> {
        match tokio::time::timeout(self.cfg.header_timeout, self.client.request(req)).await {
            Err(_) => Err(SendError::HeaderTimeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                let kind = if source_chain_has::<rustls::Error>(&e) {
                    UpstreamErrorKind::Tls
                } else {
                    UpstreamErrorKind::Connect
                };
                Err(SendError::Connect { kind, detail: error_chain(&e) })
            }
        }
    }
}

fn source_chain_has<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.is::<T>() {
        return true;
    }
    // `io::Error::source` skips the error it wraps (it returns that error's source), so wrapped
    // errors are looked into explicitly.
    if let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref())
        && source_chain_has::<T>(inner)
    {
        return true;
    }
    e.source().is_some_and(source_chain_has::<T>)
}

/// "a: b: c" from an error and its sources, for logs (never for client bodies: it can name hosts).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        out.push_str(": ");
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn upstream(url: &str) -> Upstream {
        let yaml = format!("version: 1\nbackends: [{{name: b, url: \"{url}\"}}]\nmodels: [{{name: m, backend: b}}]\n");
        let cfg = Config::parse(&yaml, "t.yaml", &|_| None).unwrap_or_else(|e| panic!("{e}"));
        let metrics = crate::metrics::Metrics::new();
        let b = cfg.backends[0].clone();
        Upstream::new(b, metrics.backend_series("b")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn uris_join_prefix_without_doubling_v1() {
        let check = |base: &str, path: &str, expect: &str| {
            assert_eq!(
                upstream(base).uri_for(path).map(|u| u.to_string()).ok().as_deref(),
                Some(expect),
                "{base} + {path}"
            );
        };
        check("http://127.0.0.1:8000", "/v1/chat/completions", "http://127.0.0.1:8000/v1/chat/completions");
        check("http://127.0.0.1:8000/", "/v1/models?x=1", "http://127.0.0.1:8000/v1/models?x=1");
        check("https://api.example.com/v1", "/v1/chat/completions", "https://api.example.com/v1/chat/completions");
        check("https://gw.example.com/openai/", "/v1/embeddings", "https://gw.example.com/openai/v1/embeddings");
    }
}
