//! Who is spending: a client's API key (the `Authorization: Bearer` it sends) mapped to a team
//! through SHA-256 hashes from the config. Only hashes are ever stored; teams are a bounded label.

use std::collections::HashMap;

use http::HeaderMap;
use http::header::AUTHORIZATION;

/// The team of requests without a known key.
pub const ANONYMOUS: &str = "anonymous";

/// Index into [`Teams::names`]; 0 is always `anonymous`.
pub type TeamId = usize;

/// The key → team table of one config.
#[derive(Debug, Clone, Default)]
pub struct Teams {
    names: Vec<std::sync::Arc<str>>,
    by_hash: HashMap<[u8; 32], TeamId>,
}

/// What a request's key says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    Known(TeamId),
    /// No key, or a key the config does not list.
    Unknown,
}

impl Teams {
    /// Builds the table from (team name, lowercase hex SHA-256 of the key) pairs, already validated.
    pub fn new(clients: &[(String, [u8; 32])]) -> Teams {
        let mut names: Vec<std::sync::Arc<str>> = vec![ANONYMOUS.into()];
        let mut by_hash = HashMap::new();
        for (name, hash) in clients {
            let id = match names.iter().position(|n| n.as_ref() == name.as_str()) {
                Some(id) => id,
                None => {
                    names.push(name.as_str().into());
                    names.len() - 1
                }
            };
            by_hash.insert(*hash, id);
        }
        Teams { names, by_hash }
    }

    /// Team names, indexed by [`TeamId`].
    pub fn names(&self) -> &[std::sync::Arc<str>] {
        &self.names
    }

    pub fn identify(&self, headers: &HeaderMap) -> Identity {
        let key = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        match key {
            Some(k) if !k.is_empty() => {
                self.by_hash.get(&sha256(k.as_bytes())).map_or(Identity::Unknown, |id| Identity::Known(*id))
            }
            _ => Identity::Unknown,
        }
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Parses 64 hex digits.
pub fn parse_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, auth.parse().unwrap_or_else(|_| http::HeaderValue::from_static("")));
        h
    }

    #[test]
    fn keys_map_to_teams_by_hash() {
        // sha256("sk-search") computed independently: `printf sk-search | sha256sum`.
        let real = sha256(b"sk-search");
        assert_eq!(parse_sha256_hex("b095adcc724f4f8a1b85094a159f0164bfe8a34524859411dbf0514747a71c06"), Some(real));
        let teams = Teams::new(&[
            ("search".into(), real),
            ("ads".into(), sha256(b"sk-ads")),
            ("search".into(), sha256(b"sk-search-2")),
        ]);
        assert_eq!(teams.names().iter().map(|n| n.as_ref()).collect::<Vec<_>>(), ["anonymous", "search", "ads"]);
        assert_eq!(teams.identify(&headers("Bearer sk-search")), Identity::Known(1));
        assert_eq!(teams.identify(&headers("Bearer sk-search-2")), Identity::Known(1));
        assert_eq!(teams.identify(&headers("Bearer sk-ads")), Identity::Known(2));
        assert_eq!(teams.identify(&headers("Bearer sk-other")), Identity::Unknown);
        assert_eq!(teams.identify(&headers("Basic abc")), Identity::Unknown);
        assert_eq!(teams.identify(&HeaderMap::new()), Identity::Unknown);
    }

    #[test]
    fn hex_parsing() {
        assert_eq!(parse_sha256_hex(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(parse_sha256_hex("abc"), None);
        assert_eq!(parse_sha256_hex(&"zz".repeat(32)), None);
    }
}
