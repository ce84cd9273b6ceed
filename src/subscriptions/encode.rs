//! Stored events as HTTP requests (the CloudEvents HTTP binding), and dead-lettered events.
//!
//! The stream holds each event in the JSON format. [`Stored`] reads one without copying: its
//! attributes as raw JSON slices. From there:
//!
//! - **structured**: the body is the stored bytes as they are (`application/cloudevents+json`);
//! - **batch**: the stored events joined into a JSON array (`application/cloudevents-batch+json`);
//! - **binary**: each attribute becomes a `ce-<name>` header, its value percent-encoded as the
//!   binding requires (space, `"`, `%` and everything outside printable ASCII), `datacontenttype`
//!   becomes `Content-Type`, and the body is the data: the raw JSON text of `data` for JSON
//!   content, the string itself for text, the decoded bytes of `data_base64`.
//!
//! The record's bytes reach the sink unchanged in every mode: nothing is parsed into numbers or
//! re-encoded, which is why this is eventgate's own code rather than the `cloudevents-sdk` crate's
//! (its `Data::Json` is a `serde_json::Value`, which rounds large numbers, and its binary
//! serializer writes header values without percent-encoding). The tests check these encodings
//! against that SDK's parser and the official Python SDK.

use std::borrow::Cow;

use axum::http::{HeaderName, HeaderValue};
use base64::Engine;
use bytes::Bytes;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde::Deserialize;
use serde_json::value::RawValue;

/// What the binding says to percent-encode in a header value, besides non-ASCII.
const HEADER_UNSAFE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// Content types of the modes.
pub const STRUCTURED: &str = "application/cloudevents+json; charset=utf-8";
pub const BATCH: &str = "application/cloudevents-batch+json; charset=utf-8";

/// Why a stored message could not be read as an event.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("the stored message is not a JSON CloudEvent: {0}")]
    NotAnEvent(String),
    #[error("attribute `{0}` cannot be written as an HTTP header")]
    Header(String),
    #[error("data_base64 is not base64: {0}")]
    Base64(String),
}

/// One stored event, read in place.
pub struct Stored<'a> {
    /// The stored bytes.
    pub raw: &'a [u8],
    /// Attribute (and `data`/`data_base64`) names with their raw JSON values, in stored order.
    pub members: Vec<(Cow<'a, str>, &'a RawValue)>,
}

/// Reads the members of a JSON object as borrowed raw values.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(16);
                while let Some((k, v)) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> Stored<'a> {
    pub fn parse(raw: &'a [u8]) -> Result<Stored<'a>, EncodeError> {
        let members: Members<'a> = serde_json::from_slice(raw).map_err(|e| EncodeError::NotAnEvent(e.to_string()))?;
        let s = Stored { raw, members: members.0 };
        for required in ["id", "source", "type", "specversion"] {
            if s.raw_member(required).is_none() {
                return Err(EncodeError::NotAnEvent(format!("no `{required}`")));
            }
        }
        Ok(s)
    }

    fn raw_member(&self, name: &str) -> Option<&'a RawValue> {
        self.members.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }

    /// An attribute in its canonical string form: a string's text, a number's or boolean's JSON
    /// text. `data` and `data_base64` are not attributes.
    pub fn attr(&self, name: &str) -> Option<Cow<'a, str>> {
        if name == "data" || name == "data_base64" {
            return None;
        }
        let raw = self.raw_member(name)?;
        scalar_text(raw)
    }

    pub fn id(&self) -> Cow<'a, str> {
        self.attr("id").unwrap_or_default()
    }

    /// The HTTP request of binary mode: headers and body. `owner` is the buffer `raw` lies in:
    /// JSON data is sent as a slice of it, not a copy (a copy when `raw` is not in `owner`).
    pub fn binary_in(&self, owner: &Bytes) -> Result<(Vec<(HeaderName, HeaderValue)>, Bytes), EncodeError> {
        let shared = owner.as_ptr_range().contains(&self.raw.as_ptr()) && self.raw.len() <= owner.len();
        self.encode_binary(|data: &[u8]| if shared { owner.slice_ref(data) } else { Bytes::copy_from_slice(data) })
    }

    fn encode_binary(
        &self,
        data_bytes: impl Fn(&[u8]) -> Bytes,
    ) -> Result<(Vec<(HeaderName, HeaderValue)>, Bytes), EncodeError> {
        let mut headers = Vec::with_capacity(self.members.len());
        let mut content_type: Option<Cow<'a, str>> = None;
        for (name, raw) in &self.members {
            match name.as_ref() {
                "data" | "data_base64" => continue,
                "datacontenttype" => {
                    content_type = scalar_text(raw);
                    continue;
                }
                _ => {}
            }
            let Some(text) = scalar_text(raw) else { continue };
            let header = match known_header(name) {
                Some(h) => h,
                None => {
                    HeaderName::try_from(format!("ce-{name}")).map_err(|_| EncodeError::Header(name.to_string()))?
                }
            };
            let value = utf8_percent_encode(&text, HEADER_UNSAFE).to_string();
            let value = HeaderValue::try_from(value).map_err(|_| EncodeError::Header(name.to_string()))?;
            headers.push((header, value));
        }
        let body = if let Some(data) = self.raw_member("data") {
            let text = data.get();
            let json_content = content_type.as_deref().is_none_or(is_json);
            if json_content {
                content_type.get_or_insert(Cow::Borrowed("application/json"));
                data_bytes(text.as_bytes())
            } else {
                match serde_json::from_str::<Cow<'_, str>>(text) {
                    Ok(s) => Bytes::copy_from_slice(s.as_bytes()),
                    // A non-string value under a non-JSON content type: its JSON text.
                    Err(_) => data_bytes(text.as_bytes()),
                }
            }
        } else if let Some(b64) = self.raw_member("data_base64") {
            let s: Cow<'_, str> = serde_json::from_str(b64.get()).map_err(|e| EncodeError::Base64(e.to_string()))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map_err(|e| EncodeError::Base64(e.to_string()))?;
            Bytes::from(bytes)
        } else {
            Bytes::new()
        };
        if let Some(ct) = content_type {
            let v = HeaderValue::try_from(ct.as_ref()).map_err(|_| EncodeError::Header("datacontenttype".into()))?;
            headers.push((axum::http::header::CONTENT_TYPE, v));
        }
        Ok((headers, body))
    }

    /// The event with the given extensions set (replacing any of the same names), in the JSON
    /// format: what a dead letter carries.
    pub fn with_extensions(&self, extensions: &[(&str, serde_json::Value)]) -> Vec<u8> {
        self.rewrite(extensions, false)
    }

    /// [`with_extensions`](Self::with_extensions) without the data, for a dead letter too large
    /// to store whole: `dataomitted` and `datasize` (the data's size as stored) say so.
    pub fn without_data(&self, extensions: &[(&str, serde_json::Value)]) -> Vec<u8> {
        let size: usize =
            self.members.iter().filter(|(k, _)| k == "data" || k == "data_base64").map(|(_, v)| v.get().len()).sum();
        let mut all = extensions.to_vec();
        all.push(("dataomitted", serde_json::Value::Bool(true)));
        all.push(("datasize", serde_json::json!(size)));
        self.rewrite(&all, true)
    }

    fn rewrite(&self, extensions: &[(&str, serde_json::Value)], drop_data: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.raw.len() + 256);
        out.push(b'{');
        let mut first = true;
        let mut sep = |out: &mut Vec<u8>| {
            if !first {
                out.push(b',');
            }
            first = false;
        };
        for (name, raw) in &self.members {
            if extensions.iter().any(|(n, _)| n == name) {
                continue;
            }
            if drop_data && (name == "data" || name == "data_base64" || name == "datacontenttype") {
                continue;
            }
            sep(&mut out);
            let _ = serde_json::to_writer(&mut out, name.as_ref());
            out.push(b':');
            out.extend_from_slice(raw.get().as_bytes());
        }
        for (name, value) in extensions {
            sep(&mut out);
            let _ = serde_json::to_writer(&mut out, name);
            out.push(b':');
            let _ = serde_json::to_writer(&mut out, value);
        }
        out.push(b'}');
        out
    }
}

/// The headers of the attributes every mirrored event has, made once.
fn known_header(name: &str) -> Option<HeaderName> {
    Some(HeaderName::from_static(match name {
        "id" => "ce-id",
        "source" => "ce-source",
        "type" => "ce-type",
        "specversion" => "ce-specversion",
        "time" => "ce-time",
        "subject" => "ce-subject",
        "dataschema" => "ce-dataschema",
        "partition" => "ce-partition",
        "offset" => "ce-offset",
        "validation" => "ce-validation",
        "validationerrors" => "ce-validationerrors",
        "principal" => "ce-principal",
        "clientid" => "ce-clientid",
        "key" => "ce-key",
        _ => return None,
    }))
}

/// A scalar's canonical text (strings unescaped; numbers and booleans as written); `None` for
/// null, objects and arrays.
fn scalar_text(raw: &RawValue) -> Option<Cow<'_, str>> {
    let t = raw.get();
    match t.as_bytes().first()? {
        b'"' => serde_json::from_str::<Cow<'_, str>>(t).ok(),
        b'{' | b'[' | b'n' => None,
        _ => Some(Cow::Borrowed(t)),
    }
}

/// Whether a content type carries JSON (`application/json`, `…+json`, `text/json`).
fn is_json(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// A batch body: the stored events as a JSON array.
pub fn batch(events: &[Bytes]) -> Bytes {
    let len = events.iter().map(|e| e.len() + 1).sum::<usize>() + 2;
    let mut out = Vec::with_capacity(len);
    out.push(b'[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    out.push(b']');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const EVENT: &str = r#"{"specversion":"1.0","id":"orders-0-7","source":"kafka://kafka/orders","type":"com.example.placed","time":"2026-11-26T10:00:00Z","datacontenttype":"application/json","partition":0,"offset":"7","validation":"invalid","validationerrors":"[{\"path\":\"/n\"}] \"quoted\" 100% café","data":{"n":123456789012345678901234567890,"f":1.10}}"#;

    fn sdk_event_from_binary(headers: &[(HeaderName, HeaderValue)], body: &Bytes) -> cloudevents::Event {
        let mut map = axum::http::HeaderMap::new();
        for (k, v) in headers {
            map.append(k.clone(), v.clone());
        }
        cloudevents::binding::http::to_event(&map, body.to_vec()).expect("the SDK reads the binary request")
    }

    #[test]
    fn binary_mode_keeps_the_data_bytes_and_percent_encodes_header_values() {
        let owner = Bytes::from_static(EVENT.as_bytes());
        let stored = Stored::parse(&owner).expect("event");
        let (headers, body) = stored.binary_in(&owner).expect("binary");
        assert!(owner.as_ptr_range().contains(&body.as_ptr()), "JSON data is a slice of the stored event, not a copy");
        // The data is the record's JSON text, numbers untouched.
        assert_eq!(&body[..], br#"{"n":123456789012345678901234567890,"f":1.10}"#);
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.to_str().unwrap_or("").to_owned());
        assert_eq!(get("ce-id").as_deref(), Some("orders-0-7"));
        assert_eq!(get("ce-partition").as_deref(), Some("0"));
        assert_eq!(get("content-type").as_deref(), Some("application/json"));
        assert_eq!(
            get("ce-validationerrors").as_deref(),
            Some("[{%22path%22:%22/n%22}]%20%22quoted%22%20100%25%20caf%C3%A9"),
            "space, quote, percent and non-ASCII are percent-encoded"
        );
        assert!(get("ce-data").is_none() && get("ce-datacontenttype").is_none());
        // The official Rust SDK reads the same attributes (it does not percent-decode, so the
        // encoded header is compared as sent).
        let event = sdk_event_from_binary(&headers, &body);
        use cloudevents::AttributesReader;
        assert_eq!(event.id(), "orders-0-7");
        assert_eq!(event.ty(), "com.example.placed");
        assert_eq!(event.source().as_str(), "kafka://kafka/orders");
    }

    #[test]
    fn text_and_base64_data_become_the_body_itself() {
        let text = r#"{"specversion":"1.0","id":"a","source":"s","type":"t","datacontenttype":"text/plain; charset=utf-8","data":"hello \"you\""}"#;
        let (headers, body) = Stored::parse(text.as_bytes()).and_then(|s| s.binary_in(&Bytes::new())).expect("binary");
        assert_eq!(&body[..], b"hello \"you\"");
        assert!(headers.iter().any(|(k, v)| k == "content-type" && v == "text/plain; charset=utf-8"));
        let bin = r#"{"specversion":"1.0","id":"a","source":"s","type":"t","datacontenttype":"application/octet-stream","data_base64":"AAEC/w=="}"#;
        let (_, body) = Stored::parse(bin.as_bytes()).and_then(|s| s.binary_in(&Bytes::new())).expect("binary");
        assert_eq!(&body[..], &[0, 1, 2, 255]);
        let none = r#"{"specversion":"1.0","id":"a","source":"s","type":"t"}"#;
        let (headers, body) = Stored::parse(none.as_bytes()).and_then(|s| s.binary_in(&Bytes::new())).expect("binary");
        assert!(body.is_empty() && !headers.iter().any(|(k, _)| k == "content-type"));
    }

    #[test]
    fn structured_and_batch_bodies_are_the_stored_bytes() {
        let one = Bytes::from_static(EVENT.as_bytes());
        let body = batch(&[one.clone(), one.clone()]);
        let parsed: Vec<serde_json::Value> = serde_json::from_slice(&body).expect("a JSON array");
        assert_eq!(parsed.len(), 2);
        let sdk: Vec<cloudevents::Event> = serde_json::from_slice(&body).expect("the SDK reads the batch");
        assert_eq!(sdk.len(), 2);
        assert!(body.windows(EVENT.len()).any(|w| w == EVENT.as_bytes()), "each event's bytes are kept");
    }

    #[test]
    fn a_dead_letter_carries_the_delivery_extensions_once() {
        let forged = r#"{"specversion":"1.0","id":"a","source":"s","type":"t","deliverycode":999,"data":{"x":1.50}}"#;
        let stored = Stored::parse(forged.as_bytes()).expect("event");
        let out = stored.with_extensions(&[("deliverycode", json!(400)), ("deliveryerror", json!("bad \"input\""))]);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(v["deliverycode"], 400);
        assert_eq!(v["deliveryerror"], "bad \"input\"");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text.matches("deliverycode").count(), 1);
        assert!(text.contains(r#""data":{"x":1.50}"#), "the data's bytes are kept: {text}");
    }

    #[test]
    fn a_dead_letter_too_large_to_store_keeps_everything_but_the_data() {
        let stored = Stored::parse(EVENT.as_bytes()).expect("event");
        let out = stored.without_data(&[("deliverycode", json!(400))]);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert!(v.get("data").is_none() && v.get("datacontenttype").is_none());
        assert_eq!((v["dataomitted"].clone(), v["deliverycode"].clone()), (json!(true), json!(400)));
        assert_eq!(v["datasize"], 45, "the size of the data as stored");
        assert_eq!(v["id"], "orders-0-7");
    }

    #[test]
    fn what_is_not_an_event_is_refused() {
        for bad in ["[1]", "{\"id\":\"a\"}", "not json", "{\"specversion\":\"1.0\",\"id\":\"a\",\"source\":\"s\"}"] {
            assert!(Stored::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
