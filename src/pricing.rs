//! The price table's arithmetic: exact decimal prices per million tokens and the cost of one
//! request's usage. Pure: no IO, no clock, no floating point.

use std::str::FromStr;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Deserializer};

/// Token counts of one request, normalized across OpenAI's shapes. `cached_input` is a subset of
/// `input` and `reasoning` a subset of `output`, exactly as the API reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
    pub reasoning: u64,
}

/// A model's prices in USD per one million tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    pub input_per_1m: Decimal,
    pub output_per_1m: Decimal,
    /// Price of cached prompt tokens; when absent they cost the full input price.
    pub cached_input_per_1m: Option<Decimal>,
}

const ONE_MILLION: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);
const NANOS_PER_USD: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);

impl Price {
    /// Cost = (input − cached)·p_in + cached·p_cached + output·p_out. Reasoning tokens are already
    /// inside `output` and are never added on top. Cached tokens above `input` (a backend bug) are
    /// clamped so the cost can never go negative.
    pub fn cost(&self, usage: &Usage) -> Decimal {
        let cached = usage.cached_input.min(usage.input);
        let uncached = usage.input - cached;
        let cached_price = self.cached_input_per_1m.unwrap_or(self.input_per_1m);
        // Checked: absurd prices × absurd counts saturate instead of panicking on the request path.
        let part = |n: u64, p: Decimal| Decimal::from(n).checked_mul(p).unwrap_or(Decimal::MAX);
        part(uncached, self.input_per_1m)
            .checked_add(part(cached, cached_price))
            .and_then(|s| s.checked_add(part(usage.output, self.output_per_1m)))
            .unwrap_or(Decimal::MAX)
            / ONE_MILLION
    }
}

/// Whole nano-dollars (1e-9 USD), rounded half away from zero: the unit metrics accumulate in,
/// so that sums over millions of requests stay exact integers.
pub fn to_nano_usd(cost: Decimal) -> u64 {
    cost.checked_mul(NANOS_PER_USD)
        .map(|n| n.round_dp_with_strategy(0, rust_decimal::RoundingStrategy::MidpointAwayFromZero))
        .and_then(|n| n.to_u64())
        .unwrap_or(u64::MAX)
}

/// Exact decimal text of whole nano-dollars: 2_048_000 → "0.002048".
pub fn nano_usd_text(nanos: u64) -> String {
    Decimal::from_i128_with_scale(i128::from(nanos), 9).normalize().to_string()
}

/// Deserializes a price written as a YAML number or string into an exact decimal. A YAML float is
/// read through its shortest round-trip text, so `0.10` becomes exactly 0.1, not 0.1000000000000000055.
pub fn deserialize_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Float(f64),
        Text(String),
    }
    let text = match Raw::deserialize(d)? {
        Raw::Int(i) => i.to_string(),
        Raw::Float(f) if f.is_finite() => f.to_string(),
        Raw::Float(_) => return Err(serde::de::Error::custom("a price must be a finite number")),
        Raw::Text(s) => s,
    };
    Decimal::from_str(text.trim())
        .map_err(|e| serde::de::Error::custom(format!("`{text}` is not a decimal number: {e}")))
}

/// The optional form of [`deserialize_decimal`].
pub fn deserialize_opt_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    deserialize_decimal(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap_or_default()
    }

    fn price(i: &str, o: &str, c: Option<&str>) -> Price {
        Price { input_per_1m: dec(i), output_per_1m: dec(o), cached_input_per_1m: c.map(dec) }
    }

    fn check(p: &Price, input: u64, output: u64, cached: u64, expect: &str) {
        let u = Usage { input, output, cached_input: cached, reasoning: 0 };
        assert_eq!(p.cost(&u), dec(expect), "{u:?}");
    }

    #[test]
    fn cost_is_exact() {
        let p = price("0.10", "0.40", Some("0.05"));
        check(&p, 16, 24, 0, "0.0000112");
        check(&p, 1_000_000, 1_000_000, 0, "0.50");
        check(&p, 1_000_000, 0, 400_000, "0.08");
        // Cached above input is clamped: never negative, never more than all-cached.
        check(&p, 10, 0, 50, "0.0000005");
        // Without a cached price, cached tokens cost the input price.
        check(&price("3", "15", None), 1000, 100, 500, "0.0045");
        check(&price("0", "0", None), 5, 5, 0, "0");
    }

    #[test]
    fn nano_dollars_print_exactly() {
        assert_eq!(nano_usd_text(2_048_000), "0.002048");
        assert_eq!(nano_usd_text(0), "0");
        assert_eq!(nano_usd_text(12_500_000_000), "12.5");
    }

    #[test]
    fn nano_dollars_round_half_away() {
        assert_eq!(to_nano_usd(dec("0.0000112")), 11_200);
        assert_eq!(to_nano_usd(dec("0.0000000005")), 1);
        assert_eq!(to_nano_usd(dec("0.0000000004")), 0);
        assert_eq!(to_nano_usd(dec("12.5")), 12_500_000_000);
    }

    #[test]
    fn decimals_from_yaml_numbers_are_exact() {
        #[derive(Deserialize)]
        struct P {
            #[serde(deserialize_with = "deserialize_decimal")]
            p: Decimal,
        }
        for (text, expect) in [("p: 0.10", "0.1"), ("p: 3", "3"), ("p: '0.075'", "0.075"), ("p: 1e-7", "0.0000001")] {
            let parsed: P = serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parsed.p, dec(expect), "{text}");
        }
        assert!(serde_yaml_ng::from_str::<P>("p: abc").is_err());
        assert!(serde_yaml_ng::from_str::<P>("p: .inf").is_err());
    }
}
