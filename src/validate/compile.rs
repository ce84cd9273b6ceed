//! Compiling: an AsyncAPI [`Document`] turned into a [`CompiledDoc`], every schema compiled once.
//!
//! Every payload, header and key schema becomes a `jsonschema` validator (draft-07 semantics,
//! formats checked, linear-time regular expressions so an uploaded pattern cannot backtrack
//! forever). The whole document is registered as one JSON Schema resource, so `$ref`s inside
//! schemas resolve as the spec says. A schema eventgate cannot evaluate (another schema format, or
//! a JSON Schema for a payload that is neither JSON nor text) compiles to `Check::Unsupported`, so
//! records of it come out unchecked, never valid. Channels of one document that share a topic form
//! one [`Route`].

use std::collections::HashSet;
use std::sync::Arc;

use jsonschema::Validator;
use serde_json::Value;

use super::content_type::Content;
use super::route::Route;
use crate::asyncapi::topic::TopicMatcher;
use crate::asyncapi::{Document, Message, SchemaFormat, SchemaSlot, SpecError};

/// One compiled schema slot.
pub(super) enum Check {
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
    pub(super) content: Content,
    pub(super) payload: Option<Check>,
    pub(super) key: Option<Check>,
    pub(super) headers: Option<Check>,
    /// Headers whose declared type is not a string: their values are read as JSON.
    pub(super) json_headers: HashSet<String>,
}

/// A document with every schema compiled.
pub struct CompiledDoc {
    pub id: String,
    pub doc: Document,
    pub(super) routes: Vec<(TopicMatcher, Arc<Route>)>,
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
