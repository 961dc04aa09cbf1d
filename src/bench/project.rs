//! Budget projection: stated traffic ("1000 users x 10 req/day") times the measured cost per
//! request, per day, month (30 days) and year (365 days), and what choosing one model over
//! another saves. Exact decimals throughout; no IO.

use std::str::FromStr;

use rust_decimal::Decimal;

use crate::pricing::{nano_usd_text, to_nano_usd};

/// Days in a projected month. A fixed 30 keeps "per month" comparable across months.
pub const DAYS_PER_MONTH: u32 = 30;
/// Days in a projected year.
pub const DAYS_PER_YEAR: u32 = 365;

/// Traffic to project costs for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traffic {
    /// As the user wrote it, for the report.
    pub text: String,
    pub requests_per_day: Decimal,
}

impl Traffic {
    pub fn per_day(requests_per_day: u64) -> Traffic {
        Traffic { text: format!("{requests_per_day} req/day"), requests_per_day: Decimal::from(requests_per_day) }
    }
}

/// Parses `[N users x] M req/UNIT` where UNIT is second, minute, hour, day, week or month (30
/// days); `x` may also be `×` or `*`, `req` may be `requests`, `/` may be `per`, and numbers may
/// carry `,` or `_` separators: "1000 users x 10 req/day", "2,500 requests per hour".
pub fn parse_traffic(text: &str) -> Result<Traffic, String> {
    let pattern = r"^\s*(?:([0-9][0-9,_]*(?:\.[0-9]+)?)\s*users?\s*[x×*]\s*)?([0-9][0-9,_]*(?:\.[0-9]+)?)\s*(?:req|reqs|requests?)\s*(?:/|per)\s*(second|sec|s|minute|min|m|hour|h|day|d|week|w|month|mo)\s*$";
    let re = regex::RegexBuilder::new(pattern).case_insensitive(true).build().map_err(|e| e.to_string())?;
    let bad = || format!("`{text}` is not traffic like \"1000 users x 10 req/day\" or \"5000 req/hour\"");
    let caps = re.captures(text).ok_or_else(bad)?;
    let number = |s: &str| Decimal::from_str(&s.replace([',', '_'], "")).map_err(|_| bad());
    let users = caps.get(1).map_or(Ok(Decimal::ONE), |m| number(m.as_str()))?;
    let rate = number(caps.get(2).map_or("", |m| m.as_str()))?;
    let unit = caps.get(3).map_or("", |m| m.as_str()).to_ascii_lowercase();
    // Multiplied before divided, so that "7 req/week" is exactly 1 a day.
    let (times, per) = match unit.as_str() {
        "second" | "sec" | "s" => (86_400, 1),
        "minute" | "min" | "m" => (1_440, 1),
        "hour" | "h" => (24, 1),
        "day" | "d" => (1, 1),
        "week" | "w" => (1, 7),
        _ => (1, DAYS_PER_MONTH),
    };
    let requests_per_day = users
        .checked_mul(rate)
        .and_then(|r| r.checked_mul(Decimal::from(times)))
        .and_then(|r| r.checked_div(Decimal::from(per)))
        .ok_or_else(bad)?;
    if requests_per_day.is_zero() {
        return Err(format!("`{text}` is no traffic at all"));
    }
    Ok(Traffic { text: text.trim().to_string(), requests_per_day })
}

/// A model's projected spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Projection {
    pub per_request: Decimal,
    pub per_day: Decimal,
    pub per_month: Decimal,
    pub per_year: Decimal,
}

pub fn project(per_request: Decimal, traffic: &Traffic) -> Projection {
    let per_day = per_request.saturating_mul(traffic.requests_per_day);
    Projection {
        per_request,
        per_day,
        per_month: per_day.saturating_mul(Decimal::from(DAYS_PER_MONTH)),
        per_year: per_day.saturating_mul(Decimal::from(DAYS_PER_YEAR)),
    }
}

/// What choosing `cheaper` over `dearer` saves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saving {
    pub cheaper: String,
    pub dearer: String,
    pub per_day: Decimal,
    pub per_month: Decimal,
    pub per_year: Decimal,
}

/// Every model against the most expensive one (ties: the first listed), cheapest first.
pub fn savings(models: &[(String, Projection)]) -> Vec<Saving> {
    let Some((dearer, top)) = models.iter().max_by(|a, b| a.1.per_day.cmp(&b.1.per_day).then(b.0.cmp(&a.0))) else {
        return Vec::new();
    };
    let mut out: Vec<Saving> = models
        .iter()
        .filter(|(name, p)| name != dearer && p.per_day < top.per_day)
        .map(|(name, p)| Saving {
            cheaper: name.clone(),
            dearer: dearer.clone(),
            per_day: top.per_day - p.per_day,
            per_month: top.per_month - p.per_month,
            per_year: top.per_year - p.per_year,
        })
        .collect();
    out.sort_by_key(|s| std::cmp::Reverse(s.per_day));
    out
}

/// Exact decimal text of an amount, to the nano-dollar: what the JSON report carries.
pub fn exact_usd(amount: Decimal) -> String {
    nano_usd_text(to_nano_usd(amount))
}

/// An amount for people: `$24,000.00` from a dollar up, every significant digit below
/// (`$0.000412`).
pub fn usd(amount: Decimal) -> String {
    if amount.abs() < Decimal::ONE {
        return format!("${}", exact_usd(amount));
    }
    let sign = if amount.is_sign_negative() { "-" } else { "" };
    let text = format!("{:.2}", amount.abs().round_dp(2));
    let (whole, frac) = text.split_once('.').unwrap_or((&text, "00"));
    let digits: Vec<char> = whole.chars().collect();
    let mut grouped = String::new();
    for (i, c) in digits.iter().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(*c);
    }
    format!("{sign}${grouped}.{frac}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn traffic() {
        for (text, per_day) in [
            ("1000 users x 10 req/day", "10000"),
            ("1,000 users × 10 requests per day", "10000"),
            ("50 users * 2 req/hour", "2400"),
            ("5000 req/hour", "120000"),
            ("2 req/s", "172800"),
            ("3000 requests/month", "100"),
            ("1 user x 7 req/week", "1"),
            ("  12 REQ/Day ", "12"),
        ] {
            let t = parse_traffic(text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(t.requests_per_day.normalize(), dec(per_day), "{text}");
        }
        for bad in ["", "lots", "10 users", "10 req", "10 req/fortnight", "0 req/day", "-5 req/day"] {
            assert!(parse_traffic(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn projection_and_savings() {
        // The issue's example: 1000 users × 10 requests a day at $0.10 vs $0.02 a request.
        let traffic = parse_traffic("1000 users x 10 req/day").unwrap();
        let a = project(dec("0.10"), &traffic);
        let b = project(dec("0.02"), &traffic);
        assert_eq!((a.per_day, b.per_day), (dec("1000"), dec("200")));
        assert_eq!((a.per_month, a.per_year), (dec("30000"), dec("365000")));
        let s = savings(&[("a".into(), a), ("b".into(), b)]);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].cheaper.as_str(), s[0].dearer.as_str()), ("b", "a"));
        assert_eq!((s[0].per_day, s[0].per_month, s[0].per_year), (dec("800"), dec("24000"), dec("292000")));
        assert_eq!(usd(s[0].per_month), "$24,000.00");
        assert_eq!(exact_usd(s[0].per_month), "24000");

        // Three models: each cheaper one against the dearest; equal costs save nothing.
        let c = project(dec("0.02"), &traffic);
        let s = savings(&[("b".into(), b), ("a".into(), a), ("c".into(), c)]);
        assert_eq!(s.iter().map(|x| x.cheaper.as_str()).collect::<Vec<_>>(), ["b", "c"]);
        assert!(savings(&[("only".into(), a)]).is_empty());
    }

    #[test]
    fn money_text() {
        assert_eq!(usd(dec("0.000412")), "$0.000412");
        assert_eq!(usd(dec("0.0000004126")), "$0.000000413");
        assert_eq!(usd(dec("1234567.891")), "$1,234,567.89");
        assert_eq!(usd(dec("100")), "$100.00");
        assert_eq!(usd(dec("0")), "$0");
    }
}
