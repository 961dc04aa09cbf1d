//! Reads a running tollgate's `/metrics` for the server-side view of a `--through-proxy` run: the
//! per-model sum and count of `tollgate_time_to_first_token_seconds`, whose deltas over a run give
//! the proxy's mean TTFT beside the client's.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt as _, Full};

use super::run::HttpClient;

/// The histogram the proxy exports (named in `metrics/export.rs`).
const TTFT: &str = "tollgate_time_to_first_token_seconds";

/// Per model: the TTFT histogram's (sum in seconds, count), summed over backends.
pub type TtftTotals = BTreeMap<String, (f64, u64)>;

/// Scrapes `url`, with a bearer token when the admin port wants one.
pub async fn scrape(client: &HttpClient, url: &Uri, token: Option<&str>) -> Result<TtftTotals, String> {
    let mut req = Request::get(url.clone());
    if let Some(t) = token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok()) {
        req = req.header(AUTHORIZATION, t);
    }
    let req = req.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| format!("{url}: {e}"))?.to_bytes();
    if !status.is_success() {
        return Err(format!("{url}: HTTP {}", status.as_u16()));
    }
    Ok(parse_ttft(&String::from_utf8_lossy(&body)))
}

/// The TTFT sums and counts per model in a Prometheus text exposition.
pub fn parse_ttft(text: &str) -> TtftTotals {
    let mut out = TtftTotals::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(TTFT) else { continue };
        let (is_sum, rest) = match (rest.strip_prefix("_sum{"), rest.strip_prefix("_count{")) {
            (Some(r), _) => (true, r),
            (_, Some(r)) => (false, r),
            _ => continue,
        };
        let Some((model, value)) = labels_then_value(rest, "model") else { continue };
        let entry = out.entry(model).or_insert((0.0, 0));
        if is_sum {
            entry.0 += value;
        } else {
            entry.1 += value as u64;
        }
    }
    out
}

/// From `k="v",...} VALUE`: the value of label `want` and the sample value.
fn labels_then_value(rest: &str, want: &str) -> Option<(String, f64)> {
    let mut chars = rest.char_indices();
    let mut found = None;
    loop {
        // A label name up to `="`, or the closing brace.
        let mut name = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => break Some(i),
                '=' => break None,
                ',' | ' ' => {}
                c => name.push(c),
            }
        };
        if let Some(close) = end {
            let value = rest[close + 1..].split_whitespace().next()?.parse().ok()?;
            return Some((found?, value));
        }
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()?.1 {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        if name == want {
            found = Some(value);
        }
    }
}

/// The proxy's mean TTFT in milliseconds over a run, and how many requests it is over.
pub fn mean_ms(before: &TtftTotals, after: &TtftTotals, model: &str) -> Option<(f64, u64)> {
    let (s1, n1) = after.get(model).copied()?;
    let (s0, n0) = before.get(model).copied().unwrap_or((0.0, 0));
    let n = n1.checked_sub(n0).filter(|n| *n > 0)?;
    Some(((s1 - s0) / n as f64 * 1000.0, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_counts_per_model() {
        let text = r#"# HELP tollgate_time_to_first_token_seconds Streams.
# TYPE tollgate_time_to_first_token_seconds histogram
tollgate_time_to_first_token_seconds_bucket{backend="a",model="m",le="0.25"} 3
tollgate_time_to_first_token_seconds_sum{backend="a",model="m"} 0.5
tollgate_time_to_first_token_seconds_count{backend="a",model="m"} 4
tollgate_time_to_first_token_seconds_sum{backend="b",model="m"} 0.25
tollgate_time_to_first_token_seconds_count{backend="b",model="m"} 1
tollgate_time_to_first_token_seconds_sum{model="q\"x",backend="a"} 1.5
tollgate_time_to_first_token_seconds_count{model="q\"x",backend="a"} 3
tollgate_time_per_output_token_seconds_sum{backend="a",model="m"} 9
"#;
        let t = parse_ttft(text);
        assert_eq!(t.get("m"), Some(&(0.75, 5)));
        assert_eq!(t.get("q\"x"), Some(&(1.5, 3)));
        assert_eq!(t.len(), 2);
        let before = parse_ttft(
            "tollgate_time_to_first_token_seconds_sum{model=\"m\"} 0.25\ntollgate_time_to_first_token_seconds_count{model=\"m\"} 1\n",
        );
        assert_eq!(mean_ms(&before, &t, "m"), Some((125.0, 4)));
        assert_eq!(mean_ms(&t, &t, "m"), None);
        assert_eq!(mean_ms(&before, &t, "absent"), None);
    }
}
