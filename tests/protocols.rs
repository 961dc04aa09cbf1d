//! Transport: HTTP/2 cleartext (prior knowledge), TLS with ALPN h2 and http/1.1 downstream, and an
//! HTTPS backend trusted through `ca_file`.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::*;

const TOKENS: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\ndata: [DONE]\n\n";
const REQ: &str = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;

fn stream_upstream() -> Script {
    Script::sse(vec![Step::Send(Bytes::from(TOKENS))])
}

#[tokio::test]
async fn h2c_prior_knowledge() {
    let up = Upstream::start(stream_upstream()).await;
    let proxy = proxy(&config(&up.url(), "", PRICED_MODEL)).await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let req = Request::post(format!("http://{}/v1/chat/completions", proxy.proxy_addr))
        .body(Full::new(Bytes::from(REQ)))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, Bytes::from(TOKENS));
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tollgate-{tag}-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for `localhost`, written as PEM files.
fn certificate(dir: &TempDir) -> (PathBuf, PathBuf, rustls::pki_types::CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.0.join("cert.pem");
    let key = dir.0.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key, ck.cert.der().clone())
}

fn tls_client(
    root: rustls::pki_types::CertificateDer<'static>,
    h2: bool,
) -> Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Full<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only();
    let https = if h2 { builder.enable_http2().build() } else { builder.enable_http1().build() };
    let mut b = Client::builder(TokioExecutor::new());
    if h2 {
        b.http2_only(true);
    }
    b.build(https)
}

#[tokio::test]
async fn tls_listener_speaks_h2_and_http1_by_alpn() {
    let dir = TempDir::new("tls");
    let (cert, key, der) = certificate(&dir);
    let up = Upstream::start(stream_upstream()).await;
    let tls = format!("tls:\n  cert_file: {}\n  key_file: {}\n", cert.display(), key.display());
    let proxy = proxy(&config(&up.url(), "", PRICED_MODEL).replace("backends:", &format!("{tls}backends:"))).await;
    let url = format!("https://localhost:{}/v1/chat/completions", proxy.proxy_addr.port());
    for (h2, version) in [(true, Version::HTTP_2), (false, Version::HTTP_11)] {
        let req = Request::post(&url).body(Full::new(Bytes::from(REQ))).unwrap();
        let resp = tls_client(der.clone(), h2).request(req).await.unwrap();
        assert_eq!(resp.version(), version);
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), Bytes::from(TOKENS));
    }
}

#[tokio::test]
async fn https_backend_with_a_custom_ca() {
    // The backend is a second tollgate listening with TLS, in front of the scripted upstream.
    let dir = TempDir::new("ca");
    let (cert, key, _) = certificate(&dir);
    let up = Upstream::start(stream_upstream()).await;
    let tls = format!("tls:\n  cert_file: {}\n  key_file: {}\n", cert.display(), key.display());
    let inner = proxy(&config(&up.url(), "", PRICED_MODEL).replace("backends:", &format!("{tls}backends:"))).await;
    let outer_url = format!("https://localhost:{}", inner.proxy_addr.port());
    let outer = proxy(&config(&outer_url, &format!("    ca_file: {}\n", cert.display()), PRICED_MODEL)).await;
    let resp = post(outer.proxy_addr, "/v1/chat/completions", REQ).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(text(resp).await, TOKENS);

    // Without the CA the backend's certificate is refused: a 502, counted as a TLS failure.
    let untrusting = proxy(&config(&outer_url, "", PRICED_MODEL)).await;
    let resp = post(untrusting.proxy_addr, "/v1/chat/completions", REQ).await;
    assert_eq!(resp.status(), 502);
    let m = metrics_until(&untrusting, |m| m.contains("tollgate_upstream_errors_total")).await;
    assert_eq!(sample(&m, "tollgate_upstream_errors_total{backend=\"up\",kind=\"tls\"}"), 1.0, "{m}");
}
