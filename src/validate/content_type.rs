//! Content types: one classifier for everyone who reads a payload by its declared content type.
//!
//! [`classify`] reads a media type (case-insensitive, parameters allowed) into a [`Family`] and
//! whether it has a `charset` parameter. Its two readers map that differently, on purpose:
//!
//! | content type | validation (`Content`) | mirror ([`Kind`](crate::mirror::event::Kind)) |
//! |---|---|---|
//! | none | JSON | inferred from the bytes |
//! | `*/json`, `*/*+json` (a `charset` or not) | JSON: parsed | JSON |
//! | `text/*` | text: checked as a JSON string | text |
//! | XML (`*/xml`, `*/*+xml`), YAML (`*/yaml`, `*/x-yaml`, `*/*+yaml`) | opaque: not checked | text |
//! | anything else with a `charset` | opaque: not checked | text |
//! | anything else | opaque: not checked | bytes |
//!
//! Validation needs to know what a JSON Schema describes: parsed JSON, or the characters of
//! `text/*` as one string. A schema for an XML or YAML message describes its document, not its
//! characters, so such payloads cannot be checked. The mirror only needs to know whether the bytes
//! are text, to put them in an event's `data` as a string rather than as base64.

/// What a media type names, before any reader decides what to do with it. The first that applies:
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `*/json`, `*/*+json`.
    Json,
    /// `text/*`.
    Text,
    /// `*/xml`, `*/*+xml`.
    Xml,
    /// `*/yaml`, `*/x-yaml`, `*/*+yaml`.
    Yaml,
    /// Anything else, the empty string included.
    Other,
}

/// A classified content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaType {
    pub family: Family,
    /// It has a `charset` parameter (with or without a value).
    pub charset: bool,
}

fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len()
        && s.is_char_boundary(s.len() - suffix.len())
        && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// Classifies a content type such as `application/vnd.x+json; charset=utf-8`.
pub fn classify(content_type: &str) -> MediaType {
    let mut parts = content_type.split(';');
    let base = parts.next().unwrap_or_default().trim();
    let (kind, sub) = base.split_once('/').unwrap_or((base, ""));
    let is = |names: &[&str]| names.iter().any(|n| sub.eq_ignore_ascii_case(n));
    let family = if is(&["json"]) || ends_with_ignore_case(sub, "+json") {
        Family::Json
    } else if kind.eq_ignore_ascii_case("text") {
        Family::Text
    } else if is(&["xml"]) || ends_with_ignore_case(sub, "+xml") {
        Family::Xml
    } else if is(&["yaml", "x-yaml"]) || ends_with_ignore_case(sub, "+yaml") {
        Family::Yaml
    } else {
        Family::Other
    };
    let charset = parts.any(|p| p.split('=').next().is_some_and(|n| n.trim().eq_ignore_ascii_case("charset")));
    MediaType { family, charset }
}

/// How a payload is read before validation, from the message's content type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Content {
    /// JSON (no content type, `application/json`, `*/*+json`): parsed.
    Json,
    /// `text/*`: validated as a JSON string.
    Text,
    /// Anything else (XML and YAML included): cannot be checked against a JSON Schema.
    Opaque(String),
}

impl Content {
    pub(crate) fn of(content_type: Option<&str>) -> Self {
        let Some(ct) = content_type else {
            return Self::Json;
        };
        match classify(ct).family {
            Family::Json => Self::Json,
            Family::Text => Self::Text,
            Family::Xml | Family::Yaml | Family::Other => Self::Opaque(ct.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::event::Kind;

    /// Both readings side by side, as they were when the two classifiers became one: validation
    /// reads only JSON and `text/*`; the mirror also takes XML, YAML and any `charset` type as text.
    #[test]
    fn validation_and_the_mirror_read_content_types_as_before() {
        use Family::{Json, Other, Text, Xml, Yaml};
        let cases: &[(&str, Family, bool, &str, Kind)] = &[
            ("application/json", Json, false, "json", Kind::Json),
            ("Application/JSON", Json, false, "json", Kind::Json),
            ("TEXT/JSON", Json, false, "json", Kind::Json),
            ("application/vnd.x+json", Json, false, "json", Kind::Json),
            ("application/cloudevents+json; charset=utf-8", Json, true, "json", Kind::Json),
            ("application/json;charset=utf-8", Json, true, "json", Kind::Json),
            ("text/plain", Text, false, "text", Kind::Text),
            ("Text/CSV", Text, false, "text", Kind::Text),
            ("text/plain; charset=utf-8", Text, true, "text", Kind::Text),
            ("text/xml", Text, false, "text", Kind::Text),
            ("text", Text, false, "text", Kind::Text),
            ("application/xml", Xml, false, "opaque", Kind::Text),
            ("application/atom+xml", Xml, false, "opaque", Kind::Text),
            ("application/yaml", Yaml, false, "opaque", Kind::Text),
            ("application/X-YAML", Yaml, false, "opaque", Kind::Text),
            ("application/vnd.x+yaml", Yaml, false, "opaque", Kind::Text),
            ("application/x-custom; charset=utf-8", Other, true, "opaque", Kind::Text),
            ("application/x-custom; CharSet", Other, true, "opaque", Kind::Text),
            ("application/x-custom; format=charset", Other, false, "opaque", Kind::Bytes),
            ("application/octet-stream", Other, false, "opaque", Kind::Bytes),
            ("application/avro", Other, false, "opaque", Kind::Bytes),
            ("image/png", Other, false, "opaque", Kind::Bytes),
            ("application/jsonx", Other, false, "opaque", Kind::Bytes),
            ("json", Other, false, "opaque", Kind::Bytes),
            ("", Other, false, "opaque", Kind::Bytes),
        ];
        for &(ct, family, charset, validation, kind) in cases {
            assert_eq!(classify(ct), MediaType { family, charset }, "{ct}");
            let read = match Content::of(Some(ct)) {
                Content::Json => "json",
                Content::Text => "text",
                Content::Opaque(shown) => {
                    assert_eq!(shown, ct, "an opaque content type is named as declared");
                    "opaque"
                }
            };
            assert_eq!(read, validation, "validation of {ct}");
            assert_eq!(Kind::of(ct), kind, "mirror of {ct}");
        }
        // A message without a content type is JSON to validation (the mirror infers it instead).
        assert_eq!(Content::of(None), Content::Json);
    }
}
