//! The `simulator:` keys of the config: the built-in simulator's address and models. Part of
//! `config.rs`, split out by concept.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::Validator;
use crate::simulate::SimModel;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSimulator {
    listen: String,
    #[serde(default)]
    seed: u64,
    models: Vec<RawSimModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSimModel {
    name: String,
    ttft_ms: u64,
    tokens_per_second: f64,
    output_tokens: u32,
    #[serde(default)]
    jitter_ratio: f64,
    #[serde(default)]
    accuracy: f64,
}

#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    pub listen: SocketAddr,
    pub seed: u64,
    pub models: Vec<SimModel>,
}

impl Validator<'_> {
    pub(super) fn simulator(&mut self, s: RawSimulator) -> Option<SimulatorConfig> {
        let listen = self.addr("simulator.listen", &s.listen);
        let mut models: Vec<SimModel> = Vec::new();
        for (i, m) in s.models.into_iter().enumerate() {
            let path = format!("simulator.models[{i}]");
            if models.iter().any(|x| x.name == m.name) {
                self.problem(format!("{path}.name"), format!("simulated model `{}` is defined twice", m.name));
            }
            if !(m.tokens_per_second.is_finite() && m.tokens_per_second > 0.0) {
                self.problem(format!("{path}.tokens_per_second"), "must be a number greater than 0");
            }
            if m.output_tokens == 0 {
                self.problem(format!("{path}.output_tokens"), "must be at least 1");
            }
            if !(0.0..=1.0).contains(&m.accuracy) {
                self.problem(format!("{path}.accuracy"), "must be between 0 and 1");
            }
            if !(0.0..=1.0).contains(&m.jitter_ratio) {
                self.problem(format!("{path}.jitter_ratio"), "must be between 0 and 1");
            }
            models.push(SimModel {
                name: m.name,
                ttft: Duration::from_millis(m.ttft_ms),
                tokens_per_second: m.tokens_per_second,
                output_tokens: m.output_tokens,
                jitter_ratio: m.jitter_ratio,
                accuracy: m.accuracy,
            });
        }
        if models.is_empty() {
            self.problem("simulator.models", "list at least one simulated model");
        }
        Some(SimulatorConfig { listen: listen?, seed: s.seed, models })
    }
}
