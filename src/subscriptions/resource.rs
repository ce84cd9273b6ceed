//! The resources of subscriptions, as written in YAML or JSON: `Variable`, `Channel` and
//! `Subscription`, each `apiVersion: eventgate/v1`, `kind`, `metadata.name` and `spec`.
//!
//! ```yaml
//! apiVersion: eventgate/v1
//! kind: Channel                      # where events go: an HTTP sink
//! metadata: { name: orders-hook }
//! spec:
//!   url: https://hooks.example.com/orders
//!   headers: { Authorization: "Bearer {{hook-token}}" }   # {{name}}: a Variable
//!   mode: binary                     # binary | structured | batch
//! ---
//! apiVersion: eventgate/v1
//! kind: Subscription                 # what to deliver, where, and how
//! metadata: { name: invalid-orders }
//! spec:
//!   channel: orders-hook
//!   topics: ["orders.>"]
//!   validation: [invalid]
//!   delivery: { retry: 5, backoffPolicy: exponential, backoffDelay: PT1S }
//! ```
//!
//! Parsing checks everything a resource says about itself (names, sizes, counts, URLs, durations,
//! filters); [`Resources::check`] then checks what resources say about each other (a subscription's
//! channel exists, every `{{name}}` has its Variable, every `{{sys:NAME}}` its environment
//! variable), naming the resource and field that failed. Resources are kept as written, with their
//! defaults filled in, templates unresolved: a secret never appears in a resource, only in what
//! [`Resources::resolve_channel`] hands to the delivery engine.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::filter::Filter;

/// The one `apiVersion` eventgate reads.
pub const API_VERSION: &str = "eventgate/v1";

/// Most resources of one kind.
pub const MAX_PER_KIND: usize = 256;
/// Largest resource, as JSON.
pub const MAX_RESOURCE_BYTES: usize = 64 * 1024;
/// Largest Variable value.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;
/// Most headers a channel sets, topics or types a subscription lists, and filters it has.
pub const MAX_LIST: usize = 64;

/// Why a resource was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {message}")]
pub struct ResourceError {
    /// `Kind/name` (or the document's position when it has no name yet), and the field.
    pub at: String,
    pub message: String,
}

impl ResourceError {
    pub fn new(at: impl Into<String>, message: impl Into<String>) -> Self {
        Self { at: at.into(), message: message.into() }
    }
}

/// The kinds of resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Variable,
    Channel,
    Subscription,
}

impl Kind {
    /// The key prefix in the bucket and the path segment in the API.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Variable => "variables",
            Kind::Channel => "channels",
            Kind::Subscription => "subscriptions",
        }
    }

    pub fn key_prefix(self) -> &'static str {
        match self {
            Kind::Variable => "variable",
            Kind::Channel => "channel",
            Kind::Subscription => "subscription",
        }
    }

    pub fn from_key_prefix(p: &str) -> Option<Kind> {
        [Kind::Variable, Kind::Channel, Kind::Subscription].into_iter().find(|k| k.key_prefix() == p)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// `metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A named value other resources use as `{{name}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VariableSpec {
    /// The value; may itself be `{{sys:NAME}}` (an environment variable of eventgate's).
    pub value: String,
    /// Never shown back by the API.
    #[serde(default)]
    pub secret: bool,
}

/// How events are put into HTTP requests (the CloudEvents HTTP binding's modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Attributes as `ce-*` headers, the data as the body.
    #[default]
    Binary,
    /// The event as `application/cloudevents+json`.
    Structured,
    /// Several events as `application/cloudevents-batch+json`: only for receivers that ask for it.
    Batch,
}

/// The HTTP method of deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    Post,
    Put,
}

/// Where an access token goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenIn {
    /// `Authorization: Bearer <token>`.
    #[default]
    Header,
    /// `?access_token=<token>` (the CloudEvents webhook spec's alternative).
    Query,
}

/// An access token for the sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Auth {
    pub token: String,
    #[serde(default, rename = "in")]
    pub token_in: TokenIn,
}

/// Batch limits (mode `batch`): a batch is sent when it holds `maxEvents` events or `maxBytes`
/// bytes, or `maxWait` after its first event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Batch {
    #[serde(default = "Batch::default_events")]
    pub max_events: usize,
    #[serde(default = "Batch::default_bytes")]
    pub max_bytes: usize,
    #[serde(default = "Batch::default_wait")]
    pub max_wait: String,
}

impl Batch {
    fn default_events() -> usize {
        100
    }
    fn default_bytes() -> usize {
        1 << 20
    }
    fn default_wait() -> String {
        "PT0.1S".into()
    }
}

impl Default for Batch {
    fn default() -> Self {
        Self { max_events: Self::default_events(), max_bytes: Self::default_bytes(), max_wait: Self::default_wait() }
    }
}

/// The CloudEvents webhook abuse-protection handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Handshake {
    /// Ask the sink's consent (`OPTIONS` with `WebHook-Request-Origin`) before the first delivery.
    #[serde(default)]
    pub enabled: bool,
}

/// An HTTP sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChannelSpec {
    /// `http://` or `https://`; may use `{{name}}`.
    pub url: String,
    #[serde(default)]
    pub method: Method,
    /// Extra request headers; values may use `{{name}}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub batch: Batch,
    /// Time a delivery may take, answer included (ISO-8601 `PT10S`, or `10s`, `500ms`).
    #[serde(default = "ChannelSpec::default_timeout")]
    pub timeout: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake: Option<Handshake>,
}

impl ChannelSpec {
    fn default_timeout() -> String {
        "PT10S".into()
    }
}

/// Which events of a validation outcome a subscription wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Valid,
    Invalid,
    Unchecked,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Valid => "valid",
            Outcome::Invalid => "invalid",
            Outcome::Unchecked => "unchecked",
        }
    }
}

/// How the wait between attempts grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    /// `backoffDelay × attempt`.
    Linear,
    /// `backoffDelay × 2^(attempt−1)`.
    #[default]
    Exponential,
}

/// Delivery order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// One event (or batch) at a time, in stream order, across all instances.
    Ordered,
    /// Up to `concurrency` at once.
    #[default]
    Unordered,
}

/// Where events that cannot be delivered go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeadLetter {
    /// A NATS subject kept by a JetStream stream (default `<deadletter prefix>.<subscription>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Or a Channel, delivered to once (structured mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// How a subscription delivers (after Knative Eventing's `delivery`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Delivery {
    /// Attempts after the first before an event is dead-lettered.
    #[serde(default = "Delivery::default_retry")]
    pub retry: u32,
    #[serde(default)]
    pub backoff_policy: Backoff,
    #[serde(default = "Delivery::default_delay")]
    pub backoff_delay: String,
    /// Longest wait between attempts.
    #[serde(default = "Delivery::default_max_delay")]
    pub max_delay: String,
    /// Longest `Retry-After` honoured (429 and 503 answers).
    #[serde(default = "Delivery::default_retry_after_max")]
    pub retry_after_max: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetter>,
    #[serde(default)]
    pub ordering: Ordering,
    /// Deliveries (or batches) in flight at once, per subscription, when unordered.
    #[serde(default = "Delivery::default_concurrency")]
    pub concurrency: u32,
}

impl Delivery {
    fn default_retry() -> u32 {
        10
    }
    fn default_delay() -> String {
        "PT1S".into()
    }
    fn default_max_delay() -> String {
        "PT5M".into()
    }
    fn default_retry_after_max() -> String {
        "PT10M".into()
    }
    fn default_concurrency() -> u32 {
        16
    }
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            retry: Self::default_retry(),
            backoff_policy: Backoff::default(),
            backoff_delay: Self::default_delay(),
            max_delay: Self::default_max_delay(),
            retry_after_max: Self::default_retry_after_max(),
            dead_letter: None,
            ordering: Ordering::default(),
            concurrency: Self::default_concurrency(),
        }
    }
}

/// Where a new subscription starts in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// With events mirrored from now on.
    #[default]
    New,
    /// With the oldest event the stream holds.
    All,
}

/// What to deliver, where and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SubscriptionSpec {
    /// The Channel events go to.
    pub channel: String,
    /// Kafka topics, in the `/ws` syntax: dot-separated names, `*` for one name, `>` at the end.
    #[serde(default = "SubscriptionSpec::default_topics")]
    pub topics: Vec<String>,
    /// CloudEvents types to keep (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    /// The CloudEvents `source` to keep (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Validation outcomes to keep (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation: Vec<Outcome>,
    /// Deliver the records refused by policy instead of the accepted ones.
    #[serde(default)]
    pub rejected: bool,
    /// CloudEvents Subscriptions API filters (`exact`, `prefix`, `suffix`, `all`, `any`, `not`):
    /// all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub delivery: Delivery,
    #[serde(default)]
    pub start: StartAt,
}

impl SubscriptionSpec {
    fn default_topics() -> Vec<String> {
        vec![">".into()]
    }
}

/// A resource's spec, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    Variable(VariableSpec),
    Channel(ChannelSpec),
    Subscription(Box<SubscriptionSpec>),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Variable(_) => Kind::Variable,
            Spec::Channel(_) => Kind::Channel,
            Spec::Subscription(_) => Kind::Subscription,
        }
    }
}

/// One resource, checked on its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub metadata: Metadata,
    pub spec: Spec,
}

/// A resource as written (its `spec` still untyped).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Written {
    api_version: String,
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    spec: Value,
}

impl Resource {
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// `Kind/name`, as errors name it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind(), self.name())
    }

    /// Reads and checks one resource from its JSON form. `at` names it in errors when it has no
    /// name yet (e.g. "document 3").
    pub fn from_value(value: Value, at: &str) -> Result<Resource, ResourceError> {
        let size = serde_json::to_vec(&value).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > MAX_RESOURCE_BYTES {
            return Err(ResourceError::new(at, format!("{size} bytes; a resource may have {MAX_RESOURCE_BYTES}")));
        }
        let w: Written = serde_json::from_value(value).map_err(|e| ResourceError::new(at, e.to_string()))?;
        let kind = match w.kind.as_str() {
            "Variable" => Kind::Variable,
            "Channel" => Kind::Channel,
            "Subscription" => Kind::Subscription,
            other => {
                return Err(ResourceError::new(
                    at,
                    format!("kind `{other}`: eventgate/v1 has Variable, Channel and Subscription"),
                ));
            }
        };
        check_name(&w.metadata.name).map_err(|m| ResourceError::new(format!("{kind}: metadata.name"), m))?;
        let id = format!("{kind}/{}", w.metadata.name);
        if w.api_version != API_VERSION {
            return Err(ResourceError::new(
                format!("{id}: apiVersion"),
                format!("`{}`: eventgate reads `{API_VERSION}`", w.api_version),
            ));
        }
        let spec = Self::spec_from_value(kind, w.spec, &id)?;
        let r = Resource { metadata: w.metadata, spec };
        r.check_self()?;
        Ok(r)
    }

    /// Reads a spec of `kind` (the body of `PUT /<kind>s/{name}`).
    pub fn spec_from_value(kind: Kind, spec: Value, id: &str) -> Result<Spec, ResourceError> {
        let err = |e: serde_json::Error| ResourceError::new(format!("{id}: spec"), e.to_string());
        Ok(match kind {
            Kind::Variable => Spec::Variable(serde_json::from_value(spec).map_err(err)?),
            Kind::Channel => Spec::Channel(serde_json::from_value(spec).map_err(err)?),
            Kind::Subscription => Spec::Subscription(Box::new(serde_json::from_value(spec).map_err(err)?)),
        })
    }

    /// Everything a resource says about itself.
    pub fn check_self(&self) -> Result<(), ResourceError> {
        let id = self.id();
        let at = |field: &str| format!("{id}: spec.{field}");
        let fail = |field: &str, m: String| Err(ResourceError::new(at(field), m));
        match &self.spec {
            Spec::Variable(v) => {
                if v.value.len() > MAX_VALUE_BYTES {
                    return fail("value", format!("longer than {MAX_VALUE_BYTES} bytes"));
                }
                for r in references(&v.value).map_err(|m| ResourceError::new(at("value"), m))? {
                    if let Ref::Variable(name) = r {
                        return fail(
                            "value",
                            format!("`{{{{{name}}}}}`: a Variable's value may only use `{{{{sys:NAME}}}}`"),
                        );
                    }
                }
            }
            Spec::Channel(c) => {
                for (field, text) in c.templates() {
                    references(text).map_err(|m| ResourceError::new(at(&field), m))?;
                }
                // A URL with references is checked once they resolve (`Resources::check`).
                if references(&c.url).map(|r| r.is_empty()).unwrap_or(false) {
                    check_url(&c.url).map_err(|m| ResourceError::new(at("url"), m))?;
                }
                if c.auth.is_some() && c.headers.keys().any(|k| k.eq_ignore_ascii_case("authorization")) {
                    return fail("headers.Authorization", "is set by `auth`: give one or the other".into());
                }
                if c.headers.len() > MAX_LIST {
                    return fail("headers", format!("more than {MAX_LIST}"));
                }
                for (name, value) in &c.headers {
                    if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        return fail(&format!("headers.{name}"), "is not a valid header name".into());
                    }
                    let lower = name.to_ascii_lowercase();
                    if lower.starts_with("ce-")
                        || matches!(lower.as_str(), "content-type" | "content-length" | "host" | "transfer-encoding")
                    {
                        return fail(&format!("headers.{name}"), "is set by eventgate for each delivery".into());
                    }
                    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                        return fail(&format!("headers.{name}"), "holds a line break".into());
                    }
                }
                parse_duration(&c.timeout)
                    .and_then(|d| within(d, Duration::from_millis(10), Duration::from_secs(300)))
                    .map_err(|m| ResourceError::new(at("timeout"), m))?;
                let b = &c.batch;
                if !(1..=1000).contains(&b.max_events) {
                    return fail("batch.maxEvents", "must be between 1 and 1000".into());
                }
                if !(1024..=16 << 20).contains(&b.max_bytes) {
                    return fail("batch.maxBytes", "must be between 1024 and 16777216".into());
                }
                parse_duration(&b.max_wait)
                    .and_then(|d| within(d, Duration::from_millis(1), Duration::from_secs(60)))
                    .map_err(|m| ResourceError::new(at("batch.maxWait"), m))?;
            }
            Spec::Subscription(s) => {
                check_name(&s.channel).map_err(|m| ResourceError::new(at("channel"), m))?;
                if s.topics.is_empty() || s.topics.len() > MAX_LIST {
                    return fail("topics", format!("list 1 to {MAX_LIST} topics"));
                }
                for t in &s.topics {
                    crate::http::ws::topic_filter(t).map_err(|m| ResourceError::new(at("topics"), m))?;
                }
                if s.types.len() > MAX_LIST {
                    return fail("types", format!("more than {MAX_LIST}"));
                }
                let nodes: usize = s.filters.iter().map(super::filter::Filter::nodes).sum();
                if nodes > super::filter::MAX_NODES {
                    return fail("filters", format!("{nodes} filters in all; at most {}", super::filter::MAX_NODES));
                }
                let d = &s.delivery;
                if d.retry > 1000 {
                    return fail("delivery.retry", "at most 1000".into());
                }
                let delay = parse_duration(&d.backoff_delay)
                    .and_then(|v| within(v, Duration::from_millis(1), Duration::from_secs(86_400)))
                    .map_err(|m| ResourceError::new(at("delivery.backoffDelay"), m))?;
                let max = parse_duration(&d.max_delay)
                    .and_then(|v| within(v, Duration::from_millis(1), Duration::from_secs(86_400)))
                    .map_err(|m| ResourceError::new(at("delivery.maxDelay"), m))?;
                if max < delay {
                    return fail("delivery.maxDelay", "is shorter than backoffDelay".into());
                }
                parse_duration(&d.retry_after_max)
                    .and_then(|v| within(v, Duration::ZERO, Duration::from_secs(86_400)))
                    .map_err(|m| ResourceError::new(at("delivery.retryAfterMax"), m))?;
                if !(1..=256).contains(&d.concurrency) {
                    return fail("delivery.concurrency", "must be between 1 and 256".into());
                }
                if let Some(dl) = &d.dead_letter {
                    match (&dl.subject, &dl.channel) {
                        (Some(subject), None) => check_subject(subject)
                            .map_err(|m| ResourceError::new(at("delivery.deadLetter.subject"), m))?,
                        (None, Some(channel)) => {
                            check_name(channel).map_err(|m| ResourceError::new(at("delivery.deadLetter.channel"), m))?
                        }
                        _ => return fail("delivery.deadLetter", "give either `subject` or `channel`".into()),
                    }
                }
            }
        }
        Ok(())
    }

    /// The resource as JSON (`apiVersion`, `kind`, `metadata`, `spec`), with a secret Variable's
    /// value left out unless `secrets`.
    pub fn to_value(&self, secrets: bool) -> Value {
        let spec = match &self.spec {
            Spec::Variable(v) if v.secret && !secrets => serde_json::json!({ "secret": true }),
            Spec::Variable(v) => serde_json::to_value(v).unwrap_or(Value::Null),
            Spec::Channel(c) if !secrets => {
                // A token written into the channel itself (not through a Variable) is a secret too.
                let mut shown = c.clone();
                if let Some(a) = &mut shown.auth
                    && references(&a.token).map(|r| r.is_empty()).unwrap_or(true)
                {
                    a.token = "(hidden)".into();
                }
                serde_json::to_value(shown).unwrap_or(Value::Null)
            }
            Spec::Channel(c) => serde_json::to_value(c).unwrap_or(Value::Null),
            Spec::Subscription(s) => serde_json::to_value(s).unwrap_or(Value::Null),
        };
        serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": self.kind(),
            "metadata": self.metadata,
            "spec": spec,
        })
    }
}

impl ChannelSpec {
    /// The fields that may hold `{{…}}`, with their paths.
    pub fn templates(&self) -> Vec<(String, &str)> {
        let mut out = vec![("url".to_owned(), self.url.as_str())];
        out.extend(self.headers.iter().map(|(k, v)| (format!("headers.{k}"), v.as_str())));
        if let Some(a) = &self.auth {
            out.push(("auth.token".into(), a.token.as_str()));
        }
        out
    }
}

/// Resource names: a DNS label (they become bucket keys, consumer names and subject tokens).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}`: use 1-63 characters from a-z 0-9 and `-`, not starting or ending with `-`"))
    }
}

/// A NATS subject for publishing: dot-separated tokens, no wildcards.
pub fn check_subject(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 256
        && !s.starts_with('$')
        && s.split('.').all(|t| !t.is_empty() && !t.contains(['*', '>']) && !t.bytes().any(|b| b <= b' '));
    if ok { Ok(()) } else { Err(format!("`{s}` is not a NATS subject (dot-separated names, no wildcards)")) }
}

/// An `http(s)://` URL eventgate can send to.
pub fn check_url(url: &str) -> Result<reqwest::Url, String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("`{url}`: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!("`{url}`: use http:// or https://"));
    }
    if u.host().is_none() {
        return Err(format!("`{url}`: no host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!("`{}`: put credentials in `auth` or a header, not in the URL", u.host_str().unwrap_or("")));
    }
    Ok(u)
}

fn within(d: Duration, min: Duration, max: Duration) -> Result<Duration, String> {
    if d < min || d > max { Err(format!("{d:?} is outside {min:?}..={max:?}")) } else { Ok(d) }
}

/// Reads a duration: ISO-8601 (`PT1.5S`, `PT2M`, `P1D`, `P1DT2H`) or short (`500ms`, `2s`, `1m`,
/// `1h`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration (ISO-8601 like `PT1.5S`, or `500ms`, `2s`, `1m`, `1h`)");
    let t = text.trim();
    if let Some(rest) = t.strip_prefix('P') {
        let (date, time) = match rest.split_once('T') {
            Some((d, t)) if !t.is_empty() => (d, Some(t)),
            Some(_) => return Err(bad()),
            None => (rest, None),
        };
        let mut secs = 0f64;
        let mut any = false;
        let mut take = |part: &str, units: &[(char, f64)]| -> Result<(), String> {
            let mut num = String::new();
            let mut last = 0usize;
            for c in part.chars() {
                if c.is_ascii_digit() || c == '.' {
                    num.push(c);
                    continue;
                }
                let pos = units.iter().position(|(u, _)| *u == c).ok_or_else(bad)?;
                if pos < last || num.is_empty() {
                    return Err(bad());
                }
                let n: f64 = num.parse().map_err(|_| bad())?;
                secs += n * units[pos].1;
                num.clear();
                last = pos + 1;
                any = true;
            }
            if num.is_empty() { Ok(()) } else { Err(bad()) }
        };
        take(date, &[('W', 604_800.0), ('D', 86_400.0)])?;
        if let Some(time) = time {
            take(time, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)])?;
        }
        if !any || !secs.is_finite() || secs > 1e9 {
            return Err(bad());
        }
        return Ok(Duration::from_secs_f64(secs));
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    Ok(d)
}

/// A `{{…}}` in a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ref<'a> {
    /// `{{name}}`: a Variable.
    Variable(&'a str),
    /// `{{sys:NAME}}`: an environment variable.
    Env(&'a str),
}

/// The references in `text`, checked for form.
pub fn references(text: &str) -> Result<Vec<Ref<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| "`{{` without `}}`".to_owned())?;
        let inner = after[..end].trim();
        if let Some(env) = inner.strip_prefix("sys:") {
            let ok = !env.is_empty() && env.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(format!("`{{{{{inner}}}}}`: an environment variable name is letters, digits and `_`"));
            }
            if env.starts_with("EVENTGATE_") {
                // eventgate's own settings: the admin token, credentials.
                return Err(format!(
                    "`{{{{{inner}}}}}`: eventgate's own configuration (EVENTGATE_*) cannot be read by resources"
                ));
            }
            out.push(Ref::Env(env));
        } else {
            check_name(inner).map_err(|m| format!("`{{{{{inner}}}}}`: a Variable name {m}"))?;
            out.push(Ref::Variable(inner));
        }
        rest = &after[end + 2..];
    }
    Ok(out)
}

/// Replaces every reference in `text` with `lookup`'s value for it.
pub fn substitute(text: &str, mut lookup: impl FnMut(&Ref<'_>) -> Result<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| "`{{` without `}}`".to_owned())?;
        let inner = after[..end].trim();
        let r = match inner.strip_prefix("sys:") {
            Some(env) => Ref::Env(env),
            None => Ref::Variable(inner),
        };
        out.push_str(&lookup(&r)?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Reads resources from YAML (one or more documents, `---` between them) or JSON (one resource, or
/// an array of them).
pub fn parse_documents(text: &str) -> Result<Vec<Resource>, ResourceError> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let values: Vec<Value> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        match serde_json::from_str::<Value>(trimmed) {
            Ok(Value::Array(items)) => items,
            Ok(v) => vec![v],
            Err(e) => return Err(ResourceError::new("JSON", e.to_string())),
        }
    } else {
        crate::asyncapi::parse::parse_multi(trimmed).map_err(|e| ResourceError::new("YAML", e.to_string()))?
    };
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.into_iter().enumerate() {
        if v.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        out.push(Resource::from_value(v, &format!("document {}", i + 1))?);
    }
    Ok(out)
}

/// A set of resources: the store's state, or what a set would be after an apply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub variables: BTreeMap<String, Resource>,
    pub channels: BTreeMap<String, Resource>,
    pub subscriptions: BTreeMap<String, Resource>,
}

/// A resolved channel: what the delivery engine sends with (holds secrets: never shown).
#[derive(Clone, PartialEq, Eq)]
pub struct ResolvedChannel {
    pub name: String,
    pub url: reqwest::Url,
    /// The URL as written, templates unresolved: what errors and dead letters name.
    pub url_template: String,
    pub method: Method,
    pub headers: Vec<(String, String)>,
    pub mode: Mode,
    pub batch_events: usize,
    pub batch_bytes: usize,
    pub batch_wait: Duration,
    pub timeout: Duration,
    pub handshake: bool,
}

impl fmt::Debug for ResolvedChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedChannel").field("name", &self.name).field("url", &self.url_template).finish()
    }
}

impl Resources {
    pub fn of(&self, kind: Kind) -> &BTreeMap<String, Resource> {
        match kind {
            Kind::Variable => &self.variables,
            Kind::Channel => &self.channels,
            Kind::Subscription => &self.subscriptions,
        }
    }

    pub fn of_mut(&mut self, kind: Kind) -> &mut BTreeMap<String, Resource> {
        match kind {
            Kind::Variable => &mut self.variables,
            Kind::Channel => &mut self.channels,
            Kind::Subscription => &mut self.subscriptions,
        }
    }

    pub fn get(&self, kind: Kind, name: &str) -> Option<&Resource> {
        self.of(kind).get(name)
    }

    pub fn insert(&mut self, r: Resource) {
        self.of_mut(r.kind()).insert(r.metadata.name.clone(), r);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Resource> {
        self.variables.values().chain(self.channels.values()).chain(self.subscriptions.values())
    }

    /// A Variable's value, resolved.
    fn variable(&self, name: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        let Some(Resource { spec: Spec::Variable(v), .. }) = self.variables.get(name) else {
            return Err(format!("no Variable `{name}`"));
        };
        substitute(&v.value, |r| match r {
            Ref::Env(e) => env(e).ok_or_else(|| format!("Variable `{name}` uses `{{{{sys:{e}}}}}`, which is not set")),
            Ref::Variable(v) => Err(format!("Variable `{name}` uses `{{{{{v}}}}}`")),
        })
    }

    fn resolve_text(&self, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        substitute(text, |r| match r {
            Ref::Env(e) => env(e).ok_or_else(|| format!("`{{{{sys:{e}}}}}`: the environment variable is not set")),
            Ref::Variable(v) => self.variable(v, env),
        })
    }

    /// A channel with every reference resolved (`env` reads eventgate's environment).
    pub fn resolve_channel(
        &self,
        name: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ResolvedChannel, ResourceError> {
        let id = format!("Channel/{name}");
        let Some(Resource { spec: Spec::Channel(c), .. }) = self.channels.get(name) else {
            return Err(ResourceError::new(id, "no such Channel"));
        };
        let at = |f: &str| format!("{id}: spec.{f}");
        let url_text = self.resolve_text(&c.url, env).map_err(|m| ResourceError::new(at("url"), m))?;
        let mut url = check_url(&url_text).map_err(|m| {
            // The resolved URL may hold a secret: name the template.
            ResourceError::new(
                at("url"),
                if c.url == url_text { m } else { format!("`{}` resolves to no valid URL", c.url) },
            )
        })?;
        let mut headers = Vec::with_capacity(c.headers.len() + 1);
        for (k, v) in &c.headers {
            let value = self.resolve_text(v, env).map_err(|m| ResourceError::new(at(&format!("headers.{k}")), m))?;
            if axum::http::HeaderValue::from_str(&value).is_err() {
                return Err(ResourceError::new(at(&format!("headers.{k}")), "resolves to an invalid header value"));
            }
            headers.push((k.clone(), value));
        }
        if let Some(a) = &c.auth {
            let token = self.resolve_text(&a.token, env).map_err(|m| ResourceError::new(at("auth.token"), m))?;
            match a.token_in {
                TokenIn::Header => {
                    let value = format!("Bearer {token}");
                    if axum::http::HeaderValue::from_str(&value).is_err() {
                        return Err(ResourceError::new(at("auth.token"), "resolves to an invalid header value"));
                    }
                    headers.push(("Authorization".into(), value));
                }
                TokenIn::Query => {
                    url.query_pairs_mut().append_pair("access_token", &token);
                }
            }
        }
        let dur = |t: &str| parse_duration(t).unwrap_or(Duration::from_secs(10));
        Ok(ResolvedChannel {
            name: name.to_owned(),
            url,
            url_template: c.url.clone(),
            method: c.method,
            headers,
            mode: c.mode,
            batch_events: c.batch.max_events,
            batch_bytes: c.batch.max_bytes,
            batch_wait: dur(&c.batch.max_wait),
            timeout: dur(&c.timeout),
            handshake: c.handshake.as_ref().is_some_and(|h| h.enabled),
        })
    }

    /// Checks the set as a whole: counts, every subscription's channels, every reference.
    pub fn check(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ResourceError> {
        for kind in [Kind::Variable, Kind::Channel, Kind::Subscription] {
            if self.of(kind).len() > MAX_PER_KIND {
                return Err(ResourceError::new(
                    kind.plural(),
                    format!("{} declared; at most {MAX_PER_KIND} of each kind", self.of(kind).len()),
                ));
            }
        }
        for name in self.variables.keys() {
            self.variable(name, env).map_err(|m| ResourceError::new(format!("Variable/{name}: spec.value"), m))?;
        }
        for name in self.channels.keys() {
            self.resolve_channel(name, env)?;
        }
        for (name, r) in &self.subscriptions {
            let Spec::Subscription(s) = &r.spec else { continue };
            if !self.channels.contains_key(&s.channel) {
                return Err(ResourceError::new(
                    format!("Subscription/{name}: spec.channel"),
                    format!("no Channel `{}`", s.channel),
                ));
            }
            if let Some(DeadLetter { channel: Some(c), .. }) = &s.delivery.dead_letter
                && !self.channels.contains_key(c)
            {
                return Err(ResourceError::new(
                    format!("Subscription/{name}: spec.delivery.deadLetter.channel"),
                    format!("no Channel `{c}`"),
                ));
            }
        }
        Ok(())
    }

    /// What uses `kind/name` (so it cannot be deleted alone).
    pub fn users_of(&self, kind: Kind, name: &str) -> Vec<String> {
        let mut users = Vec::new();
        match kind {
            Kind::Variable => {
                for r in self.channels.values() {
                    if let Spec::Channel(c) = &r.spec
                        && c.templates()
                            .iter()
                            .any(|(_, t)| references(t).unwrap_or_default().contains(&Ref::Variable(name)))
                    {
                        users.push(r.id());
                    }
                }
            }
            Kind::Channel => {
                for r in self.subscriptions.values() {
                    if let Spec::Subscription(s) = &r.spec
                        && (s.channel == name
                            || s.delivery.dead_letter.as_ref().and_then(|d| d.channel.as_deref()) == Some(name))
                    {
                        users.push(r.id());
                    }
                }
            }
            Kind::Subscription => {}
        }
        users
    }
}

#[cfg(test)]
mod tests;
