//! tollgate: a streaming-aware reverse proxy for OpenAI-compatible LLM backends that measures
//! every answer's time (TTFT, time per token, tokens/s) and money (tokens × price) on live traffic.
//!
//! # Layout
//! - [`config`]: YAML → validated [`config::Config`]; every key and every error with its line.
//! - [`app`]: the running process: listeners, simulator, reload, graceful shutdown.
//! - [`server`]: accept loop, TLS, HTTP/1.1 + HTTP/2, draining.
//! - [`proxy`]: the request handler and the routing snapshot.
//! - [`upstream`]: backends' pooled HTTP clients and timeouts.
//! - [`openai`]: the wire shapes tollgate reads (request fields, events, usage, errors).
//! - [`sse`]: the incremental Server-Sent Events parser.
//! - [`meter`]: the per-request accumulator and the metered response body.
//! - [`pricing`]: exact decimal prices and costs.
//! - [`teams`]: client keys (hashed) → teams.
//! - [`ledger`]: the durable per-request spend ledger (SQLite) and `tollgate report`.
//! - [`budget`]: calendar budgets, reservations, projections.
//! - [`accounting`]: per process: budget checks before, ledger + budgets + alerts after a request.
//! - [`alerts`]: budget and SLA alerts delivered to webhooks.
//! - [`sla`]: per-model objectives judged over a rolling window.
//! - [`rules`]: Prometheus rules generated from SLAs and budgets (`tollgate rules`).
//! - [`telemetry`]: one OTLP span per request (GenAI conventions), trace context to backends.
//! - [`metrics`]: every Prometheus metric, lock-free series.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz` on their own port.
//! - [`error`]: OpenAI-shaped errors tollgate answers itself.
//! - [`simulate`]: the built-in OpenAI-compatible simulator.
//! - [`bench`]: `tollgate bench`, the model-choice benchmark (latency, cost, accuracy, SLA, spend projection).

pub mod accounting;
pub mod admin;
pub mod alerts;
pub mod app;
pub mod bench;
pub mod budget;
pub mod config;
pub mod error;
pub mod ledger;
pub mod meter;
pub mod metrics;
pub mod openai;
pub mod pricing;
pub mod proxy;
pub mod rules;
pub mod server;
pub mod simulate;
pub mod sla;
pub mod sse;
pub mod teams;
pub mod telemetry;
pub mod upstream;
