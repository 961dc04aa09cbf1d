//! Maps YAML key paths (`models[1].price.input_per_1m_usd`) to the line they stand on, so that
//! config errors found after deserialization can still name a line.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser};

/// Path → 1-based line of the key (for mapping entries) or of the item (for sequence items).
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

/// Where the parser is inside one open collection.
enum Frame {
    /// A mapping: `key` is the key whose value comes next (None while a key is expected).
    Map { path: String, key: Option<String> },
    /// A sequence: `next` is the index of the next item.
    Seq { path: String, next: usize },
}

impl LineIndex {
    /// Builds the index. Text the parser rejects yields whatever was indexed before the error:
    /// the deserializer reports the syntax error itself, with its own line.
    pub fn build(text: &str) -> Self {
        let mut index = LineIndex::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut parser = Parser::new_from_str(text);
        while let Some(Ok((event, span))) = parser.next_event() {
            let line = span.start.line();
            match event {
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Map { path, key }) = stack.last_mut()
                        && key.is_none()
                    {
                        let child = join_key(path, &value);
                        index.lines.entry(child.clone()).or_insert(line);
                        *key = Some(child);
                        continue;
                    }
                    index.value_done(&mut stack, line);
                }
                Event::Alias(_) => index.value_done(&mut stack, line),
                Event::MappingStart(..) => {
                    let path = index.child_path(&mut stack, line);
                    stack.push(Frame::Map { path, key: None });
                }
                Event::SequenceStart(..) => {
                    let path = index.child_path(&mut stack, line);
                    stack.push(Frame::Seq { path, next: 0 });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                _ => {}
            }
        }
        index
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(line) = self.lines.get(p) {
                return Some(*line);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// A collection starts as the value of the current key or item: returns its path.
    fn child_path(&mut self, stack: &mut [Frame], line: usize) -> String {
        match stack.last_mut() {
            Some(Frame::Map { key, path }) => key.take().unwrap_or_else(|| path.clone()),
            Some(Frame::Seq { path, next }) => {
                let child = format!("{path}[{next}]");
                *next += 1;
                self.lines.entry(child.clone()).or_insert(line);
                child
            }
            None => String::new(),
        }
    }

    /// A scalar value ends the current key, or fills the next sequence item.
    fn value_done(&mut self, stack: &mut [Frame], line: usize) {
        match stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { path, next }) => {
                self.lines.entry(format!("{path}[{next}]")).or_insert(line);
                *next += 1;
            }
            None => {}
        }
    }
}

fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_string() } else { format!("{parent}.{key}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "version: 1\nbackends:\n  - name: a\n    url: x\n  - name: b\nmodels:\n  - {name: m, backend: b}\n  - name: n\n    price:\n      input_per_1m_usd: 1\n";

    fn check(path: &str, line: usize) {
        assert_eq!(LineIndex::build(DOC).line_of(path), Some(line), "{path}");
    }

    #[test]
    fn keys_items_and_nesting() {
        check("version", 1);
        check("backends", 2);
        check("backends[0]", 3);
        check("backends[0].url", 4);
        check("backends[1].name", 5);
        check("models[0].backend", 7);
        check("models[1].price.input_per_1m_usd", 10);
        // Unknown children fall back to the nearest known ancestor.
        check("models[1].price.nope", 9);
        check("models[7]", 6);
    }

    #[test]
    fn broken_yaml_does_not_panic() {
        let index = LineIndex::build("a: [1, 2\nb: {");
        assert_eq!(index.line_of("zzz"), None);
    }
}
