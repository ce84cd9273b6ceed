//! Which events a subscription wants: its topics, types, source and validation outcomes, and the
//! CloudEvents Subscriptions API filter dialects.
//!
//! | dialect | form | holds when |
//! |---|---|---|
//! | `exact` | `{"exact": {"type": "com.example.placed"}}` | the attribute equals the value |
//! | `prefix` | `{"prefix": {"type": "com.example."}}` | the attribute starts with the value |
//! | `suffix` | `{"suffix": {"subject": ".json"}}` | the attribute ends with the value |
//! | `all` | `{"all": [f, …]}` | every nested filter holds |
//! | `any` | `{"any": [f, …]}` | at least one nested filter holds |
//! | `not` | `{"not": f}` | the nested filter does not hold |
//!
//! Matching is case-sensitive, on the attribute's canonical string form (so `{"exact":
//! {"partition": "3"}}` matches partition 3); an attribute the event lacks never matches. Any other
//! dialect (`sql` included) refuses the subscription, as the Subscriptions API requires.

use std::borrow::Cow;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Deepest nesting of `all`/`any`/`not`.
pub const MAX_DEPTH: usize = 8;
/// Most filters in one subscription, nested ones included.
pub const MAX_NODES: usize = 256;

/// One filter expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Exact { attribute: String, value: String },
    Prefix { attribute: String, value: String },
    Suffix { attribute: String, value: String },
    All(Vec<Filter>),
    Any(Vec<Filter>),
    Not(Box<Filter>),
}

impl Filter {
    /// Whether the event whose attributes `attr` reads passes.
    pub fn matches<'a>(&self, attr: &dyn Fn(&str) -> Option<Cow<'a, str>>) -> bool {
        match self {
            Filter::Exact { attribute, value } => attr(attribute).is_some_and(|v| v == value.as_str()),
            Filter::Prefix { attribute, value } => attr(attribute).is_some_and(|v| v.starts_with(value.as_str())),
            Filter::Suffix { attribute, value } => attr(attribute).is_some_and(|v| v.ends_with(value.as_str())),
            Filter::All(fs) => fs.iter().all(|f| f.matches(attr)),
            Filter::Any(fs) => fs.iter().any(|f| f.matches(attr)),
            Filter::Not(f) => !f.matches(attr),
        }
    }

    /// How many filters this one is, nested ones included.
    pub fn nodes(&self) -> usize {
        1 + match self {
            Filter::All(fs) | Filter::Any(fs) => fs.iter().map(Filter::nodes).sum(),
            Filter::Not(f) => f.nodes(),
            _ => 0,
        }
    }

    /// Reads a filter from its JSON form, checking nesting and size.
    pub fn from_value(v: &Value) -> Result<Filter, String> {
        let mut nodes = 0;
        Self::read(v, 0, &mut nodes)
    }

    fn read(v: &Value, depth: usize, nodes: &mut usize) -> Result<Filter, String> {
        *nodes += 1;
        if *nodes > MAX_NODES {
            return Err(format!("more than {MAX_NODES} filters"));
        }
        if depth > MAX_DEPTH {
            return Err(format!("filters nest deeper than {MAX_DEPTH} levels"));
        }
        let Some(obj) = v.as_object().filter(|o| o.len() == 1) else {
            return Err("a filter is an object with one dialect: exact, prefix, suffix, all, any or not".into());
        };
        let Some((dialect, arg)) = obj.iter().next() else {
            return Err("empty filter".into());
        };
        let pair = |arg: &Value| -> Result<(String, String), String> {
            let m = arg.as_object().filter(|m| m.len() == 1).ok_or_else(|| {
                format!("`{dialect}` takes an object with exactly one attribute, e.g. {{\"type\": \"com.example\"}}")
            })?;
            let (attribute, value) = m.iter().next().ok_or("empty")?;
            check_attribute(attribute)?;
            let value =
                value.as_str().ok_or_else(|| format!("`{dialect}`: the value of `{attribute}` must be a string"))?;
            if dialect != "exact" && value.is_empty() {
                return Err(format!("`{dialect}`: the value of `{attribute}` must not be empty"));
            }
            Ok((attribute.clone(), value.to_owned()))
        };
        let list = |arg: &Value, nodes: &mut usize| -> Result<Vec<Filter>, String> {
            let items = arg
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| format!("`{dialect}` takes a non-empty array of filters"))?;
            items.iter().map(|f| Self::read(f, depth + 1, nodes)).collect()
        };
        Ok(match dialect.as_str() {
            "exact" => pair(arg).map(|(attribute, value)| Filter::Exact { attribute, value })?,
            "prefix" => pair(arg).map(|(attribute, value)| Filter::Prefix { attribute, value })?,
            "suffix" => pair(arg).map(|(attribute, value)| Filter::Suffix { attribute, value })?,
            "all" => Filter::All(list(arg, nodes)?),
            "any" => Filter::Any(list(arg, nodes)?),
            "not" => Filter::Not(Box::new(Self::read(arg, depth + 1, nodes)?)),
            other => {
                return Err(format!(
                    "filter dialect `{other}` is not supported (eventgate supports exact, prefix, suffix, all, any, not)"
                ));
            }
        })
    }

    /// The JSON form.
    pub fn to_value(&self) -> Value {
        let pair = |d: &str, a: &str, v: &str| {
            let mut inner = Map::new();
            inner.insert(a.to_owned(), Value::String(v.to_owned()));
            let mut outer = Map::new();
            outer.insert(d.to_owned(), Value::Object(inner));
            Value::Object(outer)
        };
        let one = |d: &str, v: Value| {
            let mut outer = Map::new();
            outer.insert(d.to_owned(), v);
            Value::Object(outer)
        };
        match self {
            Filter::Exact { attribute, value } => pair("exact", attribute, value),
            Filter::Prefix { attribute, value } => pair("prefix", attribute, value),
            Filter::Suffix { attribute, value } => pair("suffix", attribute, value),
            Filter::All(fs) => one("all", Value::Array(fs.iter().map(Filter::to_value).collect())),
            Filter::Any(fs) => one("any", Value::Array(fs.iter().map(Filter::to_value).collect())),
            Filter::Not(f) => one("not", f.to_value()),
        }
    }
}

/// CloudEvents attribute names: lower-case letters and digits, at most 20 (the spec's
/// recommendation; longer names would never match an event eventgate mirrors).
fn check_attribute(name: &str) -> Result<(), String> {
    let ok = !name.is_empty() && name.len() <= 20 && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok { Ok(()) } else { Err(format!("`{name}` is not a CloudEvents attribute name (a-z, 0-9, at most 20)")) }
}

impl Serialize for Filter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Filter::from_value(&v).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(name: &str) -> Option<Cow<'static, str>> {
        match name {
            "type" => Some(Cow::Borrowed("com.example.order.placed")),
            "source" => Some(Cow::Borrowed("kafka://kafka/orders")),
            "partition" => Some(Cow::Borrowed("3")),
            "validation" => Some(Cow::Borrowed("invalid")),
            _ => None,
        }
    }

    fn check(filter: Value) -> bool {
        Filter::from_value(&filter).expect("valid filter").matches(&event)
    }

    #[test]
    fn each_dialect_matches_as_the_subscriptions_api_says() {
        assert!(check(json!({"exact": {"type": "com.example.order.placed"}})));
        assert!(!check(json!({"exact": {"type": "com.example.order"}})));
        assert!(check(json!({"prefix": {"type": "com.example."}})));
        assert!(!check(json!({"prefix": {"type": "COM.example."}})), "case-sensitive");
        assert!(check(json!({"suffix": {"source": "/orders"}})));
        assert!(check(json!({"exact": {"partition": "3"}})), "integers compare as their string form");
        assert!(!check(json!({"exact": {"subject": ""}})), "an absent attribute never matches");
        assert!(check(json!({"not": {"exact": {"subject": "x"}}})), "not of an absent attribute holds");
        assert!(check(json!({"all": [{"prefix": {"type": "com."}}, {"exact": {"validation": "invalid"}}]})));
        assert!(!check(json!({"all": [{"prefix": {"type": "com."}}, {"exact": {"validation": "valid"}}]})));
        assert!(check(json!({"any": [{"exact": {"type": "x"}}, {"exact": {"validation": "invalid"}}]})));
        assert!(!check(json!({"any": [{"exact": {"type": "x"}}, {"exact": {"type": "y"}}]})));
    }

    #[test]
    fn unsupported_or_malformed_filters_are_refused_with_the_reason() {
        let err = |v: Value| Filter::from_value(&v).expect_err("must be refused");
        assert!(err(json!({"sql": "type = 'x'"})).contains("dialect `sql` is not supported"));
        assert!(err(json!({"exact": {"type": "a", "source": "b"}})).contains("exactly one attribute"));
        assert!(err(json!({"exact": {"Type": "a"}})).contains("not a CloudEvents attribute name"));
        assert!(err(json!({"all": []})).contains("non-empty array"));
        assert!(err(json!({"prefix": {"type": ""}})).contains("must not be empty"));
        assert!(err(json!({"exact": {"type": 3}})).contains("must be a string"));
        let mut deep = json!({"exact": {"type": "a"}});
        for _ in 0..=MAX_DEPTH {
            deep = json!({ "not": deep });
        }
        assert!(err(deep).contains("deeper"));
        let wide =
            json!({"any": (0..=MAX_NODES).map(|i| json!({"exact": {"type": i.to_string()}})).collect::<Vec<_>>()});
        assert!(err(wide).contains("more than"));
    }

    #[test]
    fn a_filter_reads_back_as_written() {
        let v = json!({"all": [{"not": {"suffix": {"type": ".test"}}}, {"any": [{"exact": {"source": "s"}}]}]});
        assert_eq!(Filter::from_value(&v).map(|f| f.to_value()), Ok(v));
    }
}
