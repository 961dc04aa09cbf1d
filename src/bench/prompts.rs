//! Prompt sets: YAML (a list, or `prompts:` under a map) or JSONL (one prompt object per line).
//! Each prompt is chat `messages` or a single `prompt`, with an optional `max_tokens` and an
//! optional `expect` (see [`super::score`]). Every problem names the file and the prompt.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};

use super::score::{Expect, RawExpect};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrompt {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    messages: Option<Vec<Value>>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    expect: Option<RawExpect>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSet {
    List(Vec<RawPrompt>),
    Map(RawSetMap),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSetMap {
    #[serde(default)]
    name: Option<String>,
    prompts: Vec<RawPrompt>,
}

/// One prompt, ready to send.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub id: String,
    /// Chat messages (objects with at least `role`).
    pub messages: Vec<Value>,
    pub max_tokens: Option<u32>,
    pub expect: Option<Expect>,
}

/// A loaded, validated prompt set.
#[derive(Debug, Clone)]
pub struct PromptSet {
    pub name: String,
    pub prompts: Vec<Prompt>,
}

impl PromptSet {
    /// Prompts with an expected answer.
    pub fn scored(&self) -> usize {
        self.prompts.iter().filter(|p| p.expect.is_some()).count()
    }
}

/// Reads a prompt set; `.jsonl` files are JSON lines, anything else is YAML (which includes JSON).
pub fn load(path: &Path) -> Result<PromptSet, String> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{file}: cannot read the prompt set: {e}"))?;
    let stem = path.file_stem().map_or_else(|| file.clone(), |s| s.to_string_lossy().into_owned());
    let jsonl = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
    parse_named(&text, &file, jsonl, stem)
}

/// Parses prompt-set text of either format (`jsonl` picks JSON lines); `file` names it in errors.
pub fn parse(text: &str, file: &str, jsonl: bool) -> Result<PromptSet, String> {
    parse_named(text, file, jsonl, file.to_string())
}

fn parse_named(text: &str, file: &str, jsonl: bool, default_name: String) -> Result<PromptSet, String> {
    let (name, raw) = if jsonl { (None, parse_jsonl(text, file)?) } else { parse_yaml(text, file)? };
    build(name.unwrap_or(default_name), raw).map_err(|e| format!("{file}: {e}"))
}

fn parse_yaml(text: &str, file: &str) -> Result<(Option<String>, Vec<RawPrompt>), String> {
    if text.trim().is_empty() {
        return Ok((None, Vec::new()));
    }
    // Parsed twice on error only: the untagged enum's own message says nothing useful, so the
    // list and map forms are tried one by one for a precise one.
    match serde_yaml_ng::from_str::<RawSet>(text) {
        Ok(RawSet::List(list)) => Ok((None, list)),
        Ok(RawSet::Map(map)) => Ok((map.name, map.prompts)),
        Err(_) => {
            let err = if text.trim_start().starts_with('-') || text.trim_start().starts_with('[') {
                serde_yaml_ng::from_str::<Vec<RawPrompt>>(text).err()
            } else {
                serde_yaml_ng::from_str::<RawSetMap>(text).err()
            };
            let why = err.map_or_else(|| "not a prompt list".to_string(), |e| e.to_string());
            Err(format!("{file}: {why}"))
        }
    }
}

fn parse_jsonl(text: &str, file: &str) -> Result<Vec<RawPrompt>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let prompt = serde_json::from_str(line).map_err(|e| format!("{file}:{}: {e}", i + 1))?;
        out.push(prompt);
    }
    Ok(out)
}

fn build(name: String, raw: Vec<RawPrompt>) -> Result<PromptSet, String> {
    if raw.is_empty() {
        return Err("the prompt set is empty: add at least one prompt".into());
    }
    let mut prompts: Vec<Prompt> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let id = r.id.clone().unwrap_or_else(|| format!("#{}", i + 1));
        let p = prompt(id.clone(), r).map_err(|e| format!("prompt `{id}`: {e}"))?;
        if prompts.iter().any(|q| q.id == p.id) {
            return Err(format!("prompt `{id}`: the id is used twice"));
        }
        prompts.push(p);
    }
    Ok(PromptSet { name, prompts })
}

fn prompt(id: String, r: RawPrompt) -> Result<Prompt, String> {
    if id.trim().is_empty() {
        return Err("`id` must not be empty".into());
    }
    let messages = match (r.messages, r.prompt) {
        (Some(m), None) if !m.is_empty() => {
            for (j, msg) in m.iter().enumerate() {
                if !msg.get("role").is_some_and(Value::is_string) {
                    return Err(format!("messages[{j}] needs a `role` (system, user, assistant)"));
                }
            }
            m
        }
        (None, Some(text)) if !text.trim().is_empty() => vec![json!({"role": "user", "content": text})],
        (Some(_), Some(_)) => return Err("give `messages` or `prompt`, not both".into()),
        _ => return Err("needs non-empty `messages` or `prompt`".into()),
    };
    if r.max_tokens == Some(0) {
        return Err("`max_tokens` must be at least 1".into());
    }
    let expect = r.expect.map(Expect::compile).transpose()?;
    Ok(Prompt { id, messages, max_tokens: r.max_tokens, expect })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_list_map_and_jsonl() {
        let list = "- {id: a, prompt: hi, max_tokens: 4, expect: {equals: hello}}\n- prompt: bye\n";
        let set = parse(list, "p.yaml", false).unwrap();
        assert_eq!(set.prompts.len(), 2);
        assert_eq!(set.prompts[0].messages, vec![json!({"role": "user", "content": "hi"})]);
        assert_eq!(set.prompts[1].id, "#2");
        assert_eq!(set.scored(), 1);

        let map = "name: demo\nprompts:\n  - id: x\n    messages: [{role: system, content: be brief}, {role: user, content: hi}]\n";
        let set = parse(map, "p.yaml", false).unwrap();
        assert_eq!((set.name.as_str(), set.prompts[0].messages.len()), ("demo", 2));

        let jsonl =
            "{\"id\": \"j\", \"prompt\": \"2+2?\", \"expect\": {\"regex\": \"\\\\b4\\\\b\"}}\n\n{\"prompt\": \"x\"}\n";
        let set = parse(jsonl, "p.jsonl", true).unwrap();
        assert_eq!(set.prompts.len(), 2);
        assert!(set.prompts[0].expect.as_ref().unwrap().passes("it is 4"));
    }

    #[test]
    fn problems_name_the_file_and_the_prompt() {
        for (text, jsonl, message) in [
            ("", false, "p: the prompt set is empty"),
            ("prompts: []", false, "p: the prompt set is empty"),
            ("", true, "p: the prompt set is empty"),
            ("- {id: bad, prompt: x, expect: {regex: '('}}", false, "p: prompt `bad`: bad regex `(`"),
            (
                "- {id: s, prompt: x, expect: {json_schema: {type: wat}}}",
                false,
                "p: prompt `s`: bad json_schema: /type:",
            ),
            ("- {id: e, prompt: x, expect: {}}", false, "p: prompt `e`: `expect` needs exactly one of"),
            ("- {id: n}", false, "p: prompt `n`: needs non-empty `messages` or `prompt`"),
            ("- {id: r, messages: [{content: x}]}", false, "p: prompt `r`: messages[0] needs a `role`"),
            ("- {id: d, prompt: x}\n- {id: d, prompt: y}", false, "p: prompt `d`: the id is used twice"),
            ("- {id: t, prompt: x, max_tokens: 0}", false, "p: prompt `t`: `max_tokens` must be at least 1"),
            ("{\"prompt\": \"x\"}\n{oops", true, "p:2: "),
            ("- {prompt: x, colour: red}", false, "p: "),
        ] {
            let err = parse(text, "p", jsonl).expect_err(text);
            assert!(err.starts_with(message), "{text:?}: {err}");
        }
    }

    #[test]
    fn the_demo_set_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/prompts/demo.yaml");
        let set = load(&path).unwrap();
        assert!(set.prompts.len() >= 8, "{}", set.prompts.len());
        assert_eq!(set.scored(), set.prompts.len());
        for p in &set.prompts {
            let expect = p.expect.as_ref().unwrap();
            assert!(expect.example().is_some(), "prompt {} has no example answer for the simulator", p.id);
        }
    }
}
