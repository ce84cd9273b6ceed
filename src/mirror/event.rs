//! One Kafka record as a CloudEvent 1.0 in the JSON event format (structured mode).
//!
//! | attribute | from |
//! |---|---|
//! | `id` | `<topic>-<partition>-<offset>`: a resend keeps its id, and JetStream deduplicates it |
//! | `source` | `kafka://<cluster>/<topic>` |
//! | `type` | the matched AsyncAPI message's `x-eventgate-ce-type`, else its name, else the default |
//! | `subject` | the record key, when it is UTF-8 text |
//! | `time` | the record timestamp |
//! | `datacontenttype`, `dataschema` | the message's content type; `urn:eventgate:spec:<doc>#<message>` |
//! | `partition`, `offset`, `validation`, `validationerrors` | extensions |
//!
//! Records that already are CloudEvents in the Kafka protocol binding keep their own attributes:
//! binary mode (`ce_*` headers, `content-type`) and structured mode (`content-type:
//! application/cloudevents+json`). JSON payloads go in `data`, other text in `data` as a string,
//! anything else in `data_base64`. An event larger than the stream accepts is sent without its data,
//! with `dataomitted: true` and `datasize`, so it is never lost silently.

use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::validate::{CompiledMessage, Outcome};
use crate::wire::records::Record;

/// What an event needs beyond the record itself.
pub struct Context<'a> {
    pub cluster: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    /// The record's offset; `None` for records refused by policy (never written to Kafka).
    pub offset: Option<i64>,
    /// The event id (see the module doc).
    pub id: String,
    pub default_type: &'a str,
    /// The AsyncAPI message the record matched (or the channel's only message).
    pub message: Option<&'a CompiledMessage>,
    pub outcome: &'a Outcome,
    /// Record timestamp, milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// Largest event accepted downstream.
    pub max_bytes: usize,
}

/// A built event.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub ce_type: String,
    pub validation: &'static str,
    /// The JSON event format.
    pub json: Bytes,
}

fn is_attribute_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn rfc3339_ms(ms: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    t.format(&time::format_description::well_known::Rfc3339).ok()
}

fn is_json_type(ct: &str) -> bool {
    let base = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    base.ends_with("/json") || base.ends_with("+json")
}

/// Puts `value` into the event as `data` or `data_base64`, per its content type.
fn put_data(event: &mut Map<String, Value>, value: &[u8], content_type: Option<&str>) {
    let text = std::str::from_utf8(value).ok();
    let json_ok = content_type.is_none_or(is_json_type);
    if json_ok && let Some(v) = text.and_then(|t| serde_json::from_str::<Value>(t).ok()) {
        if content_type.is_none() {
            event.insert("datacontenttype".into(), json!("application/json"));
        }
        event.insert("data".into(), v);
        return;
    }
    match (text, content_type) {
        (Some(t), Some(ct)) if ct.trim_start().to_ascii_lowercase().starts_with("text/") => {
            event.insert("data".into(), json!(t));
        }
        _ => {
            event.insert("data_base64".into(), json!(base64::engine::general_purpose::STANDARD.encode(value)));
        }
    }
}

fn header_text<'r>(record: &Record<'r>, name: &str) -> Option<&'r str> {
    record.header(name.as_bytes()).flatten().and_then(|v| std::str::from_utf8(v).ok())
}

/// Builds the event for one record.
pub fn build(record: &Record<'_>, ctx: &Context<'_>) -> Event {
    let mut event = Map::new();
    let content_type_header = header_text(record, "content-type");
    let structured = content_type_header
        .is_some_and(|c| c.trim_start().to_ascii_lowercase().starts_with("application/cloudevents+json"));
    let binary = record.header(b"ce_specversion").is_some();

    if structured && let Some(Value::Object(own)) = record.value.and_then(|v| serde_json::from_slice::<Value>(v).ok()) {
        // Structured mode: the record value is the event.
        event = own;
    } else if binary {
        for (k, v) in record.headers() {
            let (Ok(k), Some(Ok(v))) = (std::str::from_utf8(k), v.map(std::str::from_utf8)) else { continue };
            if let Some(name) = k.strip_prefix("ce_")
                && is_attribute_name(name)
            {
                event.insert(name.to_owned(), json!(v));
            }
        }
        if let Some(ct) = content_type_header {
            event.insert("datacontenttype".into(), json!(ct));
        }
        if let Some(v) = record.value {
            put_data(&mut event, v, content_type_header);
        }
    } else {
        let ce_type = ctx
            .message
            .and_then(|m| m.ce_type.clone().or_else(|| Some(m.name.clone())))
            .unwrap_or_else(|| ctx.default_type.to_owned());
        event.insert("specversion".into(), json!("1.0"));
        event.insert("id".into(), json!(ctx.id));
        event.insert("source".into(), json!(format!("kafka://{}/{}", ctx.cluster, ctx.topic)));
        event.insert("type".into(), json!(ce_type));
        if let Some(key) = record.key.and_then(|k| std::str::from_utf8(k).ok()) {
            event.insert("subject".into(), json!(key));
        }
        if let Some(t) = rfc3339_ms(ctx.timestamp_ms) {
            event.insert("time".into(), json!(t));
        }
        let content_type = ctx.message.and_then(|m| m.content_type.as_deref()).or(content_type_header);
        if let Some(ct) = content_type {
            event.insert("datacontenttype".into(), json!(ct));
        }
        if let Some(m) = ctx.message {
            event.insert("dataschema".into(), json!(format!("urn:eventgate:spec:{}#{}", m.doc_id, m.pointer)));
        }
        if let Some(v) = record.value {
            put_data(&mut event, v, content_type);
        }
    }
    // Kafka position and validation outcome, without overriding a producer's own attributes.
    event.entry("partition").or_insert(json!(ctx.partition));
    if let Some(o) = ctx.offset {
        event.entry("offset").or_insert(json!(o));
    }
    event.entry("validation").or_insert(json!(ctx.outcome.label()));
    match ctx.outcome {
        Outcome::Invalid(errors) => {
            event.entry("validationerrors").or_insert(json!(serde_json::to_string(errors).unwrap_or_default()));
        }
        Outcome::Unchecked(why) => {
            event.entry("validationerrors").or_insert(json!(serde_json::to_string(&[why]).unwrap_or_default()));
        }
        Outcome::Valid(_) => {}
    }
    let ce_type = event.get("type").and_then(Value::as_str).unwrap_or(ctx.default_type).to_owned();
    let mut bytes = serde_json::to_vec(&event).unwrap_or_default();
    if bytes.len() > ctx.max_bytes {
        let size = record.value.map_or(0, <[u8]>::len);
        event.remove("data");
        event.remove("data_base64");
        event.insert("dataomitted".into(), json!(true));
        event.insert("datasize".into(), json!(size));
        bytes = serde_json::to_vec(&event).unwrap_or_default();
    }
    Event { id: ctx.id.clone(), ce_type, validation: ctx.outcome.label(), json: Bytes::from(bytes) }
}

#[cfg(test)]
mod tests;
