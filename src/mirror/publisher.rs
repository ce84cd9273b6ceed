//! The mirror's own NATS connection, for publishing only: events are written as `HPUB` lines into
//! one buffer and sent in large writes, and the JetStream acknowledgements come back on one
//! subscription and are read in bulk from the same socket.
//!
//! ```text
//!   sink ── push(subject, reply, id, event) ──▶ write buffer ── flush (≥ 1 MiB, or before a wait) ──▶ NATS
//!   sink ◀── next() ── Incoming::Reply { to, status, payload } ◀── read buffer ◀── MSG/HMSG, PING ──┘
//! ```
//!
//! Why not the `async-nats` client, which eventgate still uses for everything else (the stream,
//! the lookups of events in doubt, the document bucket)? Per event, its publish builds a header
//! map, sends an operation to its connection task over a channel, formats the protocol line piece
//! by piece, and hands each answer to a subscription channel: about 14,000 instructions of the
//! mirror's ~23,000 per event (`callgrind`, BENCHMARKS.md). Here the same work is a few hundred:
//! the header block is written directly (the event id, nothing else), and one `read` brings many
//! answers, each matched by its reply subject: the token at its end, or a fast-ingest batch and the
//! publish's place in it ([`ReplyTo`]).
//!
//! The connection is owned by the sink's one task: no locks, no channel. The sink reads it while
//! it waits for anything ([`Publisher::fill`]), so the server's `PING`s are answered even when
//! no event flows. Everything the server sends is bounded: a control line longer than
//! [`MAX_CONTROL_LINE`] or a message larger than [`MAX_REPLY`] ends the connection with an error
//! (acknowledgements are a few dozen bytes), and the sink connects again.
//!
//! URLs are what `--nats-url` takes for `async-nats`: a comma-separated list of
//! `nats://[user:password@ | token@]host[:port]` or `tls://…` (TLS also when the server requires
//! it), tried in order. Credentials are taken as written, as `async-nats` takes them. Certificates are checked against the platform's roots (`SSL_CERT_FILE`
//! adds one).

use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::FutureExt;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest protocol line accepted from the server. Clients' lines are limited to 4 KiB by
/// NATS, but the server's `INFO` lists the cluster's addresses and grows with it: room for that,
/// still bounded.
pub const MAX_CONTROL_LINE: usize = 64 * 1024;
/// The largest message accepted on the reply subscription: acknowledgements and errors are small.
pub const MAX_REPLY: usize = 64 * 1024;
/// The most unparsed input [`Publisher::fill_ready`] buffers.
const READ_AHEAD: usize = 256 * 1024;
/// Writes are gathered up to this size before they are sent (or until the worker waits, so a
/// quiet mirror sends at once; the sink also sends at half its window, so the server has work while
/// the rest is built). Each write wakes the server's reader and, on a busy machine, often
/// hands it the processor there and then: 256 KiB writes made half as many of those switches as
/// 64 KiB ones and took 15–20% less of the mirror's system time, 1 MiB another 19% (BENCHMARKS.md).
const WRITE_CHUNK: usize = 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_PORT: u16 = 4222;

/// Why the connection cannot be used (it is dropped; the sink connects again).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("NATS {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("NATS connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("NATS server sent {0}")]
    Protocol(String),
    #[error("NATS server closed the connection")]
    Closed,
}

/// Anything the connection runs over: TCP, or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// What the server sent that the sink acts on. A reply's payload is borrowed from the read
/// buffer, which moves past it on the next call.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A message on the reply subscription: `to` is which publish it answers, read from its
    /// subject; `status` the NATS status of a header-only answer (503: no responders).
    Reply { to: ReplyTo, status: Option<u16>, payload: &'a [u8] },
    /// `-ERR`: the server's complaint (it may close the connection after it).
    Error(String),
}

/// Which publish a reply answers, read from the reply subject the sink gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyTo {
    /// `<inbox>.<token>`: the one publish sent with that token.
    Token(u64),
    /// `<inbox>.<tag>-<first>.<flow>.<gap>.<seq>.<op>.$FI`: a fast-ingest batch (JetStream's
    /// batch publishing, nats-server 2.14+) whose first publish had token `first`; `seq` counts
    /// the batch's publishes from 1, and `op` says what the publish was ([`BATCH_START`],
    /// [`BATCH_APPEND`], [`BATCH_END`]).
    Batch { first: u64, seq: u64, op: u8 },
    /// Not a subject the sink makes.
    Unknown,
}

/// Fast-ingest operations, the `<op>` of a batch's reply subject: the publish that opens a batch,
/// one that adds to it, and the empty publish that ends it (stores nothing).
pub const BATCH_START: u8 = 0;
pub const BATCH_APPEND: u8 = 1;
pub const BATCH_END: u8 = 3;

impl ReplyTo {
    fn of(subject: &[u8]) -> Self {
        let Some(rest) = subject.strip_suffix(b".$FI") else {
            return subject.rsplit(|b| *b == b'.').next().and_then(decimal).map_or(Self::Unknown, Self::Token);
        };
        let mut parts = rest.rsplitn(6, |b| *b == b'.');
        let (Some(op), Some(seq), Some(_gap), Some(_flow), Some(batch)) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Self::Unknown;
        };
        let first = batch.iter().rposition(|b| *b == b'-').and_then(|i| decimal(&batch[i + 1..]));
        match (first, decimal(seq), decimal(op).and_then(|o| u8::try_from(o).ok())) {
            (Some(first), Some(seq), Some(op)) if seq > 0 => Self::Batch { first, seq, op },
            _ => Self::Unknown,
        }
    }
}

#[derive(Deserialize, Default)]
struct Info {
    #[serde(default)]
    max_payload: Option<usize>,
    #[serde(default)]
    tls_required: bool,
    #[serde(default)]
    headers: bool,
}

/// One server address, parsed from the URL list.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Server {
    tls: bool,
    host: String,
    port: u16,
    user: Option<String>,
    pass: Option<String>,
    token: Option<String>,
}

fn parse_servers(urls: &str) -> Result<Vec<Server>, String> {
    let mut out = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let shown = crate::nats::redact_url(url);
        let (tls, rest) = match url.split_once("://") {
            Some(("nats", rest)) => (false, rest),
            Some(("tls", rest)) => (true, rest),
            Some((scheme, _)) => {
                return Err(format!("{shown}: the scheme {scheme}:// is not supported (nats:// or tls://)"));
            }
            None => (false, url),
        };
        let rest = rest.trim_end_matches('/');
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((auth, hostport)) => (Some(auth), hostport),
            None => (None, rest),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => match p.parse::<u16>() {
                Ok(port) => (h, port),
                Err(_) if hostport.starts_with('[') && hostport.ends_with(']') => (hostport, DEFAULT_PORT),
                Err(_) => return Err(format!("{shown}: the port {p} is not a number")),
            },
            _ => (hostport, DEFAULT_PORT),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        if host.is_empty() {
            return Err(format!("{shown}: no host"));
        }
        let (user, pass, token) = match auth {
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (Some(u.to_owned()), Some(p.to_owned()), None),
                None => (None, None, Some(a.to_owned())),
            },
            None => (None, None, None),
        };
        out.push(Server { tls, host, port, user, pass, token });
    }
    if out.is_empty() {
        return Err("no NATS URL".into());
    }
    Ok(out)
}

/// The credentials written in the first URL of `urls` (`user:password@` or `token@`), for the
/// `async-nats` connections, which do not read them from the URL themselves.
pub fn url_credentials(urls: &str) -> Option<(Option<String>, Option<String>, Option<String>)> {
    let s = parse_servers(urls).ok()?.into_iter().next()?;
    (s.user.is_some() || s.token.is_some()).then_some((s.user, s.pass, s.token))
}

/// The publishing connection (see the module doc).
pub struct Publisher {
    io: Box<dyn Stream>,
    read: BytesMut,
    /// The bytes of the reply last handed out by [`Publisher::next_incoming`], dropped from `read`
    /// on its next call.
    consumed: usize,
    write: Vec<u8>,
    /// How much of `write` is already sent.
    written: usize,
    /// Publishes appended since the last flush.
    unflushed: usize,
    /// A `PONG` came (the connect handshake waits for one).
    pong: bool,
    /// The largest message the server takes (its `max_payload`).
    pub max_payload: usize,
    /// Which server this is, for logs.
    pub server: String,
}

impl Publisher {
    /// Connects to the first server of `urls` that answers, and subscribes to `<inbox>.>`.
    pub async fn connect(urls: &str, inbox: &str) -> Result<Self, PublishError> {
        let servers = parse_servers(urls)
            .map_err(|reason| PublishError::Connect { url: crate::nats::redact_url(urls), reason })?;
        let mut last = None;
        for s in &servers {
            let url = format!("{}://{}:{}", if s.tls { "tls" } else { "nats" }, s.host, s.port);
            match tokio::time::timeout(CONNECT_TIMEOUT, Self::connect_one(s, inbox, &url)).await {
                Ok(Ok(p)) => return Ok(p),
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(PublishError::Connect { url, reason: "timed out".into() }),
            }
        }
        Err(last.unwrap_or(PublishError::Closed))
    }

    async fn connect_one(s: &Server, inbox: &str, url: &str) -> Result<Self, PublishError> {
        let fail = |reason: String| PublishError::Connect { url: url.to_owned(), reason };
        let mut tcp = TcpStream::connect((s.host.as_str(), s.port)).await.map_err(|e| fail(e.to_string()))?;
        tcp.set_nodelay(true).map_err(|e| fail(e.to_string()))?;
        // The server speaks first: one INFO line, and then it waits (for TLS, or for CONNECT).
        let mut first = BytesMut::with_capacity(1024);
        let line = loop {
            if let Some(end) = first.windows(2).position(|w| w == b"\r\n") {
                break first.split_to(end);
            }
            if first.len() > MAX_CONTROL_LINE {
                return Err(fail("INFO line too long".into()));
            }
            if tcp.read_buf(&mut first).await.map_err(|e| fail(e.to_string()))? == 0 {
                return Err(fail("closed before INFO".into()));
            }
        };
        let line = String::from_utf8_lossy(&line).into_owned();
        let info = match line.split_once(' ') {
            Some((op, json)) if op.eq_ignore_ascii_case("INFO") => {
                serde_json::from_str::<Info>(json).map_err(|e| fail(format!("unreadable INFO: {e}")))?
            }
            _ => return Err(fail(format!("expected INFO, got {:?}", truncate(&line)))),
        };
        if !info.headers {
            return Err(fail("the server does not take headers (nats-server 2.2 or later is needed)".into()));
        }
        let tls = s.tls || info.tls_required;
        let io: Box<dyn Stream> = if tls {
            let config = crate::tls::nats_client_config().map_err(|e| fail(e.to_string()))?;
            let name = rustls::pki_types::ServerName::try_from(s.host.clone()).map_err(|e| fail(e.to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| fail(format!("TLS: {e}")))?;
            Box::new(stream)
        } else {
            Box::new(tcp)
        };
        let mut p = Self {
            io,
            read: BytesMut::with_capacity(16 * 1024),
            consumed: 0,
            write: Vec::with_capacity(WRITE_CHUNK + 4096),
            written: 0,
            unflushed: 0,
            pong: false,
            max_payload: info.max_payload.filter(|m| *m > 0).unwrap_or(1024 * 1024),
            server: url.to_owned(),
        };
        let connect = serde_json::json!({
            "verbose": false,
            "pedantic": false,
            "tls_required": tls,
            "name": "eventgate mirror",
            "lang": "rust",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": 1,
            "echo": false,
            "headers": true,
            "no_responders": true,
            "user": s.user,
            "pass": s.pass,
            "auth_token": s.token,
        });
        p.write.extend_from_slice(b"CONNECT ");
        p.write.extend_from_slice(connect.to_string().as_bytes());
        p.write.extend_from_slice(b"\r\nPING\r\n");
        p.flush().await?;
        // PONG means the server took CONNECT (a refused one gets -ERR and a close).
        while !p.pong {
            let read_more = match p.next_incoming()? {
                Some(Incoming::Error(e)) => return Err(fail(e)),
                Some(Incoming::Reply { .. }) => false,
                None => true,
            };
            if read_more && !p.pong && p.fill().await? == 0 {
                return Err(fail("closed during CONNECT".into()));
            }
        }
        p.write.extend_from_slice(b"SUB ");
        p.write.extend_from_slice(inbox.as_bytes());
        p.write.extend_from_slice(b".> 1\r\n");
        p.flush().await?;
        Ok(p)
    }

    /// Appends one publish: `HPUB <subject> <reply> <header bytes> <total bytes>`, a header block
    /// holding only `Nats-Msg-Id` (when `id` fits a header), and the payload. Nothing is sent
    /// until [`flush`](Self::flush); returns whether the buffer should be flushed now.
    pub fn push(&mut self, subject: &str, reply: &str, id: &[u8], payload: &[u8]) -> bool {
        encode_publish(&mut self.write, subject, reply, id, payload);
        self.unflushed += 1;
        self.write.len() >= WRITE_CHUNK
    }

    /// Publishes appended since the last flush.
    pub fn unflushed(&self) -> usize {
        self.unflushed
    }

    /// Appends the empty publish that ends a fast-ingest batch (`reply` says so): the server
    /// stores nothing and answers with the batch's final acknowledgement.
    pub fn push_end(&mut self, subject: &str, reply: &str) {
        let w = &mut self.write;
        w.extend_from_slice(b"PUB ");
        w.extend_from_slice(subject.as_bytes());
        w.push(b' ');
        w.extend_from_slice(reply.as_bytes());
        w.extend_from_slice(b" 0\r\n\r\n");
    }

    /// The bytes a publish of `payload` with `id` takes against the server's `max_payload`
    /// (headers count).
    pub fn message_size(id: &[u8], payload: usize) -> usize {
        12 + if header_safe(id) { 15 + id.len() } else { 0 } + payload
    }

    /// Whether something waits to be sent.
    pub fn pending_writes(&self) -> bool {
        self.written < self.write.len()
    }

    /// Sends everything appended so far. Cancel-safe: what was written is remembered, and the
    /// next call goes on from there (a cut `write_all` would send the start twice).
    pub async fn flush(&mut self) -> Result<(), PublishError> {
        while self.written < self.write.len() {
            match self.io.write(&self.write[self.written..]).await? {
                0 => return Err(PublishError::Closed),
                n => self.written += n,
            }
        }
        self.write.clear();
        self.written = 0;
        self.unflushed = 0;
        self.io.flush().await?;
        Ok(())
    }

    /// Waits until the server sends something, and reads it (cancel-safe: nothing read is lost
    /// when another branch of a `select!` wins). Returns 0 when the server closed the connection.
    pub async fn fill(&mut self) -> Result<usize, PublishError> {
        self.read.reserve(16 * 1024);
        Ok(self.io.read_buf(&mut self.read).await?)
    }

    /// Reads what has already arrived, without waiting, up to [`READ_AHEAD`] bytes buffered (a
    /// server that never stops sending cannot make the buffer grow without bound between two
    /// parses); false when the server closed the connection.
    pub fn fill_ready(&mut self) -> Result<bool, PublishError> {
        while self.read.len() < READ_AHEAD {
            self.read.reserve(16 * 1024);
            match self.io.read_buf(&mut self.read).now_or_never() {
                None => return Ok(true),
                Some(Ok(0)) => return Ok(false),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    /// The next thing the server sent that the sink must act on, from what has been read;
    /// `PING`s are answered (on the next flush) and `PONG`, `+OK` and `INFO` taken in passing.
    pub fn next_incoming(&mut self) -> Result<Option<Incoming<'_>>, PublishError> {
        // The reply handed out last time is done with.
        self.read.advance(std::mem::take(&mut self.consumed));
        loop {
            let Some(end) = find_crlf(&self.read) else {
                if self.read.len() > MAX_CONTROL_LINE {
                    return Err(PublishError::Protocol(format!("a line longer than {MAX_CONTROL_LINE} bytes")));
                }
                return Ok(None);
            };
            if end > MAX_CONTROL_LINE {
                return Err(PublishError::Protocol(format!("a line longer than {MAX_CONTROL_LINE} bytes")));
            }
            let line = &self.read[..end];
            let (op, args) = match memchr::memchr2(b' ', b'\t', line) {
                Some(i) => (&line[..i], &line[i + 1..]),
                None => (line, &line[..0]),
            };
            match Op::of(op) {
                op @ (Op::Msg | Op::Hmsg) => {
                    let headers = op == Op::Hmsg;
                    let Some(m) = MsgLine::parse(args, headers) else {
                        let text = String::from_utf8_lossy(line).into_owned();
                        return Err(PublishError::Protocol(format!("an unreadable line {:?}", truncate(&text))));
                    };
                    if m.total > MAX_REPLY || m.header > m.total {
                        return Err(PublishError::Protocol(format!("a reply of {} bytes", m.total)));
                    }
                    let to = m.to;
                    let (header, total) = (m.header, m.total);
                    // The message and its closing CRLF must all be there.
                    let body = end + 2;
                    if self.read.len() < body + total + 2 {
                        return Ok(None);
                    }
                    self.consumed = body + total + 2;
                    let status = if headers { status_of(&self.read[body..body + header]) } else { None };
                    let payload = &self.read[body + header..body + total];
                    return Ok(Some(Incoming::Reply { to, status, payload }));
                }
                Op::Ping => {
                    self.read.advance(end + 2);
                    self.write.extend_from_slice(b"PONG\r\n");
                }
                Op::Pong => {
                    self.read.advance(end + 2);
                    self.pong = true;
                }
                Op::Err => {
                    let text = String::from_utf8_lossy(args).trim().trim_matches('\'').to_owned();
                    self.read.advance(end + 2);
                    return Ok(Some(Incoming::Error(text)));
                }
                op @ (Op::Ok | Op::Info) => {
                    if op == Op::Info
                        && let Ok(info) = serde_json::from_slice::<Info>(args)
                        && let Some(max) = info.max_payload.filter(|m| *m > 0)
                    {
                        self.max_payload = max;
                    }
                    self.read.advance(end + 2);
                }
                Op::Unknown => {
                    let text = String::from_utf8_lossy(line).into_owned();
                    return Err(PublishError::Protocol(format!("an unknown operation {:?}", truncate(&text))));
                }
            }
        }
    }
}

#[cfg(test)]
impl Publisher {
    /// A publisher over an in-memory pipe nobody reads (writes stay in its buffer), for tests.
    pub(crate) fn in_memory() -> Self {
        let (client, _server) = tokio::io::duplex(64);
        Publisher {
            io: Box::new(client),
            read: BytesMut::new(),
            consumed: 0,
            write: Vec::new(),
            written: 0,
            unflushed: 0,
            pong: false,
            max_payload: 1024,
            server: "test".into(),
        }
    }

    /// What has been appended and not sent.
    pub(crate) fn appended(&self) -> &[u8] {
        &self.write[self.written..]
    }
}

/// Appends one `HPUB` to `w`: the protocol line, a header block holding only `Nats-Msg-Id` (when
/// `id` fits a header as it is), and the payload.
pub fn encode_publish(w: &mut Vec<u8>, subject: &str, reply: &str, id: &[u8], payload: &[u8]) {
    const START: &[u8] = b"NATS/1.0\r\n";
    const NAME: &[u8] = b"Nats-Msg-Id: ";
    let with_id = header_safe(id);
    let hlen = START.len() + if with_id { NAME.len() + id.len() + 2 } else { 0 } + 2;
    let mut n = itoa::Buffer::new();
    w.extend_from_slice(b"HPUB ");
    w.extend_from_slice(subject.as_bytes());
    w.push(b' ');
    w.extend_from_slice(reply.as_bytes());
    w.push(b' ');
    w.extend_from_slice(n.format(hlen).as_bytes());
    w.push(b' ');
    w.extend_from_slice(n.format(hlen + payload.len()).as_bytes());
    w.extend_from_slice(b"\r\n");
    w.extend_from_slice(START);
    if with_id {
        w.extend_from_slice(NAME);
        w.extend_from_slice(id);
        w.extend_from_slice(b"\r\n");
    }
    w.extend_from_slice(b"\r\n");
    w.extend_from_slice(payload);
    w.extend_from_slice(b"\r\n");
}

/// A protocol operation the server sends (names are case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Msg,
    Hmsg,
    Ping,
    Pong,
    Ok,
    Err,
    Info,
    Unknown,
}

impl Op {
    fn of(name: &[u8]) -> Self {
        // Replies, nearly everything the server sends, as servers write them.
        if name == b"MSG" {
            return Op::Msg;
        }
        const NAMES: [(&[u8], Op); 7] = [
            (b"MSG", Op::Msg),
            (b"HMSG", Op::Hmsg),
            (b"PING", Op::Ping),
            (b"PONG", Op::Pong),
            (b"+OK", Op::Ok),
            (b"-ERR", Op::Err),
            (b"INFO", Op::Info),
        ];
        NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map_or(Op::Unknown, |(_, op)| *op)
    }
}

/// `MSG <subject> <sid> [reply] <bytes>` or `HMSG <subject> <sid> [reply] <header> <total>`.
struct MsgLine {
    to: ReplyTo,
    header: usize,
    total: usize,
}

impl MsgLine {
    fn parse(args: &[u8], headers: bool) -> Option<Self> {
        let mut parts: [&[u8]; 5] = [&[]; 5];
        let mut n = 0;
        let mut start = 0;
        for end in memchr::memchr2_iter(b' ', b'\t', args).chain(std::iter::once(args.len())) {
            if end > start {
                *parts.get_mut(n)? = &args[start..end];
                n += 1;
            }
            start = end + 1;
        }
        let num = |p: &[u8]| decimal(p).and_then(|n| usize::try_from(n).ok());
        let (subject, header, total) = match (headers, &parts[..n]) {
            (false, [subject, _sid, bytes] | [subject, _sid, _, bytes]) => (*subject, 0, num(bytes)?),
            (true, [subject, _sid, h, t] | [subject, _sid, _, h, t]) => (*subject, num(h)?, num(t)?),
            _ => return None,
        };
        Some(Self { to: ReplyTo::of(subject), header, total })
    }
}

/// A decimal number of up to 19 digits (`u64` holds them all), nothing else.
pub(crate) fn decimal(p: &[u8]) -> Option<u64> {
    if p.is_empty() || p.len() > 19 || !p.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(p.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// The status of a header block (`NATS/1.0 503` → 503).
fn status_of(header: &[u8]) -> Option<u16> {
    let first = header.split(|b| *b == b'\r').next()?;
    let rest = first.strip_prefix(b"NATS/1.0")?;
    let code = rest.split(|b| *b == b' ').find(|p| !p.is_empty())?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    let mut from = 0;
    loop {
        let at = from + memchr::memchr(b'\n', &b[from..])?;
        if at > 0 && b[at - 1] == b'\r' {
            return Some(at - 1);
        }
        from = at + 1;
    }
}

/// Whether `id` can be a header value as it is (eventgate's ids always can: topic names and numbers).
fn header_safe(id: &[u8]) -> bool {
    !id.is_empty() && id.iter().all(u8::is_ascii_graphic)
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(120) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publisher(from_server: &[u8]) -> Publisher {
        let mut p = Publisher::in_memory();
        p.read.extend_from_slice(from_server);
        p
    }

    #[test]
    fn urls_name_servers_credentials_and_tls() {
        let s = parse_servers("nats://u:p@ss@a:1, tls://tok@b, c:5,[::1]:7").unwrap();
        assert_eq!((s[0].tls, s[0].host.as_str(), s[0].port), (false, "a", 1));
        assert_eq!((s[0].user.as_deref(), s[0].pass.as_deref()), (Some("u"), Some("p@ss")));
        assert_eq!((s[1].tls, s[1].host.as_str(), s[1].port, s[1].token.as_deref()), (true, "b", 4222, Some("tok")));
        assert_eq!((s[2].host.as_str(), s[2].port), ("c", 5));
        assert_eq!((s[3].host.as_str(), s[3].port), ("::1", 7));
        assert!(parse_servers("ws://a").is_err());
        assert!(parse_servers("nats://a:x").is_err());
        assert!(parse_servers("").is_err());
    }

    /// Sizes and tokens are plain decimals that fit a `u64`: anything else is not a number.
    #[test]
    fn decimals_are_digits_only_and_never_overflow() {
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"1234567890123456789"), Some(1_234_567_890_123_456_789));
        for bad in [&b""[..], b"+5", b"-5", b" 5", b"5x", b"12345678901234567890", b"99999999999999999999"] {
            assert_eq!(decimal(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        // A reply token too long for a number is no token; the line is still read.
        let mut p = publisher(b"MSG _INBOX.x.12345678901234567890 1 2\r\n{}\r\n");
        assert_eq!(
            p.next_incoming().unwrap(),
            Some(Incoming::Reply { to: ReplyTo::Unknown, status: None, payload: &b"{}"[..] })
        );
    }

    #[test]
    fn a_publish_carries_the_id_header_and_the_payload() {
        let mut p = publisher(b"");
        p.push("eg.t", "_INBOX.x.7", b"t-0-1", b"{}");
        let hdr = "NATS/1.0\r\nNats-Msg-Id: t-0-1\r\n\r\n";
        let want = format!("HPUB eg.t _INBOX.x.7 {} {}\r\n{hdr}{{}}\r\n", hdr.len(), hdr.len() + 2);
        assert_eq!(String::from_utf8_lossy(&p.write), want);
        assert_eq!(Publisher::message_size(b"t-0-1", 2), hdr.len() + 2);
        // An id that would break the header block is left out, never written.
        let mut p = publisher(b"");
        p.push("eg.t", "r.1", b"a\r\nInjected: yes", b"x");
        assert!(!String::from_utf8_lossy(&p.write).contains("Injected"));
        assert_eq!(Publisher::message_size(b"a\r\nb", 1), "NATS/1.0\r\n\r\n".len() + 1);
    }

    #[test]
    fn replies_are_read_in_bulk_pings_answered_and_partial_input_waits() {
        let ack = br#"{"stream":"S","seq":5}"#;
        let mut wire = format!("PING\r\nMSG _INBOX.x.41 1 {}\r\n", ack.len()).into_bytes();
        wire.extend_from_slice(ack);
        wire.extend_from_slice(b"\r\nHMSG _INBOX.x.42 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n+OK\r\n-ERR 'Authorization Violation'\r\nMSG _INBOX.x.43 1 5\r\nab");
        let mut p = publisher(&wire);
        assert_eq!(
            p.next_incoming().unwrap(),
            Some(Incoming::Reply { to: ReplyTo::Token(41), status: None, payload: &ack[..] })
        );
        assert_eq!(p.write, b"PONG\r\n");
        assert_eq!(
            p.next_incoming().unwrap(),
            Some(Incoming::Reply { to: ReplyTo::Token(42), status: Some(503), payload: &[][..] })
        );
        assert_eq!(p.next_incoming().unwrap(), Some(Incoming::Error("Authorization Violation".into())));
        assert_eq!(p.next_incoming().unwrap(), None, "the last message is not all there yet");
        p.read.extend_from_slice(b"cde\r\n");
        assert_eq!(
            p.next_incoming().unwrap(),
            Some(Incoming::Reply { to: ReplyTo::Token(43), status: None, payload: &b"abcde"[..] })
        );
    }

    /// A batch's reply subject names the batch by its first token and the publish by its
    /// sequence in it; anything else the sink did not make is no publish of its own.
    #[test]
    fn reply_subjects_name_a_token_or_a_batch_s_publish() {
        let to = |s: &str| ReplyTo::of(s.as_bytes());
        assert_eq!(to("_INBOX.abc.41"), ReplyTo::Token(41));
        assert_eq!(to("_INBOX.abc.abc-1000.500.fail.7.1.$FI"), ReplyTo::Batch { first: 1000, seq: 7, op: 1 });
        assert_eq!(to("_INBOX.abc.abc-0.1.fail.1.0.$FI"), ReplyTo::Batch { first: 0, seq: 1, op: BATCH_START });
        assert_eq!(to("_INBOX.abc.abc-5.1.fail.9.3.$FI"), ReplyTo::Batch { first: 5, seq: 9, op: BATCH_END });
        for bad in [
            "_INBOX.abc.x",
            "_INBOX.abc.abc-5.1.fail.0.1.$FI",
            "_INBOX.abc.abc-5.1.fail.1.256.$FI",
            "_INBOX.abc.abc-x.1.fail.1.1.$FI",
            "_INBOX.abc.abc-5.1.fail.-1.1.$FI",
            "5.1.fail.1.1.$FI",
            "$FI",
            "_INBOX.abc.abc-5.1.fail.99999999999999999999.1.$FI",
        ] {
            assert_eq!(to(bad), ReplyTo::Unknown, "{bad}");
        }
        let mut p = publisher(b"MSG _INBOX.a.a-3.10.fail.2.1.$FI 1 2\r\n{}\r\n");
        assert_eq!(
            p.next_incoming().unwrap(),
            Some(Incoming::Reply { to: ReplyTo::Batch { first: 3, seq: 2, op: 1 }, status: None, payload: &b"{}"[..] })
        );
    }

    #[test]
    fn a_batch_ends_with_an_empty_publish() {
        let mut p = publisher(b"");
        p.push_end("eg.t", "_INBOX.a.a-3.10.fail.5.3.$FI");
        assert_eq!(p.write, b"PUB eg.t _INBOX.a.a-3.10.fail.5.3.$FI 0\r\n\r\n");
    }

    #[test]
    fn a_large_cluster_s_info_update_is_taken_in_passing() {
        let urls: Vec<String> = (0..400).map(|i| format!("\"10.0.{}.{}:4222\"", i / 250, i % 250)).collect();
        let info = format!("INFO {{\"max_payload\":2048,\"connect_urls\":[{}]}}\r\n", urls.join(","));
        assert!(info.len() > 4096);
        let mut p = publisher(info.as_bytes());
        assert_eq!(p.next_incoming().unwrap(), None);
        assert_eq!(p.max_payload, 2048);
    }

    #[tokio::test]
    async fn a_server_that_never_stops_sending_is_read_in_bounded_steps() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut p = publisher(b"");
        p.io = Box::new(client);
        let pings = b"PING\r\n".repeat(100_000);
        tokio::io::AsyncWriteExt::write_all(&mut server, &pings[..600_000]).await.unwrap();
        assert!(p.fill_ready().unwrap());
        assert!(p.read.len() < READ_AHEAD + 16 * 1024, "buffered {}", p.read.len());
        while p.next_incoming().unwrap().is_some() {}
        assert!(p.read.len() < 6, "all but a partial line parsed");
        assert_eq!(p.write.len() % 6, 0, "whole PONGs, one per PING read");
        assert!(p.write.len() >= 6 * 40_000);
    }

    #[test]
    fn a_hostile_server_cannot_make_the_reader_hold_more_than_its_bounds() {
        let mut p = publisher(&vec![b'x'; MAX_CONTROL_LINE + 1]);
        assert!(matches!(p.next_incoming(), Err(PublishError::Protocol(_))));
        let mut p = publisher(format!("MSG a.1 1 {}\r\n", MAX_REPLY + 1).as_bytes());
        assert!(matches!(p.next_incoming(), Err(PublishError::Protocol(_))));
        let mut p = publisher(b"HMSG a.1 1 9 3\r\n");
        assert!(matches!(p.next_incoming(), Err(PublishError::Protocol(_))), "headers longer than the message");
        let mut p = publisher(b"BOGUS\r\n");
        assert!(matches!(p.next_incoming(), Err(PublishError::Protocol(_))));
    }
}
