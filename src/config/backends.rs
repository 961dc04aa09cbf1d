//! The `backends:` keys of the config, and how a model names its backends. Part of `config.rs`,
//! split out by concept.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Secret, Validator};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) name: String,
    url: String,
    #[serde(default)]
    api_key_env: Option<String>,
    #[serde(default = "yes")]
    inject_usage: bool,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default = "default_connect_ms")]
    connect_timeout_ms: u64,
    #[serde(default = "default_header_ms")]
    header_timeout_ms: u64,
    #[serde(default = "default_idle_ms")]
    idle_timeout_ms: u64,
    #[serde(default = "default_eject_after")]
    eject_after_failures: u32,
    #[serde(default = "default_eject_ms")]
    eject_cooldown_ms: u64,
}

pub(super) fn default_eject_after() -> u32 {
    2
}
pub(super) fn default_eject_ms() -> u64 {
    10_000
}

pub(super) fn yes() -> bool {
    true
}
pub(super) fn default_connect_ms() -> u64 {
    5_000
}
pub(super) fn default_header_ms() -> u64 {
    120_000
}
pub(super) fn default_idle_ms() -> u64 {
    60_000
}

/// One of a model's backends: a name, or `{name, weight}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawBackendRef {
    Name(String),
    Weighted(RawWeighted),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWeighted {
    pub(super) name: String,
    #[serde(default = "one")]
    pub(super) weight: u32,
}

pub(super) fn one() -> u32 {
    1
}

#[derive(Debug, Clone)]
pub struct Backend {
    pub name: String,
    /// `scheme://authority` of the backend.
    pub origin: http::uri::Uri,
    /// A path prefix to put before the client's path, without a trailing slash (may be empty).
    pub path_prefix: String,
    pub api_key: Option<Secret>,
    pub inject_usage: bool,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// Consecutive failures before the backend is taken out of rotation.
    pub eject_after_failures: u32,
    /// How long an ejected backend stays out before traffic probes it again.
    pub eject_cooldown: Duration,
}

/// A model's backend and its share of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightedBackend {
    /// Index into `Config::backends`.
    pub index: usize,
    pub weight: u32,
}

impl Validator<'_> {
    pub(super) fn backend(
        &mut self,
        path: &str,
        b: RawBackend,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Backend> {
        if b.name.trim().is_empty() {
            self.problem(format!("{path}.name"), "must not be empty");
        }
        let uri: Option<http::Uri> = b.url.parse().ok();
        let parts = uri.and_then(|u| {
            let scheme = u.scheme_str()?.to_ascii_lowercase();
            let authority = u.authority()?.clone();
            (scheme == "http" || scheme == "https").then_some((
                scheme,
                authority,
                u.path().to_string(),
                u.query().is_some(),
            ))
        });
        let Some((scheme, authority, path_part, has_query)) = parts else {
            self.problem(format!("{path}.url"), format!("`{}` is not an http:// or https:// URL with a host", b.url));
            return None;
        };
        if has_query {
            self.problem(format!("{path}.url"), "must not carry a query string");
        }
        let origin = http::Uri::builder().scheme(scheme.as_str()).authority(authority).path_and_query("/").build();
        let Ok(origin) = origin else {
            self.problem(format!("{path}.url"), format!("`{}` is not a valid URL", b.url));
            return None;
        };
        let api_key = b.api_key_env.as_ref().and_then(|var| self.secret(&format!("{path}.api_key_env"), var, env));
        if let Some(ca) = &b.ca_file
            && !ca.is_file()
        {
            self.problem(format!("{path}.ca_file"), format!("file `{}` does not exist", ca.display()));
        }
        Some(Backend {
            name: b.name,
            origin,
            path_prefix: path_part.trim_end_matches('/').to_string(),
            api_key,
            inject_usage: b.inject_usage,
            ca_file: b.ca_file,
            connect_timeout: self.positive_ms(&format!("{path}.connect_timeout_ms"), b.connect_timeout_ms),
            header_timeout: self.positive_ms(&format!("{path}.header_timeout_ms"), b.header_timeout_ms),
            idle_timeout: self.positive_ms(&format!("{path}.idle_timeout_ms"), b.idle_timeout_ms),
            eject_after_failures: b.eject_after_failures.max(1),
            eject_cooldown: Duration::from_millis(b.eject_cooldown_ms),
        })
    }
}
