//! The browser console at `/`: a single page (plain HTML, CSS and JavaScript modules in
//! `assets/console/`, compiled into the binary, so it works offline and needs no build step) that
//! reads the admin API like any other client:
//!
//! ```text
//!   /            index.html ── /console/app.js ─┬─ events.js         ◀── GET /ws (live, replay)
//!                                              ├─ rates.js          ◀── GET /stats/topics
//!                                              ├─ documents.js      ◀─▶ /specs, /specs/{id}/validate
//!                                              └─ subscriptions.js  ◀─▶ /subscriptions
//! ```
//!
//! The page holds no privilege of its own: the admin token is typed in by the person using it,
//! kept in the tab's `sessionStorage`, and sent as `Authorization: Bearer` (or `?token=` for the
//! websocket), so the server checks every call as it would any other. The assets are sent with a
//! strict Content-Security-Policy (scripts and styles only from this origin, no inline code, no
//! framing), and the page writes what it shows as text, never as markup: record keys, topics and
//! errors come from producers.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;

/// The console's files: path under `/console/`, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    ("style.css", "text/css; charset=utf-8", include_str!("../../assets/console/style.css")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../assets/console/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_str!("../../assets/console/api.js")),
    ("events.js", "text/javascript; charset=utf-8", include_str!("../../assets/console/events.js")),
    ("rates.js", "text/javascript; charset=utf-8", include_str!("../../assets/console/rates.js")),
    ("documents.js", "text/javascript; charset=utf-8", include_str!("../../assets/console/documents.js")),
    ("subscriptions.js", "text/javascript; charset=utf-8", include_str!("../../assets/console/subscriptions.js")),
];

const INDEX: &str = include_str!("../../assets/console/index.html");

/// Only this origin's scripts, styles and sockets; no inline code; never inside a frame.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The files change with the binary: a browser asks again rather than run an old console
    // against a new server.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `GET /`: the console.
pub async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

/// `GET /console/{file}`: one of its files.
pub async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => page(content_type, body),
        None => (StatusCode::NOT_FOUND, "no such console file").into_response(),
    }
}

/// `GET /stats/topics`: records per topic over the last minutes (see
/// [`crate::telemetry::rates`]). Readable without the token, like `/metrics`.
pub async fn topic_rates(State(app): State<AppState>) -> impl IntoResponse {
    axum::Json(app.rates.snapshot())
}
