//! Validation: AsyncAPI documents compiled into validators, and records checked against them.
//!
//! [`compile`] turns a [`Document`] into a [`CompiledDoc`]: every payload, header and key schema is
//! compiled once into a `jsonschema` validator (draft-07 semantics, formats checked, linear-time
//! regular expressions so an uploaded pattern cannot backtrack forever). The whole document is
//! registered as one JSON Schema resource, so `$ref`s inside schemas resolve as the spec says.
//! [`Catalog`] is the immutable set of compiled documents with a topic index; the spec store swaps a
//! new catalog in atomically, and the produce path reads whichever one is current without a lock.
//!
//! A record is valid when it matches at least one message of its channel ([`Route::check`]).
//! [`batch`] applies a route to a whole record batch and annotates or rejects it.

pub mod batch;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use jsonschema::Validator;
use serde_json::Value;

use crate::asyncapi::topic::TopicMatcher;
use crate::asyncapi::{Document, Message, Policy, SchemaFormat, SchemaSlot, SpecError};
use crate::wire::records::Record;

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

/// How a payload is read before validation, from the message's content type.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Content {
    /// JSON (no content type, `application/json`, `*/*+json`): parsed.
    Json,
    /// `text/*`: validated as a JSON string.
    Text,
    /// Anything else: cannot be checked against a JSON Schema.
    Opaque(String),
}

impl Content {
    fn of(content_type: Option<&str>) -> Self {
        let Some(ct) = content_type else {
            return Self::Json;
        };
        let base = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        let (kind, sub) = base.split_once('/').unwrap_or((&base, ""));
        if sub == "json" || sub.ends_with("+json") {
            Self::Json
        } else if kind == "text" {
            Self::Text
        } else {
            Self::Opaque(ct.to_owned())
        }
    }
}

/// One compiled schema slot.
enum Check {
    Schema(Box<Validator>),
    /// A schema eventgate cannot evaluate; the reason says why.
    Unsupported(String),
}

/// A message of a channel, ready to check records against.
pub struct CompiledMessage {
    pub name: String,
    pub doc_id: String,
    /// JSON pointer to the message in its document.
    pub pointer: String,
    /// `urn:eventgate:spec:<document>#<pointer>`: the CloudEvents `dataschema` of its records.
    pub dataschema: String,
    pub content_type: Option<String>,
    pub ce_type: Option<String>,
    content: Content,
    payload: Option<Check>,
    key: Option<Check>,
    headers: Option<Check>,
    /// Headers whose declared type is not a string: their values are read as JSON.
    json_headers: HashSet<String>,
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

/// A document with every schema compiled.
pub struct CompiledDoc {
    pub id: String,
    pub doc: Document,
    routes: Vec<(TopicMatcher, Arc<Route>)>,
}

impl CompiledDoc {
    /// The route for an address of this document (for offline validation).
    pub fn route_for(&self, topic: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|(m, _)| m.matches(topic)).map(|(_, r)| r)
    }

    /// The only route, when the document describes exactly one topic.
    pub fn single_route(&self) -> Option<&Arc<Route>> {
        match self.routes.as_slice() {
            [(_, r)] => Some(r),
            _ => None,
        }
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

fn fragment(pointer: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'/').remove(b'~').remove(b'-').remove(b'_').remove(b'.');
    percent_encoding::utf8_percent_encode(pointer, KEEP).to_string()
}

/// Compiles every schema of `doc`, registered under id `id`.
pub fn compile(id: &str, doc: Document) -> Result<CompiledDoc, SpecError> {
    let base = format!("urn:eventgate:spec:{id}");
    let registry = jsonschema::Registry::new()
        .add(base.as_str(), jsonschema::Draft::Draft7.create_resource(doc.root.clone()))
        .and_then(|r| r.prepare())
        .map_err(|e| SpecError::Invalid { at: "/".into(), why: format!("cannot index the document's schemas: {e}") })?;
    let build = |slot: &SchemaSlot| -> Result<Check, SpecError> {
        if let SchemaFormat::Other(f) = &slot.format {
            return Ok(Check::Unsupported(format!("schema format {f} cannot be validated by eventgate")));
        }
        let target = doc.root.pointer(&slot.pointer).unwrap_or(&Value::Null);
        // Check the schema itself first, so the error points into the schema, not at the wrapper.
        if let Err(e) = jsonschema::draft7::meta::validate(target) {
            return Err(SpecError::Invalid {
                at: format!("{}{}", slot.pointer, e.instance_path()),
                why: format!("invalid schema: {e}"),
            });
        }
        let wrapper = serde_json::json!({ "$ref": format!("{base}#{}", fragment(&slot.pointer)) });
        jsonschema::draft7::options()
            .should_validate_formats(true)
            .with_pattern_options(jsonschema::PatternOptions::regex())
            .with_registry(&registry)
            .build(&wrapper)
            .map(|v| Check::Schema(Box::new(v)))
            .map_err(|e| SpecError::Invalid { at: slot.pointer.clone(), why: format!("invalid schema: {e}") })
    };
    let compile_message = |m: &Message| -> Result<Arc<CompiledMessage>, SpecError> {
        let content = Content::of(m.content_type.as_deref());
        let payload = match (&m.payload, &content) {
            (Some(slot), Content::Opaque(ct)) if slot.format == SchemaFormat::JsonSchema => {
                Some(Check::Unsupported(format!("content type {ct} is not JSON or text")))
            }
            (Some(slot), _) => Some(build(slot)?),
            (None, _) => None,
        };
        let json_headers = m.headers.as_ref().map(|h| non_string_properties(&doc.root, &h.pointer)).unwrap_or_default();
        Ok(Arc::new(CompiledMessage {
            name: m.name.clone(),
            doc_id: id.to_owned(),
            pointer: m.pointer.clone(),
            dataschema: format!("urn:eventgate:spec:{id}#{}", fragment(&m.pointer)),
            content_type: m.content_type.clone(),
            ce_type: m.ce_type.clone(),
            content,
            payload,
            key: m.key.as_ref().map(build).transpose()?,
            headers: m.headers.as_ref().map(build).transpose()?,
            json_headers,
        }))
    };

    // Channels of one document that share a topic form one route.
    let mut routes: Vec<(TopicMatcher, Route)> = Vec::new();
    for ch in &doc.channels {
        let messages = ch.messages.iter().map(compile_message).collect::<Result<Vec<_>, _>>()?;
        let claim = ch.topic.claim_key();
        match routes.iter_mut().find(|(m, _)| m.claim_key() == claim) {
            Some((_, route)) => {
                if ch.policy.is_some() && route.policy.is_some() && ch.policy != route.policy {
                    return Err(SpecError::Invalid {
                        at: format!("/channels/{}", ch.id),
                        why: format!("topic `{}` is given two different x-eventgate-policy values", route.address),
                    });
                }
                route.policy = route.policy.or(ch.policy);
                for m in messages {
                    if !route.messages.iter().any(|r| r.pointer == m.pointer) {
                        route.messages.push(m);
                    }
                }
            }
            None => routes.push((
                ch.topic.clone(),
                Route { doc_id: id.to_owned(), address: ch.topic.address().to_owned(), policy: ch.policy, messages },
            )),
        }
    }
    let routes = routes.into_iter().map(|(m, r)| (m, Arc::new(r))).collect();
    Ok(CompiledDoc { id: id.to_owned(), doc, routes })
}

/// Names of the header properties whose declared `type` does not allow a string.
fn non_string_properties(root: &Value, pointer: &str) -> HashSet<String> {
    fn deref<'v>(root: &'v Value, mut v: &'v Value) -> &'v Value {
        for _ in 0..32 {
            match v.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
                Some(p) => v = root.pointer(p).unwrap_or(&Value::Null),
                None => break,
            }
        }
        v
    }
    let mut out = HashSet::new();
    let schema = deref(root, root.pointer(pointer).unwrap_or(&Value::Null));
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, p) in props {
            let allows_string = match deref(root, p).get("type") {
                None => true,
                Some(Value::String(t)) => t == "string",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "string"),
                Some(_) => true,
            };
            if !allows_string {
                out.insert(name.clone());
            }
        }
    }
    out
}

/// Two documents claim the same topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic `{topic}` is already described by document `{other}`")]
pub struct Conflict {
    pub topic: String,
    pub other: String,
}

/// The compiled documents in force, with a topic index. Immutable once built.
#[derive(Default)]
pub struct Catalog {
    docs: Vec<Arc<CompiledDoc>>,
    exact: HashMap<String, Arc<Route>>,
    /// Patterns, most specific (longest literal part) first.
    patterns: Vec<(TopicMatcher, Arc<Route>)>,
}

impl Catalog {
    /// Indexes `docs`; fails if two of them claim the same topic.
    pub fn new(mut docs: Vec<Arc<CompiledDoc>>) -> Result<Self, Conflict> {
        docs.sort_by(|a, b| a.id.cmp(&b.id));
        let mut claims: HashMap<String, &str> = HashMap::new();
        let mut exact = HashMap::new();
        let mut patterns = Vec::new();
        for d in &docs {
            for (matcher, route) in &d.routes {
                if let Some(other) = claims.insert(matcher.claim_key(), &d.id) {
                    return Err(Conflict { topic: route.address.clone(), other: other.to_owned() });
                }
                match matcher {
                    TopicMatcher::Exact(t) => {
                        exact.insert(t.clone(), route.clone());
                    }
                    TopicMatcher::Pattern { .. } => patterns.push((matcher.clone(), route.clone())),
                }
            }
        }
        patterns.sort_by_key(|(m, _)| match m {
            TopicMatcher::Pattern { literal_len, .. } => std::cmp::Reverse(*literal_len),
            TopicMatcher::Exact(_) => std::cmp::Reverse(usize::MAX),
        });
        Ok(Self { docs, exact, patterns })
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    pub fn doc(&self, id: &str) -> Option<&Arc<CompiledDoc>> {
        self.docs.iter().find(|d| d.id == id)
    }

    /// The route for `topic`: an exact address first, else the most specific pattern.
    pub fn route(&self, topic: &str) -> Option<&Arc<Route>> {
        self.exact.get(topic).or_else(|| self.patterns.iter().find(|(m, _)| m.matches(topic)).map(|(_, r)| r))
    }

    /// A catalog with `doc` added (replacing a document of the same id).
    /// A conflict names the document already in force, whichever id sorts first.
    pub fn with(&self, doc: Arc<CompiledDoc>) -> Result<Self, Conflict> {
        let mut docs: Vec<_> = self.docs.iter().filter(|d| d.id != doc.id).cloned().collect();
        let claims: HashMap<String, &Route> = doc.routes.iter().map(|(m, r)| (m.claim_key(), &**r)).collect();
        for other in &docs {
            if let Some((m, _)) = other.routes.iter().find(|(m, _)| claims.contains_key(&m.claim_key())) {
                let topic = claims.get(&m.claim_key()).map(|r| r.address.clone()).unwrap_or_default();
                return Err(Conflict { topic, other: other.id.clone() });
            }
        }
        docs.push(doc);
        Self::new(docs)
    }

    /// A catalog without document `id`.
    pub fn without(&self, id: &str) -> Self {
        let docs = self.docs.iter().filter(|d| d.id != id).cloned().collect();
        // Removing a document cannot create a conflict.
        Self::new(docs).unwrap_or_default()
    }
}

/// What happens to records of topics no document describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum UnknownTopic {
    /// Forward them untouched.
    #[default]
    Pass,
    /// Refuse them with INVALID_RECORD.
    Reject,
}

/// How policies are chosen per topic.
#[derive(Debug, Clone)]
pub struct Policies {
    /// For described topics whose channel sets no `x-eventgate-policy`.
    pub default: Policy,
    /// Per-topic overrides from the configuration; they beat the documents.
    pub overrides: HashMap<String, Policy>,
    pub unknown_topic: UnknownTopic,
    /// The work budget of one Produce request ([`batch::Budget`]).
    pub max_decompressed_bytes: usize,
}

impl Default for Policies {
    fn default() -> Self {
        Self {
            default: Policy::Annotate,
            overrides: HashMap::new(),
            unknown_topic: UnknownTopic::Pass,
            max_decompressed_bytes: 64 << 20,
        }
    }
}

/// What to do with one topic of a Produce request.
pub enum Decision<'c> {
    /// Forward untouched.
    Pass,
    /// Check every record against `route` and apply `policy` (annotate or reject).
    Check { route: &'c Arc<Route>, policy: Policy },
    /// Refuse: no document describes the topic and `unknown_topic` is `reject`.
    RejectUnknown,
}

impl Policies {
    pub fn decide<'c>(&self, catalog: &'c Catalog, topic: &str) -> Decision<'c> {
        let forced = self.overrides.get(topic).copied();
        match catalog.route(topic) {
            Some(route) => match forced.or(route.policy).unwrap_or(self.default) {
                Policy::Off => Decision::Pass,
                policy => Decision::Check { route, policy },
            },
            None if forced == Some(Policy::Off) => Decision::Pass,
            None => match self.unknown_topic {
                UnknownTopic::Pass => Decision::Pass,
                UnknownTopic::Reject => Decision::RejectUnknown,
            },
        }
    }

    /// Whether any Produce request could need inspection at all.
    pub fn active(&self, catalog: &Catalog) -> bool {
        !catalog.is_empty() || self.unknown_topic == UnknownTopic::Reject
    }
}

/// The catalog in force and the policies, shared by every connection. The catalog is swapped
/// atomically when documents change; readers never wait.
pub struct Validation {
    pub catalog: arc_swap::ArcSwap<Catalog>,
    pub policies: Policies,
}

impl Validation {
    pub fn new(policies: Policies) -> Self {
        Self { catalog: arc_swap::ArcSwap::from_pointee(Catalog::default()), policies }
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
        out.push(capped(format!("{path}: {e}")));
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

#[cfg(test)]
mod tests;
