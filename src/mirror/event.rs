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
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::validate::{CompiledMessage, Outcome};
use crate::wire::records::Record;

/// What an event needs beyond the record itself.
pub struct Context<'a> {
    /// `kafka://<cluster>/<topic>`, built once per partition.
    pub source: &'a str,
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
    /// The event was too large and went out without its data.
    pub data_omitted: bool,
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

/// The data of a plain record's event.
#[derive(Serialize)]
#[serde(untagged)]
enum Data<'a> {
    /// JSON, embedded as the producer wrote it (validated, never re-formatted).
    Json(&'a RawValue),
    Text(&'a str),
}

/// The event of a record that is not itself a CloudEvent, serialized straight from borrowed parts.
#[derive(Serialize)]
struct Plain<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    ce_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    datacontenttype: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dataschema: Option<&'a str>,
    partition: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<i64>,
    validation: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    validationerrors: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Data<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dataomitted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    datasize: Option<usize>,
}

fn validation_errors(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Invalid(errors) => serde_json::to_string(&**errors).ok(),
        Outcome::Unchecked(why) => serde_json::to_string(&[&**why]).ok(),
        Outcome::Valid(_) => None,
    }
}

fn build_plain(record: &Record<'_>, ctx: &Context<'_>, content_type_header: Option<&str>) -> Event {
    let ce_type = ctx.message.map(|m| m.ce_type.as_deref().unwrap_or(&m.name)).unwrap_or(ctx.default_type);
    let mut content_type = ctx.message.and_then(|m| m.content_type.as_deref()).or(content_type_header);
    let (mut data, mut data_base64) = (None, None);
    if let Some(value) = record.value {
        let text = std::str::from_utf8(value).ok();
        let json = text
            .filter(|_| content_type.is_none_or(is_json_type))
            .and_then(|t| serde_json::from_str::<&RawValue>(t).ok());
        match (json, text) {
            (Some(raw), _) => {
                content_type = content_type.or(Some("application/json"));
                data = Some(Data::Json(raw));
            }
            (None, Some(t))
                if content_type.is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("text/")) =>
            {
                data = Some(Data::Text(t));
            }
            _ => data_base64 = Some(base64::engine::general_purpose::STANDARD.encode(value)),
        }
    }
    let mut event = Plain {
        specversion: "1.0",
        id: &ctx.id,
        source: ctx.source,
        ce_type,
        subject: record.key.and_then(|k| std::str::from_utf8(k).ok()),
        time: rfc3339_ms(ctx.timestamp_ms),
        datacontenttype: content_type,
        dataschema: ctx.message.map(|m| m.dataschema.as_str()),
        partition: ctx.partition,
        offset: ctx.offset,
        validation: ctx.outcome.label(),
        validationerrors: validation_errors(ctx.outcome),
        data,
        data_base64,
        dataomitted: None,
        datasize: None,
    };
    let mut bytes = serde_json::to_vec(&event).unwrap_or_default();
    let data_omitted = bytes.len() > ctx.max_bytes;
    if data_omitted {
        event.data = None;
        event.data_base64 = None;
        event.dataomitted = Some(true);
        event.datasize = Some(record.value.map_or(0, <[u8]>::len));
        bytes = serde_json::to_vec(&event).unwrap_or_default();
    }
    Event {
        id: ctx.id.clone(),
        ce_type: ce_type.to_owned(),
        validation: ctx.outcome.label(),
        json: Bytes::from(bytes),
        data_omitted,
    }
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
        return build_plain(record, ctx, content_type_header);
    }
    // Kafka position and validation outcome, without overriding a producer's own attributes.
    event.entry("partition").or_insert(json!(ctx.partition));
    if let Some(o) = ctx.offset {
        event.entry("offset").or_insert(json!(o));
    }
    event.entry("validation").or_insert(json!(ctx.outcome.label()));
    if let Some(errors) = validation_errors(ctx.outcome) {
        event.entry("validationerrors").or_insert(json!(errors));
    }
    let ce_type = event.get("type").and_then(Value::as_str).unwrap_or(ctx.default_type).to_owned();
    let mut bytes = serde_json::to_vec(&event).unwrap_or_default();
    let data_omitted = bytes.len() > ctx.max_bytes;
    if data_omitted {
        let size = record.value.map_or(0, <[u8]>::len);
        event.remove("data");
        event.remove("data_base64");
        event.insert("dataomitted".into(), json!(true));
        event.insert("datasize".into(), json!(size));
        bytes = serde_json::to_vec(&event).unwrap_or_default();
    }
    Event { id: ctx.id.clone(), ce_type, validation: ctx.outcome.label(), json: Bytes::from(bytes), data_omitted }
}

#[cfg(test)]
mod tests;
