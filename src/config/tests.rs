//! Config loading: the example config, and one test per kind of mistake, each naming its key and line.

use super::*;

const GOOD: &str = r#"version: 1
listen: "127.0.0.1:8080"
admin_listen: "127.0.0.1:9464"
backends:
  - name: local
    url: "http://127.0.0.1:18080"
    api_key_env: LOCAL_API_KEY
models:
  - name: gemma-3-270m
    backend: local
    upstream_model: gemma-3-270m
    price:
      input_per_1m_usd: 0.10
      output_per_1m_usd: 0.40
      cached_input_per_1m_usd: 0.05
"#;

fn env(name: &str) -> Option<String> {
    (name == "LOCAL_API_KEY").then(|| "sk-test-secret".to_string())
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "t.yaml", &env)
}

/// Asserts that `text` fails with a problem at `path` on `line` whose message contains `needle`.
fn check_err(text: &str, path: &str, line: usize, needle: &str) {
    let err = parse(text).err().unwrap_or_else(|| panic!("expected an error for {path}"));
    let found = err.problems.iter().find(|p| p.path == path);
    let p = found.unwrap_or_else(|| panic!("no problem at {path}: {err}"));
    assert_eq!(p.line, Some(line), "line of {path}: {err}");
    assert!(p.message.contains(needle), "message of {path}: {err}");
    let shown = err.to_string();
    assert!(shown.contains(&format!("t.yaml:{line}: {path}:")), "{shown}");
}

#[test]
fn the_issue_shape_loads_as_written() {
    let c = parse(GOOD).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    let b = &c.backends[0];
    assert_eq!(b.api_key.as_ref().map(|k| k.expose()), Some("sk-test-secret"));
    assert!(b.inject_usage);
    let m = &c.models[0];
    let price = m.price.as_ref().unwrap_or_else(|| panic!("price"));
    assert_eq!(price.input_per_1m.to_string(), "0.1");
    assert_eq!(price.cached_input_per_1m.map(|d| d.to_string()).as_deref(), Some("0.05"));
    // The secret never shows in Debug output.
    assert!(!format!("{c:?}").contains("sk-test-secret"));
}

#[test]
fn the_example_config_loads() {
    let text = include_str!("../../config.example.yaml");
    let c = Config::parse(text, "config.example.yaml", &|_| None).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.simulator.is_some());
    assert!(c.model_by_name("sim-large").is_some() && c.model_by_name("sim-small").is_some());
}

#[test]
fn unknown_keys_are_errors_with_their_line() {
    check_err(
        &GOOD.replace("    upstream_model:", "    upstream_modle:"),
        "models[0].upstream_modle",
        11,
        "unknown field",
    );
    check_err(&format!("{GOOD}colour: blue\n"), "colour", 16, "unknown field");
    check_err(
        &GOOD.replace("      output_per_1m_usd", "      outptu_per_1m_usd"),
        "models[0].price.outptu_per_1m_usd",
        14,
        "unknown field",
    );
}

#[test]
fn wrong_types_and_syntax_name_the_line() {
    check_err(
        &GOOD.replace("input_per_1m_usd: 0.10", "input_per_1m_usd: cheap"),
        "models[0].price.input_per_1m_usd",
        13,
        "not a decimal",
    );
    check_err(&GOOD.replace("version: 1", "version: one"), "version", 1, "invalid");
    let err = parse("version: 1\nbackends: [\n").err().unwrap_or_else(|| panic!("syntax"));
    assert!(err.problems[0].line.is_some(), "{err}");
}

#[test]
fn semantic_mistakes_are_all_reported() {
    let text = GOOD
        .replace("backend: local", "backend: nowhere")
        .replace("http://127.0.0.1:18080", "ftp://x")
        .replace("127.0.0.1:9464", "127.0.0.1:8080")
        .replace("version: 1", "version: 2");
    let err = parse(&text).err().unwrap_or_else(|| panic!("expected errors"));
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    for expected in ["version", "admin_listen", "backends[0].url", "models[0].backend"] {
        assert!(paths.contains(&expected), "{expected} missing from {err}");
    }
}

#[test]
fn each_kind_of_mistake_names_its_key() {
    check_err(&GOOD.replace("backend: local", "backend: nowhere"), "models[0].backend", 10, "not defined");
    check_err(&GOOD.replace("http://127.0.0.1:18080", "127.0.0.1:18080"), "backends[0].url", 6, "http:// or https://");
    check_err(&GOOD.replace("LOCAL_API_KEY", "MISSING_KEY"), "backends[0].api_key_env", 7, "MISSING_KEY");
    check_err(&GOOD.replace("0.40", "-0.40"), "models[0].price.output_per_1m_usd", 14, "negative");
    check_err(&GOOD.replace("127.0.0.1:8080", "localhost"), "listen", 2, "IP:port");
    check_err(&GOOD.replace("name: gemma-3-270m", "name: other"), "models[0].name", 9, "reserved");
    check_err(&format!("{GOOD}  - name: gemma-3-270m\n    backend: local\n"), "models[1].name", 16, "twice");
    check_err(&format!("{GOOD}default_backend: nope\n"), "default_backend", 16, "not defined");
    check_err(
        &format!("{GOOD}limits:\n  max_request_body_bytes: 0\n"),
        "limits.max_request_body_bytes",
        17,
        "greater than 0",
    );
    check_err(
        &GOOD.replace("    api_key_env: LOCAL_API_KEY\n", "    api_key_env: LOCAL_API_KEY\n    idle_timeout_ms: 0\n"),
        "backends[0].idle_timeout_ms",
        8,
        "greater than 0",
    );
    let sim = "simulator:\n  listen: \"127.0.0.1:0\"\n  models:\n    - {name: s, ttft_ms: 1, tokens_per_second: 0, output_tokens: 0, jitter_ratio: 2}\n";
    let err = parse(&format!("{GOOD}{sim}")).err().unwrap_or_else(|| panic!("sim"));
    for key in ["tokens_per_second", "output_tokens", "jitter_ratio"] {
        let p = err.problems.iter().find(|p| p.path == format!("simulator.models[0].{key}"));
        assert_eq!(p.and_then(|p| p.line), Some(19), "{key}: {err}");
    }
}

#[test]
fn the_secret_value_never_appears_in_errors() {
    // A config mistake next to a set key: the error text names the variable, never its value.
    let err = parse(&GOOD.replace("backend: local", "backend: x")).err().unwrap_or_else(|| panic!("err"));
    assert!(!err.to_string().contains("sk-test-secret"));
}

#[test]
fn several_backends_with_weights() {
    let two = GOOD.replace("    backend: local\n", "    backends: [local, {name: spare, weight: 3}]\n") + "";
    let two = two.replace("models:\n", "  - name: spare\n    url: \"http://127.0.0.1:18081\"\nmodels:\n");
    let c = parse(&two).unwrap_or_else(|e| panic!("{e}"));
    let b = &c.models[0].backends;
    assert_eq!((b.len(), b[0].weight, b[1].weight), (2, 1, 3));
    assert_eq!(c.backends[b[1].index].name, "spare");

    check_err(
        &two.replace("{name: spare, weight: 3}", "{name: spare, weight: 0}"),
        "models[0].backends[1]",
        12,
        "at least 1",
    );
    check_err(
        &two.replace("[local, {name: spare, weight: 3}]", "[local, nope]"),
        "models[0].backends[1]",
        12,
        "not defined",
    );
    check_err(
        &two.replace("[local, {name: spare, weight: 3}]", "[local, local]"),
        "models[0].backends[1]",
        12,
        "twice",
    );
    check_err(&two.replace("    backends:", "    backend: local\n    backends:"), "models[0].backends", 13, "not both");
}
