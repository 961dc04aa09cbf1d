//! A small JSON Schema (draft 2020-12) validator: the subset the `json_schema` scorer and the
//! report's own schema need, and nothing that could pass silently.
//!
//! Supported keywords: `type` (a name or a list of names: null, boolean, object, array, number,
//! integer, string), `enum`, `const`, `properties`, `required`, `additionalProperties` (a boolean
//! or a schema), `items` (one schema for every element), `minItems`, `maxItems`, `minimum`,
//! `maximum`, `minLength`, `maxLength` (in characters), `$ref` to `#` or `#/$defs/NAME`, and
//! `$defs`. Annotations are accepted and ignored: `$schema`, `$id`, `$comment`, `title`,
//! `description`, `default`, `examples`, `format` (an annotation in 2020-12). Any other keyword is
//! an error when the schema is compiled, so that a schema never looks stricter than it is.

use serde_json::{Map, Value};

const TYPES: [&str; 7] = ["null", "boolean", "object", "array", "number", "integer", "string"];
const ANNOTATIONS: [&str; 8] = ["$schema", "$id", "$comment", "title", "description", "default", "examples", "format"];
const KEYWORDS: [&str; 15] = [
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "$ref",
    "$defs",
];

/// A schema that has been checked to use only the supported subset.
#[derive(Debug, Clone)]
pub struct Schema {
    root: Value,
}

impl Schema {
    /// Checks every keyword of `root` (recursively, `$defs` included) and every `$ref` target.
    pub fn compile(root: Value) -> Result<Schema, String> {
        check(&root, &root, "")?;
        Ok(Schema { root })
    }

    /// `Ok` when `instance` is valid; otherwise every violation, each with its JSON pointer.
    pub fn validate(&self, instance: &Value) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        validate(&self.root, &self.root, instance, "", &mut errors, 0);
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

fn check(root: &Value, schema: &Value, at: &str) -> Result<(), String> {
    let obj = match schema {
        Value::Bool(_) => return Ok(()),
        Value::Object(o) => o,
        _ => return Err(format!("{}: a schema must be an object or a boolean", pointer(at))),
    };
    for (key, value) in obj {
        let here = format!("{at}/{key}");
        let fail = |what: &str| Err(format!("{}: {what}", pointer(&here)));
        match key.as_str() {
            k if ANNOTATIONS.contains(&k) => {}
            "type" => {
                let names: Vec<&Value> = match value {
                    Value::Array(list) if !list.is_empty() => list.iter().collect(),
                    v => vec![v],
                };
                for name in names {
                    if !name.as_str().is_some_and(|n| TYPES.contains(&n)) {
                        return fail(&format!("`{name}` is not a type (one of {})", TYPES.join(", ")));
                    }
                }
            }
            "enum" if !value.is_array() => return fail("must be an array"),
            "required" if !value.as_array().is_some_and(|r| r.iter().all(Value::is_string)) => {
                return fail("must be an array of property names");
            }
            "minimum" | "maximum" if !value.is_number() => return fail("must be a number"),
            "minLength" | "maxLength" | "minItems" | "maxItems" if value.as_u64().is_none() => {
                return fail("must be a non-negative integer");
            }
            "properties" | "$defs" => {
                let Some(map) = value.as_object() else { return fail("must be an object of schemas") };
                for (name, sub) in map {
                    check(root, sub, &format!("{here}/{name}"))?;
                }
            }
            "additionalProperties" | "items" => check(root, value, &here)?,
            "$ref" => {
                let Some(target) = value.as_str() else { return fail("must be a string") };
                if resolve(root, target).is_none() {
                    return fail(&format!(
                        "`{target}` does not point into this schema (use \"#\" or \"#/$defs/NAME\")"
                    ));
                }
            }
            k if KEYWORDS.contains(&k) => {}
            other => {
                return fail(&format!(
                    "keyword `{other}` is not supported (supported: {}; ignored annotations: {})",
                    KEYWORDS.join(", "),
                    ANNOTATIONS.join(", ")
                ));
            }
        }
    }
    Ok(())
}

fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    if reference == "#" {
        return Some(root);
    }
    let name = reference.strip_prefix("#/$defs/")?;
    root.get("$defs")?.get(name)
}

fn pointer(at: &str) -> &str {
    if at.is_empty() { "/" } else { at }
}

/// Refs may recurse (a tree of nodes); an instance is finite, but a schema like `{"$ref": "#"}`
/// would loop without consuming it, hence the depth cap.
const MAX_DEPTH: usize = 64;

fn validate(root: &Value, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>, depth: usize) {
    let obj: &Map<String, Value> = match schema {
        Value::Bool(true) => return,
        Value::Bool(false) => return errors.push(format!("{}: no value is allowed here", pointer(at))),
        Value::Object(o) => o,
        _ => return,
    };
    if depth > MAX_DEPTH {
        return errors.push(format!("{}: schema references nest deeper than {MAX_DEPTH}", pointer(at)));
    }
    let mut fail = |message: String| errors.push(format!("{}: {message}", pointer(at)));
    if let Some(t) = obj.get("type") {
        let allowed: Vec<&str> = match t {
            Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
            other => other.as_str().into_iter().collect(),
        };
        if !allowed.iter().any(|name| has_type(v, name)) {
            return fail(format!("expected {}, found {}", allowed.join(" or "), type_name(v)));
        }
    }
    if let Some(options) = obj.get("enum").and_then(Value::as_array)
        && !options.contains(v)
    {
        fail(format!("{v} is not one of {}", Value::Array(options.clone())));
    }
    if let Some(c) = obj.get("const")
        && c != v
    {
        fail(format!("{v} is not {c}"));
    }
    if let Some(x) = v.as_f64() {
        if let Some(min) = obj.get("minimum").and_then(Value::as_f64)
            && x < min
        {
            fail(format!("{x} is less than the minimum {min}"));
        }
        if let Some(max) = obj.get("maximum").and_then(Value::as_f64)
            && x > max
        {
            fail(format!("{x} is greater than the maximum {max}"));
        }
    }
    if let Some(s) = v.as_str() {
        let chars = s.chars().count() as u64;
        if let Some(min) = obj.get("minLength").and_then(Value::as_u64)
            && chars < min
        {
            fail(format!("{chars} characters, fewer than {min}"));
        }
        if let Some(max) = obj.get("maxLength").and_then(Value::as_u64)
            && chars > max
        {
            fail(format!("{chars} characters, more than {max}"));
        }
    }
    if let Some(items) = v.as_array() {
        let n = items.len() as u64;
        if obj.get("minItems").and_then(Value::as_u64).is_some_and(|min| n < min) {
            fail(format!("{n} items, too few"));
        }
        if obj.get("maxItems").and_then(Value::as_u64).is_some_and(|max| n > max) {
            fail(format!("{n} items, too many"));
        }
        if let Some(item) = obj.get("items") {
            for (i, x) in items.iter().enumerate() {
                validate(root, item, x, &format!("{at}/{i}"), errors, depth + 1);
            }
        }
    }
    if let Some(map) = v.as_object() {
        let required = obj.get("required").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
        for name in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(name) {
                errors.push(format!("{}: missing required property `{name}`", pointer(at)));
            }
        }
        let properties = obj.get("properties").and_then(Value::as_object);
        for (name, x) in map {
            let here = format!("{at}/{name}");
            match (properties.and_then(|p| p.get(name)), obj.get("additionalProperties")) {
                (Some(sub), _) | (None, Some(sub)) => validate(root, sub, x, &here, errors, depth + 1),
                (None, None) => {}
            }
        }
    }
    if let Some(target) = obj.get("$ref").and_then(Value::as_str).and_then(|r| resolve(root, r)) {
        validate(root, target, v, at, errors, depth + 1);
    }
}

fn has_type(v: &Value, name: &str) -> bool {
    match name {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "number" => v.is_number(),
        "string" => v.is_string(),
        // 2020-12: a number with a zero fractional part is an integer, 1.0 included.
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => false,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::Number(_) => "number",
        Value::String(_) => "string",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(schema: Value, instance: Value, expect: Result<(), &[&str]>) {
        let s = Schema::compile(schema.clone()).unwrap_or_else(|e| panic!("{schema}: {e}"));
        let got = s.validate(&instance);
        match expect {
            Ok(()) => assert!(got.is_ok(), "{instance} against {schema}: {got:?}"),
            Err(wanted) => {
                let errors = got.expect_err("expected errors");
                assert_eq!(errors, wanted, "{instance} against {schema}");
            }
        }
    }

    #[test]
    fn keywords() {
        let person = json!({
            "type": "object",
            "required": ["name", "age"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 5},
                "age": {"type": "integer", "minimum": 0, "maximum": 150},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2}
            },
            "additionalProperties": false
        });
        check(person.clone(), json!({"name": "Ada", "age": 36}), Ok(()));
        check(person.clone(), json!({"name": "Ada", "age": 36.0, "tags": ["a"]}), Ok(()));
        check(person.clone(), json!([1]), Err(&["/: expected object, found array"]));
        check(
            person.clone(),
            json!({"name": "", "age": 200, "x": 1}),
            Err(&[
                "/name: 0 characters, fewer than 1",
                "/age: 200 is greater than the maximum 150",
                "/x: no value is allowed here",
            ]),
        );
        check(
            person.clone(),
            json!({"age": 1.5}),
            Err(&["/: missing required property `name`", "/age: expected integer, found number"]),
        );
        check(
            person,
            json!({"name": "Zoë", "age": 1, "tags": ["a", "c", "b"]}),
            Err(&["/tags: 3 items, too many", "/tags/1: \"c\" is not one of [\"a\",\"b\"]"]),
        );
        check(json!({"type": ["string", "null"]}), json!(null), Ok(()));
        check(json!({"const": 3}), json!(4), Err(&["/: 4 is not 3"]));
        check(json!(true), json!({"anything": 1}), Ok(()));
    }

    #[test]
    fn refs() {
        let tree = json!({
            "$defs": {"node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
            "$ref": "#/$defs/node"
        });
        check(tree.clone(), json!({"kids": [{"kids": []}]}), Ok(()));
        check(tree, json!({"kids": [{"kids": 1}]}), Err(&["/kids/0/kids: expected array, found number"]));
        let loop_ = Schema::compile(json!({"$ref": "#"})).unwrap();
        assert!(loop_.validate(&json!(1)).is_err());
    }

    #[test]
    fn unsupported_or_malformed_schemas_are_refused() {
        for (schema, message) in [
            (
                json!({"type": "object", "properties": {"a": {"pattern": "x"}}}),
                "/properties/a/pattern: keyword `pattern` is not supported",
            ),
            (json!({"type": "text"}), "/type: `\"text\"` is not a type"),
            (json!({"required": "a"}), "/required: must be an array of property names"),
            (json!({"minLength": -1}), "/minLength: must be a non-negative integer"),
            (json!({"$ref": "#/definitions/x"}), "/$ref: `#/definitions/x` does not point into this schema"),
            (json!({"oneOf": []}), "/oneOf: keyword `oneOf` is not supported"),
            (json!([1]), "/: a schema must be an object or a boolean"),
        ] {
            let err = Schema::compile(schema.clone()).expect_err("must fail");
            assert!(err.starts_with(message), "{schema}: {err}");
        }
        assert!(
            Schema::compile(json!({"title": "t", "description": "d", "format": "email", "type": "string"})).is_ok()
        );
    }
}
