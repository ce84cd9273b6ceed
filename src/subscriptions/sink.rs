//! The HTTP client deliveries go through, and what its answers mean.
//!
//! One `reqwest` client serves every channel: connections are reused, HTTP/1.1 and h2 (by ALPN),
//! TLS with the platform's roots, redirects never followed, no proxy from the environment. Every
//! address it connects to is checked against the deny list ([`DenyList`], link-local and cloud
//! metadata networks by default), through its DNS resolver, so a name that resolves somewhere
//! forbidden at connect time is refused even if it looked harmless at apply time. A request has
//! the channel's timeout, its answer's body is read up to [`MAX_ANSWER_BYTES`] (kept for the error
//! text) and the rest is never read.
//!
//! Answers are classified as Knative Eventing does:
//!
//! | answer | meaning |
//! |---|---|
//! | 2xx | delivered |
//! | 404, 408, 409, 429, 5xx, 1xx, connection errors, timeouts | retried (429 and 503 honour `Retry-After`) |
//! | 410 Gone | the sink wants no more: the subscription is paused |
//! | other 4xx, 3xx (redirects are not followed) | dead-lettered at once |

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use bytes::Bytes;
use ipnet::IpNet;

use super::resource::{Method, ResolvedChannel};

/// Bytes of an answer's body read (for the error text); the rest is not read.
pub const MAX_ANSWER_BYTES: usize = 4096;

/// Networks eventgate never delivers to unless told otherwise: link-local (which holds the cloud
/// metadata address 169.254.169.254), the AWS IPv6 metadata address, Alibaba's metadata address,
/// and "this network".
pub const DEFAULT_DENY: &str = "169.254.0.0/16,fe80::/10,fd00:ec2::254/128,100.100.100.200/32,0.0.0.0/8";

/// Networks sinks may not be in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyList(Vec<IpNet>);

impl DenyList {
    /// Reads a comma-separated list of networks (`10.0.0.0/8`) or addresses.
    pub fn parse(text: &str) -> Result<DenyList, String> {
        let mut nets = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{item}` is not a network (10.0.0.0/8) or an address"))?;
            nets.push(net);
        }
        Ok(DenyList(nets))
    }

    /// The network `ip` is denied by, if any (IPv4-mapped IPv6 addresses are checked as IPv4).
    pub fn denies(&self, ip: IpAddr) -> Option<IpNet> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.0.iter().find(|n| n.contains(&ip)).copied()
    }

    /// Checks a URL's host when it is an address; names are checked when they resolve.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        let Some(ip) = host_ip(url) else { return Ok(()) };
        match self.denies(ip) {
            Some(net) => Err(format!("{ip} is in a denied network ({net}; see --sink-deny-networks)")),
            None => Ok(()),
        }
    }

    /// Resolves `host` and checks every address (apply time).
    pub async fn check_host(&self, url: &reqwest::Url) -> Result<(), String> {
        self.check_url(url)?;
        let Some(host) = url.host_str().filter(|_| host_ip(url).is_none()) else { return Ok(()) };
        let port = url.port_or_known_default().unwrap_or(80);
        // A name that does not resolve now may later: it is checked again at connect time.
        let Ok(Ok(addrs)) = tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((host, port))).await
        else {
            return Ok(());
        };
        for a in addrs {
            if let Some(net) = self.denies(a.ip()) {
                return Err(format!(
                    "`{host}` resolves to {}, in a denied network ({net}; see --sink-deny-networks)",
                    a.ip()
                ));
            }
        }
        Ok(())
    }
}

/// A URL's host when it is an address.
fn host_ip(url: &reqwest::Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// The resolver the client connects through: the system's, minus denied addresses.
struct CheckedResolver {
    deny: Arc<DenyList>,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let deny = self.deny.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs.iter().copied().filter(|a| deny.denies(a.ip()).is_none()).collect();
            if allowed.is_empty() && !addrs.is_empty() {
                let ip = addrs[0].ip();
                let net = deny.denies(ip).map(|n| n.to_string()).unwrap_or_default();
                return Err(format!("`{host}` resolves to {ip}, in a denied network ({net})").into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// What a delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Delivered,
    /// Try again later (`retry_after` when the sink said when).
    Retry {
        status: u16,
        error: String,
        retry_after: Option<Duration>,
    },
    /// Will never succeed: dead-letter it.
    Reject {
        status: u16,
        error: String,
    },
    /// 410: the sink wants nothing more.
    Gone {
        error: String,
    },
}

impl Answer {
    /// The HTTP status, 0 when there was none (connection error, timeout).
    pub fn status(&self) -> u16 {
        match self {
            Answer::Delivered => 200,
            Answer::Retry { status, .. } | Answer::Reject { status, .. } => *status,
            Answer::Gone { .. } => 410,
        }
    }

    pub fn error(&self) -> &str {
        match self {
            Answer::Delivered => "",
            Answer::Retry { error, .. } | Answer::Reject { error, .. } | Answer::Gone { error } => error,
        }
    }
}

/// What one request carries.
pub struct Payload {
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// The consent a sink gave in the webhook handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consent {
    /// Requests per minute (`WebHook-Allowed-Rate`), when the sink set one.
    pub rate_per_minute: Option<u32>,
}

/// The client of every HTTP sink.
#[derive(Clone)]
pub struct Sinks {
    client: reqwest::Client,
    pub deny: Arc<DenyList>,
    /// `WebHook-Request-Origin` of handshakes.
    pub origin: String,
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the subscriptions' HTTP client: {0}")]
pub struct ClientError(String);

impl Sinks {
    pub fn new(deny: DenyList, origin: String) -> Result<Sinks, ClientError> {
        let deny = Arc::new(deny);
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .dns_resolver(Arc::new(CheckedResolver { deny: deny.clone() }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("eventgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError(e.to_string()))?;
        Ok(Sinks { client, deny, origin })
    }

    /// Sends one request to `channel` and classifies the answer.
    pub async fn send(&self, channel: &ResolvedChannel, payload: Payload) -> Answer {
        if let Err(e) = self.deny.check_url(&channel.url) {
            return Answer::Retry { status: 0, error: e, retry_after: None };
        }
        let method = match channel.method {
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
        };
        let mut req = self.client.request(method, channel.url.clone()).timeout(channel.timeout);
        for (k, v) in &channel.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        for (k, v) in payload.headers {
            req = req.header(k, v);
        }
        let response = match req.body(payload.body).send().await {
            Ok(r) => r,
            Err(e) => return Answer::Retry { status: 0, error: describe(e), retry_after: None },
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let location =
            response.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let text = read_some(response).await;
        classify(status, text, retry_after, location)
    }

    /// The CloudEvents webhook handshake: asks the sink's consent with `OPTIONS`.
    pub async fn handshake(&self, channel: &ResolvedChannel) -> Result<Consent, String> {
        self.deny.check_url(&channel.url)?;
        let mut req = self
            .client
            .request(reqwest::Method::OPTIONS, channel.url.clone())
            .timeout(channel.timeout)
            .header("WebHook-Request-Origin", &self.origin);
        for (k, v) in &channel.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let response = req.send().await.map_err(describe)?;
        let status = response.status();
        let header =
            |n: &str| response.headers().get(n).and_then(|v| v.to_str().ok()).map(str::trim).map(str::to_owned);
        let allowed = header("WebHook-Allowed-Origin");
        let rate = header("WebHook-Allowed-Rate");
        if !status.is_success() {
            return Err(format!("the sink refused the webhook handshake with {status}"));
        }
        match allowed.as_deref() {
            Some("*") => {}
            Some(o) if o == self.origin => {}
            Some(o) => return Err(format!("the sink allows origin `{o}`, not `{}`", self.origin)),
            None => return Err("the sink's handshake answer has no WebHook-Allowed-Origin".into()),
        }
        let rate_per_minute = match rate.as_deref() {
            None | Some("*") => None,
            Some(r) => {
                Some(r.parse::<u32>().map_err(|_| format!("WebHook-Allowed-Rate `{r}` is not a number"))?.max(1))
            }
        };
        Ok(Consent { rate_per_minute })
    }
}

/// An error's text without its URL (which may carry an access token), with its causes (e.g.
/// "Connection refused", or the resolver's refusal of a denied address).
fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let e = e.without_url();
    let mut text = format!("{kind}: {e}");
    let mut cur = std::error::Error::source(&e);
    while let Some(s) = cur {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cur = s.source();
    }
    text
}

/// Reads up to [`MAX_ANSWER_BYTES`] of a body, as text.
async fn read_some(mut response: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < MAX_ANSWER_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(MAX_ANSWER_BYTES - buf.len());
                buf.extend_from_slice(&chunk[..take]);
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// What an HTTP status means for the event (see the module docs).
pub fn classify(status: u16, body: String, retry_after: Option<Duration>, location: Option<String>) -> Answer {
    let error = |what: &str| {
        let body = body.trim();
        if body.is_empty() { format!("{what} {status}") } else { format!("{what} {status}: {body}") }
    };
    match status {
        200..=299 => Answer::Delivered,
        410 => Answer::Gone { error: error("the sink answered") },
        404 | 408 | 409 | 429 | 500..=599 => Answer::Retry {
            status,
            error: error("the sink answered"),
            retry_after: if matches!(status, 429 | 503) { retry_after } else { None },
        },
        300..=399 => Answer::Reject {
            status,
            error: format!(
                "the sink redirected ({status}{}); eventgate does not follow redirects: fix the channel's URL",
                location.map(|l| format!(" to {l}")).unwrap_or_default()
            ),
        },
        400..=499 => Answer::Reject { status, error: error("the sink refused the event with") },
        _ => Answer::Retry { status, error: error("the sink answered"), retry_after: None },
    }
}

/// `Retry-After`: seconds, or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(v, format).ok()?.assume_utc();
    let now = time::OffsetDateTime::now_utc();
    Some(if at > now { Duration::try_from(at - now).unwrap_or_default() } else { Duration::ZERO })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_knative_does() {
        let c = |s| classify(s, String::new(), Some(Duration::from_secs(3)), None);
        assert_eq!(c(200), Answer::Delivered);
        assert_eq!(c(204), Answer::Delivered);
        for s in [404, 408, 409, 500, 502, 504, 102] {
            assert!(matches!(c(s), Answer::Retry { retry_after: None, .. }), "{s}");
        }
        for s in [429, 503] {
            assert!(matches!(c(s), Answer::Retry { retry_after: Some(_), .. }), "{s} honours Retry-After");
        }
        for s in [400, 401, 403, 413, 422, 301, 307] {
            assert!(matches!(c(s), Answer::Reject { .. }), "{s}");
        }
        assert!(matches!(c(410), Answer::Gone { .. }));
        let r = classify(400, "  bad field  ".into(), None, None);
        assert_eq!(r.error(), "the sink refused the event with 400: bad field");
        let r = classify(302, String::new(), None, Some("https://elsewhere/".into()));
        assert!(r.error().contains("to https://elsewhere/"));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[tokio::test]
    async fn the_client_refuses_at_connect_time_a_name_that_resolves_into_a_denied_network() {
        use reqwest::dns::Resolve;
        let deny = Arc::new(DenyList::parse("127.0.0.0/8,::1/128").expect("list"));
        let resolver = CheckedResolver { deny: deny.clone() };
        let name: reqwest::dns::Name = "localhost".parse().expect("name");
        let Err(e) = resolver.resolve(name).await else { panic!("localhost must be refused") };
        assert!(e.to_string().contains("denied network"), "{e}");
        // And through a whole request: the resolver's refusal is the delivery's error.
        let sinks = Sinks::new(DenyList::parse("127.0.0.0/8,::1/128").expect("list"), "eg".into()).expect("client");
        let docs = crate::subscriptions::resource::parse_documents(
            "apiVersion: eventgate/v1\nkind: Channel\nmetadata: {name: c}\nspec: {url: 'http://localhost:9/', timeout: 2s}\n",
        )
        .expect("channel");
        let mut set = crate::subscriptions::resource::Resources::default();
        set.insert(docs[0].clone());
        let ch = set.resolve_channel("c", &|_| None).expect("resolves");
        let answer = sinks.send(&ch, Payload { headers: vec![], body: Bytes::new() }).await;
        assert!(matches!(answer, Answer::Retry { status: 0, .. }), "{answer:?}");
        assert!(answer.error().contains("denied network"), "{}", answer.error());
    }

    #[test]
    fn the_default_deny_list_covers_metadata_addresses_not_loopback() {
        let d = DenyList::parse(DEFAULT_DENY).expect("default");
        for ip in ["169.254.169.254", "fe80::1", "fd00:ec2::254", "100.100.100.200", "::ffff:169.254.169.254"] {
            assert!(d.denies(ip.parse().expect("ip")).is_some(), "{ip}");
        }
        for ip in ["127.0.0.1", "10.1.2.3", "::1", "8.8.8.8"] {
            assert!(d.denies(ip.parse().expect("ip")).is_none(), "{ip}");
        }
        assert!(DenyList::parse("10.0.0.0/8, 192.168.1.1").is_ok());
        assert!(DenyList::parse("nonsense").is_err());
        let url = reqwest::Url::parse("http://169.254.169.254/latest").expect("url");
        assert!(d.check_url(&url).expect_err("denied").contains("denied network"));
    }
}
