//! Routes: the messages allowed on one topic, and one record checked against them.
//!
//! A record is valid when it matches at least one message of its route ([`Route::check`]): its
//! payload (read as JSON, or as a JSON string for text, see [`content_type`](super::content_type)),
//! its key (as JSON or as a string, whichever the schema accepts) and its headers (strings, or JSON
//! for headers declared as another type). It is unchecked when it matches none but some message
//! cannot be checked, and invalid otherwise, with at most [`MAX_ERRORS`] errors of at most
//! [`MAX_ERROR_BYTES`] each. [`check_sample`] checks a sample given as parts (the HTTP `validate`
//! route, `eventgate validate`) with the same engine, by encoding it as a Kafka record first.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use jsonschema::Validator;
use serde_json::Value;

use super::compile::{Check, CompiledMessage};
use super::content_type::Content;
use crate::asyncapi::Policy;
use crate::wire::records::{Record, records, write_record};

/// The header eventgate adds to records that fail validation in `annotate` mode.
pub const ANNOTATION_HEADER: &str = "_asyncapi_eg_validation_error";

/// At most this many errors are reported per record.
pub const MAX_ERRORS: usize = 16;

/// Longest error text kept, in bytes: schema errors quote the offending value, which a producer
/// controls, so each text is cut (at a character boundary) and marked with `…`.
pub const MAX_ERROR_BYTES: usize = 256;

/// `text` cut to at most [`MAX_ERROR_BYTES`] bytes.
pub(crate) fn capped(mut text: String) -> String {
    if text.len() > MAX_ERROR_BYTES {
        let mut end = MAX_ERROR_BYTES - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// All messages allowed on one topic (or topic pattern) of one document.
pub struct Route {
    pub doc_id: String,
    /// The channel address as written.
    pub address: String,
    pub policy: Option<Policy>,
    pub messages: Vec<Arc<CompiledMessage>>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.messages.iter().map(|m| m.name.as_str()).collect();
        f.debug_struct("Route")
            .field("doc_id", &self.doc_id)
            .field("address", &self.address)
            .field("policy", &self.policy)
            .field("messages", &names)
            .finish()
    }
}

/// The outcome of checking one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The record matches the message with this index in the route.
    Valid(usize),
    /// It matches none; the errors say why (at most [`MAX_ERRORS`] of at most [`MAX_ERROR_BYTES`]
    /// each). Shared, so records that fail the same way hold one copy.
    Invalid(Arc<[String]>),
    /// It matches no message eventgate can check, but there are messages it cannot check.
    Unchecked(Arc<str>),
}

impl Outcome {
    /// The name used in metrics and CloudEvents extensions.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Valid(_) => "valid",
            Self::Invalid(_) => "invalid",
            Self::Unchecked(_) => "unchecked",
        }
    }
}

/// The record's value, key and headers as JSON, each read at most once per record.
struct Parsed<'r> {
    record: &'r Record<'r>,
    value: Option<Result<Value, String>>,
    key: Option<Result<(Option<Value>, Value), String>>,
}

impl<'r> Parsed<'r> {
    fn value(&mut self) -> &Result<Value, String> {
        let record = self.record;
        self.value.get_or_insert_with(|| match record.value {
            None => Ok(Value::Null),
            Some(bytes) => {
                let text = std::str::from_utf8(bytes).map_err(|e| {
                    format!("/: payload is not UTF-8 text (invalid byte at offset {})", e.valid_up_to())
                })?;
                serde_json::from_str(text).map_err(|e| format!("/: payload is not JSON: {e}"))
            }
        })
    }

    fn text(&self) -> Result<Value, String> {
        match self.record.value {
            None => Ok(Value::Null),
            Some(b) => std::str::from_utf8(b)
                .map(|t| Value::String(t.to_owned()))
                .map_err(|e| format!("/: payload is not UTF-8 text (invalid byte at offset {})", e.valid_up_to())),
        }
    }

    /// The key as JSON (when it parses) and as a string.
    fn key(&mut self) -> &Result<(Option<Value>, Value), String> {
        let record = self.record;
        self.key.get_or_insert_with(|| match record.key {
            None => Ok((None, Value::Null)),
            Some(bytes) => {
                let text = std::str::from_utf8(bytes)
                    .map_err(|e| format!("key: not UTF-8 text (invalid byte at offset {})", e.valid_up_to()))?;
                Ok((serde_json::from_str(text).ok(), Value::String(text.to_owned())))
            }
        })
    }

    fn headers(&self, json_headers: &HashSet<String>) -> Result<Value, String> {
        let mut obj = serde_json::Map::new();
        for (k, v) in self.record.headers() {
            let Ok(name) = std::str::from_utf8(k) else {
                return Err("headers: a header name is not UTF-8 text".into());
            };
            if name == ANNOTATION_HEADER {
                continue;
            }
            let value = match v {
                None => Value::Null,
                Some(bytes) => {
                    let text =
                        std::str::from_utf8(bytes).map_err(|_| format!("headers/{name}: value is not UTF-8 text"))?;
                    if json_headers.contains(name) {
                        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
                    } else {
                        Value::String(text.to_owned())
                    }
                }
            };
            obj.insert(name.to_owned(), value);
        }
        Ok(Value::Object(obj))
    }
}

/// Appends `<path>: <message>` for each error. Payload paths are the instance path (`/` for the
/// root); key and header paths are prefixed with `key` and `headers`.
fn schema_errors(v: &Validator, instance: &Value, prefix: &str, out: &mut Vec<String>) {
    // Most records are valid: the plain check is cheaper than collecting errors.
    if v.is_valid(instance) {
        return;
    }
    for e in v.iter_errors(instance).take(MAX_ERRORS) {
        let path = e.instance_path().to_string();
        let path = match (prefix, path.is_empty()) {
            ("", true) => "/".to_owned(),
            _ => format!("{prefix}{path}"),
        };
        // Where in the document the failing keyword is (`#/components/schemas/Order/properties/
        // amount/minimum`): every schema is compiled under the document's URN, so the location is
        // the document's own pointer, `$ref`s followed.
        let location = e.absolute_keyword_location().and_then(|u| u.as_str().split_once('#')).map(|(_, f)| f);
        out.push(capped(match location {
            Some(f) => format!("{path}: {e} (schema #{f})"),
            None => format!("{path}: {e}"),
        }));
    }
}

impl Route {
    /// Checks one record against every message of the route.
    pub fn check(&self, record: &Record<'_>) -> Outcome {
        let mut parsed = Parsed { record, value: None, key: None };
        let mut unchecked: Option<Arc<str>> = None;
        let mut all_errors: Vec<String> = Vec::new();
        let many = self.messages.len() > 1;
        for (i, m) in self.messages.iter().enumerate() {
            let mut errors = Vec::new();
            let mut cannot_check = None;
            match &m.payload {
                None => {}
                Some(Check::Unsupported(why)) => cannot_check = Some(format!("message {}: {why}", m.name)),
                Some(Check::Schema(v)) => {
                    let text;
                    let instance = match m.content {
                        Content::Text => {
                            text = parsed.text();
                            text.as_ref()
                        }
                        _ => parsed.value().as_ref(),
                    };
                    match instance {
                        Ok(_) if record.value.is_none() => {
                            if !v.is_valid(&Value::Null) {
                                errors.push("/: the record value is null (a tombstone), which the payload schema does not allow".into());
                            }
                        }
                        Ok(instance) => schema_errors(v, instance, "", &mut errors),
                        Err(e) => errors.push(e.clone()),
                    }
                }
            }
            match &m.key {
                None => {}
                Some(Check::Unsupported(why)) => cannot_check = Some(format!("message {} key: {why}", m.name)),
                Some(Check::Schema(v)) => match parsed.key() {
                    Err(e) => errors.push(e.clone()),
                    Ok((json, text)) => {
                        let json_ok = json.as_ref().is_some_and(|j| v.is_valid(j));
                        if !json_ok && !v.is_valid(text) {
                            // Report against the reading the producer most likely meant.
                            let shown = if record.key.is_none() { &Value::Null } else { json.as_ref().unwrap_or(text) };
                            schema_errors(v, shown, "key", &mut errors);
                        }
                    }
                },
            }
            match &m.headers {
                None => {}
                Some(Check::Unsupported(why)) => cannot_check = Some(format!("message {} headers: {why}", m.name)),
                Some(Check::Schema(v)) => match parsed.headers(&m.json_headers) {
                    Err(e) => errors.push(e),
                    Ok(h) => schema_errors(v, &h, "headers", &mut errors),
                },
            }
            if errors.is_empty() {
                match cannot_check {
                    None => return Outcome::Valid(i),
                    Some(why) => unchecked = Some(why.into()),
                }
            } else {
                for e in errors {
                    if all_errors.len() < MAX_ERRORS {
                        all_errors.push(if many { capped(format!("[{}] {e}", m.name)) } else { capped(e) });
                    }
                }
            }
        }
        if let Some(why) = unchecked {
            return Outcome::Unchecked(why);
        }
        if self.messages.is_empty() {
            return Outcome::Invalid(Arc::from([capped(format!(
                "/: topic `{}` allows no messages in document `{}`",
                self.address, self.doc_id
            ))]));
        }
        Outcome::Invalid(all_errors.into())
    }
}

/// Checks a sample with exactly the engine the produce path uses: the sample is encoded as a
/// Kafka record and read back.
pub fn check_sample(
    route: &Route,
    key: Option<&str>,
    value: Option<&[u8]>,
    headers: &BTreeMap<String, String>,
) -> Outcome {
    let mut raw = Vec::new();
    let hs: Vec<(&[u8], Option<&[u8]>)> = headers.iter().map(|(k, v)| (k.as_bytes(), Some(v.as_bytes()))).collect();
    write_record(&mut raw, 0, 0, key.map(str::as_bytes), value, hs.into_iter());
    match records(&raw).next() {
        Some(Ok(rec)) => route.check(&rec),
        _ => Outcome::Invalid(std::sync::Arc::from(["/: the sample cannot be encoded as a Kafka record".to_owned()])),
    }
}
