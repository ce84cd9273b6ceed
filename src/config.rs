//! Configuration: one YAML file, `EVENTGATE_*` environment variables and command-line flags.
//!
//! Every setting is declared once, in [`Settings`], which is both a clap argument group and the
//! schema of the YAML file. A flag beats its environment variable, which beats the file, which beats
//! the built-in default. [`Settings::resolve`] turns the merged settings into a checked [`Config`].

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::asyncapi::Policy;
use crate::mirror::MirrorConfig;
use crate::nats::{Discard, NatsConfig, Storage};
use crate::validate::{Policies, UnknownTopic};
use crate::wire::frame::DEFAULT_MAX_FRAME_BYTES;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse { path: PathBuf, source: Box<serde_saphyr::Error> },
    #[error("{setting}: {message}")]
    Invalid { setting: &'static str, message: String },
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { setting, message: message.into() }
}

/// Settings of `eventgate serve`. Each field is a flag, an `EVENTGATE_*` variable and a key of the
/// YAML config file (the flag name with `_` for `-`).
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Settings {
    /// Upstream Kafka bootstrap server, HOST:PORT (repeatable, or comma-separated).
    /// [default: 127.0.0.1:9192]
    #[arg(long = "upstream", env = "EVENTGATE_UPSTREAM", value_delimiter = ',')]
    #[serde(default)]
    pub upstream: Vec<String>,

    /// Address of the bootstrap listener that clients use as `bootstrap.servers`.
    /// [default: 127.0.0.1:9092]
    #[arg(long, env = "EVENTGATE_LISTEN")]
    pub listen: Option<String>,

    /// Host name put in the broker addresses clients receive. [default: the listen host; required
    /// when listening on a wildcard address]
    #[arg(long, env = "EVENTGATE_ADVERTISED_HOST")]
    pub advertised_host: Option<String>,

    /// First port of the per-broker listeners: broker NODE_ID is reached at NODE_PORT_BASE + NODE_ID.
    /// [default: listen port + 1]
    #[arg(long, env = "EVENTGATE_NODE_PORT_BASE")]
    pub node_port_base: Option<u16>,

    /// Highest node id served at NODE_PORT_BASE + NODE_ID. Brokers with larger ids need a
    /// `--node-port`, else they get ports above that range in the order they appear. [default: 1023]
    #[arg(long, env = "EVENTGATE_NODE_ID_MAX")]
    pub node_id_max: Option<i32>,

    /// Fixed listener port for a broker, NODE_ID=PORT (repeatable, or comma-separated).
    #[arg(long = "node-port", env = "EVENTGATE_NODE_PORT", value_delimiter = ',')]
    #[serde(default)]
    pub node_port: Vec<String>,

    /// Address of the admin HTTP listener (health, metrics). [default: 127.0.0.1:8080]
    #[arg(long, env = "EVENTGATE_HTTP_LISTEN")]
    pub http_listen: Option<String>,

    /// Largest Kafka frame accepted from a client or a broker, in bytes. [default: 104857600]
    #[arg(long, env = "EVENTGATE_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,

    /// Requests in flight per client connection before eventgate stops reading from it. [default: 1024]
    #[arg(long, env = "EVENTGATE_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,

    /// Client connections open at once on all Kafka listeners; further ones are closed at once and
    /// counted. [default: 4096]
    #[arg(long, env = "EVENTGATE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// A client connection with no request in flight and no bytes from the client for this long is
    /// closed, like Kafka's `connections.max.idle.ms` (0: never). [default: 600000]
    #[arg(long, env = "EVENTGATE_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,

    /// Most per-broker listeners open at once; an answer naming more brokers closes the connection
    /// that carried it. [default: 1024]
    #[arg(long, env = "EVENTGATE_MAX_BROKER_LISTENERS")]
    pub max_broker_listeners: Option<usize>,

    /// A broker listener whose broker has been absent from every Metadata answer for this long is
    /// closed and its port freed, in milliseconds. [default: 600000]
    #[arg(long, env = "EVENTGATE_BROKER_FORGET_MS")]
    pub broker_forget_ms: Option<u64>,

    /// Time allowed to connect to a broker, in milliseconds. [default: 10000]
    #[arg(long, env = "EVENTGATE_CONNECT_TIMEOUT_MS")]
    pub connect_timeout_ms: Option<u64>,

    /// On SIGTERM/SIGINT, time allowed for in-flight requests to finish, in milliseconds. [default: 10000]
    #[arg(long, env = "EVENTGATE_SHUTDOWN_TIMEOUT_MS")]
    pub shutdown_timeout_ms: Option<u64>,

    /// AsyncAPI document to load at start (repeatable; its id is the file name without extension).
    #[arg(long = "spec", env = "EVENTGATE_SPEC", value_delimiter = ',')]
    #[serde(default)]
    pub spec: Vec<PathBuf>,

    /// Directory where uploaded documents persist across restarts ("" to keep them in memory only).
    /// [default: eventgate-specs]
    #[arg(long, env = "EVENTGATE_SPEC_DIR")]
    pub spec_dir: Option<String>,

    /// Policy for described topics whose channel sets no `x-eventgate-policy`: annotate, reject or
    /// off. [default: annotate]
    #[arg(long, env = "EVENTGATE_POLICY")]
    pub policy: Option<Policy>,

    /// Per-topic policy override, TOPIC=POLICY (repeatable); beats the documents.
    #[arg(long = "topic-policy", env = "EVENTGATE_TOPIC_POLICY", value_delimiter = ',')]
    #[serde(default)]
    pub topic_policy: Vec<String>,

    /// Records of topics no document describes: pass or reject. [default: pass]
    #[arg(long, env = "EVENTGATE_UNKNOWN_TOPIC")]
    pub unknown_topic: Option<UnknownTopic>,

    /// Bearer token required by the mutating admin routes (PUT/DELETE /specs). [default: none]
    #[arg(long, env = "EVENTGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Largest AsyncAPI document accepted over HTTP, in bytes. [default: 4194304]
    #[arg(long, env = "EVENTGATE_MAX_SPEC_BYTES")]
    pub max_spec_bytes: Option<usize>,

    /// Work budget of one Produce request, in bytes: its decompressed records, plus a fixed cost per
    /// record and the annotations eventgate adds, across all its batches. Partitions past it are
    /// refused with MESSAGE_TOO_LARGE. [default: 67108864]
    #[arg(long, env = "EVENTGATE_MAX_DECOMPRESSED_BYTES")]
    pub max_decompressed_bytes: Option<usize>,

    /// NATS server URL; enables the CloudEvents mirror and shares documents through JetStream.
    /// [default: none]
    #[arg(long, env = "EVENTGATE_NATS_URL")]
    pub nats_url: Option<String>,

    /// JetStream stream holding mirrored events. [default: EVENTGATE]
    #[arg(long, env = "EVENTGATE_NATS_STREAM")]
    pub nats_stream: Option<String>,

    /// Subject prefix of mirrored records: `<prefix>.<topic>`. [default: eventgate.records]
    #[arg(long, env = "EVENTGATE_MIRROR_SUBJECT_PREFIX")]
    pub mirror_subject_prefix: Option<String>,

    /// Subject prefix of records refused by policy. [default: eventgate.rejected]
    #[arg(long, env = "EVENTGATE_MIRROR_REJECTED_PREFIX")]
    pub mirror_rejected_prefix: Option<String>,

    /// Stream storage: file or memory. [default: file]
    #[arg(long, env = "EVENTGATE_MIRROR_STORAGE")]
    pub mirror_storage: Option<Storage>,

    /// Events older than this many seconds leave the stream (0: no limit). [default: 604800]
    #[arg(long, env = "EVENTGATE_MIRROR_MAX_AGE_SECS")]
    pub mirror_max_age_secs: Option<u64>,

    /// Stream size limit in bytes (-1: no limit). [default: 1073741824]
    #[arg(long, env = "EVENTGATE_MIRROR_MAX_BYTES", allow_negative_numbers = true)]
    pub mirror_max_bytes: Option<i64>,

    /// Stream message-count limit (-1: no limit). [default: -1]
    #[arg(long, env = "EVENTGATE_MIRROR_MAX_MESSAGES", allow_negative_numbers = true)]
    pub mirror_max_messages: Option<i64>,

    /// Largest event stored with its data; larger records are mirrored without their data, marked
    /// `dataomitted`. Keep it at or below the server's max_payload. [default: 1000000]
    #[arg(long, env = "EVENTGATE_MIRROR_MAX_EVENT_BYTES")]
    pub mirror_max_event_bytes: Option<usize>,

    /// What a full stream does: `old` drops its oldest events, `new` refuses new ones (each
    /// refused event is counted and logged). [default: old]
    #[arg(long, env = "EVENTGATE_MIRROR_DISCARD")]
    pub mirror_discard: Option<Discard>,

    /// Seconds during which JetStream drops a resent event with the same id. [default: 120]
    #[arg(long, env = "EVENTGATE_MIRROR_DUPLICATE_WINDOW_SECS")]
    pub mirror_duplicate_window_secs: Option<u64>,

    /// Record bytes waiting to be mirrored (e.g. while NATS is away) before further records are
    /// dropped from the mirror and counted; Kafka traffic is never held up. [default: 268435456]
    #[arg(long, env = "EVENTGATE_MIRROR_BUFFER_BYTES")]
    pub mirror_buffer_bytes: Option<usize>,

    /// Publish acknowledgements outstanding at once. [default: 1024]
    #[arg(long, env = "EVENTGATE_MIRROR_WINDOW")]
    pub mirror_window: Option<usize>,

    /// Cluster name in each event's `source` (`kafka://<cluster>/<topic>`). [default: kafka]
    #[arg(long, env = "EVENTGATE_CLUSTER_NAME")]
    pub cluster_name: Option<String>,

    /// CloudEvents `type` of records that match no AsyncAPI message. [default: eventgate.record]
    #[arg(long, env = "EVENTGATE_CE_DEFAULT_TYPE")]
    pub ce_default_type: Option<String>,

    /// JetStream key-value bucket of uploaded documents. [default: eventgate_specs]
    #[arg(long, env = "EVENTGATE_SPEC_BUCKET")]
    pub spec_bucket: Option<String>,

    /// Events buffered per websocket client before a slow client is disconnected. [default: 1024]
    #[arg(long, env = "EVENTGATE_WS_BUFFER")]
    pub ws_buffer: Option<usize>,

    /// Milliseconds a websocket client's buffer may stay full before it is disconnected. [default: 5000]
    #[arg(long, env = "EVENTGATE_WS_SLOW_MS")]
    pub ws_slow_ms: Option<u64>,

    /// Bytes of events buffered for all websocket clients together; past it the clients with the most
    /// buffered are disconnected first (1008). [default: 67108864]
    #[arg(long, env = "EVENTGATE_WS_MAX_BUFFERED_BYTES")]
    pub ws_max_buffered_bytes: Option<usize>,

    /// Time an admin HTTP client has to send a request's headers, in milliseconds. [default: 10000]
    #[arg(long, env = "EVENTGATE_HTTP_HEADER_TIMEOUT_MS")]
    pub http_header_timeout_ms: Option<u64>,

    /// Time an admin HTTP request may take, body included, in milliseconds. [default: 30000]
    #[arg(long, env = "EVENTGATE_HTTP_REQUEST_TIMEOUT_MS")]
    pub http_request_timeout_ms: Option<u64>,

    /// Admin HTTP connections open at once (websockets included); further ones are closed at once
    /// and counted. [default: 256]
    #[arg(long, env = "EVENTGATE_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,

    /// Log filter, in `tracing` env-filter syntax (RUST_LOG wins when set). [default: info]
    #[arg(long, env = "EVENTGATE_LOG")]
    pub log: Option<String>,

    /// Log format: `text` or `json`. [default: text]
    #[arg(long, env = "EVENTGATE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The checked configuration eventgate runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub upstream: Vec<String>,
    pub listen: SocketAddr,
    pub advertised_host: String,
    pub node_port_base: u16,
    pub node_id_max: i32,
    pub node_ports: BTreeMap<i32, u16>,
    pub http_listen: SocketAddr,
    pub max_frame_bytes: usize,
    pub max_in_flight: usize,
    pub max_connections: usize,
    /// `None`: never close idle connections.
    pub idle_timeout: Option<Duration>,
    pub max_broker_listeners: usize,
    pub broker_forget: Duration,
    pub connect_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub specs: Vec<PathBuf>,
    pub spec_dir: Option<PathBuf>,
    pub policies: Policies,
    pub admin_token: Option<String>,
    pub max_spec_bytes: usize,
    pub nats: Option<NatsConfig>,
    pub mirror: MirrorConfig,
    pub ws_buffer: usize,
    pub ws_slow: Duration,
    pub ws_max_buffered_bytes: usize,
    pub http_header_timeout: Duration,
    pub http_request_timeout: Duration,
    pub http_max_connections: usize,
    pub log: String,
    pub log_format: LogFormat,
}

impl Settings {
    /// Reads a YAML config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        serde_saphyr::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.to_owned(), source: Box::new(source) })
    }

    /// `self` (flags and environment) over `file`.
    pub fn over(self, file: Settings) -> Settings {
        fn list(a: Vec<String>, b: Vec<String>) -> Vec<String> {
            if a.is_empty() { b } else { a }
        }
        Settings {
            upstream: list(self.upstream, file.upstream),
            listen: self.listen.or(file.listen),
            advertised_host: self.advertised_host.or(file.advertised_host),
            node_port_base: self.node_port_base.or(file.node_port_base),
            node_id_max: self.node_id_max.or(file.node_id_max),
            node_port: list(self.node_port, file.node_port),
            http_listen: self.http_listen.or(file.http_listen),
            max_frame_bytes: self.max_frame_bytes.or(file.max_frame_bytes),
            max_in_flight: self.max_in_flight.or(file.max_in_flight),
            max_connections: self.max_connections.or(file.max_connections),
            idle_timeout_ms: self.idle_timeout_ms.or(file.idle_timeout_ms),
            max_broker_listeners: self.max_broker_listeners.or(file.max_broker_listeners),
            broker_forget_ms: self.broker_forget_ms.or(file.broker_forget_ms),
            connect_timeout_ms: self.connect_timeout_ms.or(file.connect_timeout_ms),
            shutdown_timeout_ms: self.shutdown_timeout_ms.or(file.shutdown_timeout_ms),
            spec: if self.spec.is_empty() { file.spec } else { self.spec },
            spec_dir: self.spec_dir.or(file.spec_dir),
            policy: self.policy.or(file.policy),
            topic_policy: list(self.topic_policy, file.topic_policy),
            unknown_topic: self.unknown_topic.or(file.unknown_topic),
            admin_token: self.admin_token.or(file.admin_token),
            max_spec_bytes: self.max_spec_bytes.or(file.max_spec_bytes),
            max_decompressed_bytes: self.max_decompressed_bytes.or(file.max_decompressed_bytes),
            nats_url: self.nats_url.or(file.nats_url),
            nats_stream: self.nats_stream.or(file.nats_stream),
            mirror_subject_prefix: self.mirror_subject_prefix.or(file.mirror_subject_prefix),
            mirror_rejected_prefix: self.mirror_rejected_prefix.or(file.mirror_rejected_prefix),
            mirror_storage: self.mirror_storage.or(file.mirror_storage),
            mirror_max_age_secs: self.mirror_max_age_secs.or(file.mirror_max_age_secs),
            mirror_max_bytes: self.mirror_max_bytes.or(file.mirror_max_bytes),
            mirror_max_messages: self.mirror_max_messages.or(file.mirror_max_messages),
            mirror_max_event_bytes: self.mirror_max_event_bytes.or(file.mirror_max_event_bytes),
            mirror_discard: self.mirror_discard.or(file.mirror_discard),
            mirror_duplicate_window_secs: self.mirror_duplicate_window_secs.or(file.mirror_duplicate_window_secs),
            mirror_buffer_bytes: self.mirror_buffer_bytes.or(file.mirror_buffer_bytes),
            mirror_window: self.mirror_window.or(file.mirror_window),
            cluster_name: self.cluster_name.or(file.cluster_name),
            ce_default_type: self.ce_default_type.or(file.ce_default_type),
            spec_bucket: self.spec_bucket.or(file.spec_bucket),
            ws_buffer: self.ws_buffer.or(file.ws_buffer),
            ws_slow_ms: self.ws_slow_ms.or(file.ws_slow_ms),
            ws_max_buffered_bytes: self.ws_max_buffered_bytes.or(file.ws_max_buffered_bytes),
            http_header_timeout_ms: self.http_header_timeout_ms.or(file.http_header_timeout_ms),
            http_request_timeout_ms: self.http_request_timeout_ms.or(file.http_request_timeout_ms),
            http_max_connections: self.http_max_connections.or(file.http_max_connections),
            log: self.log.or(file.log),
            log_format: self.log_format.or(file.log_format),
        }
    }

    /// Applies defaults and checks every value.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let upstream = if self.upstream.is_empty() { vec!["127.0.0.1:9192".to_owned()] } else { self.upstream };
        for u in &upstream {
            split_host_port(u).map_err(|m| invalid("upstream", m))?;
        }
        let listen = socket_addr("listen", self.listen.as_deref().unwrap_or("127.0.0.1:9092"))?;
        let advertised_host = match self.advertised_host {
            Some(h) if !h.trim().is_empty() => h,
            Some(_) => return Err(invalid("advertised_host", "must not be empty")),
            None if listen.ip().is_unspecified() => {
                return Err(invalid(
                    "advertised_host",
                    format!("required when listening on the wildcard address {}", listen.ip()),
                ));
            }
            None => match listen.ip() {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            },
        };
        let node_port_base = match self.node_port_base {
            Some(p) => p,
            None => listen
                .port()
                .checked_add(1)
                .ok_or_else(|| invalid("node_port_base", "listen port 65535 leaves no room for broker ports"))?,
        };
        let node_id_max = self.node_id_max.unwrap_or(1023);
        if node_id_max < 0 {
            return Err(invalid("node_id_max", "must be >= 0"));
        }
        let mut node_ports = BTreeMap::new();
        for entry in &self.node_port {
            let (id, port) = entry
                .split_once('=')
                .and_then(|(i, p)| Some((i.trim().parse::<i32>().ok()?, p.trim().parse::<u16>().ok()?)))
                .ok_or_else(|| invalid("node_port", format!("`{entry}` is not NODE_ID=PORT")))?;
            node_ports.insert(id, port);
        }
        let max_frame_bytes = self.max_frame_bytes.unwrap_or(DEFAULT_MAX_FRAME_BYTES);
        if max_frame_bytes < 1024 || max_frame_bytes > i32::MAX as usize {
            return Err(invalid("max_frame_bytes", "must be between 1024 and 2147483647"));
        }
        let max_in_flight = self.max_in_flight.unwrap_or(1024);
        if max_in_flight == 0 {
            return Err(invalid("max_in_flight", "must be at least 1"));
        }
        let max_connections = self.max_connections.unwrap_or(4096);
        if max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        let max_broker_listeners = self.max_broker_listeners.unwrap_or(1024);
        if max_broker_listeners == 0 {
            return Err(invalid("max_broker_listeners", "must be at least 1"));
        }
        let http_listen = socket_addr("http_listen", self.http_listen.as_deref().unwrap_or("127.0.0.1:8080"))?;
        check_port_layout(listen, http_listen, node_port_base, node_id_max, &node_ports)?;
        for u in &upstream {
            check_upstream_not_self(u, listen, http_listen, &node_ports)?;
        }
        let log_format = self.log_format.unwrap_or_default();
        let mut overrides = HashMap::new();
        for entry in &self.topic_policy {
            let (topic, policy) = entry
                .rsplit_once('=')
                .ok_or_else(|| invalid("topic_policy", format!("`{entry}` is not TOPIC=POLICY")))?;
            let policy = policy.trim().parse::<Policy>().map_err(|e| invalid("topic_policy", e))?;
            overrides.insert(topic.trim().to_owned(), policy);
        }
        let policies = Policies {
            default: self.policy.unwrap_or(Policy::Annotate),
            overrides,
            unknown_topic: self.unknown_topic.unwrap_or_default(),
            max_decompressed_bytes: self.max_decompressed_bytes.unwrap_or(64 << 20),
        };
        let spec_dir = match self.spec_dir {
            Some(d) if d.is_empty() => None,
            Some(d) => Some(PathBuf::from(d)),
            None => Some(PathBuf::from("eventgate-specs")),
        };
        let admin_token = self.admin_token.filter(|t| !t.is_empty());
        let subject_prefix = self.mirror_subject_prefix.unwrap_or_else(|| "eventgate.records".to_owned());
        let rejected_prefix = self.mirror_rejected_prefix.unwrap_or_else(|| "eventgate.rejected".to_owned());
        for (setting, p) in [("mirror_subject_prefix", &subject_prefix), ("mirror_rejected_prefix", &rejected_prefix)] {
            let ok = !p.is_empty()
                && p.split('.').all(|t| !t.is_empty() && !t.contains(['*', '>']) && !t.contains(char::is_whitespace));
            if !ok {
                return Err(invalid(setting, format!("`{p}` is not a NATS subject prefix like a.b.c")));
            }
        }
        if subject_prefix == rejected_prefix {
            return Err(invalid("mirror_rejected_prefix", "must differ from mirror_subject_prefix"));
        }
        let max_event_bytes = self.mirror_max_event_bytes.unwrap_or(1_000_000);
        let cluster = self.cluster_name.unwrap_or_else(|| "kafka".to_owned());
        // It is the host of every event's `source` (`kafka://<cluster>/<topic>`), which must be a URI.
        if cluster.is_empty() || !cluster.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)) {
            return Err(invalid("cluster_name", "use letters, digits, `-`, `.`, `_` and `~` (it is a URI host name)"));
        }
        let mirror = MirrorConfig {
            cluster,
            default_type: self.ce_default_type.unwrap_or_else(|| "eventgate.record".to_owned()),
            subject_prefix: subject_prefix.clone(),
            rejected_prefix: rejected_prefix.clone(),
            max_event_bytes,
            buffer_bytes: self.mirror_buffer_bytes.unwrap_or(256 << 20),
            max_decompressed_bytes: policies.max_decompressed_bytes,
        };
        let nats = self.nats_url.filter(|u| !u.is_empty()).map(|url| NatsConfig {
            url,
            stream: self.nats_stream.unwrap_or_else(|| "EVENTGATE".to_owned()),
            subjects: vec![format!("{subject_prefix}.>"), format!("{rejected_prefix}.>")],
            storage: self.mirror_storage.unwrap_or_default(),
            max_age: Duration::from_secs(self.mirror_max_age_secs.unwrap_or(7 * 24 * 3600)),
            max_bytes: self.mirror_max_bytes.unwrap_or(1 << 30),
            max_messages: self.mirror_max_messages.unwrap_or(-1),
            max_message_size: i32::try_from(max_event_bytes).unwrap_or(i32::MAX),
            duplicate_window: Duration::from_secs(self.mirror_duplicate_window_secs.unwrap_or(120)),
            discard: self.mirror_discard.unwrap_or_default(),
            spec_bucket: self.spec_bucket.unwrap_or_else(|| "eventgate_specs".to_owned()),
            window: self.mirror_window.unwrap_or(1024),
        });
        Ok(Config {
            upstream,
            listen,
            advertised_host,
            node_port_base,
            node_id_max,
            node_ports,
            http_listen,
            max_frame_bytes,
            max_in_flight,
            max_connections,
            idle_timeout: match self.idle_timeout_ms.unwrap_or(600_000) {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
            max_broker_listeners,
            broker_forget: Duration::from_millis(self.broker_forget_ms.unwrap_or(600_000)),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms.unwrap_or(10_000)),
            shutdown_timeout: Duration::from_millis(self.shutdown_timeout_ms.unwrap_or(10_000)),
            specs: self.spec,
            spec_dir,
            policies,
            admin_token,
            max_spec_bytes: self.max_spec_bytes.unwrap_or(4 << 20),
            nats,
            mirror,
            ws_buffer: self.ws_buffer.unwrap_or(1024).max(1),
            ws_slow: Duration::from_millis(self.ws_slow_ms.unwrap_or(5000)),
            ws_max_buffered_bytes: self.ws_max_buffered_bytes.unwrap_or(64 << 20).max(1),
            http_header_timeout: Duration::from_millis(self.http_header_timeout_ms.unwrap_or(10_000).max(1)),
            http_request_timeout: Duration::from_millis(self.http_request_timeout_ms.unwrap_or(30_000).max(1)),
            http_max_connections: self.http_max_connections.unwrap_or(256).max(1),
            log: self.log.unwrap_or_else(|| "info".to_owned()),
            log_format,
        })
    }
}

impl Config {
    /// The listener port that serves broker `node_id`, per the documented port-per-broker scheme,
    /// when the id falls in the fixed range or has an explicit port.
    pub fn fixed_node_port(&self, node_id: i32) -> Option<u16> {
        if let Some(p) = self.node_ports.get(&node_id) {
            return Some(*p);
        }
        if (0..=self.node_id_max).contains(&node_id) {
            u16::try_from(i64::from(self.node_port_base) + i64::from(node_id)).ok()
        } else {
            None
        }
    }
}

/// Refuses a port-per-broker layout that cannot serve its id range, or whose broker ports collide
/// with the bootstrap or admin listener (every answer naming such a broker would then fail).
fn check_port_layout(
    listen: SocketAddr,
    http_listen: SocketAddr,
    base: u16,
    id_max: i32,
    fixed: &BTreeMap<i32, u16>,
) -> Result<(), ConfigError> {
    let last = i64::from(base) + i64::from(id_max);
    if last > i64::from(u16::MAX) {
        return Err(invalid(
            "node_port_base",
            format!(
                "node_port_base {base} + node_id_max {id_max} reaches port {last}: brokers above id {} could never \
                 be served; lower node_port_base or node_id_max",
                i64::from(u16::MAX) - i64::from(base)
            ),
        ));
    }
    let range = i64::from(base)..=last;
    // The admin listener only collides when it listens where the broker listeners do.
    let shares_ip = |a: SocketAddr| a.ip() == listen.ip() || a.ip().is_unspecified() || listen.ip().is_unspecified();
    let own = [("listen", listen.port()), ("http_listen", http_listen.port())];
    for (setting, port) in own {
        if setting == "http_listen" && !shares_ip(http_listen) {
            continue;
        }
        if range.contains(&i64::from(port)) {
            return Err(invalid(
                "node_port_base",
                format!(
                    "broker ports {base}..={last} include the {setting} port {port}; move node_port_base, lower \
                     node_id_max or move {setting}"
                ),
            ));
        }
        if let Some((id, _)) = fixed.iter().find(|(_, p)| **p == port) {
            return Err(invalid("node_port", format!("broker {id} is given port {port}, which {setting} uses")));
        }
    }
    let mut seen = BTreeMap::new();
    for (id, port) in fixed {
        if let Some(other) = seen.insert(*port, *id) {
            return Err(invalid("node_port", format!("brokers {other} and {id} are both given port {port}")));
        }
    }
    Ok(())
}

/// Refuses an upstream address that is one of eventgate's own listeners: every connection would
/// loop back into eventgate until the descriptors run out. Names that do not resolve now are left
/// to the connection-time check.
fn check_upstream_not_self(
    upstream: &str,
    listen: SocketAddr,
    http_listen: SocketAddr,
    fixed: &BTreeMap<i32, u16>,
) -> Result<(), ConfigError> {
    let Ok((host, port)) = split_host_port(upstream) else { return Ok(()) };
    // Broker ports of the fixed range open only as brokers appear: those are checked when an answer
    // names them (and by the connection-time check), not here.
    let own = [listen, http_listen]
        .into_iter()
        .filter(|a| a.port() == port)
        .chain(fixed.values().any(|p| *p == port).then_some(SocketAddr::new(listen.ip(), port)));
    let Ok(resolved) = (host, port).to_socket_addrs() else { return Ok(()) };
    let resolved: Vec<SocketAddr> = resolved.collect();
    for mine in own {
        let hit = resolved.iter().any(|r| {
            r.ip() == mine.ip() || (mine.ip().is_unspecified() && (r.ip().is_loopback() || r.ip().is_unspecified()))
        });
        if hit {
            return Err(invalid(
                "upstream",
                format!("`{upstream}` is eventgate's own listener {mine}: it would connect to itself in a loop"),
            ));
        }
    }
    Ok(())
}

/// Splits `HOST:PORT` (IPv6 hosts in brackets).
pub fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("`{s}` is not HOST:PORT"))?;
    let port = port.parse::<u16>().map_err(|_| format!("`{s}` has no valid port"))?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() {
        return Err(format!("`{s}` has no host"));
    }
    Ok((host, port))
}

fn socket_addr(setting: &'static str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.to_socket_addrs()
        .map_err(|e| invalid(setting, format!("`{s}`: {e}")))?
        .next()
        .ok_or_else(|| invalid(setting, format!("`{s}` resolves to no address")))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        s: Settings,
    }

    #[test]
    fn defaults_are_loopback_and_documented_ports() {
        let c = Settings::default().resolve().unwrap();
        assert_eq!(c.listen, "127.0.0.1:9092".parse().unwrap());
        assert_eq!(c.advertised_host, "127.0.0.1");
        assert_eq!(c.node_port_base, 9093);
        assert_eq!(c.fixed_node_port(111), Some(9204));
        assert_eq!(c.fixed_node_port(5000), None);
        assert_eq!(c.max_frame_bytes, 100 * 1024 * 1024);
    }

    #[test]
    fn a_cluster_name_must_fit_in_a_uri() {
        for bad in ["", "my cluster", "a{b}", "a/b"] {
            let s = Settings { cluster_name: Some(bad.into()), ..Default::default() };
            assert!(s.resolve().is_err(), "{bad:?}");
        }
        let s = Settings { cluster_name: Some("prod-eu.1".into()), ..Default::default() };
        assert_eq!(s.resolve().unwrap().mirror.cluster, "prod-eu.1");
    }

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let file: Settings = serde_saphyr::from_str(
            "listen: 127.0.0.1:7000\nupstream: [a:1, b:2]\nnode_port: ['5000=7777']\nmax_in_flight: 9\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from(["x", "--listen", "127.0.0.1:6000"]).unwrap();
        let c = cli.s.over(file).resolve().unwrap();
        assert_eq!(c.listen.port(), 6000);
        assert_eq!(c.upstream, vec!["a:1", "b:2"]);
        assert_eq!(c.fixed_node_port(5000), Some(7777));
        assert_eq!(c.max_in_flight, 9);
    }

    #[test]
    fn policies_parse_from_flags_and_file() {
        let file: Settings = serde_saphyr::from_str(
            "policy: reject\ntopic_policy: ['orders=off']\nunknown_topic: reject\nspec_dir: ''\n",
        )
        .unwrap();
        let c = Cli::try_parse_from(["x", "--topic-policy", "a.b=annotate"]).unwrap().s.over(file).resolve().unwrap();
        assert_eq!(c.policies.default, Policy::Reject);
        assert_eq!(c.policies.overrides.get("a.b"), Some(&Policy::Annotate));
        assert_eq!(c.policies.overrides.get("orders"), None, "flags replace the file's list");
        assert_eq!(c.policies.unknown_topic, UnknownTopic::Reject);
        assert_eq!(c.spec_dir, None);
        let bad = Settings { topic_policy: vec!["x=maybe".into()], ..Default::default() };
        assert!(bad.resolve().is_err());
    }

    #[test]
    fn port_layouts_that_cannot_work_are_refused() {
        let bad = |s: Settings| s.resolve().unwrap_err().to_string();
        let e = bad(Settings { node_port_base: Some(65000), ..Default::default() });
        assert!(e.contains("66023") && e.contains("above id 535"), "{e}");
        let e = bad(Settings { http_listen: Some("127.0.0.1:9500".into()), ..Default::default() });
        assert!(e.contains("http_listen port 9500"), "{e}");
        let e = bad(Settings { node_port: vec!["5=9092".into()], node_id_max: Some(0), ..Default::default() });
        assert!(e.contains("broker 5 is given port 9092"), "{e}");
        // Elsewhere on the machine, or on another address, the admin port does not collide.
        let ok = Settings { http_listen: Some("127.0.0.2:9500".into()), ..Default::default() };
        assert!(ok.resolve().is_ok());
        assert!(
            Settings { node_port_base: Some(64000), node_id_max: Some(1535), ..Default::default() }.resolve().is_ok()
        );
    }

    #[test]
    fn an_upstream_that_is_eventgate_itself_is_refused() {
        for upstream in ["127.0.0.1:9092", "localhost:9092", "127.0.0.1:8080", "127.0.0.1:7000"] {
            let s =
                Settings { upstream: vec![upstream.into()], node_port: vec!["5=7000".into()], ..Default::default() };
            let e = s.resolve().unwrap_err().to_string();
            assert!(e.contains("connect to itself"), "{upstream}: {e}");
        }
        let elsewhere = Settings { upstream: vec!["127.0.0.2:9092".into()], ..Default::default() };
        assert!(elsewhere.resolve().is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(serde_saphyr::from_str::<Settings>("lisen: x\n").is_err());
        let s = Settings { node_port: vec!["abc".into()], ..Default::default() };
        assert!(s.resolve().is_err());
        let s = Settings { listen: Some("0.0.0.0:9092".into()), ..Default::default() };
        assert!(matches!(s.resolve(), Err(ConfigError::Invalid { setting: "advertised_host", .. })));
        let s = Settings { upstream: vec!["nohostport".into()], ..Default::default() };
        assert!(s.resolve().is_err());
    }
}
