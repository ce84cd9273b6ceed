//! The spec API: a registry of event API definitions over HTTP.
//!
//! | route | what |
//! |---|---|
//! | `PUT /specs/{id}` | upload or replace a document (YAML or JSON body): 201 created, 200 replaced |
//! | `GET /specs` | every document: id, title, version, topics, sha256, upload time |
//! | `GET /specs/{id}` | the original text |
//! | `DELETE /specs/{id}` | remove a document: 204 |
//! | `POST /specs/{id}/validate` | check a sample message without producing it |
//!
//! Refusals carry `{"error": "...", "kind": "..."}` with what a person needs to fix the document:
//! 400 for a broken document (line and column, the unresolved `$ref`, the invalid schema's path),
//! 409 when another document already claims a topic, 404 for an unknown id.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use crate::specs::shared::SharedError;
use crate::specs::{Put, SpecStore, StoreError};
use crate::validate::{Outcome, check_sample};

/// An error answer.
pub struct ApiError(pub StatusCode, pub &'static str, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.2, "kind": self.1 });
        // A broken document's error names where (`line L column C`): given as numbers too, so a
        // client (the console) can point at it without reading the text.
        if self.1 == "invalid_document"
            && let Some((line, column)) = position(&self.2)
        {
            body["line"] = json!(line);
            body["column"] = json!(column);
        }
        (self.0, Json(body)).into_response()
    }
}

/// The first `line L column C` in an error's text.
fn position(text: &str) -> Option<(u64, u64)> {
    let at = text.find("line ")?;
    let mut words = text[at..].split(|c: char| c.is_whitespace() || c == ',' || c == ':').filter(|w| !w.is_empty());
    let (Some("line"), Some(line), Some("column"), Some(column)) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return None;
    };
    Some((line.parse().ok()?, column.parse().ok()?))
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let (status, kind) = match &e {
            StoreError::BadId(_) => (StatusCode::BAD_REQUEST, "bad_id"),
            StoreError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_document"),
            StoreError::Conflict(_) => (StatusCode::CONFLICT, "topic_conflict"),
            StoreError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            StoreError::Pinned(_) => (StatusCode::CONFLICT, "pinned"),
            StoreError::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
        };
        Self(status, kind, e.to_string())
    }
}

impl From<SharedError> for ApiError {
    fn from(e: SharedError) -> Self {
        match e {
            SharedError::Store(e) => e.into(),
            e @ SharedError::Unavailable(_) => Self(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
        }
    }
}

/// Runs a store operation off the async workers: compiling schemas and writing files block.
async fn blocking<T: Send + 'static>(
    store: &Arc<SpecStore>,
    f: impl FnOnce(&SpecStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(ApiError::from)
}

pub async fn put(State(app): State<AppState>, Path(id): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    let text = String::from_utf8(body.to_vec()).map_err(|e| {
        ApiError(StatusCode::BAD_REQUEST, "invalid_document", format!("the document is not UTF-8 text: {e}"))
    })?;
    let (put, summary) = if app.store.is_shared() {
        app.store.put_shared(id, text).await?
    } else {
        blocking(&app.store, move |s| s.put(&id, &text)).await?
    };
    tracing::info!(id = summary.id, topics = ?summary.topics, "AsyncAPI document {}", if put == Put::Created { "uploaded" } else { "replaced" });
    let status = if put == Put::Created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(summary)).into_response())
}

pub async fn list(State(app): State<AppState>) -> impl IntoResponse {
    Json(app.store.list())
}

pub async fn get(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let text = app.store.text(&id).ok_or_else(|| ApiError::from(StoreError::NotFound(id)))?;
    let ct = if text.trim_start().starts_with('{') { "application/json" } else { "application/yaml" };
    Ok(([(header::CONTENT_TYPE, ct)], text.to_string()).into_response())
}

pub async fn delete(State(app): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let shown = id.clone();
    if app.store.is_shared() {
        app.store.delete_shared(&id).await?;
    } else {
        blocking(&app.store, move |s| s.delete(&id)).await?;
    }
    tracing::info!(id = shown, "AsyncAPI document deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// A sample message for `POST /specs/{id}/validate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// The topic; may be left out when the document describes one topic.
    pub topic: Option<String>,
    /// The record key, as text.
    pub key: Option<String>,
    /// The record value as JSON (sent as its JSON text).
    pub value: Option<Value>,
    /// The record value as raw text, for payloads that are not JSON.
    pub value_text: Option<String>,
    /// Record headers, as text.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

pub async fn validate(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("json")) {
        return Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_request",
            "send the sample as application/json".into(),
        ));
    }
    let sample: Sample = serde_json::from_slice(&body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, "bad_request", format!("invalid sample: {e}")))?;
    let catalog = app.store.validation().catalog.load();
    let doc = catalog.doc(&id).ok_or_else(|| ApiError::from(StoreError::NotFound(id.clone())))?;
    let route = match &sample.topic {
        Some(t) => doc.route_for(t),
        None => doc.single_route(),
    }
    .ok_or_else(|| {
        let why = match &sample.topic {
            Some(t) => format!("document {id} describes no topic matching `{t}`"),
            None => format!("document {id} describes several topics: say which with \"topic\""),
        };
        ApiError(StatusCode::BAD_REQUEST, "bad_request", why)
    })?;
    let value: Option<Vec<u8>> = match (&sample.value, &sample.value_text) {
        (Some(_), Some(_)) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give `value` or `value_text`, not both".into(),
            ));
        }
        (Some(v), None) => Some(serde_json::to_vec(v).unwrap_or_default()),
        (None, Some(t)) => Some(t.clone().into_bytes()),
        (None, None) => None,
    };
    let outcome = check_sample(route, sample.key.as_deref(), value.as_deref(), &sample.headers);
    let mut answer = json!({ "document": id, "topic": sample.topic.unwrap_or_else(|| route.address.clone()), "outcome": outcome.label() });
    match &outcome {
        Outcome::Valid(i) => answer["message"] = json!(route.messages[*i].name),
        Outcome::Invalid(errors) => answer["errors"] = json!(&**errors),
        Outcome::Unchecked(why) => answer["reason"] = json!(&**why),
    }
    Ok(Json(answer).into_response())
}

#[cfg(test)]
mod tests {
    use super::position;

    #[test]
    fn an_error_s_line_and_column_are_read_from_its_text() {
        assert_eq!(position("invalid YAML: line 3 column 6: did not find expected key"), Some((3, 6)));
        assert_eq!(position("invalid JSON at line 12, column 1: trailing comma"), Some((12, 1)));
        assert_eq!(position("channel orders: $ref #/x does not resolve"), None);
        assert_eq!(position("line up the columns"), None);
    }
}
