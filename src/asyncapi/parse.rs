//! Document text to `serde_json::Value`.
//!
//! JSON documents are read by `serde_json` (strict JSON, exact positions); everything else by
//! `serde-saphyr`, a maintained pure-Rust YAML parser whose budgets stop alias bombs and runaway
//! nesting. Duplicate keys are errors in both. Errors name the line and column.
//!
//! YAML is read with the YAML 1.2 *core schema*, as the official AsyncAPI parser reads it, not with
//! YAML 1.1's wider guesses. A plain scalar is
//!
//! | written | read as |
//! |---|---|
//! | `null`, `Null`, `NULL`, `~`, nothing | null |
//! | `true`, `True`, `TRUE`, `false`, `False`, `FALSE` | a boolean |
//! | `[-+]?[0-9]+` (`12`, `-3`, `0755`) | a decimal integer (`0755` is 755, not octal) |
//! | `0o[0-7]+`, `0x[0-9a-fA-F]+` | an octal or hexadecimal integer (`0o17` is 15, `0x1F` is 31) |
//! | digits with a fraction, an exponent or both, signed or not (`1.5`, `.5`, `1.`, `-2e3`) | a number |
//! | `.inf`, `-.inf`, `.nan` (any of their spellings) | refused: JSON has no such number |
//! | anything else | a string |
//!
//! So the YAML 1.1 booleans `on`, `off`, `yes`, `no`, `y`, `n` are strings, as are sexagesimal
//! `1:20`, binary `0b101`, signed `-0x1F`, `1_000`, `-.nan` and dates. Quoted and block scalars are
//! always strings. Merge keys (`<<: *anchor`) are expanded, as the official parser does.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use serde_saphyr::Spanned;

use super::SpecError;

/// Deepest nesting accepted in a document (serde_json's own recursion limit is 128; serde-saphyr's
/// budget stops YAML at 64).
const MAX_DEPTH: usize = 128;

/// Parses a YAML or JSON document.
pub fn parse(text: &str) -> Result<Value, SpecError> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let value = if trimmed.starts_with('{') {
        serde_json::from_str::<Value>(trimmed).map_err(|e| SpecError::Syntax(format!("invalid JSON: {e}")))?
    } else {
        read_yaml(trimmed)?
    };
    if depth(&value) > MAX_DEPTH {
        return Err(SpecError::Syntax(format!("document nests deeper than {MAX_DEPTH} levels")));
    }
    Ok(value)
}

/// Stack of the thread YAML is read on: serde-saphyr stops nesting at 64 levels, and reading a
/// level with its source position costs up to 40 KiB of stack in a debug build (a tenth of that
/// in release), more than a 2 MiB runtime or test thread can always spare.
const YAML_STACK: usize = 8 << 20;

/// [`parse_yaml`] on a thread of its own, so how deep a document nests never depends on the
/// caller's stack.
fn read_yaml(text: &str) -> Result<Value, SpecError> {
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("yaml-reader".into())
            .stack_size(YAML_STACK)
            .spawn_scoped(scope, || parse_yaml(text))
            .map_err(|e| SpecError::Syntax(format!("cannot start the YAML reader: {e}")))?;
        reader.join().unwrap_or_else(|_| Err(SpecError::Syntax("the YAML reader failed".into())))
    })
}

/// Parses YAML text holding one or more documents (`---` between them), each read like [`parse`]
/// reads one. An empty document is `null`.
pub fn parse_multi(text: &str) -> Result<Vec<Value>, SpecError> {
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("yaml-reader".into())
            .stack_size(YAML_STACK)
            .spawn_scoped(scope, || {
                let nodes: Vec<Spanned<Node>> = serde_saphyr::from_str_multiple_with_options(text, yaml_options())
                    .map_err(|e| SpecError::Syntax(yaml_error(&e)))?;
                let values = nodes.into_iter().map(|n| to_value(text, n)).collect::<Result<Vec<_>, _>>()?;
                if values.iter().any(|v| depth(v) > MAX_DEPTH) {
                    return Err(SpecError::Syntax(format!("a document nests deeper than {MAX_DEPTH} levels")));
                }
                Ok(values)
            })
            .map_err(|e| SpecError::Syntax(format!("cannot start the YAML reader: {e}")))?;
        reader.join().unwrap_or_else(|_| Err(SpecError::Syntax("the YAML reader failed".into())))
    })
}

/// The YAML 1.2 core schema, as serde-saphyr's options.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        // Only `true`/`false` (and their capitalised spellings) are booleans.
        strict_booleans: true,
        // `1_000` is a string in YAML 1.2.
        underscored_numbers_as_strings: true,
        // Infinities and NaN reach `resolve_number`, which refuses them with their location.
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::PassThrough,
    }
}

/// YAML text to a value, with the YAML 1.2 core schema (see the module docs).
fn parse_yaml(text: &str) -> Result<Value, SpecError> {
    let node: Spanned<Node> =
        serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|e| SpecError::Syntax(yaml_error(&e)))?;
    to_value(text, node)
}

/// The first line of a serde-saphyr error ("line L column C: what"), without its source snippet.
fn yaml_error(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    format!("invalid YAML: {}", first.strip_prefix("error: ").unwrap_or(first))
}

/// A number as serde-saphyr read it.
#[derive(Debug, Clone, Copy)]
enum Num {
    U(u64),
    I(i64),
    F(f64),
}

/// A YAML node as serde-saphyr resolved it; each child keeps where it was written, so numbers can
/// be read again from their source text.
#[derive(Debug)]
enum Node {
    Null,
    Bool(bool),
    Number(Num),
    String(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(String, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodeVisitor;

        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a YAML value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Bool(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
                Ok(Node::Number(Num::U(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Number(Num::I(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
                Ok(Node::Number(Num::F(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Node, E> {
                Ok(Node::String(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Node, E> {
                Ok(Node::String(v))
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
                Node::deserialize(deserializer)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Node::Map(entries))
            }
        }

        deserializer.deserialize_any(NodeVisitor)
    }
}

/// The node as JSON. Nesting is bounded by serde-saphyr's depth budget, so recursion is safe.
fn to_value(text: &str, node: Spanned<Node>) -> Result<Value, SpecError> {
    Ok(match node.value {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(b),
        Node::String(s) => Value::String(s),
        Node::Number(n) => {
            let span = node.defined.span();
            let raw = span.byte_offset().zip(span.byte_len()).and_then(|(offset, len)| {
                let start = usize::try_from(offset).ok()?;
                text.get(start..start.checked_add(usize::try_from(len).ok()?)?)
            });
            resolve_number(raw, n).map_err(|why| {
                let at = &node.referenced;
                SpecError::Syntax(format!("invalid YAML: line {} column {}: {why}", at.line(), at.column()))
            })?
        }
        Node::Seq(items) => Value::Array(items.into_iter().map(|i| to_value(text, i)).collect::<Result<_, _>>()?),
        Node::Map(entries) => {
            let mut map = Map::new();
            for (k, v) in entries {
                map.insert(k, to_value(text, v)?);
            }
            Value::Object(map)
        }
    })
}

/// A plain scalar that serde-saphyr read as a number, read again by the YAML 1.2 core schema
/// from its source text `raw` (when the parser could say where it was). Core-schema numbers stay
/// numbers; the YAML 1.1 forms serde-saphyr also accepts (`0b101`, `-0x1F`, `+0o7`) are strings.
fn resolve_number(raw: Option<&str>, parsed: Num) -> Result<Value, String> {
    let non_finite = |text: &str| {
        format!(
            "`{text}` is infinite or not a number, which JSON (and so JSON Schema) cannot hold; quote it if it is text"
        )
    };
    let parsed_value = |text: &str| match parsed {
        Num::U(v) => Ok(Value::from(v)),
        Num::I(v) => Ok(Value::from(v)),
        Num::F(v) => serde_json::Number::from_f64(v).map(Value::Number).ok_or_else(|| non_finite(text)),
    };
    let float = |text: &str| {
        text.parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| non_finite(text))
    };
    let Some(t) = raw.map(str::trim) else {
        return parsed_value("the number");
    };
    // A quoted scalar with an explicit numeric tag (`!!int "12"`): the tag decides.
    if t.starts_with(['\'', '"']) {
        return parsed_value(t);
    }
    let digits = |s: &str, ok: fn(&u8) -> bool| !s.is_empty() && s.as_bytes().iter().all(ok);
    let unsigned = t.strip_prefix(['-', '+']).unwrap_or(t);
    if digits(unsigned, u8::is_ascii_digit) {
        // Decimal, leading zeros and all: `0755` is 755.
        let plain = t.strip_prefix('+').unwrap_or(t);
        return match (plain.parse::<i64>(), plain.parse::<u64>()) {
            (Ok(v), _) => Ok(Value::from(v)),
            (_, Ok(v)) => Ok(Value::from(v)),
            _ => float(plain),
        };
    }
    let radix = |d: &str, radix: u32| u64::from_str_radix(d, radix).map(Value::from).or_else(|_| parsed_value(t));
    if let Some(d) = t.strip_prefix("0o").filter(|d| digits(d, |c| (b'0'..=b'7').contains(c))) {
        return radix(d, 8);
    }
    if let Some(d) = t.strip_prefix("0x").filter(|d| digits(d, u8::is_ascii_hexdigit)) {
        return radix(d, 16);
    }
    if is_core_float(t) {
        return float(t);
    }
    if matches!(unsigned, ".inf" | ".Inf" | ".INF") || matches!(t, ".nan" | ".NaN" | ".NAN") {
        return Err(non_finite(t));
    }
    Ok(Value::String(t.to_owned()))
}

/// `[-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?` (YAML 1.2.2, 10.3.2).
fn is_core_float(t: &str) -> bool {
    let b = t.strip_prefix(['-', '+']).unwrap_or(t).as_bytes();
    let run = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let int = run(0);
    let mut i = int;
    if b.get(i) == Some(&b'.') {
        let frac = run(i + 1);
        if int == 0 && frac == 0 {
            return false;
        }
        i += 1 + frac;
    } else if int == 0 {
        return false;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        let exp = run(i);
        if exp == 0 {
            return false;
        }
        i += exp;
    }
    i == b.len()
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
    use serde_json::json;

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

    /// `v: <scalar>` parsed, and the value of `v`.
    fn scalar(text: &str) -> Result<Value, SpecError> {
        parse(&format!("v: {text}\n")).map(|v| v["v"].clone())
    }

    #[test]
    fn yaml_1_1_booleans_are_strings() {
        for s in ["on", "off", "On", "OFF", "yes", "no", "Yes", "NO", "y", "n", "Y", "N", "tRUE"] {
            assert_eq!(scalar(s).unwrap(), json!(s), "{s}");
        }
        for (s, b) in
            [("true", true), ("True", true), ("TRUE", true), ("false", false), ("False", false), ("FALSE", false)]
        {
            assert_eq!(scalar(s).unwrap(), json!(b), "{s}");
        }
        let v = parse("enum: [on, off]\nrequired: [n, y]\non: yes\n").unwrap();
        assert_eq!(v, json!({"enum": ["on", "off"], "required": ["n", "y"], "on": "yes"}));
    }

    #[test]
    fn numbers_follow_the_yaml_1_2_core_schema() {
        for (s, n) in [
            ("0755", json!(755)),
            ("-007", json!(-7)),
            ("+12", json!(12)),
            ("0", json!(0)),
            ("0o17", json!(15)),
            ("0x1F", json!(31)),
            ("0xff", json!(255)),
            ("1.5", json!(1.5)),
            (".5", json!(0.5)),
            ("-1.5e3", json!(-1500.0)),
            ("1.", json!(1.0)),
            ("2.0", json!(2.0)),
            ("1E2", json!(100.0)),
            ("18446744073709551615", json!(u64::MAX)),
            ("-9223372036854775808", json!(i64::MIN)),
            ("18446744073709551616", json!(18446744073709551616.0)),
        ] {
            assert_eq!(scalar(s).unwrap(), n, "{s}");
        }
        // YAML 1.1 forms, and spellings the core schema does not know, are strings.
        for s in ["0X1F", "0b101", "-0b101", "-0x1F", "+0o7", "0o8", "1_000", "1:20", "190:20:30", "1:20:30.5"] {
            assert_eq!(scalar(s).unwrap(), json!(s), "{s}");
        }
        for s in ["2001-12-14", "-.nan", "+.nan", "Infinity", "NaN", "1e", "3.0.0", "0x"] {
            assert_eq!(scalar(s).unwrap(), json!(s), "{s}");
        }
        // Quoted and block scalars are always strings.
        assert_eq!(scalar("'0755'").unwrap(), json!("0755"));
        assert_eq!(scalar("\"0x1F\"").unwrap(), json!("0x1F"));
        assert_eq!(scalar("|\n  0755\n").unwrap(), json!("0755\n"));
        // Anchored numbers are read from where they were written.
        let v = parse("a: &n 0755\nb: *n\nc: [&m 0b1, *m]\n").unwrap();
        assert_eq!(v, json!({"a": 755, "b": 755, "c": ["0b1", "0b1"]}));
    }

    #[test]
    fn nulls_follow_the_yaml_1_2_core_schema() {
        for s in ["~", "null", "Null", "NULL", ""] {
            assert_eq!(scalar(s).unwrap(), Value::Null, "{s:?}");
        }
        for s in ["nUll", "'~'", "\"null\""] {
            assert!(scalar(s).unwrap().is_string(), "{s}");
        }
    }

    #[test]
    fn infinities_and_nan_are_refused_with_their_place() {
        for s in [".inf", "-.inf", "+.INF", ".Inf", ".nan", ".NaN", ".NAN", "1e999"] {
            let e = parse(&format!("a: 1\nv: [1, {s}]\n")).unwrap_err().to_string();
            assert!(e.contains("line 2 column 8") && e.contains("infinite or not a number"), "{s}: {e}");
        }
        assert_eq!(scalar("'.inf'").unwrap(), json!(".inf"));
    }

    #[test]
    fn scalar_styles_anchors_and_merge_keys() {
        let text = "plain: a b\nsingle: 'it''s'\ndouble: \"tab\\there\"\n\
                    keep: |+\n  a\n\nstrip: |-\n  a\n  b\nfolded: >\n  a\n  b\n\n  c\n\
                    flow: {x: [1, on, \"q\"]}\nbase: &b {k: 1, on: 2}\nmerged:\n  <<: *b\n  k: 3\n";
        assert_eq!(
            parse(text).unwrap(),
            json!({
                "plain": "a b", "single": "it's", "double": "tab\there",
                "keep": "a\n\n", "strip": "a\nb", "folded": "a b\nc\n",
                "flow": {"x": [1, "on", "q"]},
                "base": {"k": 1, "on": 2}, "merged": {"k": 3, "on": 2}
            })
        );
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
        // As deep as serde-saphyr allows (64 levels, the root mapping included) reads fine,
        // whatever the caller's stack.
        let deepest = format!("a: {}1{}", "[".repeat(63), "]".repeat(63));
        assert!(parse(&deepest).is_ok());
        let blocks: String = (1..64).map(|i| format!("{}k:\n", "  ".repeat(i))).collect();
        assert!(parse(&format!("a:\n{blocks}")).is_ok());
    }
}
