//! 2.x and 3.x documents reduced to channels → topics → messages → schema pointers.
//!
//! | | AsyncAPI 2.0–2.6 | AsyncAPI 3.0–3.1 |
//! |---|---|---|
//! | topic | channel name, or `bindings.kafka.topic` | channel `address`, or `bindings.kafka.topic` |
//! | messages | `publish.message` and `subscribe.message`, each a message or `oneOf` | channel `messages` |
//! | payload format | message `schemaFormat` | payload as a Multi Format Schema (`schemaFormat` + `schema`) |
//!
//! In both, a message's `headers` schema and its kafka binding `key` schema are validated too, and
//! message traits fill in fields the message does not set itself.
//!
//! 3.1 differs from 3.0 only by the ROS 2 bindings (`ros2` in the binding objects), which eventgate
//! does not read, so both are modelled alike. The `asyncapi` field must be a string
//! `MAJOR.MINOR.PATCH` naming one of [`SUPPORTED_VERSIONS`] (any patch; no pre-release).
//!
//! `$ref`s must stay within the document (`#/...`); every reference to another file met on the way
//! (around schemas, and inside the schemas eventgate compiles) is reported in one error.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use serde_json::{Map, Value};

use super::SpecError;
use super::topic::TopicMatcher;

/// What eventgate does with records of a topic that fail validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Forward the record with a `_asyncapi_eg_validation_error` header.
    Annotate,
    /// Refuse the partition's batch with INVALID_RECORD.
    Reject,
    /// Do not validate.
    Off,
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "annotate" => Ok(Self::Annotate),
            "reject" => Ok(Self::Reject),
            "off" => Ok(Self::Off),
            other => Err(format!("unknown policy `{other}` (annotate, reject or off)")),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Annotate => "annotate",
            Self::Reject => "reject",
            Self::Off => "off",
        })
    }
}

/// The schema language of a schema slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaFormat {
    /// AsyncAPI Schema or JSON Schema: validated with draft-07 semantics.
    JsonSchema,
    /// Anything else (Avro, Protobuf, RAML…): records are reported as unchecked.
    Other(String),
}

impl SchemaFormat {
    fn from_media_type(format: &str) -> Self {
        let base = format.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        match base.as_str() {
            "application/vnd.aai.asyncapi"
            | "application/vnd.aai.asyncapi+json"
            | "application/vnd.aai.asyncapi+yaml"
            | "application/schema+json"
            | "application/schema+yaml" => Self::JsonSchema,
            _ => Self::Other(format.to_owned()),
        }
    }
}

/// Where a schema lives in the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaSlot {
    /// JSON pointer (escaped) to the schema.
    pub pointer: String,
    pub format: SchemaFormat,
}

/// One message a channel allows.
#[derive(Debug, Clone)]
pub struct Message {
    pub name: String,
    /// JSON pointer to the message object (after following `$ref`s).
    pub pointer: String,
    pub payload: Option<SchemaSlot>,
    pub headers: Option<SchemaSlot>,
    pub key: Option<SchemaSlot>,
    pub content_type: Option<String>,
    /// `x-eventgate-ce-type`: the CloudEvents `type` for records of this message.
    pub ce_type: Option<String>,
}

/// One channel, with the topic it maps to.
#[derive(Debug, Clone)]
pub struct Channel {
    /// The channel's key in `channels`.
    pub id: String,
    pub topic: TopicMatcher,
    /// `x-eventgate-policy` on the channel.
    pub policy: Option<Policy>,
    pub messages: Vec<Message>,
}

/// A modelled AsyncAPI document.
#[derive(Debug, Clone)]
pub struct Document {
    /// The `asyncapi` version string.
    pub asyncapi: String,
    pub title: String,
    pub info_version: String,
    pub channels: Vec<Channel>,
    /// Things a person should know that do not make the document unusable.
    pub warnings: Vec<String>,
    /// The parsed document, which schema pointers point into.
    pub root: Value,
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn str_at<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

/// The AsyncAPI versions eventgate reads, as (major, highest minor); any patch of each.
const VERSIONS: &[(u64, u64)] = &[(2, 6), (3, 1)];

/// The versions eventgate reads, for people (any patch release of each).
pub const SUPPORTED_VERSIONS: &str = "2.0.0–2.6.0, 3.0.0, 3.1.0";

/// How many external `$ref`s an error lists; the rest are counted.
pub const MAX_LISTED_REFS: usize = 20;

/// The major version of a document's `asyncapi` field, if eventgate reads it.
fn spec_major(field: Option<&Value>) -> Result<(String, u64), SpecError> {
    let version = match field {
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) => {
            return Err(SpecError::VersionFormat {
                found: n.to_string(),
                why: format!(
                    "it is a number (YAML reads an unquoted {n} as one); the version is a string \
                     MAJOR.MINOR.PATCH, such as 3.0.0"
                ),
            });
        }
        Some(other) => return Err(SpecError::NotAsyncApi(format!("`asyncapi` must be a string, not {other}"))),
        None => return Err(SpecError::NotAsyncApi("no `asyncapi` version field".into())),
    };
    let format_error = |why: &str| SpecError::VersionFormat { found: version.clone(), why: why.to_owned() };
    let (core, suffix) = match version.find(['-', '+']) {
        Some(i) => (&version[..i], true),
        None => (version.as_str(), false),
    };
    // MAJOR.MINOR.PATCH, each a number without leading zeros (semver.org, item 2).
    let parts: Vec<Option<u64>> = core
        .split('.')
        .map(|p| {
            let number = !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (p == "0" || !p.starts_with('0'));
            number.then(|| p.parse().ok()).flatten()
        })
        .collect();
    let [Some(major), Some(minor), Some(_patch)] = parts[..] else {
        return Err(format_error("it must be a semantic version MAJOR.MINOR.PATCH, such as 3.0.0"));
    };
    if suffix {
        return Err(format_error(
            "pre-release and build versions are not supported (nor by the official parser): use a released \
             version, such as 3.0.0",
        ));
    }
    if !VERSIONS.iter().any(|&(m, highest)| m == major && minor <= highest) {
        return Err(SpecError::Version(version.clone()));
    }
    Ok((version.clone(), major))
}

/// The external `$ref`s met while modelling a document: each makes it unusable, and all of them
/// are reported together ([`MAX_LISTED_REFS`] by name, the rest counted).
#[derive(Default)]
struct External {
    seen: HashSet<(String, String)>,
    listed: Vec<(String, String)>,
}

impl External {
    fn add(&mut self, at: &str, reference: &str) {
        let entry = (at.to_owned(), reference.to_owned());
        if self.listed.len() < MAX_LISTED_REFS && !self.seen.contains(&entry) {
            self.listed.push(entry.clone());
        }
        self.seen.insert(entry);
    }

    fn into_error(self) -> Option<SpecError> {
        (!self.seen.is_empty()).then_some(SpecError::ExternalRefs { refs: self.listed, total: self.seen.len() })
    }
}

/// Stands in for what an external `$ref` points to, so modelling goes on and finds the others.
static UNRESOLVED: LazyLock<Value> = LazyLock::new(|| Value::Object(Map::new()));

/// A `$ref`'s fragment as a JSON pointer, if it is a local reference (`#/...`).
fn local_pointer(reference: &str) -> Result<String, &'static str> {
    let fragment = reference.strip_prefix('#').ok_or("only references within the document (`#/...`) are supported")?;
    let pointer = percent_encoding::percent_decode_str(fragment)
        .decode_utf8()
        .map_err(|_| "the pointer is not valid percent-encoded UTF-8")?
        .into_owned();
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err("the fragment is not a JSON pointer");
    }
    Ok(pointer)
}

/// Follows local `$ref`s within one document, and notes the external ones.
struct Resolver<'a> {
    root: &'a Value,
    external: RefCell<External>,
}

impl<'a> Resolver<'a> {
    /// `v` (found at `at`) with every `$ref` followed; returns the final pointer and value. An
    /// external `$ref` is noted and stands for an empty mapping.
    fn deref(&self, at: &str, v: &'a Value) -> Result<(String, &'a Value), SpecError> {
        let mut seen = HashSet::new();
        let (mut at, mut v) = (at.to_owned(), v);
        while let Some(reference) = v.get("$ref") {
            let reference = reference.as_str().ok_or_else(|| SpecError::Ref {
                at: at.clone(),
                reference: reference.to_string(),
                why: "$ref must be a string".into(),
            })?;
            if !reference.starts_with('#') {
                self.external.borrow_mut().add(&at, reference);
                return Ok((at, &UNRESOLVED));
            }
            let (pointer, target) = self.lookup(&at, reference)?;
            if !seen.insert(pointer.clone()) || seen.len() > 64 {
                return Err(SpecError::Ref { at, reference: reference.into(), why: "circular reference".into() });
            }
            at = pointer;
            v = target;
        }
        Ok((at, v))
    }

    fn lookup(&self, at: &str, reference: &str) -> Result<(String, &'a Value), SpecError> {
        let err =
            |why: &str| SpecError::Ref { at: at.to_owned(), reference: reference.to_owned(), why: why.to_owned() };
        let pointer = local_pointer(reference).map_err(err)?;
        let target = self.root.pointer(&pointer).ok_or_else(|| err("nothing at that location"))?;
        Ok((pointer, target))
    }

    fn deref_opt(&self, at: &str, v: Option<&'a Value>) -> Result<Option<(String, &'a Value)>, SpecError> {
        v.map(|v| self.deref(at, v)).transpose()
    }
}

/// Keywords whose values are instance data, not schemas: a `$ref` inside them is data too.
const DATA_KEYWORDS: &[&str] = &["enum", "const", "default", "examples", "example"];

/// Keywords whose values map names to schemas: their keys are names, never keywords.
const NAMED_SCHEMAS: &[&str] = &["properties", "patternProperties", "definitions", "$defs", "dependencies"];

/// Notes the external `$ref`s a JSON Schema at `pointer` reaches: inside it, and inside the
/// schemas its local `$ref`s lead to (broken local ones are the schema compiler's to report).
/// Each value is looked at once, however many schemas reach it.
fn scan_schema<'a>(root: &'a Value, pointer: &str, external: &mut External, done: &mut HashSet<*const Value>) {
    let Some(schema) = root.pointer(pointer) else {
        return;
    };
    // (pointer, value, whether the value is a map of names to schemas)
    let mut stack: Vec<(String, &'a Value, bool)> = vec![(pointer.to_owned(), schema, false)];
    while let Some((at, v, names)) = stack.pop() {
        if !done.insert(v as *const Value) {
            continue;
        }
        match v {
            Value::Object(map) => {
                if !names && let Some(Value::String(reference)) = map.get("$ref") {
                    match local_pointer(reference) {
                        Ok(target) => {
                            if let Some(t) = root.pointer(&target) {
                                stack.push((target, t, false));
                            }
                        }
                        Err(_) if !reference.starts_with('#') => external.add(&at, reference),
                        Err(_) => {}
                    }
                }
                for (k, child) in map {
                    if !names && (DATA_KEYWORDS.contains(&k.as_str()) || k == "$ref") {
                        continue;
                    }
                    let child_names = !names && NAMED_SCHEMAS.contains(&k.as_str());
                    stack.push((format!("{at}/{}", escape(k)), child, child_names));
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    stack.push((format!("{at}/{i}"), child, false));
                }
            }
            _ => {}
        }
    }
}

impl Document {
    /// Models a parsed document.
    pub fn from_value(root: Value) -> Result<Self, SpecError> {
        let obj = root.as_object().ok_or_else(|| SpecError::NotAsyncApi("the document is not a mapping".into()))?;
        let (asyncapi, major) = spec_major(obj.get("asyncapi"))?;
        let info = obj.get("info").filter(|i| i.is_object()).ok_or_else(|| SpecError::Invalid {
            at: "/info".into(),
            why: "the required `info` object is missing".into(),
        })?;
        let title = str_at(info, "title").unwrap_or_default().to_owned();
        let info_version = str_at(info, "version").unwrap_or_default().to_owned();
        let default_ct = str_at(&root, "defaultContentType").map(str::to_owned);

        let resolver = Resolver { root: &root, external: RefCell::new(External::default()) };
        let mut warnings = Vec::new();
        let mut channels = Vec::new();
        let empty = Map::new();
        let channel_map = match obj.get("channels") {
            None => &empty,
            Some(Value::Object(m)) => m,
            Some(_) => {
                return Err(SpecError::Invalid { at: "/channels".into(), why: "must be a mapping".into() });
            }
        };
        for (key, raw) in channel_map {
            let at = format!("/channels/{}", escape(key));
            let (at, ch) = resolver.deref(&at, raw)?;
            if !ch.is_object() {
                return Err(SpecError::Invalid { at, why: "a channel must be a mapping".into() });
            }
            let channel = if major == 2 {
                channel_v2(&resolver, key, &at, ch, default_ct.as_deref(), &mut warnings)?
            } else {
                channel_v3(&resolver, key, &at, ch, default_ct.as_deref(), &mut warnings)?
            };
            channels.extend(channel);
        }
        let mut external = resolver.external.into_inner();
        let mut done = HashSet::new();
        for slot in channels.iter().flat_map(|c| &c.messages).flat_map(|m| [&m.payload, &m.headers, &m.key]) {
            if let Some(SchemaSlot { pointer, format: SchemaFormat::JsonSchema }) = slot {
                scan_schema(&root, pointer, &mut external, &mut done);
            }
        }
        if let Some(e) = external.into_error() {
            return Err(e);
        }
        for ch in &channels {
            for m in &ch.messages {
                for (part, slot) in [("payload", &m.payload), ("headers", &m.headers), ("key", &m.key)] {
                    if let Some(SchemaSlot { format: SchemaFormat::Other(f), .. }) = slot {
                        warnings.push(format!(
                            "message `{}` {part} uses schema format {f}, which eventgate cannot validate: \
                             records that match no other message are reported as unchecked",
                            m.name
                        ));
                    }
                }
            }
        }
        Ok(Self { asyncapi, title, info_version, channels, warnings, root })
    }

    /// The topic addresses (or templates) this document claims.
    pub fn topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self.channels.iter().map(|c| c.topic.address().to_owned()).collect();
        t.sort();
        t.dedup();
        t
    }
}

fn kafka_topic(resolver: &Resolver<'_>, at: &str, ch: &Value) -> Result<Option<String>, SpecError> {
    let Some((b_at, bindings)) = resolver.deref_opt(&format!("{at}/bindings"), ch.get("bindings"))? else {
        return Ok(None);
    };
    let Some((_, kafka)) = resolver.deref_opt(&format!("{b_at}/kafka"), bindings.get("kafka"))? else {
        return Ok(None);
    };
    Ok(str_at(kafka, "topic").map(str::to_owned))
}

fn policy_of(at: &str, ch: &Value) -> Result<Option<Policy>, SpecError> {
    match ch.get("x-eventgate-policy") {
        None => Ok(None),
        Some(Value::String(s)) => {
            s.parse().map(Some).map_err(|why| SpecError::Invalid { at: format!("{at}/x-eventgate-policy"), why })
        }
        Some(other) => Err(SpecError::Invalid {
            at: format!("{at}/x-eventgate-policy"),
            why: format!("must be annotate, reject or off, not {other}"),
        }),
    }
}

/// The `enum` of each channel parameter: 2.x keeps it in the parameter's `schema`, 3.0 on the
/// parameter itself.
fn parameter_enums(
    resolver: &Resolver<'_>,
    at: &str,
    ch: &Value,
    major: u8,
) -> Result<Vec<(String, Vec<String>)>, SpecError> {
    let mut out = Vec::new();
    let Some((p_at, params)) = resolver.deref_opt(&format!("{at}/parameters"), ch.get("parameters"))? else {
        return Ok(out);
    };
    let Some(params) = params.as_object() else {
        return Ok(out);
    };
    for (name, p) in params {
        let (p_at, p) = resolver.deref(&format!("{p_at}/{}", escape(name)), p)?;
        let holder = if major == 2 {
            match resolver.deref_opt(&format!("{p_at}/schema"), p.get("schema"))? {
                Some((_, s)) => s,
                None => continue,
            }
        } else {
            p
        };
        if let Some(values) = holder.get("enum").and_then(Value::as_array) {
            out.push((name.clone(), values.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()));
        }
    }
    Ok(out)
}

fn matcher(address: &str, enums: &[(String, Vec<String>)], at: &str) -> Result<TopicMatcher, SpecError> {
    TopicMatcher::new(address, |p| enums.iter().find(|(n, _)| n == p).map(|(_, v)| v.clone()))
        .map_err(|why| SpecError::Invalid { at: at.to_owned(), why })
}

fn channel_v2(
    resolver: &Resolver<'_>,
    key: &str,
    at: &str,
    ch: &Value,
    default_ct: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<Option<Channel>, SpecError> {
    let address = kafka_topic(resolver, at, ch)?.unwrap_or_else(|| key.to_owned());
    let enums = parameter_enums(resolver, at, ch, 2)?;
    let mut messages = Vec::new();
    for op in ["publish", "subscribe"] {
        let op_at = format!("{at}/{op}");
        let Some((op_at, operation)) = resolver.deref_opt(&op_at, ch.get(op))? else {
            continue;
        };
        if let Some(m) = operation.get("message") {
            collect_messages(resolver, &format!("{op_at}/message"), m, 2, None, default_ct, &mut messages)?;
        }
    }
    finish_channel(key, &address, at, ch, &enums, messages, warnings)
}

fn channel_v3(
    resolver: &Resolver<'_>,
    key: &str,
    at: &str,
    ch: &Value,
    default_ct: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<Option<Channel>, SpecError> {
    let address = match kafka_topic(resolver, at, ch)? {
        Some(t) => t,
        None => match ch.get("address") {
            Some(Value::String(a)) => a.clone(),
            Some(Value::Null) | None => {
                warnings.push(format!("channel `{key}` has no address (unknown or dynamic): it validates no topic"));
                return Ok(None);
            }
            Some(other) => {
                return Err(SpecError::Invalid {
                    at: format!("{at}/address"),
                    why: format!("must be a string, not {other}"),
                });
            }
        },
    };
    let enums = parameter_enums(resolver, at, ch, 3)?;
    let mut messages = Vec::new();
    if let Some((m_at, map)) = resolver.deref_opt(&format!("{at}/messages"), ch.get("messages"))? {
        let map = map
            .as_object()
            .ok_or_else(|| SpecError::Invalid { at: m_at.clone(), why: "`messages` must be a mapping".into() })?;
        for (id, m) in map {
            collect_messages(resolver, &format!("{m_at}/{}", escape(id)), m, 3, Some(id), default_ct, &mut messages)?;
        }
    }
    finish_channel(key, &address, at, ch, &enums, messages, warnings)
}

/// The channel, once its topic and messages are known (the same for 2.x and 3.0).
fn finish_channel(
    key: &str,
    address: &str,
    at: &str,
    ch: &Value,
    enums: &[(String, Vec<String>)],
    mut messages: Vec<Message>,
    warnings: &mut Vec<String>,
) -> Result<Option<Channel>, SpecError> {
    dedup_messages(&mut messages);
    if messages.is_empty() {
        warnings.push(format!("channel `{key}` has no messages: records on `{address}` cannot match any"));
    }
    Ok(Some(Channel { id: key.to_owned(), topic: matcher(address, enums, at)?, policy: policy_of(at, ch)?, messages }))
}

/// The same message reached twice (publish and subscribe of one 2.x channel) counts once.
fn dedup_messages(messages: &mut Vec<Message>) {
    let mut seen = HashSet::new();
    messages.retain(|m| seen.insert(m.pointer.clone()));
}

/// Adds the message at `at` (a message, a `$ref` to one, or a 2.x `oneOf` of them).
fn collect_messages<'a>(
    resolver: &Resolver<'a>,
    at: &str,
    raw: &'a Value,
    major: u8,
    map_key: Option<&str>,
    default_ct: Option<&str>,
    out: &mut Vec<Message>,
) -> Result<(), SpecError> {
    let (at, m) = resolver.deref(at, raw)?;
    if let Some(alternatives) = m.get("oneOf").and_then(Value::as_array) {
        for (i, alt) in alternatives.iter().enumerate() {
            collect_messages(resolver, &format!("{at}/oneOf/{i}"), alt, major, None, default_ct, out)?;
        }
        return Ok(());
    }
    if !m.is_object() {
        return Err(SpecError::Invalid { at, why: "a message must be a mapping".into() });
    }
    // Traits fill in what the message leaves out (the message's own fields win).
    let mut fields: Vec<(&'a str, String, &'a Value)> = Vec::new();
    let mut take = |prefix: &str, obj: &'a Value| {
        if let Some(o) = obj.as_object() {
            for (k, v) in o {
                if !fields.iter().any(|(name, _, _)| *name == k.as_str()) {
                    fields.push((k.as_str(), format!("{prefix}/{}", escape(k)), v));
                }
            }
        }
    };
    take(&at, m);
    if let Some(traits) = m.get("traits").and_then(Value::as_array) {
        for (i, t) in traits.iter().enumerate() {
            // 2.x allows `[trait, mergeOptions]` pairs; the trait is the first element.
            let t = match t.as_array() {
                Some(pair) => pair.first().unwrap_or(&Value::Null),
                None => t,
            };
            let (t_at, t) = resolver.deref(&format!("{at}/traits/{i}"), t)?;
            take(&t_at, t);
        }
    }
    let field = |name: &str| fields.iter().find(|(n, _, _)| *n == name).map(|(_, p, v)| (p.clone(), *v));

    let name = field("name")
        .and_then(|(_, v)| v.as_str().map(str::to_owned))
        .or_else(|| field("messageId").and_then(|(_, v)| v.as_str().map(str::to_owned)))
        .or_else(|| map_key.map(str::to_owned))
        .or_else(|| at.strip_prefix("/components/messages/").map(|k| k.replace("~1", "/").replace("~0", "~")))
        .unwrap_or_else(|| at.clone());
    let schema_format = field("schemaFormat").and_then(|(_, v)| v.as_str().map(str::to_owned));
    let payload = match field("payload") {
        Some((p_at, p)) => Some(schema_slot(resolver, &p_at, p, major, schema_format.as_deref())?),
        None => None,
    };
    let headers = match field("headers") {
        Some((h_at, h)) => Some(schema_slot(resolver, &h_at, h, major, None)?),
        None => None,
    };
    let key = match field("bindings") {
        Some((b_at, b)) => {
            let (b_at, b) = resolver.deref(&b_at, b)?;
            match resolver.deref_opt(&format!("{b_at}/kafka"), b.get("kafka"))? {
                Some((k_at, kafka)) => match kafka.get("key") {
                    Some(k) => Some(schema_slot(resolver, &format!("{k_at}/key"), k, major, None)?),
                    None => None,
                },
                None => None,
            }
        }
        None => None,
    };
    out.push(Message {
        name,
        pointer: at.clone(),
        payload,
        headers,
        key,
        content_type: field("contentType")
            .and_then(|(_, v)| v.as_str().map(str::to_owned))
            .or(default_ct.map(str::to_owned)),
        ce_type: m.get("x-eventgate-ce-type").and_then(Value::as_str).map(str::to_owned),
    });
    Ok(())
}

/// A schema slot; 3.0 schemas may be Multi Format Schema Objects (`schemaFormat` + `schema`).
fn schema_slot(
    resolver: &Resolver<'_>,
    at: &str,
    raw: &Value,
    major: u8,
    v2_format: Option<&str>,
) -> Result<SchemaSlot, SpecError> {
    let (at, schema) = resolver.deref(at, raw)?;
    if major >= 3
        && let (Some(format), Some(_)) = (str_at(schema, "schemaFormat"), schema.get("schema"))
    {
        return Ok(SchemaSlot { pointer: format!("{at}/schema"), format: SchemaFormat::from_media_type(format) });
    }
    let format = v2_format.map(SchemaFormat::from_media_type).unwrap_or(SchemaFormat::JsonSchema);
    if format == SchemaFormat::JsonSchema && !(schema.is_object() || schema.is_boolean()) {
        return Err(SpecError::Invalid { at, why: "a schema must be a mapping or a boolean".into() });
    }
    Ok(SchemaSlot { pointer: at, format })
}

#[cfg(test)]
mod tests;
