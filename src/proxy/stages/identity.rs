//! Who produces: the Kafka `client.id` of a connection, and the principal it authenticated as.
//!
//! The client id is read from the header of the requests every client sends early (ApiVersions,
//! Metadata, SaslHandshake, SaslAuthenticate); Produce requests, the hot ones, are only counted. The principal comes from SASL, which passes
//! through unchanged (the broker authenticates; eventgate never answers for it): the mechanism from
//! SaslHandshake, the user name from the first SaslAuthenticate message (PLAIN: the authorization
//! id, else the user name; SCRAM: `n=`; OAUTHBEARER: the token's `sub` claim, read without
//! verifying it), and it counts only once the broker's answer says the exchange succeeded. Secrets
//! are never kept or logged. Re-authentication (KIP-368) goes the same way and may change the
//! principal. Both end up on every mirrored event (`clientid`, `principal`) and in the
//! connection's log lines; `eventgate_kafka_authentications_total{mechanism, outcome}` counts the
//! exchanges (mechanisms outside the known set count as `other`), and
//! `eventgate_kafka_produce_requests_total{principal}` the Produce requests of each principal (the
//! first 64 principals by name, later ones as `other`; `-` before authentication).
//!
//! SaslHandshake v0 (SASL tokens sent raw, outside Kafka framing; Kafka clients before 1.0) is not
//! followed: eventgate reads frames, so a raw token closes the connection with a frame error.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest};
use kafka_protocol::protocol::Decodable;

use crate::proxy::chain::{AnswerCtx, AnswerHook, Ctx, Flow, Request, Stage, StageError};
use crate::wire::WireError;
use crate::wire::header::{client_id, response_header_len};

pub struct Identity;

/// Longest client id or principal kept (they go on every event and into logs).
const MAX_NAME: usize = 256;

/// The mechanism a connection chose in its SaslHandshake (a note kept in the session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mechanism {
    Plain,
    Scram,
    OAuthBearer,
    Other,
}

impl Mechanism {
    fn of(name: &str) -> Self {
        match name.to_ascii_uppercase().as_str() {
            "PLAIN" => Self::Plain,
            "SCRAM-SHA-256" | "SCRAM-SHA-512" => Self::Scram,
            "OAUTHBEARER" => Self::OAuthBearer,
            _ => Self::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Scram => "SCRAM",
            Self::OAuthBearer => "OAUTHBEARER",
            Self::Other => "other",
        }
    }
}

/// A connection's SASL exchange in progress, kept in its session.
#[derive(Debug, Default)]
struct Sasl {
    mechanism: Option<Mechanism>,
    /// The user name the client claimed, until the broker confirms it.
    claimed: Option<Arc<str>>,
}

/// A connection's `eventgate_kafka_produce_requests_total` handle, for the principal it was made for.
#[derive(Default)]
struct ProduceCounter {
    principal: Option<Arc<str>>,
    counter: Option<metrics::Counter>,
}

impl ProduceCounter {
    fn for_principal(&mut self, principal: Option<Arc<str>>) -> &metrics::Counter {
        if self.counter.is_none() || self.principal != principal {
            let label = principal_label(principal.as_deref().unwrap_or("-"));
            self.counter = Some(metrics::counter!("eventgate_kafka_produce_requests_total", "principal" => label));
            self.principal = principal;
        }
        self.counter.get_or_insert_with(metrics::Counter::noop)
    }
}

/// Distinct principals given their own label in `/metrics`; later ones count as `other`, so no
/// client can grow the label set (and Prometheus's memory) without bound.
const MAX_PRINCIPAL_LABELS: usize = 64;

fn principal_label(principal: &str) -> String {
    static SEEN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> = std::sync::OnceLock::new();
    let mut seen = SEEN.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if seen.contains(principal) {
        return principal.to_owned();
    }
    if seen.len() < MAX_PRINCIPAL_LABELS {
        seen.insert(principal.to_owned());
        return principal.to_owned();
    }
    "other".to_owned()
}

fn decode<T: Decodable>(api: &'static str, frame: &Bytes, body_at: usize, version: i16) -> Result<T, WireError> {
    let mut body = frame.slice(body_at..);
    T::decode(&mut body, version).map_err(|source| WireError::Decode { api, version, source })
}

fn bounded(name: &str) -> Arc<str> {
    let mut end = name.len().min(MAX_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    Arc::from(&name[..end])
}

/// The user name in a mechanism's first client message; never the secret.
fn claimed_user(mechanism: Mechanism, first: &[u8]) -> Option<Arc<str>> {
    let text = std::str::from_utf8(first).ok()?;
    match mechanism {
        // [authzid] NUL authcid NUL passwd
        Mechanism::Plain => {
            let mut parts = text.split('\0');
            let (authzid, authcid) = (parts.next()?, parts.next()?);
            parts.next()?;
            Some(bounded(if authzid.is_empty() { authcid } else { authzid }))
        }
        // gs2-header ("n,," or "y,," or "p=…,", with an optional "a=authzid"), then "n=user,r=nonce"
        Mechanism::Scram => {
            let mut fields = text.splitn(3, ',');
            let (_, authzid, rest) = (fields.next()?, fields.next()?, fields.next()?);
            let user = rest.split(',').find_map(|f| f.strip_prefix("n="))?;
            let name = authzid.strip_prefix("a=").filter(|a| !a.is_empty()).unwrap_or(user);
            Some(bounded(&name.replace("=2C", ",").replace("=3D", "=")))
        }
        // gs2-header, then \x01-separated key=value pairs, one of them "auth=Bearer <JWT>"
        Mechanism::OAuthBearer => {
            let token = text.split('\u{1}').find_map(|kv| kv.strip_prefix("auth="))?;
            let jwt = token.strip_prefix("Bearer ").or_else(|| token.strip_prefix("bearer "))?.trim();
            let payload = jwt.split('.').nth(1)?;
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
            let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
            claims.get("sub").and_then(|s| s.as_str()).map(bounded)
        }
        Mechanism::Other => None,
    }
}

impl Stage for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn wants(&self, api_key: i16, _: i16) -> bool {
        [ApiKey::ApiVersions, ApiKey::Metadata, ApiKey::SaslHandshake, ApiKey::SaslAuthenticate, ApiKey::Produce]
            .iter()
            .any(|k| *k as i16 == api_key)
    }

    fn on_request(&self, cx: &Ctx<'_>, req: &mut Request) -> Result<Flow, StageError> {
        if req.meta.key() == Some(ApiKey::Produce) {
            // The hot one: no header walk, no allocation; the counter handle is kept per
            // connection and looked up again only when the principal changes.
            let principal = cx.session.producer().principal;
            cx.session.with_state(|c: &mut ProduceCounter| c.for_principal(principal).increment(1));
            return Ok(Flow::Next);
        }
        // Clients send their client.id with every request; the early ones are enough.
        if let Some(id) = client_id(&req.meta, &req.frame)? {
            let known = cx.session.producer().client_id;
            if known.as_deref() != Some(id.as_str()) {
                cx.session.update_producer(|p| p.client_id = Some(bounded(&id)));
            }
        }
        match req.meta.key() {
            Some(ApiKey::SaslHandshake) => {
                let body_at = req.meta.body_offset(&req.frame)?;
                let hs: SaslHandshakeRequest = decode("SaslHandshake", &req.frame, body_at, req.meta.api_version)?;
                let mechanism = Mechanism::of(hs.mechanism.as_str());
                cx.session.with_state(|s: &mut Sasl| *s = Sasl { mechanism: Some(mechanism), claimed: None });
            }
            Some(ApiKey::SaslAuthenticate) => {
                let body_at = req.meta.body_offset(&req.frame)?;
                let auth: SaslAuthenticateRequest =
                    decode("SaslAuthenticate", &req.frame, body_at, req.meta.api_version)?;
                let mechanism = cx.session.with_state(|sasl: &mut Sasl| {
                    let mechanism = sasl.mechanism.unwrap_or(Mechanism::Other);
                    // Only the first message of an exchange names the user.
                    if sasl.claimed.is_none() {
                        sasl.claimed = claimed_user(mechanism, &auth.auth_bytes);
                    }
                    mechanism
                });
                req.on_answer(Authenticated { mechanism });
            }
            _ => {}
        }
        Ok(Flow::Next)
    }
}

/// Reads the broker's verdict on one SaslAuthenticate step.
struct Authenticated {
    mechanism: Mechanism,
}

impl AnswerHook for Authenticated {
    fn stage(&self) -> &'static str {
        "identity"
    }

    fn on_answer(self: Box<Self>, cx: &AnswerCtx<'_>, answer: Bytes) -> Result<Option<Bytes>, StageError> {
        let hlen = response_header_len(ApiKey::SaslAuthenticate, cx.api_version, answer.get(4..).unwrap_or_default())?;
        let resp: SaslAuthenticateResponse = decode("SaslAuthenticate", &answer, 4 + hlen, cx.api_version)?;
        let peer = cx.session.peer;
        let done = match self.mechanism {
            // SCRAM answers its first step with a challenge; the exchange ends with "v=…".
            Mechanism::Scram => resp.auth_bytes.starts_with(b"v="),
            _ => true,
        };
        let outcome = if resp.error_code != 0 {
            "failed"
        } else if done {
            "ok"
        } else {
            return Ok(Some(answer));
        };
        // The exchange is over: the next one (re-authentication) starts afresh.
        let claimed = cx.session.with_state(|s: &mut Sasl| std::mem::take(s).claimed);
        metrics::counter!("eventgate_kafka_authentications_total", "mechanism" => self.mechanism.label(), "outcome" => outcome)
            .increment(1);
        let user = claimed.as_deref().unwrap_or("-").to_owned();
        if resp.error_code == 0 {
            let before = cx.session.producer().principal;
            if before.as_deref() != claimed.as_deref() {
                tracing::info!(%peer, principal = user, mechanism = self.mechanism.label(), "client authenticated");
            }
            cx.session.update_producer(|p| p.principal = claimed);
        } else {
            tracing::info!(%peer, principal = user, mechanism = self.mechanism.label(), error_code = resp.error_code, "client authentication failed (the broker's answer goes to the client as it is)");
        }
        Ok(Some(answer))
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::{ApiVersionsRequest, SaslAuthenticateResponse};
    use kafka_protocol::protocol::StrBytes;

    use super::*;
    use crate::proxy::chain::{Session, answer};
    use crate::proxy::stages::testing::{gateway, request, response_frame};
    use crate::wire::header::RequestMeta;

    /// Runs one request of a connection through the stage, then its scripted answer through the
    /// hooks; returns what the client gets.
    fn exchange(session: &Session, frame: Bytes, reply: Option<Bytes>) -> Option<Bytes> {
        let gw = gateway();
        let meta = RequestMeta::peek(&frame).unwrap();
        let mut req = Request::new(meta, frame);
        assert!(matches!(Identity.on_request(&Ctx { gw: &gw, session }, &mut req).unwrap(), Flow::Next));
        let reply = reply?;
        let cx = AnswerCtx { gw: &gw, session, api_key: meta.api_key, api_version: meta.api_version };
        answer(&cx, req.into_hooks(), reply).unwrap()
    }

    fn handshake(mechanism: &'static str) -> Bytes {
        request(
            ApiKey::SaslHandshake,
            1,
            1,
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism)),
        )
    }

    fn authenticate(bytes: &[u8]) -> Bytes {
        request(
            ApiKey::SaslAuthenticate,
            2,
            2,
            &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::copy_from_slice(bytes)),
        )
    }

    fn verdict(error_code: i16, bytes: &[u8]) -> Bytes {
        let resp = SaslAuthenticateResponse::default()
            .with_error_code(error_code)
            .with_auth_bytes(Bytes::copy_from_slice(bytes));
        response_frame(ApiKey::SaslAuthenticate, 2, 2, &resp)
    }

    fn session() -> Session {
        Session::new("127.0.0.1:1".parse().unwrap())
    }

    #[tokio::test]
    async fn the_client_id_comes_from_the_request_header() {
        let s = session();
        exchange(&s, request(ApiKey::ApiVersions, 3, 1, &ApiVersionsRequest::default()), None);
        assert_eq!(s.producer().client_id.as_deref(), Some("test"));
    }

    #[tokio::test]
    async fn plain_names_the_user_once_the_broker_says_yes_and_never_keeps_the_password() {
        let s = session();
        exchange(&s, handshake("PLAIN"), None);
        let reply = verdict(0, b"");
        let out = exchange(&s, authenticate(b"\0alice\0s3cret"), Some(reply.clone()));
        assert_eq!(out, Some(reply), "the broker's answer goes to the client as it is");
        assert_eq!(s.producer().principal.as_deref(), Some("alice"));
        assert!(!format!("{s:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn scram_counts_only_when_the_exchange_ends() {
        let s = session();
        exchange(&s, handshake("SCRAM-SHA-512"), None);
        exchange(&s, authenticate(b"n,,n=bob=2Cjr,r=abc"), Some(verdict(0, b"r=abcdef,s=c2FsdA==,i=4096")));
        assert_eq!(s.producer().principal, None, "a challenge is not a success");
        exchange(&s, authenticate(b"c=biws,r=abcdef,p=cHJvb2Y="), Some(verdict(0, b"v=c2lnbmF0dXJl")));
        assert_eq!(s.producer().principal.as_deref(), Some("bob,jr"));
    }

    #[tokio::test]
    async fn oauthbearer_reads_the_token_subject_without_checking_it() {
        let s = session();
        exchange(&s, handshake("OAUTHBEARER"), None);
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"svc-orders","exp":1}"#);
        let first = format!("n,,\u{1}auth=Bearer eyJhbGciOiJub25lIn0.{payload}.sig\u{1}\u{1}");
        exchange(&s, authenticate(first.as_bytes()), Some(verdict(0, b"")));
        assert_eq!(s.producer().principal.as_deref(), Some("svc-orders"));
    }

    #[tokio::test]
    async fn a_failed_authentication_leaves_no_principal_and_reaches_the_client() {
        let s = session();
        exchange(&s, handshake("PLAIN"), None);
        let reply = verdict(58, b"");
        assert_eq!(exchange(&s, authenticate(b"\0eve\0wrong"), Some(reply.clone())), Some(reply));
        assert_eq!(s.producer().principal, None);
        // A later success (re-authentication) starts afresh.
        exchange(&s, handshake("PLAIN"), None);
        exchange(&s, authenticate(b"\0alice\0right"), Some(verdict(0, b"")));
        assert_eq!(s.producer().principal.as_deref(), Some("alice"));
    }

    #[test]
    fn principal_labels_are_bounded() {
        let labels: std::collections::HashSet<String> =
            (0..MAX_PRINCIPAL_LABELS * 3).map(|i| principal_label(&format!("user-{i}"))).collect();
        assert!(labels.len() <= MAX_PRINCIPAL_LABELS + 1, "{}", labels.len());
        assert!(labels.contains("other"));
    }

    #[test]
    fn claimed_names_are_bounded_and_malformed_messages_name_nobody() {
        let long = format!("\0{}\0pw", "x".repeat(10_000));
        assert_eq!(claimed_user(Mechanism::Plain, long.as_bytes()).map(|n| n.len()), Some(MAX_NAME));
        assert_eq!(claimed_user(Mechanism::Plain, b"no separators"), None);
        assert_eq!(claimed_user(Mechanism::Scram, b"garbage"), None);
        assert_eq!(claimed_user(Mechanism::OAuthBearer, b"n,,\x01auth=Bearer not-a-jwt\x01\x01"), None);
        assert_eq!(claimed_user(Mechanism::Other, b"\0a\0b"), None);
        assert_eq!(claimed_user(Mechanism::Plain, b"\xff\0a\0b"), None);
    }
}
