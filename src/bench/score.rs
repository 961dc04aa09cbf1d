//! Scorers: does an answer match a prompt's expectation (`equals`, `contains`, `regex`,
//! `json_schema`), with case and whitespace options. Built once per prompt set; a malformed
//! expectation (bad regex, bad schema, an `example` that fails its own scorer) is an error there.

use serde::Deserialize;
use serde_json::Value;

use super::schema::Schema;

/// An expectation as written in a prompt set: exactly one scorer key plus options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExpect {
    #[serde(default)]
    equals: Option<String>,
    #[serde(default)]
    contains: Option<String>,
    #[serde(default)]
    regex: Option<String>,
    /// A schema as a YAML/JSON object, or JSON text.
    #[serde(default)]
    json_schema: Option<Value>,
    #[serde(default)]
    ignore_case: bool,
    #[serde(default)]
    whitespace: Whitespace,
    /// A correct answer. Simulated models reply with it when they "answer correctly"; for
    /// `equals` and `contains` it defaults to the expected text. It must pass its own scorer.
    #[serde(default)]
    example: Option<String>,
}

/// How whitespace is compared (for `equals`, `contains` and `regex`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Whitespace {
    /// Byte for byte.
    Exact,
    /// Leading and trailing whitespace is ignored (the default).
    #[default]
    Trim,
    /// Trimmed, and every run of whitespace inside counts as one space.
    Collapse,
}

#[derive(Debug, Clone)]
enum Scorer {
    Equals(String),
    Contains(String),
    Regex(regex::Regex),
    JsonSchema(Schema),
}

/// A compiled expectation.
#[derive(Debug, Clone)]
pub struct Expect {
    scorer: Scorer,
    ignore_case: bool,
    whitespace: Whitespace,
    example: Option<String>,
}

impl Expect {
    /// Compiles an expectation; errors say what is wrong without naming the prompt (the caller does).
    pub fn compile(raw: RawExpect) -> Result<Expect, String> {
        let given: Vec<&str> = [
            raw.equals.as_ref().map(|_| "equals"),
            raw.contains.as_ref().map(|_| "contains"),
            raw.regex.as_ref().map(|_| "regex"),
            raw.json_schema.as_ref().map(|_| "json_schema"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if given.len() != 1 {
            let found = if given.is_empty() { "none".to_string() } else { given.join(", ") };
            return Err(format!("`expect` needs exactly one of equals, contains, regex, json_schema (found {found})"));
        }
        let scorer = if let Some(text) = raw.equals {
            Scorer::Equals(text)
        } else if let Some(text) = raw.contains {
            if text.is_empty() {
                return Err("`contains` is empty: every answer would pass".into());
            }
            Scorer::Contains(text)
        } else if let Some(pattern) = raw.regex {
            let re = regex::RegexBuilder::new(&pattern)
                .case_insensitive(raw.ignore_case)
                .build()
                .map_err(|e| format!("bad regex `{pattern}`: {e}"))?;
            Scorer::Regex(re)
        } else {
            let schema = match raw.json_schema.unwrap_or_default() {
                Value::String(text) => {
                    serde_json::from_str(&text).map_err(|e| format!("json_schema is not JSON: {e}"))?
                }
                v => v,
            };
            Scorer::JsonSchema(Schema::compile(schema).map_err(|e| format!("bad json_schema: {e}"))?)
        };
        let example = raw.example.or(match &scorer {
            Scorer::Equals(t) | Scorer::Contains(t) => Some(t.clone()),
            _ => None,
        });
        let expect = Expect { scorer, ignore_case: raw.ignore_case, whitespace: raw.whitespace, example };
        if let Some(e) = &expect.example
            && let Err(why) = expect.check(e)
        {
            return Err(format!("the example answer {e:?} fails its own scorer: {why}"));
        }
        Ok(expect)
    }

    /// Whether `answer` passes.
    pub fn passes(&self, answer: &str) -> bool {
        self.check(answer).is_ok()
    }

    /// `Ok` when `answer` passes, else why not.
    pub fn check(&self, answer: &str) -> Result<(), String> {
        let norm = |s: &str| normalize(s, self.whitespace, self.ignore_case);
        let ok = match &self.scorer {
            Scorer::Equals(t) => norm(answer) == norm(t),
            Scorer::Contains(t) => norm(answer).contains(&norm(t)),
            // Case is handled by the compiled regex, so only whitespace is normalized here.
            Scorer::Regex(re) => re.is_match(&normalize(answer, self.whitespace, false)),
            Scorer::JsonSchema(schema) => {
                let value = extract_json(answer).ok_or("the answer holds no JSON value")?;
                return schema.validate(&value).map_err(|e| e.join("; "));
            }
        };
        if ok { Ok(()) } else { Err(format!("does not match ({})", self.kind())) }
    }

    /// The scorer's name, as written in prompt sets.
    pub fn kind(&self) -> &'static str {
        match self.scorer {
            Scorer::Equals(_) => "equals",
            Scorer::Contains(_) => "contains",
            Scorer::Regex(_) => "regex",
            Scorer::JsonSchema(_) => "json_schema",
        }
    }

    /// A correct answer, if one is known: what simulated models reply when they are right.
    pub fn example(&self) -> Option<&str> {
        self.example.as_deref()
    }
}

fn normalize(s: &str, whitespace: Whitespace, ignore_case: bool) -> String {
    let s = match whitespace {
        Whitespace::Exact => s.to_string(),
        Whitespace::Trim => s.trim().to_string(),
        Whitespace::Collapse => s.split_whitespace().collect::<Vec<_>>().join(" "),
    };
    if ignore_case { s.to_lowercase() } else { s }
}

/// The JSON value in an answer: the whole trimmed answer, else the inside of a ``` fence, else the
/// text from the first `{` or `[` to the last `}` or `]` (models like to wrap JSON in prose).
pub fn extract_json(answer: &str) -> Option<Value> {
    let trimmed = answer.trim();
    if let Ok(v) = serde_json::from_str(trimmed) {
        return Some(v);
    }
    if let Some(start) = trimmed.find("```") {
        let rest = &trimmed[start + 3..];
        // Skip an info string such as `json` up to the end of the fence line.
        let body = rest.find('\n').map_or(rest, |nl| &rest[nl + 1..]);
        let inner = body.find("```").map_or(body, |end| &body[..end]);
        if let Ok(v) = serde_json::from_str(inner.trim()) {
            return Some(v);
        }
    }
    let start = trimmed.find(['{', '['])?;
    let end = trimmed.rfind(['}', ']'])?;
    serde_json::from_str(trimmed.get(start..=end)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect(yaml: &str) -> Result<Expect, String> {
        let raw: RawExpect = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        Expect::compile(raw)
    }

    fn check(yaml: &str, answer: &str, pass: bool) {
        let e = expect(yaml).unwrap_or_else(|err| panic!("{yaml}: {err}"));
        assert_eq!(e.passes(answer), pass, "{yaml} on {answer:?}: {:?}", e.check(answer));
    }

    #[test]
    fn equals() {
        check("equals: '42'", " 42\n", true);
        check("equals: '42'", "42.", false);
        check("{equals: '42', whitespace: exact}", " 42", false);
        check("{equals: 'New York', whitespace: collapse}", "New \n York", true);
        check("{equals: 'New York'}", "New  York", false);
        check("{equals: Paris, ignore_case: true}", "PARIS", true);
        check("{equals: Paris}", "paris", false);
    }

    #[test]
    fn contains() {
        check("contains: Paris", "The capital is Paris.", true);
        check("contains: Paris", "The capital is paris.", false);
        check("{contains: paris, ignore_case: true}", "PARIS!", true);
        check("{contains: 'a b', whitespace: collapse}", "x a\t\tb y", true);
        assert!(expect("contains: ''").unwrap_err().contains("empty"));
    }

    #[test]
    fn regex() {
        check(r"regex: '^\s*4\s*$'", "4", true);
        check(r"regex: '\b1945\b'", "It ended in 1945.", true);
        check(r"regex: '\b1945\b'", "19456", false);
        check(r"{regex: '^yes', ignore_case: true}", "Yes, it is", true);
        check(r"{regex: '^yes'}", "Yes", false);
        let err = expect("regex: '(unclosed'").unwrap_err();
        assert!(err.starts_with("bad regex `(unclosed`"), "{err}");
    }

    #[test]
    fn json_schema() {
        let schema = "json_schema: {type: object, required: [name, year], properties: {name: {type: string}, year: {type: integer, minimum: 1800}}}";
        check(schema, r#"{"name": "Ada", "year": 1815}"#, true);
        check(schema, "Sure! ```json\n{\"name\": \"Ada\", \"year\": 1815}\n```", true);
        check(schema, r#"Here it is: {"name": "Ada", "year": 1815} — done."#, true);
        check(schema, r#"{"name": "Ada"}"#, false);
        check(schema, r#"{"name": "Ada", "year": 1700}"#, false);
        check(schema, "no json here", false);
        // A schema may also be given as JSON text.
        check(r#"json_schema: '{"type": "array", "maxItems": 1}'"#, "[1]", true);
        let err = expect("json_schema: {type: object, oneOf: []}").unwrap_err();
        assert!(err.starts_with("bad json_schema: /oneOf: keyword `oneOf` is not supported"), "{err}");
        assert!(expect("json_schema: '{not json'").unwrap_err().starts_with("json_schema is not JSON"));
    }

    #[test]
    fn exactly_one_scorer_and_a_passing_example() {
        assert!(expect("ignore_case: true").unwrap_err().contains("found none"));
        assert!(expect("{equals: a, contains: a}").unwrap_err().contains("found equals, contains"));
        assert!(expect("{equlas: a}").is_err());
        let e = expect("{regex: '^[0-9]+$', example: '12'}").unwrap();
        assert_eq!(e.example(), Some("12"));
        assert_eq!(expect("contains: Paris").unwrap().example(), Some("Paris"));
        assert_eq!(expect("regex: x").unwrap().example(), None);
        let err = expect("{regex: '^[0-9]+$', example: 'twelve'}").unwrap_err();
        assert!(err.contains("fails its own scorer"), "{err}");
    }
}
