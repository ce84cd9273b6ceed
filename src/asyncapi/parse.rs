//! Document text to `serde_json::Value`.
//!
//! JSON documents are read by `serde_json` (strict JSON, exact positions); everything else by
//! `serde-saphyr`, a maintained pure-Rust YAML parser whose budgets stop alias bombs and runaway
//! nesting. Duplicate keys are errors in both. Errors name the line and column.

use serde_json::Value;

use super::SpecError;

/// Deepest nesting accepted in a document (serde_json's own recursion limit is 128).
const MAX_DEPTH: usize = 128;

/// Parses a YAML or JSON document.
pub fn parse(text: &str) -> Result<Value, SpecError> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let value = if trimmed.starts_with('{') {
        serde_json::from_str::<Value>(trimmed).map_err(|e| SpecError::Syntax(format!("invalid JSON: {e}")))?
    } else {
        serde_saphyr::from_str::<Value>(trimmed).map_err(|e| SpecError::Syntax(yaml_error(&e)))?
    };
    if depth(&value) > MAX_DEPTH {
        return Err(SpecError::Syntax(format!("document nests deeper than {MAX_DEPTH} levels")));
    }
    Ok(value)
}

/// The first line of a serde-saphyr error ("line L column C: what"), without its source snippet.
fn yaml_error(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    format!("invalid YAML: {}", first.strip_prefix("error: ").unwrap_or(first))
}

fn depth(v: &Value) -> usize {
    // Iterative, so a deep document cannot overflow the stack here either.
    let mut max = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|c| (c, d + 1))),
            Value::Object(o) => stack.extend(o.values().map(|c| (c, d + 1))),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_parse_to_the_same_value() {
        let y = parse("asyncapi: 3.0.0\ninfo:\n  title: T\n").unwrap();
        let j = parse(r#"{"asyncapi": "3.0.0", "info": {"title": "T"}}"#).unwrap();
        assert_eq!(y, j);
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = parse("a: 1\nb:\n  c: [1, 2\n").unwrap_err().to_string();
        assert!(e.contains("line 3 column 6"), "{e}");
        let e = parse("{\"a\": 1,\n \"b\": }").unwrap_err().to_string();
        assert!(e.contains("line 2 column"), "{e}");
        let e = parse("a: 1\na: 2\n").unwrap_err().to_string();
        assert!(e.contains("duplicate"), "{e}");
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            bomb.push_str(&format!(
                "{}: &{} [*{}, *{}, *{}, *{}, *{}, *{}, *{}, *{}, *{}, *{}]\n",
                (b'a' + i) as char,
                (b'a' + i) as char,
                (b'a' + i - 1) as char,
                (b'a' + i - 1) as char,
                (b'a' + i - 1) as char,
                (b'a' + i - 1) as char,
                (b'a' + i - 1) as char,
                (b'a' + i - 1) as char,
                (b'a' + i - 1) as char,
                (b'a' + i - 1) as char,
                (b'a' + i - 1) as char,
                (b'a' + i - 1) as char
            ));
        }
        assert!(parse(&bomb).is_err());
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(parse(&format!("a: {deep}")).is_err());
    }
}
