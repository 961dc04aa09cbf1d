//! `tollgate bench` end to end on loopback: against the built-in simulator (figures, costs and
//! concurrency match its configuration), through a running proxy, with bad inputs; the
//! projection arithmetic; the JSON report against its documented schema; the HTML report in
//! headless Chromium.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tollgate::bench::project::exact_usd;
use tollgate::bench::report::{ModelReport, Report};
use tollgate::bench::schema::Schema;
use tollgate::bench::{self, Args, Outcome};
use tollgate::pricing::{Price, Usage};
use tollgate::simulate::{self, SimModel, Simulator};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

fn args(list: &[&str]) -> Args {
    Cli::try_parse_from(std::iter::once("bench").chain(list.iter().copied())).unwrap_or_else(|e| panic!("{e}")).args
}

fn sim_model(name: &str, ttft_ms: u64, tps: f64, accuracy: f64) -> SimModel {
    SimModel {
        name: name.into(),
        ttft: Duration::from_millis(ttft_ms),
        tokens_per_second: tps,
        output_tokens: 50,
        jitter_ratio: 0.0,
        accuracy,
    }
}

/// A simulator served on an ephemeral loopback port.
async fn start_sim(models: Vec<SimModel>) -> (Arc<Simulator>, SocketAddr) {
    let sim = Arc::new(Simulator::new(models, 1));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(simulate::serve(listener, sim.clone(), std::future::pending()));
    (sim, addr)
}

/// A config with the simulator at `sim` (its listen address is taken, so the bench uses it),
/// one backend there, and `models` (YAML list items).
fn sim_config(sim: SocketAddr, models: &str, sim_models: &[&str], extra: &str) -> String {
    let listed: Vec<String> = sim_models
        .iter()
        .map(|m| format!("    - {{name: {m}, ttft_ms: 1, tokens_per_second: 1000, output_tokens: 1}}\n"))
        .collect();
    format!(
        "version: 1\nlisten: \"127.0.0.1:0\"\nadmin_listen: \"127.0.0.1:0\"\nbackends:\n  - name: sim\n    url: \"http://{sim}\"\n\
         models:\n{models}{extra}simulator:\n  listen: \"{sim}\"\n  models:\n{}",
        listed.concat()
    )
}

fn priced(name: &str, input: &str, output: &str) -> String {
    format!(
        "  - name: {name}\n    backend: sim\n    price: {{input_per_1m_usd: {input}, output_per_1m_usd: {output}}}\n"
    )
}

/// Four prompts: two scored (with example answers of 1 and 2 words), two not.
const PROMPTS: &str = r#"
- {id: capital, prompt: "Capital of France?", max_tokens: 10, expect: {contains: Paris}}
- {id: json, prompt: "Ada as JSON", max_tokens: 10, expect: {json_schema: {type: object, required: [name]}, example: '{"name": "Ada"}'}}
- {id: story, prompt: "Tell a story", max_tokens: 10}
- id: chat
  messages: [{role: system, content: "Be brief."}, {role: user, content: "Hello there"}]
  max_tokens: 10
"#;

fn out_dir() -> PathBuf {
    support::temp_file("x", "").parent().unwrap().join("report")
}

async fn bench_with(config: &str, prompts: &str, extra: &[&str]) -> anyhow::Result<Outcome> {
    let config = support::temp_file("config.yaml", config);
    let prompts = support::temp_file("prompts.yaml", prompts);
    let out = out_dir();
    let mut list = vec!["--config", config.to_str().unwrap(), "--prompts", prompts.to_str().unwrap()];
    list.extend(["--out", out.to_str().unwrap(), "--quiet"]);
    list.extend(extra);
    bench::run(&args(&list)).await
}

fn model<'a>(r: &'a Report, name: &str) -> &'a ModelReport {
    r.models.iter().find(|m| m.name == name).unwrap()
}

fn near(observed: Option<f64>, expected: f64, low: f64, high: f64, what: &str) {
    let o = observed.unwrap_or_else(|| panic!("{what}: no value"));
    assert!(
        o >= expected - low && o <= expected + high,
        "{what}: {o} not within [{}, {}]",
        expected - low,
        expected + high
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_costs_and_accuracy_match_the_simulator() {
    // big: TTFT 200 ms, 50 tokens/s (20 ms a token), always right; small: 50 ms, 200 tokens/s, never right.
    let (sim, addr) = start_sim(vec![sim_model("big", 200, 50.0, 1.0), sim_model("small", 50, 200.0, 0.0)]).await;
    let models = priced("big", "3", "15") + &priced("small", "0.5", "1.5");
    let config = sim_config(addr, &models, &["big", "small"], "");
    let outcome = bench_with(&config, PROMPTS, &["--concurrency", "1,4", "--requests", "8"]).await.unwrap();
    assert!(outcome.simulator.is_none(), "the address was taken: the bench must use the running simulator");
    let r = &outcome.report;
    assert_eq!(sim.requests_for("big") + sim.requests_for("small"), 32);

    // Exact expected tokens and cost per prompt, from the simulator's own prompt-token rule.
    let set = tollgate::bench::prompts::parse(PROMPTS, "p", false).unwrap();
    let input: Vec<u64> =
        set.prompts.iter().map(|p| u64::from(simulate::prompt_tokens(&json!({"messages": p.messages})))).collect();
    for (name, right, ttft, tpot, price) in
        [("big", true, 200.0, 20.0, ("3", "15")), ("small", false, 50.0, 5.0, ("0.5", "1.5"))]
    {
        let m = model(r, name);
        assert!(m.simulated, "{name}");
        let price = Price {
            input_per_1m: Decimal::from_str(price.0).unwrap(),
            output_per_1m: Decimal::from_str(price.1).unwrap(),
            cached_input_per_1m: None,
        };
        // Right answers are the example's word tokens (`Paris`; `{"name":` + ` "Ada"}`); everything
        // else is 10 filler tokens.
        let output = |i: usize| match (right, i) {
            (true, 0) => 1,
            (true, 1) => 2,
            _ => 10,
        };
        for run in &m.runs {
            let f = &run.figures;
            assert_eq!((f.requests, f.ok, f.errors), (8, 8, 0), "{name} c={}", run.concurrency);
            assert_eq!(run.peak_in_flight, run.concurrency, "{name}");
            assert_eq!(f.usage_estimated_requests, 0);
            // Each prompt twice (round-robin over 4 prompts, 8 requests).
            let tokens_in: u64 = input.iter().sum::<u64>() * 2;
            let tokens_out: u64 = (0..4).map(output).sum::<u64>() * 2;
            assert_eq!((f.input_tokens, f.output_tokens), (tokens_in, tokens_out), "{name}");
            let cost: Decimal = (0..4)
                .map(|i| {
                    price.cost(&Usage { input: input[i], output: output(i), ..Usage::default() }) * Decimal::from(2)
                })
                .sum();
            assert_eq!(f.cost_usd, Some(cost), "{name}");
            assert_eq!(f.cost_per_request_usd, Some(cost / Decimal::from(8)));
            assert_eq!(exact_usd(f.cost_per_request_usd.unwrap()), exact_usd(cost / Decimal::from(8)));
            // Timing: the client sees the configured figures plus loopback and scheduling. A late
            // first token shortens the measured decode (the simulator keeps its schedule), so
            // the decode figures get a tolerance both ways.
            near(f.ttft_ms.p50, ttft, 1.0, 60.0, "ttft p50");
            near(f.tpot_ms.p50, tpot, tpot * 0.25, 4.0, "tpot p50");
            let tps = 1000.0 / tpot;
            near(f.output_tokens_per_second_per_request.p50, tps, tps * 0.25, tps * 0.25, "tps");
            assert_eq!(f.scored, 4);
            assert_eq!(f.accuracy, Some(if right { 1.0 } else { 0.0 }), "{name}");
        }
    }
    // Concurrency really reached the upstream: at most 4 at once, and 4 at some point.
    assert_eq!(sim.max_in_flight(), 4);
    assert!(r.recommendation.text.contains("cheapest"), "{}", r.recommendation.text);
    assert_eq!(r.recommendation.model.as_deref(), Some("small"));
    // With a minimum accuracy, only the big model qualifies.
    let outcome = bench_with(&config, PROMPTS, &["--concurrency", "1", "--requests", "4", "--min-accuracy", "90%"])
        .await
        .unwrap();
    assert_eq!(outcome.report.recommendation.model.as_deref(), Some("big"));
    assert_eq!(outcome.files.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_never_overlaps_and_levels_run_that_many_in_flight() {
    for level in [1usize, 3, 6] {
        let (sim, addr) = start_sim(vec![sim_model("m", 30, 500.0, 0.0)]).await;
        let config = sim_config(addr, &priced("m", "1", "1"), &["m"], "");
        let level_text = level.to_string();
        let outcome = bench_with(&config, PROMPTS, &["--concurrency", &level_text, "--requests", "12"]).await.unwrap();
        assert_eq!(sim.max_in_flight(), level, "upstream peak at concurrency {level}");
        assert_eq!(outcome.report.models[0].runs[0].peak_in_flight, level);
        assert_eq!(sim.requests_for("m"), 12);
    }
    // --duration: workers stop starting requests once it has passed.
    let (sim, addr) = start_sim(vec![sim_model("m", 20, 1000.0, 0.0)]).await;
    let config = sim_config(addr, &priced("m", "1", "1"), &["m"], "");
    let outcome = bench_with(&config, PROMPTS, &["--concurrency", "2", "--duration", "300ms"]).await.unwrap();
    let f = &outcome.report.models[0].runs[0].figures;
    assert!(f.requests >= 4 && f.wall_s < 1.0, "{} requests in {}s", f.requests, f.wall_s);
    assert_eq!(sim.requests_for("m"), f.requests);
    assert_eq!(outcome.report.load.requests_per_run, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_for_stated_traffic() {
    // One prompt answered with exactly 10 tokens: $0.10 a request at $10,000 per 1M output
    // tokens, $0.02 at $2,000 (input is free).
    let (_sim, addr) = start_sim(vec![sim_model("a", 1, 1000.0, 0.0), sim_model("b", 1, 1000.0, 0.0)]).await;
    let models = priced("a", "0", "10000") + &priced("b", "0", "2000");
    let config = sim_config(addr, &models, &["a", "b"], "");
    let prompts = "- {id: p, prompt: hi, max_tokens: 10}\n";
    let traffic = ["--concurrency", "1", "--requests", "2", "--traffic", "1000 users x 10 req/day"];
    let r = bench_with(&config, prompts, &traffic).await.unwrap().report;
    assert_eq!((r.traffic.requests_per_day.as_str(), r.traffic.assumed), ("10000", false));
    let p: Vec<(String, String, String, String)> = r
        .projections
        .iter()
        .map(|p| {
            (p.model.clone(), exact_usd(p.cost_per_request_usd), exact_usd(p.per_day_usd), exact_usd(p.per_month_usd))
        })
        .collect();
    assert_eq!(
        p,
        [
            ("a".into(), "0.1".into(), "1000".into(), "30000".into()),
            ("b".into(), "0.02".into(), "200".into(), "6000".into())
        ]
    );
    assert_eq!(r.savings.len(), 1);
    let s = &r.savings[0];
    assert_eq!((s.cheaper.as_str(), s.dearer.as_str()), ("b", "a"));
    assert_eq!(
        (exact_usd(s.per_day_usd), exact_usd(s.per_month_usd), exact_usd(s.per_year_usd)),
        ("800".into(), "24000".into(), "292000".into())
    );
    assert_eq!(s.text, "choosing b over a saves $800.00 per day ($24,000.00 per month, $292,000.00 per year)");
    let text = tollgate::bench::table::terminal(&r);
    assert!(text.contains("Choosing b over a saves $800.00 per day"), "{text}");
    // Without stated traffic, 1000 requests a day are assumed and said so.
    let r = bench_with(&config, prompts, &["--concurrency", "1", "--requests", "1"]).await.unwrap().report;
    assert!(r.traffic.assumed);
    assert!(tollgate::bench::table::terminal(&r).contains("(assumed: set --traffic or --requests-per-day)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scorer_and_input_errors_name_what_is_wrong() {
    let (_sim, addr) = start_sim(vec![sim_model("m", 1, 1000.0, 0.0)]).await;
    let config = sim_config(addr, &priced("m", "1", "1"), &["m"], "");
    for (prompts, message) in [
        ("- {id: bad-re, prompt: x, expect: {regex: 'a(b'}}\n", "prompt `bad-re`: bad regex `a(b`"),
        (
            "- {id: bad-schema, prompt: x, expect: {json_schema: {type: object, patternProperties: {}}}}\n",
            "prompt `bad-schema`: bad json_schema: /patternProperties: keyword `patternProperties` is not supported",
        ),
        (
            "- {id: typo, prompt: x, expect: {json_schema: {type: objekt}}}\n",
            "prompt `typo`: bad json_schema: /type: `\"objekt\"` is not a type",
        ),
        (
            "- {id: wrong-example, prompt: x, expect: {equals: '4', example: five}}\n",
            "prompt `wrong-example`: the example answer \"five\" fails its own scorer",
        ),
        ("prompts: []\n", "the prompt set is empty"),
        ("", "the prompt set is empty"),
    ] {
        let err =
            bench_with(&config, prompts, &[]).await.err().unwrap_or_else(|| panic!("{prompts} must fail")).to_string();
        assert!(err.contains(message), "{prompts}: {err}");
        assert!(err.contains("prompts.yaml"), "the error names the file: {err}");
    }
    let err = bench_with(&config, PROMPTS, &["--models", "m,nope"]).await.err().unwrap().to_string();
    assert_eq!(err, "unknown model `nope`: the config lists m");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_backend_is_reported_and_fails_only_when_asked() {
    let (_sim, addr) = start_sim(vec![sim_model("up", 1, 1000.0, 1.0)]).await;
    let dead = support::free_addr();
    let extra = format!("  - name: dead-backend\n    url: \"http://{dead}\"\n    connect_timeout_ms: 500\n");
    let models = priced("up", "1", "1")
        + "  - name: down\n    backend: dead-backend\n    price: {input_per_1m_usd: 1, output_per_1m_usd: 1}\n";
    // The dead backend goes into the backends list, before `models:`.
    let config = sim_config(addr, &models, &["up"], "").replacen("models:\n", &format!("{extra}models:\n"), 1);
    let list = ["--models", "up,down", "--concurrency", "1,2", "--requests", "3"];
    let outcome = bench_with(&config, PROMPTS, &list).await.unwrap();
    let r = &outcome.report;
    let down = model(r, "down");
    assert!(!down.meets_sla && !down.simulated);
    for run in &down.runs {
        assert_eq!((run.figures.requests, run.figures.errors, run.figures.ok), (3, 3, 0));
        assert!(run.figures.errors_by_kind[0].message.contains("onnect"), "{:?}", run.figures.errors_by_kind);
        assert_eq!(run.figures.cost_per_request_usd, None);
    }
    assert!(model(r, "up").meets_sla);
    assert!(r.sla_failed && !outcome.failed, "without --fail-on-sla the run succeeds");
    assert_eq!(r.recommendation.model.as_deref(), Some("up"));
    assert!(r.recommendation.excluded[0].reason.contains("every request failed"), "{:?}", r.recommendation);
    let text = tollgate::bench::table::terminal(r);
    assert!(text.contains("concurrency 1: every request failed"), "{text}");
    let with_flag = [&list[..], &["--fail-on-sla"]].concat();
    assert!(bench_with(&config, PROMPTS, &with_flag).await.unwrap().failed);

    // The command line: exit 0 without the flag, 2 with it, 1 for an unknown model.
    let config_file = support::temp_file("config.yaml", &config);
    let prompts_file = support::temp_file("prompts.yaml", PROMPTS);
    let run = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.args(["bench", "--config", config_file.to_str().unwrap(), "--prompts", prompts_file.to_str().unwrap()]);
        cmd.args(["--out", out_dir().to_str().unwrap(), "--concurrency", "1", "--requests", "2"]);
        cmd.args(extra).env("TOLLGATE_LOG", "warn");
        cmd.output().unwrap()
    };
    let ok = run(&["--models", "up,down"]);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(stdout.contains("Recommendation\nup: the cheapest model") && stdout.contains("report.html"), "{stdout}");
    assert_eq!(run(&["--models", "up,down", "--fail-on-sla"]).status.code(), Some(2));
    let unknown = run(&["--models", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown model `nope`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_proxy_with_its_server_side_ttft() {
    let (sim, addr) = start_sim(vec![sim_model("m", 100, 500.0, 1.0)]).await;
    let models = priced("m", "1", "2");
    // The proxy's config has no simulator section (the test runs one); the bench's does.
    let proxy_yaml = sim_config(addr, &models, &[], "");
    let proxy_yaml = &proxy_yaml[..proxy_yaml.find("simulator:").unwrap()];
    let running = support::proxy(proxy_yaml).await;
    let config = sim_config(addr, &models, &["m"], "");
    let proxy_url = format!("http://{}", running.proxy_addr);
    let metrics_url = format!("http://{}/metrics", running.admin_addr);
    let list =
        ["--through-proxy", &proxy_url, "--proxy-metrics", &metrics_url, "--concurrency", "1,3", "--requests", "6"];
    let outcome = bench_with(&config, PROMPTS, &list).await.unwrap();
    let r = &outcome.report;
    assert_eq!(r.mode.kind, "through_proxy");
    assert_eq!(sim.requests_for("m"), 12);
    let m = model(r, "m");
    assert!(m.endpoint.starts_with(&proxy_url), "{}", m.endpoint);
    for run in &m.runs {
        let f = &run.figures;
        assert_eq!(f.ok, 6);
        // The expected-answer header crossed the proxy: the simulated model answered right.
        assert_eq!(f.accuracy, Some(1.0));
        assert_eq!(run.proxy_ttft_requests, Some(6));
        let (client, server) = (f.ttft_ms.mean.unwrap(), run.proxy_ttft_ms_mean.unwrap());
        assert!(server >= 99.0 && server <= client + 1.0, "proxy {server} ms vs client {client} ms");
    }
    assert!(tollgate::bench::table::terminal(r).contains("proxy ttft mean"));
    running.shutdown();
}

/// The report of a short simulator run with two models (and a failing third), written to disk.
async fn sample_report() -> (Outcome, PathBuf) {
    let (_sim, addr) = start_sim(vec![sim_model("large", 60, 300.0, 0.9), sim_model("small", 10, 900.0, 0.6)]).await;
    let models = priced("large", "10", "30") + &priced("small", "1", "2");
    let sla = "sla: {ttft_p95_ms: 50, max_error_ratio: 0.1}\n";
    let config = sim_config(addr, &models, &["large", "small"], sla);
    let outcome = bench_with(&config, PROMPTS, &["--concurrency", "1,2,4", "--requests", "8"]).await.unwrap();
    let dir = outcome.files[0].parent().unwrap().to_path_buf();
    (outcome, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_report_follows_its_schema() {
    let (outcome, dir) = sample_report().await;
    let schema_text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/bench-report.schema.json")).unwrap();
    let schema = Schema::compile(serde_json::from_str(&schema_text).unwrap()).unwrap();
    let report: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    schema.validate(&report).unwrap_or_else(|e| panic!("report.json does not follow the schema:\n{}", e.join("\n")));
    // The SLA was judged: `large` misses the 50 ms TTFT p95.
    assert!(!model(&outcome.report, "large").meets_sla);
    assert_eq!(report["models"][0]["runs"][0]["sla"][0]["objective"], "ttft_p95");
    // The schema constrains: a report with a field missing, a bad enum or an extra key fails.
    for (pointer, change) in [("/models/0/runs/0", "drop:ttft_ms"), ("/mode", "kind=sideways"), ("", "extra=1")] {
        let mut bad = report.clone();
        let target = bad.pointer_mut(pointer).unwrap().as_object_mut().unwrap();
        match change.split_once(':').or_else(|| change.split_once('=')) {
            Some(("drop", key)) => {
                target.remove(key);
            }
            Some((key, value)) => {
                target.insert(key.into(), Value::String(value.into()));
            }
            None => unreachable!(),
        }
        assert!(schema.validate(&bad).is_err(), "{pointer} {change} must not validate");
    }
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.starts_with("# tollgate bench: ") && md.contains("| model | conc |"), "{md}");
}

/// Chromium, as Debian installs it.
fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/bin"]) {
            let path = Path::new(dir).join(name);
            if path.is_file() {
                return path;
            }
        }
    }
    panic!(
        "chromium is not installed: run scripts/test (CI installs Debian's `chromium`), or apt-get install chromium"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_html_report_renders_in_headless_chromium() {
    let browser = chromium();
    let (_, dir) = sample_report().await;
    let html = dir.join("report.html");
    let text = std::fs::read_to_string(&html).unwrap();
    assert!(!text.contains(" src=") && !text.contains(" href="), "no external resources");
    let profile = support::temp_file("x", "").parent().unwrap().join("chromium-profile");
    let dom = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(browser)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            .args(["--disable-component-update", "--disable-sync", "--no-first-run"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--dump-dom")
            .arg(format!("file://{}", html.display()))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("chromium did not finish within 90 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut out = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(!dom.contains("id=\"report-error\""), "the page raised a script error:\n{dom}");
    assert!(dom.contains("data-charts-rendered=\"5\""), "chromium laid out fewer than 5 charts:\n{dom}");
    for id in ["ttft-cdf", "accuracy-cost", "accuracy-latency", "throughput", "ttft-p95"] {
        assert!(dom.contains(&format!("<svg class=\"chart\" id=\"{id}\"")), "chart {id} missing");
    }
    assert!(dom.matches("<path d=\"M").count() >= 6 + 2 + 2, "curves are drawn");
    assert!(dom.contains("Recommendation: "));
}
