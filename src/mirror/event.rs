//! One Kafka record as a CloudEvent 1.0 in the JSON event format (structured mode).
//!
//! | attribute | from |
//! |---|---|
//! | `id` | `<topic>-<partition>-<offset>`: a resend keeps its id, and JetStream deduplicates it |
//! | `source` | `kafka://<cluster>/<topic>` |
//! | `type` | the matched AsyncAPI message's `x-eventgate-ce-type`, else its name, else the default |
//! | `subject` | the record key, when it is non-empty UTF-8 text |
//! | `time` | the record timestamp |
//! | `datacontenttype` | the message's content type, else the record's `content-type` header, else inferred (below) |
//! | `dataschema` | `urn:eventgate:spec:<doc>#<message pointer>`, the pointer percent-encoded |
//! | `partition`, `offset`, `validation`, `validationerrors` | extensions; `offset` is a string (Kafka offsets are 64-bit) |
//! | `principal`, `clientid` | extensions: who produced the record (SASL principal, Kafka `client.id`), when known |
//! | `dataomitted`, `datasize` | extensions, when the event went out without its data |
//! | `overridden` | extension: eventgate's extension names the producer had set itself (comma-separated) |
//! | `wrapped` | extension: why a record that looked like a CloudEvent was mirrored like any other record |
//!
//! Records that already are CloudEvents in the Kafka protocol binding keep their own attributes:
//! binary mode (`ce_*` headers, `content-type`) and structured mode (`content-type:
//! application/cloudevents+json`). They are checked first, in plain Rust (required attributes,
//! `specversion` 1.0, `source` a URI reference, `time` RFC 3339, `dataschema` an absolute URI,
//! attribute names `[a-z0-9]{1,20}`, extension values strings, booleans or 32-bit integers); one
//! that fails is mirrored like any other record, with `wrapped` saying why. eventgate's own
//! extensions ([`RESERVED`]) are always eventgate's: a producer's values for them are dropped, named
//! in `overridden` and counted ([`Event::overridden`]).
//!
//! Data ([`Kind`]): JSON (declared JSON, or undeclared and parsing as JSON) goes in `data` as JSON,
//! embedded as the producer wrote it; text (declared text, or undeclared UTF-8 without control
//! characters, then `text/plain; charset=utf-8`) in `data` as a string; anything else, including
//! declared JSON that does not parse and undeclared bytes (then `application/octet-stream`), in
//! `data_base64`. An event larger than the stream accepts is sent without its data, with
//! `dataomitted: true` and `datasize`, so it is never lost silently.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use serde::ser::{Serialize, Serializer};
use serde_json::value::RawValue;

use crate::validate::content_type::{self, Family};
use crate::validate::{CompiledMessage, Outcome};
use crate::wire::records::Record;

/// Extension attributes that only eventgate sets; a producer's values for them are dropped.
/// `principal` and `clientid` say who produced the record (see [`Context`]); the `delivery*` names
/// are what a subscription adds to an event it dead-letters.
pub const RESERVED: [&str; 14] = [
    "partition",
    "offset",
    "validation",
    "validationerrors",
    "dataomitted",
    "datasize",
    "principal",
    "clientid",
    "overridden",
    "wrapped",
    // Set on dead-lettered events by subscriptions (`crate::subscriptions::deliver`).
    "deliverycode",
    "deliveryerror",
    "deliverydest",
    "deliveryattempts",
];

/// `type` when neither the message nor the configuration gives a non-empty one.
const FALLBACK_TYPE: &str = "eventgate.record";
/// `datacontenttype` of undeclared text.
const UTF8_TEXT: &str = "text/plain; charset=utf-8";
/// `datacontenttype` of undeclared bytes that are neither JSON nor text.
const OCTETS: &str = "application/octet-stream";

/// What an event needs beyond the record itself.
pub struct Context<'a> {
    /// `kafka://<cluster>/<topic>`, built once per partition.
    pub source: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    /// The record's offset; `None` for records refused by policy (never written to Kafka).
    pub offset: Option<i64>,
    /// The event id (see the module doc).
    pub id: &'a str,
    pub default_type: &'a str,
    /// The AsyncAPI message the record matched (or the channel's only message).
    pub message: Option<&'a CompiledMessage>,
    pub outcome: &'a Outcome,
    /// Record timestamp, milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// Largest event accepted downstream.
    pub max_bytes: usize,
    /// The principal the producer authenticated as (`principal`), and its `client.id` (`clientid`).
    pub principal: Option<&'a str>,
    pub client_id: Option<&'a str>,
    /// The outcome's `validationerrors`, already a JSON string literal
    /// ([`validation_errors_literal`]), when the caller made it once for the many records that
    /// share the outcome; `None`: made here.
    pub errors: Option<&'a str>,
    /// The attributes this context shares with the others of its job, already written
    /// ([`Prepared::new`] from a context of the same job and message); `None`: written here.
    pub prepared: Option<&'a Prepared>,
}

/// The attributes of a plain event that every record of one job (topic, partition, producer)
/// and one AsyncAPI message shares, written once, with the same escaping, and copied into each
/// event: `source` and `type`, `dataschema` and `partition`, `principal` and `clientid`. An event
/// whose attributes are not exactly these (a producer's own CloudEvent, a wrapped one, another
/// message) is written attribute by attribute, and a test checks the two ways write the same bytes.
pub struct Prepared {
    /// What these were made from: the message (its address), the default type, the source, the
    /// partition and the producer.
    message: usize,
    default_type: String,
    source: String,
    partition: i32,
    principal: Option<String>,
    client_id: Option<String>,
    /// `,"source":…,"type":…`
    source_type: Vec<u8>,
    /// `,"dataschema":…` (when the message has one) `,"partition":N`
    schema_partition: Vec<u8>,
    /// `,"principal":…,"clientid":…` (those known)
    producer: Vec<u8>,
    /// The type of the job's plain events, shared by their [`Event`]s.
    ce_type: Arc<str>,
}

impl Prepared {
    /// The shared attributes of `ctx` (and every context of its job with the same message).
    pub fn new(ctx: &Context<'_>) -> Self {
        let mut source_type = Vec::with_capacity(64 + ctx.source.len());
        source_type.extend_from_slice(b",\"source\":");
        put_str(&mut source_type, ctx.source);
        source_type.extend_from_slice(b",\"type\":");
        put_str(&mut source_type, plain_type(ctx));
        let mut schema_partition = Vec::with_capacity(64);
        if let Some(d) = ctx.message.map(|m| m.dataschema.as_str()).filter(|d| !d.is_empty()) {
            schema_partition.extend_from_slice(b",\"dataschema\":");
            put_str(&mut schema_partition, d);
        }
        schema_partition.extend_from_slice(b",\"partition\":");
        schema_partition.extend_from_slice(itoa::Buffer::new().format(ctx.partition).as_bytes());
        let mut producer = Vec::new();
        if let Some(p) = ctx.principal {
            producer.extend_from_slice(b",\"principal\":");
            put_str(&mut producer, p);
        }
        if let Some(c) = ctx.client_id {
            producer.extend_from_slice(b",\"clientid\":");
            put_str(&mut producer, c);
        }
        Self {
            message: Self::address(ctx.message),
            default_type: ctx.default_type.to_owned(),
            source: ctx.source.to_owned(),
            partition: ctx.partition,
            principal: ctx.principal.map(str::to_owned),
            client_id: ctx.client_id.map(str::to_owned),
            source_type,
            schema_partition,
            producer,
            ce_type: Arc::from(plain_type(ctx)),
        }
    }

    fn address(message: Option<&CompiledMessage>) -> usize {
        message.map_or(0, |m| std::ptr::from_ref(m) as usize)
    }

    /// Whether these are `ctx`'s shared attributes: made from the same message, default type,
    /// source, partition and producer.
    pub fn fits(&self, ctx: &Context<'_>) -> bool {
        self.message == Self::address(ctx.message)
            && self.partition == ctx.partition
            && self.default_type == ctx.default_type
            && self.source == ctx.source
            && self.principal.as_deref() == ctx.principal
            && self.client_id.as_deref() == ctx.client_id
    }
}

/// Longest `type` taken from a producer's own CloudEvent (a longer one is wrapped).
pub const MAX_TYPE_BYTES: usize = 256;

/// An event's id (`<topic>-<partition>-<offset>`, its `Nats-Msg-Id`), kept beside the event in
/// its block ([`build_into`]) instead of in an allocation of its own. Always UTF-8: made only
/// from a `&str`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EventId(Bytes);

impl EventId {
    /// An id of its own (a copy of `id`).
    #[cfg(test)]
    pub fn new(id: &str) -> Self {
        Self(Bytes::copy_from_slice(id.as_bytes()))
    }

    /// A copy that shares no memory with the block it was built in.
    pub fn detached(&self) -> Self {
        Self(Bytes::copy_from_slice(&self.0))
    }

    /// The id's bytes, without the UTF-8 check [`as_str`](Self::as_str) makes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Made from a `&str`: never empty for want of UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::ops::Deref for EventId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The room [`build_into`] starts a block with. The mirror's worker takes every job's events from
/// one block after another, so a block is an allocation per some dozens of events instead of two
/// per event, and it is freed with the last event taken from it. Events held together (the chunk
/// being sent, the window of unanswered events) lie together, so their blocks hold little beyond
/// them: the unused end of a block where the next event did not fit (a block is left only when
/// the next event is expected not to fit, so that end is smaller than the event: at most about
/// twice the events' bytes in all, little more for small events), and the first and last block's
/// share of events no longer held. An event of more than half a block that does not fit gets a
/// buffer of its own size, and the block is kept for the events after it; an event sent without
/// its data leaves no large block behind ([`written_again`]). Whatever keeps a few events of many
/// (a resend, the in-process feed's watchers) keeps copies.
pub const BLOCK: usize = 64 * 1024;

/// A built event.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: EventId,
    /// Shared by the events of a job that have the same type.
    pub ce_type: Arc<str>,
    pub validation: &'static str,
    /// The JSON event format.
    pub json: Bytes,
    /// The event was too large and went out without its data.
    pub data_omitted: bool,
    /// How many of eventgate's extension names ([`RESERVED`]) the producer had set itself; their
    /// values were dropped (and the names listed in the `overridden` extension).
    pub overridden: u32,
    /// The record looked like a CloudEvent but was not a valid one: it was mirrored like any other
    /// record, with the `wrapped` extension saying why.
    pub wrapped: bool,
}

/// What a content type says a payload is, to the mirror: whether its bytes go in `data` as JSON,
/// as a string, or as base64. Read from the shared classifier ([`content_type`]), which says how
/// this differs from validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `application/json`, `*/json`, `*/*+json`.
    Json,
    /// `text/*`, XML (`*/xml`, `*/*+xml`), YAML (`*/yaml`, `*/x-yaml`, `*/*+yaml`), or any content
    /// type with a `charset` parameter.
    Text,
    /// Anything else.
    Bytes,
}

impl Kind {
    /// Classifies a content type (case-insensitive, parameters allowed).
    pub fn of(content_type: &str) -> Self {
        let media = content_type::classify(content_type);
        match media.family {
            Family::Json => Self::Json,
            Family::Text | Family::Xml | Family::Yaml => Self::Text,
            Family::Other if media.charset => Self::Text,
            Family::Other => Self::Bytes,
        }
    }
}

fn is_structured_type(content_type: &str) -> bool {
    content_type.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("application/cloudevents+json")
}

/// A CloudEvents attribute or extension name, as the conformance rules want it: `[a-z0-9]{1,20}`.
fn is_attribute_name(n: &str) -> bool {
    (1..=20).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn reserved_index(name: &str) -> Option<usize> {
    RESERVED.iter().position(|r| *r == name)
}

/// A URI reference (RFC 3986), as CloudEvents wants `source`.
fn is_uri_reference(s: &str) -> bool {
    fluent_uri::UriRef::parse(s).is_ok()
}

/// An absolute URI (RFC 3986 `URI`: with a scheme), as CloudEvents wants `dataschema`.
fn is_absolute_uri(s: &str) -> bool {
    fluent_uri::Uri::parse(s).is_ok()
}

/// An RFC 3339 timestamp (`T` or `t` between date and time, as the JSON Schema `date-time` wants).
fn is_rfc3339(s: &str) -> bool {
    matches!(s.as_bytes().get(10), Some(b'T' | b't'))
        && time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
}

/// RFC 4648 base64 with padding.
fn is_base64(s: &str) -> bool {
    let b = s.as_bytes();
    let body = b.strip_suffix(b"==").or_else(|| b.strip_suffix(b"=")).unwrap_or(b);
    b.len().is_multiple_of(4) && body.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
}

/// Writes `ms` (milliseconds since the epoch) as a JSON string holding its RFC 3339 UTC time,
/// exactly as the `time` crate formats it (fraction without trailing zeros, none when zero);
/// `false` (nothing written) outside the years 0 to 9999, which RFC 3339 cannot write.
fn put_rfc3339_ms(w: &mut impl BufMut, ms: i64) -> bool {
    const MS_PER_DAY: i64 = 86_400_000;
    /// The Julian day of 1970-01-01.
    const UNIX_EPOCH_JULIAN_DAY: i64 = 2_440_588;
    let Some(julian) = ms.div_euclid(MS_PER_DAY).checked_add(UNIX_EPOCH_JULIAN_DAY) else { return false };
    let Some(date) = i32::try_from(julian).ok().and_then(|d| time::Date::from_julian_day(d).ok()) else {
        return false;
    };
    let (year, month, day) = date.to_calendar_date();
    let Ok(year) = u32::try_from(year) else { return false };
    if year > 9999 {
        return false;
    }
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (secs, millis) = (in_day / 1000, in_day % 1000);
    // `"YYYY-MM-DDTHH:MM:SS.mmmZ"`, digits put in place, then one copy.
    let mut t = *b"\"0000-00-00T00:00:00.000Z\"";
    let mut put = |at: usize, mut n: i64, width: usize| {
        for k in (at..at + width).rev() {
            t[k] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(1, i64::from(year), 4);
    put(6, i64::from(u8::from(month)), 2);
    put(9, i64::from(day), 2);
    put(12, secs / 3600, 2);
    put(15, secs / 60 % 60, 2);
    put(18, secs % 60, 2);
    put(21, millis, 3);
    if millis == 0 {
        // No fraction at all.
        w.put_slice(&t[..20]);
    } else {
        // The fraction without its trailing zeros.
        let digits = if millis % 100 == 0 {
            1
        } else if millis % 10 == 0 {
            2
        } else {
            3
        };
        w.put_slice(&t[..21 + digits]);
    }
    w.put_slice(b"Z\"");
    true
}

/// A producer's text in a note, short and quoted.
fn quoted(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let mut short: String = text.chars().take(32).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    format!("{short:?}")
}

/// The event's data.
#[derive(Default)]
enum Data<'a> {
    #[default]
    None,
    /// JSON, embedded as the producer wrote it (checked to be one value, never re-formatted).
    Json(&'a [u8]),
    Text(&'a str),
    /// Bytes, base64-encoded as the event is written.
    Bytes(&'a [u8]),
    /// A structured-mode event's own `data_base64`.
    Base64(Cow<'a, str>),
}

/// `value` as data, and the content type to declare: see the module doc.
fn select<'a>(value: &'a [u8], declared: Option<&'a str>) -> (Data<'a>, Option<&'a str>) {
    // JSON is checked on the bytes: its one pass also checks UTF-8 (json::value_in), so a JSON
    // record is not read once more for that.
    let json = || json::value_in(value);
    let text = || simdutf8::basic::from_utf8(value).ok();
    match declared {
        Some(ct) => {
            let data = match Kind::of(ct) {
                Kind::Json => json().map(Data::Json),
                Kind::Text => text().map(Data::Text),
                Kind::Bytes => None,
            };
            (data.unwrap_or(Data::Bytes(value)), Some(ct))
        }
        None => {
            let printable =
                |t: &&str| !t.bytes().any(|b| (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')) || b == 0x7f);
            if let Some(raw) = json() {
                (Data::Json(raw), Some("application/json"))
            } else if let Some(t) = text().filter(printable) {
                (Data::Text(t), Some(UTF8_TEXT))
            } else {
                (Data::Bytes(value), Some(OCTETS))
            }
        }
    }
}

/// A producer's extension value.
enum Ext<'a> {
    /// From a binary-mode header.
    Str(&'a str),
    /// From a structured-mode event, checked to be a string, a boolean or a 32-bit integer.
    Raw(&'a RawValue),
}

impl Serialize for Ext<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Str(t) => s.serialize_str(t),
            Self::Raw(r) => r.serialize(s),
        }
    }
}

/// The set of [`RESERVED`] names a producer set.
#[derive(Debug, Default, Clone, Copy)]
struct Overridden(u16);

impl Overridden {
    fn add(&mut self, i: usize) {
        self.0 |= 1 << i;
    }
}

impl fmt::Display for Overridden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = RESERVED.iter().enumerate().filter(|(i, _)| self.0 & (1 << i) != 0).map(|(_, n)| n);
        if let Some(first) = names.next() {
            f.write_str(first)?;
        }
        for n in names {
            write!(f, ",{n}")?;
        }
        Ok(())
    }
}

/// The `time` attribute: a producer's own, or a record timestamp written as the event is.
enum Time<'a> {
    Given(Cow<'a, str>),
    Millis(i64),
}

/// Everything of an event but eventgate's own extensions (which come from [`Context`]).
struct Ce<'a> {
    id: Cow<'a, str>,
    source: Cow<'a, str>,
    ce_type: Cow<'a, str>,
    subject: Option<Cow<'a, str>>,
    time: Option<Time<'a>>,
    datacontenttype: Option<Cow<'a, str>>,
    dataschema: Option<Cow<'a, str>>,
    /// The producer's extensions, names checked and distinct, none of them [`RESERVED`].
    extensions: Vec<(Cow<'a, str>, Ext<'a>)>,
    data: Data<'a>,
    overridden: Overridden,
    wrapped: Option<String>,
    /// Made by [`plain`]: `id`, `source`, `type` and `dataschema` are the context's.
    plain: bool,
}

/// The attributes a producer's event gives (binary or structured mode), before they are checked.
#[derive(Default)]
struct Own<'a> {
    specversion: Option<Cow<'a, str>>,
    id: Option<Cow<'a, str>>,
    source: Option<Cow<'a, str>>,
    ce_type: Option<Cow<'a, str>>,
    subject: Option<Cow<'a, str>>,
    time: Option<Cow<'a, str>>,
    datacontenttype: Option<Cow<'a, str>>,
    dataschema: Option<Cow<'a, str>>,
    extensions: Vec<(Cow<'a, str>, Ext<'a>)>,
    data: Data<'a>,
}

impl<'a> Own<'a> {
    /// Sets a context attribute; `false` when `name` is not one.
    fn set(&mut self, name: &str, value: Cow<'a, str>) -> bool {
        let slot = match name {
            "specversion" => &mut self.specversion,
            "id" => &mut self.id,
            "source" => &mut self.source,
            "type" => &mut self.ce_type,
            "subject" => &mut self.subject,
            "time" => &mut self.time,
            "datacontenttype" => &mut self.datacontenttype,
            "dataschema" => &mut self.dataschema,
            _ => return false,
        };
        *slot = Some(value);
        true
    }

    /// The event, when it is a valid CloudEvent 1.0; else why not (`mode` opens the note).
    fn check(self, mode: &str) -> Result<Ce<'a>, String> {
        let given = |v: Option<Cow<'a, str>>| v.filter(|v| !v.is_empty());
        let (specversion, id, source, ce_type) =
            (given(self.specversion), given(self.id), given(self.source), given(self.ce_type));
        let (Some(specversion), Some(id), Some(source), Some(ce_type)) = (&specversion, &id, &source, &ce_type) else {
            let missing: Vec<&str> = [
                ("specversion", specversion.is_none()),
                ("id", id.is_none()),
                ("source", source.is_none()),
                ("type", ce_type.is_none()),
            ]
            .into_iter()
            .filter_map(|(n, absent)| absent.then_some(n))
            .collect();
            return Err(format!("{mode} incomplete: no {}", missing.join(", ")));
        };
        if specversion != "1.0" {
            return Err(format!("{mode}: specversion {} is not 1.0", quoted(specversion.as_bytes())));
        }
        // The type also travels as a NATS header, where line breaks cannot go, and watchers
        // filter on it: a printable name of reasonable length.
        if ce_type.len() > MAX_TYPE_BYTES || ce_type.chars().any(char::is_control) {
            return Err(format!("{mode}: type is longer than {MAX_TYPE_BYTES} bytes or holds control characters"));
        }
        if !is_uri_reference(source) {
            return Err(format!("{mode}: source is not a URI reference"));
        }
        for (name, v) in [("subject", &self.subject), ("datacontenttype", &self.datacontenttype)] {
            if v.as_deref().is_some_and(str::is_empty) {
                return Err(format!("{mode}: {name} is empty"));
            }
        }
        if self.time.as_deref().is_some_and(|t| !is_rfc3339(t)) {
            return Err(format!("{mode}: time is not an RFC 3339 timestamp"));
        }
        if self.dataschema.as_deref().is_some_and(|d| !is_absolute_uri(d)) {
            return Err(format!("{mode}: dataschema is not an absolute URI"));
        }
        let (id, source, ce_type) = (id.clone(), source.clone(), ce_type.clone());
        Ok(Ce {
            id,
            source,
            ce_type,
            subject: self.subject,
            time: self.time.map(Time::Given),
            datacontenttype: self.datacontenttype,
            dataschema: self.dataschema,
            extensions: self.extensions,
            data: self.data,
            overridden: Overridden::default(),
            wrapped: None,
            plain: false,
        })
    }
}

/// The event of a record that is not itself a CloudEvent (or not a valid one: `wrapped` says why).
fn plain<'a>(
    record: &Record<'a>,
    ctx: &'a Context<'_>,
    header_content_type: Option<&'a str>,
    wrapped: Option<String>,
) -> Ce<'a> {
    let declared =
        ctx.message.and_then(|m| m.content_type.as_deref()).or(header_content_type).filter(|c| !c.trim().is_empty());
    let (data, datacontenttype) = match record.value {
        Some(v) => select(v, declared),
        None => (Data::None, declared),
    };
    Ce {
        id: Cow::Borrowed(ctx.id),
        source: Cow::Borrowed(ctx.source),
        ce_type: Cow::Borrowed(plain_type(ctx)),
        subject: record.key.and_then(|k| std::str::from_utf8(k).ok()).filter(|k| !k.is_empty()).map(Cow::Borrowed),
        time: Some(Time::Millis(ctx.timestamp_ms)),
        datacontenttype: datacontenttype.map(Cow::Borrowed),
        dataschema: ctx.message.map(|m| m.dataschema.as_str()).filter(|d| !d.is_empty()).map(Cow::Borrowed),
        extensions: Vec::new(),
        data,
        overridden: Overridden::default(),
        wrapped,
        plain: true,
    }
}

fn plain_type<'a>(ctx: &'a Context<'_>) -> &'a str {
    let m = ctx.message;
    [m.and_then(|m| m.ce_type.as_deref()), m.map(|m| m.name.as_str()), Some(ctx.default_type)]
        .into_iter()
        .flatten()
        .find(|t| !t.is_empty())
        .unwrap_or(FALLBACK_TYPE)
}

/// A binary-mode event: attributes from `ce_*` headers, `datacontenttype` from `content-type`.
/// `overridden` gathers the [`RESERVED`] names among them, whether or not the event is valid.
fn binary<'a>(
    record: &Record<'a>,
    content_type: Option<&'a str>,
    overridden: &mut Overridden,
) -> Result<Ce<'a>, String> {
    const MODE: &str = "binary-mode headers";
    let mut own = Own::default();
    let mut headers: BTreeMap<&'a str, &'a str> = BTreeMap::new();
    for (k, v) in record.headers() {
        let Some(name) = k.strip_prefix(b"ce_") else { continue };
        let name = std::str::from_utf8(name).ok().filter(|n| is_attribute_name(n));
        let Some(name) = name else {
            return Err(format!("{MODE}: {} is not an attribute name ([a-z0-9], 1 to 20)", quoted(k)));
        };
        if let Some(i) = reserved_index(name) {
            overridden.add(i);
            continue;
        }
        // A null header value: the attribute is absent.
        let Some(v) = v else { continue };
        let Ok(v) = std::str::from_utf8(v) else {
            return Err(format!("{MODE}: ce_{name} is not UTF-8"));
        };
        if name == "data" {
            return Err(format!("{MODE}: ce_data is not an attribute (the data is the record value)"));
        }
        // The last header of a name wins, as for `content-type`.
        headers.insert(name, v);
    }
    for (name, v) in headers {
        if !own.set(name, Cow::Borrowed(v)) {
            own.extensions.push((Cow::Borrowed(name), Ext::Str(v)));
        }
    }
    // The Kafka binding carries `datacontenttype` in `content-type`; `ce_datacontenttype` is taken
    // when that is absent.
    let declared = content_type.or(match &own.datacontenttype {
        Some(Cow::Borrowed(c)) if !c.trim().is_empty() => Some(*c),
        _ => None,
    });
    let (data, datacontenttype) = match record.value {
        Some(v) => select(v, declared),
        None => (Data::None, declared),
    };
    own.data = data;
    own.datacontenttype = datacontenttype.map(Cow::Borrowed);
    own.check(MODE)
}

/// A JSON string's text, borrowed when it has no escapes.
fn json_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<&str>(raw.get())
        .map(Cow::Borrowed)
        .or_else(|_| serde_json::from_str::<String>(raw.get()).map(Cow::Owned))
        .ok()
}

/// A structured-mode event: the record value is the event in the JSON format. `overridden` gathers
/// the [`RESERVED`] names it sets, whether or not the event is valid.
fn structured<'a>(value: Option<&'a [u8]>, overridden: &mut Overridden) -> Result<Ce<'a>, String> {
    const MODE: &str = "structured-mode value";
    let text = value.and_then(|v| std::str::from_utf8(v).ok());
    let Some(map) = text.and_then(|t| serde_json::from_str::<BTreeMap<String, &RawValue>>(t).ok()) else {
        return Err(format!("{MODE} is not a JSON object"));
    };
    let mut own = Own::default();
    let mut base64 = None;
    for (name, raw) in map {
        if let Some(i) = reserved_index(&name) {
            overridden.add(i);
            continue;
        }
        // A null attribute is an absent one.
        if raw.get() == "null" {
            continue;
        }
        match name.as_str() {
            "data" => own.data = Data::Json(raw.get().as_bytes()),
            "data_base64" => match json_str(raw).filter(|s| is_base64(s)) {
                Some(b) => base64 = Some(b),
                None => return Err(format!("{MODE}: data_base64 is not a base64 string")),
            },
            _ if !is_attribute_name(&name) => {
                return Err(format!(
                    "{MODE}: {} is not an attribute name ([a-z0-9], 1 to 20)",
                    quoted(name.as_bytes())
                ));
            }
            "specversion" | "id" | "source" | "type" | "subject" | "time" | "datacontenttype" | "dataschema" => {
                let Some(v) = json_str(raw) else {
                    return Err(format!("{MODE}: {name} is not a string"));
                };
                own.set(&name, v);
            }
            _ => {
                let ok = match raw.get().as_bytes().first() {
                    Some(b'"' | b't' | b'f') => true,
                    // An Integer as JSON writes it: no fraction, exponent or `-0`.
                    Some(b'-' | b'0'..=b'9') => raw.get().parse::<i32>().is_ok_and(|n| n.to_string() == raw.get()),
                    _ => false,
                };
                if !ok {
                    return Err(format!("{MODE}: extension {name} is not a string, a boolean or a 32-bit integer"));
                }
                own.extensions.push((Cow::Owned(name), Ext::Raw(raw)));
            }
        }
    }
    if let Some(b) = base64 {
        if !matches!(own.data, Data::None) {
            return Err(format!("{MODE} has both data and data_base64"));
        }
        own.data = Data::Base64(b);
    }
    own.check(MODE)
}

/// An event as written: `ce` plus eventgate's own extensions.
struct Out<'e> {
    ce: &'e Ce<'e>,
    ctx: &'e Context<'e>,
    errors: Option<&'e str>,
    /// Data left out; the record value's size.
    omitted: Option<usize>,
}

impl Out<'_> {
    /// Writes the event in the JSON format. Member names are constants written as they are;
    /// string values are escaped only when they hold something JSON escapes (the same bytes
    /// serde_json would write, without its per-byte pass over every name and value).
    fn write(&self, w: &mut BytesMut) {
        let (ce, ctx) = (self.ce, self.ctx);
        // The shared attributes, when they are this event's: a plain event with no extensions,
        // nothing overridden or wrapped, made for the same message.
        let prepared = ctx.prepared.filter(|p| {
            ce.plain && ce.extensions.is_empty() && ce.overridden.0 == 0 && ce.wrapped.is_none() && p.fits(ctx)
        });
        w.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":");
        put_str(w, &ce.id);
        match prepared {
            Some(p) => w.extend_from_slice(&p.source_type),
            None => {
                w.extend_from_slice(b",\"source\":");
                put_str(w, &ce.source);
                w.extend_from_slice(b",\"type\":");
                put_str(w, &ce.ce_type);
            }
        }
        if let Some(v) = &ce.subject {
            w.extend_from_slice(b",\"subject\":");
            put_str(w, v);
        }
        match &ce.time {
            None => {}
            Some(Time::Given(v)) => {
                w.extend_from_slice(b",\"time\":");
                put_str(w, v);
            }
            Some(Time::Millis(ms)) => {
                let at = w.len();
                w.extend_from_slice(b",\"time\":");
                if !put_rfc3339_ms(w, *ms) {
                    w.truncate(at);
                }
            }
        }
        if let Some(v) = &ce.datacontenttype {
            w.extend_from_slice(b",\"datacontenttype\":");
            put_str(w, v);
        }
        match prepared {
            // No extensions on this path, so `partition` comes right after `dataschema`.
            Some(p) => w.extend_from_slice(&p.schema_partition),
            None => {
                if let Some(v) = &ce.dataschema {
                    w.extend_from_slice(b",\"dataschema\":");
                    put_str(w, v);
                }
            }
        }
        for (name, v) in &ce.extensions {
            w.put_u8(b',');
            put_str(w, name);
            w.put_u8(b':');
            match v {
                Ext::Str(t) => put_str(w, t),
                Ext::Raw(r) => w.extend_from_slice(r.get().as_bytes()),
            }
        }
        if prepared.is_none() {
            w.extend_from_slice(b",\"partition\":");
            w.extend_from_slice(itoa::Buffer::new().format(ctx.partition).as_bytes());
        }
        if let Some(o) = ctx.offset {
            w.extend_from_slice(b",\"offset\":\"");
            w.extend_from_slice(itoa::Buffer::new().format(o).as_bytes());
            w.put_u8(b'"');
        }
        // A label is plain ASCII: nothing to escape.
        w.extend_from_slice(b",\"validation\":\"");
        w.extend_from_slice(ctx.outcome.label().as_bytes());
        w.put_u8(b'"');
        if let Some(e) = self.errors {
            w.extend_from_slice(b",\"validationerrors\":");
            w.extend_from_slice(e.as_bytes());
        }
        match prepared {
            Some(p) => w.extend_from_slice(&p.producer),
            None => {
                if let Some(p) = ctx.principal {
                    w.extend_from_slice(b",\"principal\":");
                    put_str(w, p);
                }
                if let Some(c) = ctx.client_id {
                    w.extend_from_slice(b",\"clientid\":");
                    put_str(w, c);
                }
            }
        }
        if ce.overridden.0 != 0 {
            w.extend_from_slice(b",\"overridden\":");
            put_str(w, &ce.overridden.to_string());
        }
        if let Some(wrapped) = &ce.wrapped {
            w.extend_from_slice(b",\"wrapped\":");
            put_str(w, wrapped);
        }
        match self.omitted {
            None => match &ce.data {
                Data::None => {}
                Data::Json(raw) => {
                    w.extend_from_slice(b",\"data\":");
                    w.extend_from_slice(raw);
                }
                Data::Text(t) => {
                    w.extend_from_slice(b",\"data\":");
                    put_str(w, t);
                }
                Data::Bytes(b) => {
                    w.extend_from_slice(b",\"data_base64\":\"");
                    let start = w.len();
                    w.resize(start + base64::encoded_len(b.len(), true).unwrap_or(0), 0);
                    let written =
                        base64::Engine::encode_slice(&base64::engine::general_purpose::STANDARD, b, &mut w[start..])
                            .unwrap_or(0);
                    w.truncate(start + written);
                    w.put_u8(b'"');
                }
                Data::Base64(b) => {
                    w.extend_from_slice(b",\"data_base64\":");
                    put_str(w, b);
                }
            },
            Some(size) => {
                // An Integer is 32-bit; a Kafka record value always fits, but say so if not.
                w.extend_from_slice(b",\"dataomitted\":true,\"datasize\":");
                match i32::try_from(size) {
                    Ok(n) => w.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
                    Err(_) => {
                        w.put_u8(b'"');
                        w.extend_from_slice(itoa::Buffer::new().format(size).as_bytes());
                        w.put_u8(b'"');
                    }
                }
            }
        }
        w.put_u8(b'}');
    }
}

/// A JSON string: written as it is when nothing in it needs escaping (no `"`, `\\` or control
/// character: what serde_json escapes), else escaped by serde_json.
fn put_str(w: &mut impl BufMut, s: &str) {
    if json::is_plain(s.as_bytes()) {
        w.put_u8(b'"');
        w.put_slice(s.as_bytes());
        w.put_u8(b'"');
    } else {
        // Writing into memory cannot fail.
        let _ = serde_json::to_writer(BufMut::writer(&mut *w), s);
    }
}

/// The `validationerrors` attribute of `outcome` as it is written into the event: a JSON string
/// literal holding the JSON array of errors.
pub fn validation_errors_literal(outcome: &Outcome) -> Option<String> {
    serde_json::to_string(&validation_errors(outcome)?).ok()
}

fn validation_errors(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Invalid(errors) => serde_json::to_string(&**errors).ok(),
        Outcome::Unchecked(why) => serde_json::to_string(&[&**why]).ok(),
        Outcome::Valid(_) => None,
    }
}

/// Makes `block` ready for an event written again, smaller: the same room, unless the first
/// attempt grew it past [`BLOCK`] (the small event and the ones after it must not keep that
/// alive), then a fresh block.
fn written_again(block: &mut BytesMut) {
    block.clear();
    if block.capacity() > BLOCK {
        *block = BytesMut::with_capacity(BLOCK);
    }
}

/// [`build_into`], in a block of its own (tests).
#[cfg(test)]
pub fn build(record: &Record<'_>, ctx: &Context<'_>) -> Event {
    build_into(record, ctx, &mut BytesMut::new())
}

/// Builds the event for one record, its JSON and id taken from `block` (left empty, as it must be
/// given): when less room is left than the event is expected to take, a new block of [`BLOCK`]
/// replaces it (the old one is freed with the last event taken from it), or, for an event of more
/// than half a block, the event gets a buffer of its own size and the block is kept. An event sent
/// without its data is written again into the block, right after the event before it when the
/// block has room for it (else the block grows into a new allocation): over its first attempt
/// when that was in the block, or into a fresh block when that attempt grew it
/// ([`written_again`]); a first attempt in a buffer of its own is freed.
pub fn build_into(record: &Record<'_>, ctx: &Context<'_>, block: &mut BytesMut) -> Event {
    // One walk over the headers: the content type and whether this is binary mode.
    let (mut content_type, mut binary_mode) = (None, false);
    for (k, v) in record.headers() {
        if k == b"content-type" {
            content_type = v.and_then(|v| std::str::from_utf8(v).ok()).filter(|c| !c.trim().is_empty());
        } else if k == b"ce_specversion" {
            binary_mode = true;
        }
    }
    let mut overridden = Overridden::default();
    let own = if content_type.is_some_and(is_structured_type) {
        Some(structured(record.value, &mut overridden))
    } else if binary_mode {
        Some(binary(record, content_type, &mut overridden))
    } else {
        None
    };
    let mut ce = match own {
        None => plain(record, ctx, content_type, None),
        Some(Ok(ce)) => ce,
        Some(Err(why)) => plain(record, ctx, content_type, Some(why)),
    };
    ce.overridden = overridden;

    let made;
    let errors = match ctx.errors {
        Some(e) => Some(e),
        None => {
            made = validation_errors_literal(ctx.outcome);
            made.as_deref()
        }
    };
    let mut out = Out { ce: &ce, ctx, errors, omitted: None };
    // The room the event is expected to take, so it is written without growing its buffer, and
    // a block is left for a new one only when the event would not fit: JSON and plain text go in as
    // they are, bytes grow by a third in base64, and the attributes take the source, the type and
    // a few hundred bytes (text that needs escaping, or a long principal or client id, grows past
    // this, which only costs that event a copy). An estimate of a third more for every kind made
    // records of 25–45 KiB take a 64 KiB block each.
    let value = record.value.map_or(0, <[u8]>::len);
    let data = if matches!(ce.data, Data::Bytes(_)) { value / 3 * 4 + 4 } else { value };
    let estimate = data
        + record.key.map_or(0, <[u8]>::len)
        + errors.map_or(0, str::len)
        + ctx.source.len()
        + ctx.default_type.len()
        + 512;
    let room = ctx.id.len() + estimate.min(ctx.max_bytes.saturating_add(1024));
    debug_assert!(block.is_empty(), "a block is given empty");
    // Whatever was left in it (never, from `expand`) must not become the start of this event.
    block.clear();
    // An event that does not fit where the block is: of more than half a block, a buffer of its
    // own size, and the block is kept for the events after it; smaller, a new block.
    let fits = block.capacity() - block.len() >= room;
    let mut own = (!fits && room > BLOCK / 2).then(|| BytesMut::with_capacity(room));
    if !fits && own.is_none() {
        *block = BytesMut::with_capacity(BLOCK);
    }
    let first = own.as_mut().unwrap_or(&mut *block);
    out.write(first);
    let data_omitted = first.len() > ctx.max_bytes;
    let small;
    let json = if data_omitted {
        // Written again without its data into the block, never into the large attempt's buffer
        // (freed here).
        drop(own.take());
        out.omitted = Some(value);
        written_again(block);
        out.write(block);
        if block.len() > ctx.max_bytes {
            // Still too large (long attributes or key): eventgate's attributes only.
            small = Ce {
                subject: None,
                datacontenttype: None,
                data: Data::None,
                overridden: ce.overridden,
                wrapped: Some("the event is too large even without its data".into()),
                ..plain(record, ctx, None, None)
            };
            out.ce = &small;
            written_again(block);
            out.write(block);
        }
        block
    } else {
        own.as_mut().unwrap_or(block)
    };
    let event = json.split().freeze();
    // The id after its event, in the same block (written last, so an oversized event's first
    // attempt is not kept alive by it).
    json.extend_from_slice(ctx.id.as_bytes());
    let id = EventId(json.split().freeze());
    Event {
        id,
        ce_type: match ctx.prepared {
            Some(p) if *p.ce_type == *out.ce.ce_type => p.ce_type.clone(),
            _ => Arc::from(&*out.ce.ce_type),
        },
        validation: ctx.outcome.label(),
        json: event,
        data_omitted,
        overridden: ce.overridden.0.count_ones(),
        wrapped: out.ce.wrapped.is_some(),
    }
}

pub mod json;

#[cfg(test)]
mod tests;
