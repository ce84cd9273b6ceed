//! The resource API: Variables, Channels and Subscriptions over HTTP (see
//! [`crate::subscriptions`]).
//!
//! | route | what |
//! |---|---|
//! | `GET /variables`, `/channels`, `/subscriptions` | every resource of the kind (secret values left out) |
//! | `PUT /{kind}/{name}` | create or replace one (YAML or JSON: the resource, or only its `spec`): 201 / 200 |
//! | `PUT /subscriptions/{name}` with `sink` | the CloudEvents Subscriptions API's shape, kept as a Channel and a Subscription |
//! | `GET /{kind}/{name}` | one resource; a subscription in a shape close to the CloudEvents Subscriptions API, with its status |
//! | `DELETE /{kind}/{name}` | 204; 409 while another resource uses it |
//! | `POST /apply?prune=true&selector=team=x&dry_run=true` | multi-document YAML or JSON: created / updated / unchanged / deleted |
//! | `POST /subscriptions/{name}/replay?start_seq=N` or `start_time=RFC3339` | deliver again from there |
//! | `POST /subscriptions/{name}/pause`, `/resume` | stop and restart delivery (a 410 from the sink pauses too) |
//!
//! With an admin token configured, every route here needs it, reads too (channels may hold
//! credentials). Every route answers 409 `nats_required` without
//! `--nats-url`: subscriptions are kept and delivered through JetStream.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::specs::ApiError;
use crate::subscriptions::resource::{self, Kind, Metadata, Resource};
use crate::subscriptions::{Action, SubsError, Subscriptions, deliver};

impl From<SubsError> for ApiError {
    fn from(e: SubsError) -> Self {
        let (status, kind) = match &e {
            SubsError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_resource"),
            SubsError::NotFound(..) => (StatusCode::NOT_FOUND, "not_found"),
            SubsError::InUse(..) => (StatusCode::CONFLICT, "in_use"),
            SubsError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            SubsError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        Self(status, kind, e.to_string())
    }
}

fn subs(state: &AppState) -> Result<&Arc<Subscriptions>, ApiError> {
    state.subs.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::CONFLICT,
            "nats_required",
            "subscriptions need NATS: start eventgate with --nats-url (resources are kept and events delivered \
             through JetStream)"
                .into(),
        )
    })
}

/// YAML or JSON text to a value.
fn read_body(body: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, "invalid_resource", "the body is not UTF-8".into()))?;
    crate::asyncapi::parse::parse(text)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, "invalid_resource", e.to_string()))
}

/// `GET /{kind}`.
pub async fn list(State(state): State<AppState>, kind: Kind) -> Result<Response, ApiError> {
    let subs = subs(&state)?;
    let items: Vec<Value> = subs.resources().of(kind).values().map(|r| r.to_value(false)).collect();
    Ok(Json(json!({ kind.plural(): items })).into_response())
}

/// `GET /{kind}/{name}`.
pub async fn get(State(state): State<AppState>, Path(name): Path<String>, kind: Kind) -> Result<Response, ApiError> {
    let subs = subs(&state)?;
    if kind == Kind::Subscription {
        return Ok(Json(subs.describe(&name).await?).into_response());
    }
    let r = subs.resources();
    let res = r.get(kind, &name).ok_or_else(|| ApiError::from(SubsError::NotFound(kind, name.clone())))?;
    Ok(Json(res.to_value(false)).into_response())
}

/// `PUT /{kind}/{name}`: the resource, or only its spec.
pub async fn put(
    State(state): State<AppState>,
    Path(name): Path<String>,
    kind: Kind,
    body: Bytes,
) -> Result<Response, ApiError> {
    let subs = subs(&state)?;
    resource::check_name(&name).map_err(|m| ApiError(StatusCode::BAD_REQUEST, "invalid_resource", m))?;
    let value = read_body(&body)?;
    let id = format!("{kind}/{name}");
    if kind == Kind::Subscription && value.get("sink").is_some() {
        return put_subscriptions_api(subs, &name, value).await;
    }
    let res = if value.get("kind").is_some() {
        let r = Resource::from_value(value, &id).map_err(SubsError::from)?;
        if r.kind() != kind || r.name() != name {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "invalid_resource",
                format!("the body declares {}, the path {id}", r.id()),
            ));
        }
        r
    } else {
        let spec = Resource::spec_from_value(kind, value, &id).map_err(SubsError::from)?;
        let r = Resource { metadata: Metadata { name: name.clone(), labels: Default::default() }, spec };
        r.check_self().map_err(SubsError::from)?;
        r
    };
    let report = subs.apply(vec![res], false, false).await?;
    let action = report.iter().find(|a| a.kind == kind && a.name == name).map(|a| a.action);
    let status = if action == Some(Action::Created) { StatusCode::CREATED } else { StatusCode::OK };
    let shown = subs.resources().get(kind, &name).map(|r| r.to_value(false)).unwrap_or(Value::Null);
    Ok((status, Json(json!({ "action": action, "resource": shown }))).into_response())
}

/// `DELETE /{kind}/{name}`.
pub async fn delete(State(state): State<AppState>, Path(name): Path<String>, kind: Kind) -> Result<Response, ApiError> {
    subs(&state)?.delete(kind, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyQuery {
    #[serde(default)]
    prune: bool,
    /// With `prune`: delete only undeclared resources whose labels match (`key=value,…`).
    #[serde(default)]
    selector: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

/// `POST /apply`.
pub async fn apply(
    State(state): State<AppState>,
    Query(q): Query<ApplyQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let subs = subs(&state)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, "invalid_resource", "the body is not UTF-8".into()))?;
    let docs = resource::parse_documents(text).map_err(SubsError::from)?;
    let selector = crate::subscriptions::Selector::parse(q.selector.as_deref().unwrap_or_default())
        .map_err(|m| ApiError(StatusCode::BAD_REQUEST, "bad_request", m))?;
    let report = subs.apply_scoped(docs, q.prune.then_some(selector), q.dry_run).await?;
    let count = |a: Action| report.iter().filter(|r| r.action == a).count();
    Ok(Json(json!({
        "dry_run": q.dry_run,
        "results": report,
        "summary": {
            "created": count(Action::Created),
            "updated": count(Action::Updated),
            "unchanged": count(Action::Unchanged),
            "deleted": count(Action::Deleted),
        },
    }))
    .into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayQuery {
    start_seq: Option<u64>,
    start_time: Option<String>,
}

/// `POST /subscriptions/{name}/replay`.
pub async fn replay(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<ReplayQuery>,
) -> Result<Response, ApiError> {
    let subs = subs(&state)?;
    let from = match (q.start_seq, q.start_time) {
        (Some(seq), None) => deliver::Start::Sequence(seq),
        (None, Some(t)) => deliver::Start::Time(
            time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).map_err(|e| {
                ApiError(StatusCode::BAD_REQUEST, "bad_request", format!("start_time `{t}` is not RFC 3339: {e}"))
            })?,
        ),
        _ => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give one of start_seq=N or start_time=RFC3339".into(),
            ));
        }
    };
    subs.replay(&name, from).await?;
    Ok(Json(json!({ "replaying": name })).into_response())
}

/// `POST /subscriptions/{name}/pause`.
pub async fn pause(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let subs = subs(&state)?;
    if subs.resources().get(Kind::Subscription, &name).is_none() {
        return Err(SubsError::NotFound(Kind::Subscription, name).into());
    }
    let why = json!({ "reason": "paused over the API", "time": crate::validate::batch::now_rfc3339() });
    subs.pause(&name, why).await?;
    Ok(Json(json!({ "paused": name })).into_response())
}

/// `POST /subscriptions/{name}/resume`.
pub async fn resume(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    subs(&state)?.resume(&name).await?;
    Ok(Json(json!({ "resumed": name })).into_response())
}

/// The CloudEvents Subscriptions API's shape of a subscription, as eventgate reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiSubscription {
    #[serde(default)]
    id: Option<String>,
    sink: String,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    protocolsettings: Option<ApiHttpSettings>,
    #[serde(default)]
    sinkcredential: Option<ApiCredential>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    types: Vec<String>,
    #[serde(default)]
    filters: Vec<crate::subscriptions::filter::Filter>,
    #[serde(default)]
    config: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiHttpSettings {
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    method: Option<resource::Method>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiCredential {
    credentialtype: String,
    #[serde(default)]
    accesstoken: Option<String>,
}

/// `PUT /subscriptions/{name}` in the CloudEvents Subscriptions API's shape (`sink`, `protocol`,
/// `protocolsettings`, `sinkcredential`, `source`, `types`, `filters`): eventgate keeps it as a
/// Channel and a Subscription, both named `name`, delivering every topic in binary mode from now
/// on.
async fn put_subscriptions_api(subs: &Arc<Subscriptions>, name: &str, value: Value) -> Result<Response, ApiError> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, "invalid_resource", format!("Subscription/{name}: {m}"));
    let api: ApiSubscription = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    if api.id.as_deref().is_some_and(|id| id != name) {
        return Err(bad(format!("`id` is `{}`, the path names `{name}`", api.id.unwrap_or_default())));
    }
    if let Some(p) = api.protocol.as_deref().filter(|p| !p.eq_ignore_ascii_case("HTTP")) {
        return Err(bad(format!("protocol `{p}`: eventgate delivers over HTTP")));
    }
    if !api.config.is_empty() {
        return Err(bad("`config` is not supported: give delivery settings as an eventgate Subscription".into()));
    }
    let auth = match api.sinkcredential {
        None => None,
        Some(c) if c.credentialtype.eq_ignore_ascii_case("ACCESSTOKEN") => Some(resource::Auth {
            token: c.accesstoken.ok_or_else(|| bad("sinkcredential: ACCESSTOKEN needs `accesstoken`".into()))?,
            token_in: resource::TokenIn::Header,
        }),
        Some(c) => return Err(bad(format!("sinkcredential type `{}`: eventgate takes ACCESSTOKEN", c.credentialtype))),
    };
    let settings = api.protocolsettings;
    let channel = serde_json::json!({
        "url": api.sink,
        "method": settings.as_ref().and_then(|s| s.method).unwrap_or_default(),
        "headers": settings.map(|s| s.headers).unwrap_or_default(),
    });
    let mut channel_spec: resource::ChannelSpec =
        serde_json::from_value(channel).map_err(|e| bad(format!("sink: {e}")))?;
    channel_spec.auth = auth;
    let subscription = serde_json::json!({
        "channel": name,
        "types": api.types,
        "source": api.source,
        "filters": api.filters,
    });
    let spec: resource::SubscriptionSpec = serde_json::from_value(subscription).map_err(|e| bad(e.to_string()))?;
    let meta = || Metadata { name: name.to_owned(), labels: Default::default() };
    let docs = vec![
        Resource { metadata: meta(), spec: resource::Spec::Channel(channel_spec) },
        Resource { metadata: meta(), spec: resource::Spec::Subscription(Box::new(spec)) },
    ];
    for r in &docs {
        r.check_self().map_err(SubsError::from)?;
    }
    let report = subs.apply(docs, false, false).await?;
    let action = report.iter().find(|a| a.kind == Kind::Subscription && a.name == name).map(|a| a.action);
    let status = if action == Some(Action::Created) { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(subs.describe(name).await?)).into_response())
}
