//! The shipped operations artifacts against the code: the Grafana dashboards are well formed (stable
//! uid, `${datasource}` everywhere, a unit on every panel, `$__rate_interval` in every range), every
//! query parses as PromQL, and every metric, label and literal label value they name exists in a live
//! scrape of tollgate after real traffic (streams with and without usage, a 5xx, budgets, SLAs). The
//! tollgate configs shipped under `deploy/` load with tollgate's own parser.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr, LabelModifier, VectorSelector};
use promql_parser::util::{ExprVisitor, walk_expr};
use serde_json::Value;
use support::*;

const DASHBOARDS: [(&str, &str); 2] =
    [("tollgate-overview.json", "tollgate-overview"), ("tollgate-model-scorecard.json", "tollgate-model-scorecard")];

/// Stands in for `$__rate_interval` when parsing: a range nobody writes by hand, so a range
/// selector with any other range is one that does not use the variable.
const RATE_INTERVAL: &str = "4321s";

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn dashboards() -> Vec<(String, Value)> {
    DASHBOARDS
        .iter()
        .map(|(file, _)| {
            let path = format!("grafana/dashboards/{file}");
            let v: Value = serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{path}: {e}"));
            (file.to_string(), v)
        })
        .collect()
}

/// Every panel, rows included, with the panels of collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

fn variables(dashboard: &Value) -> &Vec<Value> {
    dashboard["templating"]["list"].as_array().unwrap()
}

fn variable<'a>(dashboard: &'a Value, name: &str) -> &'a Value {
    variables(dashboard).iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no variable `{name}`"))
}

/// The query of a query variable (Grafana stores a string or an object).
fn variable_query(v: &Value) -> String {
    v["query"].as_str().map_or_else(|| v["query"]["query"].as_str().unwrap().to_string(), str::to_string)
}

/// A PromQL query of a dashboard and where it sits.
struct Query {
    at: String,
    expr: String,
}

fn queries(file: &str, dashboard: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr =
                t["expr"].as_str().unwrap_or_else(|| panic!("{file}: `{}` has a target without expr", p["title"]));
            out.push(Query { at: format!("{file}: panel `{}` target {}", p["title"], t["refId"]), expr: expr.into() });
        }
    }
    for a in dashboard["annotations"]["list"].as_array().unwrap() {
        if let Some(expr) = a["expr"].as_str() {
            out.push(Query { at: format!("{file}: annotation `{}`", a["name"]), expr: expr.into() });
        }
    }
    out
}

/// Grafana's variables replaced by values PromQL accepts: multi-value query variables match
/// anything, custom variables take their first option.
fn substitute(dashboard: &Value, expr: &str) -> String {
    let mut s = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__interval", "1m").replace("$__range", "1h");
    for v in variables(dashboard) {
        let name = v["name"].as_str().unwrap();
        let value = match v["type"].as_str().unwrap() {
            "query" => ".*".to_string(),
            "custom" => v["options"][0]["value"].as_str().unwrap().to_string(),
            _ => continue,
        };
        s = s.replace(&format!("${{{name}}}"), &value).replace(&format!("${name}"), &value);
    }
    assert!(!s.contains('$'), "an unknown variable in `{expr}`");
    s
}

/// A label matcher: the label's name, and its value when the matcher is `=`.
type Matcher = (String, Option<String>);

/// What a query refers to.
#[derive(Default)]
struct Refs {
    /// Metric name and label matchers of every selector.
    selectors: Vec<(String, Vec<Matcher>)>,
    ranges: Vec<Duration>,
    /// `by (...)` / `on (...)` labels and the metrics under that aggregation or match.
    groupings: Vec<(Vec<String>, Vec<String>)>,
    subqueries: usize,
}

impl Refs {
    fn of(expr: &Expr) -> Refs {
        let mut r = Refs::default();
        walk_expr(&mut r, expr).unwrap();
        r
    }
    fn names(expr: &Expr) -> Vec<String> {
        Refs::of(expr).selectors.into_iter().map(|(n, _)| n).collect()
    }
    fn selector(&mut self, vs: &VectorSelector) {
        let mut name = vs.name.clone();
        let mut matchers = Vec::new();
        for m in vs.matchers.matchers.iter().chain(vs.matchers.or_matchers.iter().flatten()) {
            if m.name == "__name__" {
                name = Some(m.value.clone());
            } else {
                matchers.push((m.name.clone(), matches!(m.op, MatchOp::Equal).then(|| m.value.clone())));
            }
        }
        self.selectors.push((name.expect("a selector without a metric name"), matchers));
    }
}

fn modifier_labels(m: &LabelModifier) -> Vec<String> {
    match m {
        LabelModifier::Include(l) | LabelModifier::Exclude(l) => l.labels.clone(),
    }
}

impl ExprVisitor for Refs {
    type Error = ();
    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, ()> {
        match expr {
            Expr::VectorSelector(vs) => self.selector(vs),
            Expr::MatrixSelector(ms) => {
                self.selector(&ms.vs);
                self.ranges.push(ms.range);
            }
            Expr::Aggregate(a) => {
                if let Some(m) = &a.modifier {
                    self.groupings.push((modifier_labels(m), Refs::names(&a.expr)));
                }
            }
            Expr::Binary(b) => {
                if let Some(m) = b.modifier.as_ref().and_then(|m| m.matching.as_ref()) {
                    let mut names = Refs::names(&b.lhs);
                    names.extend(Refs::names(&b.rhs));
                    self.groupings.push((modifier_labels(m), names));
                }
            }
            Expr::Subquery(_) => self.subqueries += 1,
            _ => {}
        }
        Ok(true)
    }
}

fn parse(dashboard: &Value, q: &Query) -> Expr {
    parser::parse(&substitute(dashboard, &q.expr))
        .unwrap_or_else(|e| panic!("{}: `{}` does not parse: {e}", q.at, q.expr))
}

#[test]
fn dashboards_are_well_formed() {
    let mut uids = BTreeSet::new();
    for ((file, d), (_, uid)) in dashboards().iter().zip(DASHBOARDS) {
        assert_eq!(d["uid"], uid, "{file}: uid");
        assert!(uids.insert(uid));
        assert!(d["title"].as_str().is_some_and(|t| t.starts_with("tollgate")), "{file}: title");
        assert_eq!(d["schemaVersion"], 39, "{file}: schemaVersion");
        assert!(d["id"].is_null(), "{file}: a provisioned dashboard carries no database id");

        let ds = variable(d, "datasource");
        assert_eq!((ds["type"].as_str(), ds["query"].as_str()), (Some("datasource"), Some("prometheus")), "{file}");
        let model = variable(d, "model");
        assert_eq!(variable_query(model), "label_values(tollgate_requests_total, model)", "{file}");
        let team = variable(d, "team");
        assert_eq!(variable_query(team), "label_values(tollgate_cost_usd_total, team)", "{file}");
        for v in [model, team] {
            assert_eq!(v["datasource"]["uid"], "${datasource}", "{file}: variable {}", v["name"]);
            assert_eq!(
                (&v["multi"], &v["includeAll"], &v["allValue"]),
                (&Value::Bool(true), &Value::Bool(true), &".*".into())
            );
        }

        // No datasource is ever pinned by uid: every reference is the variable (or Grafana's own).
        let mut refs = Vec::new();
        collect_datasources(d, &mut refs);
        for r in refs {
            let ok = r["uid"] == "${datasource}" && r["type"] == "prometheus" || r["uid"] == "-- Grafana --";
            assert!(ok, "{file}: a hard-coded datasource {r}");
        }

        let mut ids = BTreeSet::new();
        for p in panels(d) {
            let title = p["title"].as_str().unwrap();
            assert!(ids.insert(p["id"].as_u64().unwrap()), "{file}: duplicate panel id in `{title}`");
            let g = &p["gridPos"];
            assert!(g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24, "{file}: `{title}` is off the grid");
            if p["type"] == "row" {
                continue;
            }
            assert!(!title.is_empty(), "{file}: a panel without a title");
            let unit = p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or_default();
            assert!(!unit.is_empty(), "{file}: `{title}` has no unit");
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{file}: `{title}` datasource");
            let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{file}: `{title}` has no targets"));
            assert!(!targets.is_empty(), "{file}: `{title}` has no targets");
            for t in targets {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{file}: `{title}` target datasource");
            }
        }

        for q in queries(file, d) {
            let refs = Refs::of(&parse(d, &q));
            assert!(!refs.selectors.is_empty(), "{}: `{}` names no metric", q.at, q.expr);
            assert_eq!(refs.subqueries, 0, "{}: subqueries are not used", q.at);
            for range in &refs.ranges {
                assert_eq!(
                    *range,
                    promql_parser::util::parse_duration(RATE_INTERVAL).unwrap(),
                    "{}: every rate()/increase() range must be [$__rate_interval]: `{}`",
                    q.at,
                    q.expr
                );
            }
            // Belt and braces on the raw text too (a range written as a literal would also fail above).
            for f in ["rate(", "increase("] {
                for (i, _) in q.expr.match_indices(f) {
                    let rest = &q.expr[i..];
                    let close = rest.find(')').unwrap();
                    assert!(rest[..close].contains("[$__rate_interval]"), "{}: {f}..) without $__rate_interval", q.at);
                }
            }
        }
    }
}

fn collect_datasources<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == "datasource" && child.is_object() {
                    out.push(child);
                } else {
                    collect_datasources(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|c| collect_datasources(c, out)),
        _ => {}
    }
}

/// A scrape as metric name → label name → values seen.
type Scrape = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn parse_scrape(text: &str) -> Scrape {
    let mut out = Scrape::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let end = line.find(['{', ' ']).unwrap();
        let labels = out.entry(line[..end].to_string()).or_default();
        if !line[end..].starts_with('{') {
            continue;
        }
        let mut chars = line[end + 1..].chars();
        loop {
            let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
            let name = name.trim_start_matches(',').trim().to_string();
            if name.is_empty() || name.starts_with('}') {
                break;
            }
            assert_eq!(chars.next(), Some('"'), "{line}");
            let mut value = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.push(match chars.next().unwrap() {
                        'n' => '\n',
                        c => c,
                    }),
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.entry(name).or_default().insert(value);
        }
    }
    out
}

/// One OpenAI chat stream: a role chunk, `tokens` content chunks, a finish chunk, then a usage chunk
/// when `usage` is given, and `[DONE]`.
fn chat_stream(tokens: usize, usage: Option<(u64, u64)>) -> Vec<u8> {
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
        )
    };
    let mut s = chunk(r#"{"role":"assistant","content":""}"#, "null");
    for i in 0..tokens {
        s.push_str(&chunk(&format!(r#"{{"content":"w{i} "}}"#), "null"));
    }
    s.push_str(&chunk("{}", r#""stop""#));
    if let Some((prompt, completion)) = usage {
        s.push_str(&format!(
            "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion},\"total_tokens\":{}}}}}\n\n",
            prompt + completion
        ));
    }
    s.push_str("data: [DONE]\n\n");
    s.into_bytes()
}

async fn chat(addr: std::net::SocketAddr, model: &str, key: Option<&str>) -> u16 {
    let mut req =
        http::Request::post(format!("http://{addr}/v1/chat/completions")).header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let body = format!(
        r#"{{"model":"{model}","stream":true,"stream_options":{{"include_usage":true}},"max_tokens":64,"messages":[{{"role":"user","content":"Say something."}}]}}"#
    );
    let resp = client().request(req.body(Full::new(Bytes::from(body))).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let _ = text(resp).await;
    status
}

#[tokio::test]
async fn every_metric_the_dashboards_name_is_in_a_live_scrape() {
    let gap = Duration::from_millis(5);
    let reported = Upstream::start(Script::sse(events_every(&chat_stream(6, Some((40, 6))), gap))).await;
    let estimated = Upstream::start(Script::sse(events_every(&chat_stream(4, None), gap))).await;
    let broken = Upstream::start(Script::json(500, r#"{"error":{"message":"boom","type":"server_error"}}"#)).await;
    let key_hash: String = tollgate::teams::sha256(b"sk-search").iter().map(|b| format!("{b:02x}")).collect();
    let yaml = format!(
        r#"version: 1
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
backends:
  - {{name: up, url: "{}"}}
  - {{name: nousage, url: "{}"}}
  - {{name: broken, url: "{}"}}
models:
  - name: m
    backend: up
    price: {{input_per_1m_usd: 2, output_per_1m_usd: 8}}
    sla: {{ttft_p95_ms: 1000}}
  - name: quiet
    backend: nousage
    price: {{input_per_1m_usd: 1, output_per_1m_usd: 2}}
  - name: failing
    backend: broken
    price: {{input_per_1m_usd: 1, output_per_1m_usd: 2}}
sla: {{ttft_p95_ms: 2000, min_output_tokens_per_second: 20, max_error_ratio: 0.01, window: 5m}}
clients:
  - {{name: search, key_sha256: "{key_hash}"}}
budgets:
  - {{name: daily-all, period: day, limit_usd: 5}}
  - {{name: monthly-search, team: search, period: month, limit_usd: 100, mode: enforce}}
"#,
        reported.url(),
        estimated.url(),
        broken.url()
    );
    let proxy = proxy(&yaml).await;
    for (model, key) in [("m", Some("sk-search")), ("m", None), ("quiet", Some("sk-search")), ("quiet", None)] {
        assert_eq!(chat(proxy.proxy_addr, model, key).await, 200, "{model}");
    }
    assert_eq!(chat(proxy.proxy_addr, "failing", None).await, 500);
    assert_eq!(chat(proxy.proxy_addr, "no-such-model", None).await, 404);
    let text = metrics_until(&proxy, |m| {
        m.contains("tollgate_usage_missing_total{")
            && m.contains(r#"status_class="5xx""#)
            && m.contains(r#"model="m",endpoint="chat_completions",stream="true",status_class="2xx",outcome="success""#)
    })
    .await;
    let scrape = parse_scrape(&text);

    let mut problems = BTreeSet::new();
    for (file, d) in dashboards() {
        for q in queries(&file, &d) {
            let refs = Refs::of(&parse(&d, &q));
            for (name, matchers) in &refs.selectors {
                let Some(labels) = scrape.get(name) else {
                    problems.insert(format!("{}: metric `{name}` is not in the scrape", q.at));
                    continue;
                };
                for (label, value) in matchers {
                    match (labels.get(label), value) {
                        (None, _) => problems.insert(format!("{}: `{name}` has no label `{label}`", q.at)),
                        (Some(values), Some(v)) if !values.contains(v) => {
                            problems.insert(format!("{}: `{name}` never has {label}=\"{v}\" (seen: {values:?})", q.at))
                        }
                        _ => false,
                    };
                }
            }
            for (labels, names) in &refs.groupings {
                for label in labels {
                    if !names.iter().any(|n| scrape.get(n).is_some_and(|l| l.contains_key(label))) {
                        problems.insert(format!("{}: grouping label `{label}` is on none of {names:?}", q.at));
                    }
                }
            }
        }
        for v in variables(&d).iter().filter(|v| v["type"] == "query") {
            let query = variable_query(v);
            let (metric, label) = query
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|r| r.split_once(','))
                .unwrap_or_else(|| panic!("{file}: variable {}: `{query}`", v["name"]));
            let (metric, label) = (metric.trim(), label.trim());
            if !scrape.get(metric).is_some_and(|l| l.contains_key(label)) {
                problems.insert(format!("{file}: variable {}: no `{metric}` with label `{label}`", v["name"]));
            }
        }
    }
    assert!(problems.is_empty(), "the dashboards name what the scrape does not have:\n{}", {
        let p: Vec<_> = problems.into_iter().collect();
        p.join("\n")
    });
}

fn load_config(path: &str) -> tollgate::config::Config {
    let env = |name: &str| (name == "TOLLGATE_REDIS_URL").then(|| "redis://tollgate-redis:6379/0".to_string());
    tollgate::config::Config::parse(&read(path), path, &env).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn shipped_configs_load_and_fit_the_manifests() {
    for path in [
        "deploy/compose/tollgate.yaml",
        "deploy/kubernetes/config.yaml",
        "deploy/kubernetes/components/redis/config.yaml",
    ] {
        let c = load_config(path);
        assert!(c.listen.ip().is_unspecified() && c.admin_listen.ip().is_unspecified(), "{path}: listen on 0.0.0.0");
        assert_eq!((c.listen.port(), c.admin_listen.port()), (8080, 9464), "{path}: the ports the manifests use");
        let ledger = c.spend.ledger.as_ref().unwrap();
        assert_eq!(ledger.path, PathBuf::from("/var/lib/tollgate/ledger.sqlite3"), "{path}: the ledger volume");
        assert!(c.models.iter().all(|m| m.sla.is_some()), "{path}: every model has objectives");
        assert_eq!(c.spend.budget_store.is_some(), path.contains("redis"), "{path}: budget_store");
    }

    // The generated alert rules (deploy/prometheus/rules/, from config.example.yaml) name each model
    // and its TTFT target bucket: the shipped configs keep those models' objectives.
    let example = load_config("config.example.yaml");
    for path in ["deploy/compose/tollgate.yaml", "deploy/kubernetes/config.yaml"] {
        for m in &load_config(path).models {
            let same = example.model_by_name(&m.name).map(|e| &e.sla);
            assert_eq!(same, Some(&m.sla), "{path}: model {} must have config.example.yaml's objectives", m.name);
        }
    }

    // The Redis copy is the base config plus budget_store, nothing else.
    let yaml = |path: &str| -> serde_yaml_ng::Mapping { serde_yaml_ng::from_str(&read(path)).unwrap() };
    let base = yaml("deploy/kubernetes/config.yaml");
    let mut shared = yaml("deploy/kubernetes/components/redis/config.yaml");
    assert!(shared.remove("budget_store").is_some());
    assert_eq!(base, shared, "components/redis/config.yaml drifted from config.yaml");

    // The pod outlives the drain: preStop sleep + drain timeout < terminationGracePeriodSeconds.
    let deployment: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read("deploy/kubernetes/deployment.yaml")).unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let sleep = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap();
    let drain = load_config("deploy/kubernetes/config.yaml").limits.drain_timeout.as_secs();
    assert!(sleep + drain < grace, "preStop {sleep}s + drain {drain}s must stay under the grace period {grace}s");
}
