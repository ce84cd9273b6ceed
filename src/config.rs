//! Configuration: one YAML file, `EVENTGATE_*` environment variables and command-line flags.
//!
//! Every setting is declared once, with its default, in the `settings!` table below: from it come
//! [`Settings`], which is both a clap argument group and the schema of the YAML file, the `--help`
//! text of each option with its default, [`Settings::over`], and the defaults [`Settings::resolve`]
//! applies; a test holds the README's table to it. clap itself applies no defaults, so a value from
//! the file is never hidden by one. A flag beats its environment variable, which beats the file,
//! which beats the built-in default. [`Settings::resolve`] turns the merged settings into a checked
//! [`Config`].

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::asyncapi::Policy;
use crate::mirror::MirrorConfig;
use crate::nats::{Discard, NatsConfig, Storage};
use crate::tls::ClientAuth;
use crate::validate::{Policies, UnknownTopic};

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

/// The default of an option, as `--help` and the README table show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fallback {
    /// None: the option is off, or its list empty, unless given.
    None,
    /// This value, written as in the YAML file.
    Value(&'static str),
    /// Worked out by [`Settings::resolve`] from other options, as the text says.
    Computed(&'static str),
}

impl Fallback {
    /// The default as `--help` shows it.
    fn text(self) -> &'static str {
        match self {
            Fallback::None => "none",
            Fallback::Value(text) | Fallback::Computed(text) => text,
        }
    }
}

/// The `--help` text of an option: its doc comment, then its default.
fn help_text(doc: &[&str], fallback: Fallback) -> String {
    let doc = doc.iter().map(|l| l.trim()).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
    format!("{doc} [default: {}]", fallback.text())
}

/// Reads a built-in default the way the YAML file's value would be read.
fn parse_default<T: serde::de::DeserializeOwned>(setting: &'static str, text: &str) -> Result<T, ConfigError> {
    serde_saphyr::from_str(text).map_err(|e| invalid(setting, format!("built-in default `{text}`: {e}")))
}

/// How a layer of settings (flags and environment, the file) gives way to the one below it.
trait Layer {
    fn over(self, lower: Self) -> Self;
}

impl<T> Layer for Option<T> {
    fn over(self, lower: Self) -> Self {
        self.or(lower)
    }
}

impl<T> Layer for Vec<T> {
    fn over(self, lower: Self) -> Self {
        if self.is_empty() { lower } else { self }
    }
}

macro_rules! fallback {
    () => {
        Fallback::None
    };
    ($value:literal) => {
        Fallback::Value($value)
    };
    (computed $how:literal) => {
        Fallback::Computed($how)
    };
}

/// The type an option has once its default is applied.
macro_rules! value_type {
    (Option $ty:ident) => { Option<$ty> };
    (Option $ty:ident $value:literal) => { $ty };
    (Vec $ty:ident $($value:literal)?) => { Vec<$ty> };
}

/// An option's value with its default applied.
macro_rules! with_default {
    ($given:expr, $setting:expr, Option) => {
        $given
    };
    ($given:expr, $setting:expr, Option $value:literal) => {
        match $given {
            Some(v) => v,
            None => parse_default($setting, $value)?,
        }
    };
    ($given:expr, $setting:expr, Vec) => {
        $given
    };
    ($given:expr, $setting:expr, Vec $value:literal) => {
        if $given.is_empty() { vec![parse_default($setting, $value)?] } else { $given }
    };
}

/// Declares every option once: its doc comment (the `--help` text), its clap attributes, its name
/// (the YAML key) and type, and its default, `= "value"` (written as in the YAML file) or
/// `= computed("how")` (worked out by `resolve`); no default means off or empty. From that come
/// [`Settings`] with its `--help` texts, [`Settings::over`], the defaults applied in
/// [`Settings::resolve`], and `OPTIONS`, which the tests hold against the README table.
macro_rules! settings {
    (
        $(#[doc = $struct_doc:literal])*
        pub struct Settings {
            $(
                $(#[doc = $doc:literal])*
                #[arg($($arg:tt)*)]
                $name:ident: $container:ident<$ty:ident> $(= $value:literal)? $(= computed($how:literal))?,
            )*
        }
    ) => {
        $(#[doc = $struct_doc])*
        #[derive(Debug, Default, Clone, Args, Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "snake_case")]
        pub struct Settings {
            $(
                $(#[doc = $doc])*
                #[arg($($arg)*, help = help_text(&[$($doc),*], fallback!($($value)? $(computed $how)?)))]
                #[serde(default)]
                pub $name: $container<$ty>,
            )*
        }

        /// [`Settings`] with the defaults applied.
        struct Values {
            $($name: value_type!($container $ty $($value)?),)*
        }

        /// Every option (its YAML key) and its default.
        #[cfg(test)]
        const OPTIONS: &[(&str, Fallback)] = &[$((stringify!($name), fallback!($($value)? $(computed $how)?)),)*];

        impl Settings {
            /// `self` (flags and environment) over `file`.
            pub fn over(self, file: Settings) -> Settings {
                Settings { $($name: Layer::over(self.$name, file.$name),)* }
            }

            /// Applies the defaults.
            fn values(self) -> Result<Values, ConfigError> {
                Ok(Values { $($name: with_default!(self.$name, stringify!($name), $container $($value)?),)* })
            }
        }
    };
}

settings! {
    /// Settings of `eventgate serve`. Each field is a flag, an `EVENTGATE_*` variable and a key of the
    /// YAML config file (the flag name with `_` for `-`). A field left `None` (or empty) was not given:
    /// [`Settings::resolve`] applies its default.
    pub struct Settings {
        /// Upstream Kafka bootstrap server, HOST:PORT (repeatable, or comma-separated).
        #[arg(long = "upstream", env = "EVENTGATE_UPSTREAM", value_delimiter = ',')]
        upstream: Vec<String> = "127.0.0.1:9192",

        /// Address of the bootstrap listener that clients use as `bootstrap.servers`.
        #[arg(long, env = "EVENTGATE_LISTEN")]
        listen: Option<String> = "127.0.0.1:9092",

        /// Host name put in the broker addresses clients receive; required when listening on a wildcard address.
        #[arg(long, env = "EVENTGATE_ADVERTISED_HOST")]
        advertised_host: Option<String> = computed("the listen host"),

        /// First port of the per-broker listeners: broker NODE_ID is reached at NODE_PORT_BASE + NODE_ID.
        #[arg(long, env = "EVENTGATE_NODE_PORT_BASE")]
        node_port_base: Option<u16> = computed("listen port + 1"),

        /// Highest node id served at NODE_PORT_BASE + NODE_ID. Brokers with larger ids need a `--node-port`, else
        /// they get ports above that range in the order they appear.
        #[arg(long, env = "EVENTGATE_NODE_ID_MAX")]
        node_id_max: Option<i32> = "1023",

        /// Fixed listener port for a broker, NODE_ID=PORT (repeatable, or comma-separated).
        #[arg(long = "node-port", env = "EVENTGATE_NODE_PORT", value_delimiter = ',')]
        node_port: Vec<String>,

        /// Address of the admin HTTP listener (health, metrics).
        #[arg(long, env = "EVENTGATE_HTTP_LISTEN")]
        http_listen: Option<String> = "127.0.0.1:8080",

        /// Largest Kafka frame accepted from a client or a broker, in bytes.
        #[arg(long, env = "EVENTGATE_MAX_FRAME_BYTES")]
        max_frame_bytes: Option<usize> = "104857600",

        /// Requests in flight per client connection before eventgate stops reading from it.
        #[arg(long, env = "EVENTGATE_MAX_IN_FLIGHT")]
        max_in_flight: Option<usize> = "1024",

        /// Client connections open at once on all Kafka listeners; further ones are closed at once and counted.
        #[arg(long, env = "EVENTGATE_MAX_CONNECTIONS")]
        max_connections: Option<usize> = "4096",

        /// A client connection with no request in flight and no bytes from the client for this long is closed, like
        /// Kafka's `connections.max.idle.ms` (0: never).
        #[arg(long, env = "EVENTGATE_IDLE_TIMEOUT_MS")]
        idle_timeout_ms: Option<u64> = "600000",

        /// Most per-broker listeners open at once; an answer naming more brokers closes the connection that carried
        /// it.
        #[arg(long, env = "EVENTGATE_MAX_BROKER_LISTENERS")]
        max_broker_listeners: Option<usize> = "1024",

        /// A broker listener whose broker has been absent from every Metadata answer for this long is closed and its
        /// port freed, in milliseconds.
        #[arg(long, env = "EVENTGATE_BROKER_FORGET_MS")]
        broker_forget_ms: Option<u64> = "600000",

        /// Time allowed to connect to a broker, in milliseconds.
        #[arg(long, env = "EVENTGATE_CONNECT_TIMEOUT_MS")]
        connect_timeout_ms: Option<u64> = "10000",

        /// PEM certificate (chain) of the Kafka listeners: with `--tls-key`, clients must speak TLS (1.2 or 1.3).
        #[arg(long, env = "EVENTGATE_TLS_CERT")]
        tls_cert: Option<PathBuf>,

        /// PEM private key of `--tls-cert`.
        #[arg(long, env = "EVENTGATE_TLS_KEY")]
        tls_key: Option<PathBuf>,

        /// PEM CA certificates that sign the clients' certificates (mutual TLS).
        #[arg(long, env = "EVENTGATE_TLS_CLIENT_CA")]
        tls_client_ca: Option<PathBuf>,

        /// Client certificates: none, requested (a client without one is let in, one with an invalid one is not) or
        /// required.
        #[arg(long, env = "EVENTGATE_TLS_CLIENT_AUTH")]
        tls_client_auth: Option<ClientAuth> = computed("required with --tls-client-ca, else none"),

        /// How often the TLS certificate, key and client CA files are checked for changes and reloaded, in
        /// milliseconds.
        #[arg(long, env = "EVENTGATE_TLS_RELOAD_MS")]
        tls_reload_ms: Option<u64> = "10000",

        /// Serve every broker on the bootstrap port, told apart by the TLS server name (SNI) the client asks for:
        /// broker NODE_ID is advertised as this pattern with `$(nodeId)` replaced, e.g.
        /// `broker-$(nodeId).gateway.example.com` (needs --tls-cert, a certificate for those names, and DNS
        /// that sends them to eventgate). Instead of port-per-broker.
        #[arg(long, env = "EVENTGATE_SNI_HOST_PATTERN")]
        sni_host_pattern: Option<String>,

        /// Connect to the brokers over TLS.
        #[arg(long, env = "EVENTGATE_UPSTREAM_TLS", num_args = 0..=1, default_missing_value = "true")]
        upstream_tls: Option<bool> = "false",

        /// PEM CA certificates that sign the brokers' certificates (default: the platform's roots).
        #[arg(long, env = "EVENTGATE_UPSTREAM_CA")]
        upstream_ca: Option<PathBuf>,

        /// PEM client certificate eventgate presents to the brokers (mutual TLS), with `--upstream-key`.
        #[arg(long, env = "EVENTGATE_UPSTREAM_CERT")]
        upstream_cert: Option<PathBuf>,

        /// PEM private key of `--upstream-cert`.
        #[arg(long, env = "EVENTGATE_UPSTREAM_KEY")]
        upstream_key: Option<PathBuf>,

        /// Name to verify in every broker's certificate instead of the host it is reached at.
        #[arg(long, env = "EVENTGATE_UPSTREAM_TLS_SERVER_NAME")]
        upstream_tls_server_name: Option<String>,

        /// Do not verify the brokers' certificates (a lab only: logged as a warning).
        #[arg(long, env = "EVENTGATE_UPSTREAM_TLS_INSECURE", num_args = 0..=1, default_missing_value = "true")]
        upstream_tls_insecure: Option<bool> = "false",

        /// PEM certificate (chain) of the admin listener: with `--http-tls-key`, it speaks HTTPS only (the spec API
        /// and `/ws` carry the admin token).
        #[arg(long, env = "EVENTGATE_HTTP_TLS_CERT")]
        http_tls_cert: Option<PathBuf>,

        /// PEM private key of `--http-tls-cert`.
        #[arg(long, env = "EVENTGATE_HTTP_TLS_KEY")]
        http_tls_key: Option<PathBuf>,

        /// On SIGTERM/SIGINT, time allowed for in-flight requests to finish, in milliseconds.
        #[arg(long, env = "EVENTGATE_SHUTDOWN_TIMEOUT_MS")]
        shutdown_timeout_ms: Option<u64> = "10000",

        /// AsyncAPI document to load at start (repeatable; its id is the file name without extension).
        #[arg(long = "spec", env = "EVENTGATE_SPEC", value_delimiter = ',')]
        spec: Vec<PathBuf>,

        /// Directory where uploaded documents persist across restarts ("" to keep them in memory only).
        #[arg(long, env = "EVENTGATE_SPEC_DIR")]
        spec_dir: Option<String> = "eventgate-specs",

        /// Policy for described topics whose channel sets no `x-eventgate-policy`: annotate, reject or off.
        #[arg(long, env = "EVENTGATE_POLICY")]
        policy: Option<Policy> = "annotate",

        /// Per-topic policy override, TOPIC=POLICY (repeatable); beats the documents.
        #[arg(long = "topic-policy", env = "EVENTGATE_TOPIC_POLICY", value_delimiter = ',')]
        topic_policy: Vec<String>,

        /// Records of topics no document describes: pass or reject.
        #[arg(long, env = "EVENTGATE_UNKNOWN_TOPIC")]
        unknown_topic: Option<UnknownTopic> = "pass",

        /// Bearer token required by the mutating admin routes (PUT/DELETE /specs).
        #[arg(long, env = "EVENTGATE_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,

        /// Largest AsyncAPI document accepted over HTTP, in bytes.
        #[arg(long, env = "EVENTGATE_MAX_SPEC_BYTES")]
        max_spec_bytes: Option<usize> = "4194304",

        /// Work budget of one Produce request, in bytes: its decompressed records, plus a fixed cost per record and
        /// the annotations eventgate adds, across all its batches. Partitions past it are refused with
        /// MESSAGE_TOO_LARGE.
        #[arg(long, env = "EVENTGATE_MAX_DECOMPRESSED_BYTES")]
        max_decompressed_bytes: Option<usize> = "67108864",

        /// NATS server URL; enables the CloudEvents mirror and shares documents through JetStream.
        #[arg(long, env = "EVENTGATE_NATS_URL")]
        nats_url: Option<String>,

        /// JetStream stream holding mirrored events.
        #[arg(long, env = "EVENTGATE_NATS_STREAM")]
        nats_stream: Option<String> = "EVENTGATE",

        /// Subject prefix of mirrored records: `<prefix>.<topic>`.
        #[arg(long, env = "EVENTGATE_MIRROR_SUBJECT_PREFIX")]
        mirror_subject_prefix: Option<String> = "eventgate.records",

        /// Subject prefix of records refused by policy.
        #[arg(long, env = "EVENTGATE_MIRROR_REJECTED_PREFIX")]
        mirror_rejected_prefix: Option<String> = "eventgate.rejected",

        /// Stream storage: file or memory.
        #[arg(long, env = "EVENTGATE_MIRROR_STORAGE")]
        mirror_storage: Option<Storage> = "file",

        /// Events older than this many seconds leave the stream (0: no limit).
        #[arg(long, env = "EVENTGATE_MIRROR_MAX_AGE_SECS")]
        mirror_max_age_secs: Option<u64> = "604800",

        /// Stream size limit in bytes (-1: no limit).
        #[arg(long, env = "EVENTGATE_MIRROR_MAX_BYTES", allow_negative_numbers = true)]
        mirror_max_bytes: Option<i64> = "1073741824",

        /// Stream message-count limit (-1: no limit).
        #[arg(long, env = "EVENTGATE_MIRROR_MAX_MESSAGES", allow_negative_numbers = true)]
        mirror_max_messages: Option<i64> = "-1",

        /// Largest event stored with its data; larger records are mirrored without their data, marked `dataomitted`.
        /// Keep it at or below the server's max_payload.
        #[arg(long, env = "EVENTGATE_MIRROR_MAX_EVENT_BYTES")]
        mirror_max_event_bytes: Option<usize> = "1000000",

        /// What a full stream does: `old` drops its oldest events, `new` refuses new ones (each refused event is
        /// counted and logged).
        #[arg(long, env = "EVENTGATE_MIRROR_DISCARD")]
        mirror_discard: Option<Discard> = "old",

        /// Seconds during which JetStream drops a resent event with the same id.
        #[arg(long, env = "EVENTGATE_MIRROR_DUPLICATE_WINDOW_SECS")]
        mirror_duplicate_window_secs: Option<u64> = "120",

        /// Record bytes waiting to be mirrored (e.g. while NATS is away) before further records are dropped from the
        /// mirror and counted; Kafka traffic is never held up.
        #[arg(long, env = "EVENTGATE_MIRROR_BUFFER_BYTES")]
        mirror_buffer_bytes: Option<usize> = "268435456",

        /// Publish acknowledgements outstanding at once.
        #[arg(long, env = "EVENTGATE_MIRROR_WINDOW")]
        mirror_window: Option<usize> = "1024",

        /// Publish in JetStream's fast-ingest batches where the server has them (nats-server
        /// 2.14+; the stream gets `allow_batched`): acknowledged every few hundred events. Off by
        /// default: end to end it measured no faster here (BENCHMARKS.md).
        #[arg(long, env = "EVENTGATE_MIRROR_BATCH", num_args = 0..=1, default_missing_value = "true")]
        mirror_batch: Option<bool> = "false",

        /// Cluster name in each event's `source` (`kafka://<cluster>/<topic>`).
        #[arg(long, env = "EVENTGATE_CLUSTER_NAME")]
        cluster_name: Option<String> = "kafka",

        /// CloudEvents `type` of records that match no AsyncAPI message.
        #[arg(long, env = "EVENTGATE_CE_DEFAULT_TYPE")]
        ce_default_type: Option<String> = "eventgate.record",

        /// JetStream key-value bucket of uploaded documents.
        #[arg(long, env = "EVENTGATE_SPEC_BUCKET")]
        spec_bucket: Option<String> = "eventgate_specs",

        /// Subscription resources (YAML or JSON files, or directories of them) applied at start; every `{{name}}` they
        /// use must be declared in them. Needs `--nats-url`.
        #[arg(long = "resources", env = "EVENTGATE_RESOURCES", value_delimiter = ',')]
        resources: Vec<PathBuf>,

        /// JetStream key-value bucket of subscription resources (Variables, Channels, Subscriptions).
        #[arg(long, env = "EVENTGATE_RESOURCE_BUCKET")]
        resource_bucket: Option<String> = "eventgate_resources",

        /// JetStream stream keeping dead-lettered events.
        #[arg(long, env = "EVENTGATE_DEADLETTER_STREAM")]
        deadletter_stream: Option<String> = "EVENTGATE_DEADLETTER",

        /// Subject prefix of dead letters: `<prefix>.<subscription>`.
        #[arg(long, env = "EVENTGATE_DEADLETTER_PREFIX")]
        deadletter_prefix: Option<String> = "eventgate.deadletter",

        /// Networks (CIDR) or addresses subscriptions never deliver to, checked at apply time and at connect time.
        #[arg(long, env = "EVENTGATE_SINK_DENY_NETWORKS")]
        sink_deny_networks: Option<String> = "169.254.0.0/16,fe80::/10,fd00:ec2::254/128,100.100.100.200/32,0.0.0.0/8",

        /// `WebHook-Request-Origin` eventgate sends in the CloudEvents webhook handshake.
        #[arg(long, env = "EVENTGATE_WEBHOOK_ORIGIN")]
        webhook_origin: Option<String> = "eventgate",

        /// Events buffered per websocket client before a slow client is disconnected.
        #[arg(long, env = "EVENTGATE_WS_BUFFER")]
        ws_buffer: Option<usize> = "1024",

        /// Milliseconds a websocket client's buffer may stay full before it is disconnected.
        #[arg(long, env = "EVENTGATE_WS_SLOW_MS")]
        ws_slow_ms: Option<u64> = "5000",

        /// Bytes of events buffered for all websocket clients together; past it the clients with the most buffered
        /// are disconnected first (1008).
        #[arg(long, env = "EVENTGATE_WS_MAX_BUFFERED_BYTES")]
        ws_max_buffered_bytes: Option<usize> = "67108864",

        /// Time an admin HTTP client has to send a request's headers, in milliseconds.
        #[arg(long, env = "EVENTGATE_HTTP_HEADER_TIMEOUT_MS")]
        http_header_timeout_ms: Option<u64> = "10000",

        /// Time an admin HTTP request may take, body included, in milliseconds.
        #[arg(long, env = "EVENTGATE_HTTP_REQUEST_TIMEOUT_MS")]
        http_request_timeout_ms: Option<u64> = "30000",

        /// Admin HTTP connections open at once (websockets included); further ones are closed at once and counted.
        #[arg(long, env = "EVENTGATE_HTTP_MAX_CONNECTIONS")]
        http_max_connections: Option<usize> = "256",

        /// Log filter, in `tracing` env-filter syntax (RUST_LOG wins when set).
        #[arg(long, env = "EVENTGATE_LOG")]
        log: Option<String> = "info",

        /// Log format: `text` or `json`.
        #[arg(long, env = "EVENTGATE_LOG_FORMAT")]
        log_format: Option<LogFormat> = "text",
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
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
    /// TLS on the Kafka listeners.
    pub tls: Option<crate::tls::ServerSettings>,
    /// TLS toward the brokers.
    pub upstream_tls: Option<crate::tls::UpstreamSettings>,
    /// HTTPS on the admin listener.
    pub http_tls: Option<crate::tls::ServerSettings>,
    /// SNI routing instead of port-per-broker.
    pub sni: Option<crate::tls::SniPattern>,
    pub shutdown_timeout: Duration,
    pub specs: Vec<PathBuf>,
    pub spec_dir: Option<PathBuf>,
    pub policies: Policies,
    pub admin_token: Option<String>,
    pub max_spec_bytes: usize,
    pub nats: Option<NatsConfig>,
    pub mirror: MirrorConfig,
    /// Subscriptions (with NATS).
    pub subscriptions: Option<crate::subscriptions::SubsConfig>,
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

    /// Applies defaults and checks every value.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let v = self.values()?;
        let upstream = v.upstream;
        for u in &upstream {
            split_host_port(u).map_err(|m| invalid("upstream", m))?;
        }
        let listen = socket_addr("listen", &v.listen)?;
        let advertised_host = match v.advertised_host {
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
        let node_port_base = match v.node_port_base {
            Some(p) => p,
            None => listen
                .port()
                .checked_add(1)
                .ok_or_else(|| invalid("node_port_base", "listen port 65535 leaves no room for broker ports"))?,
        };
        let node_id_max = v.node_id_max;
        if node_id_max < 0 {
            return Err(invalid("node_id_max", "must be >= 0"));
        }
        let mut node_ports = BTreeMap::new();
        for entry in &v.node_port {
            let (id, port) = entry
                .split_once('=')
                .and_then(|(i, p)| Some((i.trim().parse::<i32>().ok()?, p.trim().parse::<u16>().ok()?)))
                .ok_or_else(|| invalid("node_port", format!("`{entry}` is not NODE_ID=PORT")))?;
            node_ports.insert(id, port);
        }
        let max_frame_bytes = v.max_frame_bytes;
        if max_frame_bytes < 1024 || max_frame_bytes > i32::MAX as usize {
            return Err(invalid("max_frame_bytes", "must be between 1024 and 2147483647"));
        }
        let max_in_flight = v.max_in_flight;
        if max_in_flight == 0 {
            return Err(invalid("max_in_flight", "must be at least 1"));
        }
        let max_connections = v.max_connections;
        if max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        let max_broker_listeners = v.max_broker_listeners;
        if max_broker_listeners == 0 {
            return Err(invalid("max_broker_listeners", "must be at least 1"));
        }
        let http_listen = socket_addr("http_listen", &v.http_listen)?;
        check_port_layout(listen, http_listen, node_port_base, node_id_max, &node_ports)?;
        for u in &upstream {
            check_upstream_not_self(u, listen, http_listen, &node_ports)?;
        }
        let log_format = v.log_format;
        let mut overrides = HashMap::new();
        for entry in &v.topic_policy {
            let (topic, policy) = entry
                .rsplit_once('=')
                .ok_or_else(|| invalid("topic_policy", format!("`{entry}` is not TOPIC=POLICY")))?;
            let policy = policy.trim().parse::<Policy>().map_err(|e| invalid("topic_policy", e))?;
            overrides.insert(topic.trim().to_owned(), policy);
        }
        let policies = Policies {
            default: v.policy,
            overrides,
            unknown_topic: v.unknown_topic,
            max_decompressed_bytes: v.max_decompressed_bytes,
        };
        let spec_dir = Some(v.spec_dir).filter(|d| !d.is_empty()).map(PathBuf::from);
        let admin_token = v.admin_token.filter(|t| !t.is_empty());
        let subject_prefix = v.mirror_subject_prefix;
        let rejected_prefix = v.mirror_rejected_prefix;
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
        let max_event_bytes = v.mirror_max_event_bytes;
        let cluster = v.cluster_name;
        // It is the host of every event's `source` (`kafka://<cluster>/<topic>`), which must be a URI.
        if cluster.is_empty() || !cluster.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)) {
            return Err(invalid("cluster_name", "use letters, digits, `-`, `.`, `_` and `~` (it is a URI host name)"));
        }
        let mirror = MirrorConfig {
            cluster,
            default_type: v.ce_default_type,
            subject_prefix: subject_prefix.clone(),
            rejected_prefix: rejected_prefix.clone(),
            max_event_bytes,
            buffer_bytes: v.mirror_buffer_bytes,
            max_decompressed_bytes: policies.max_decompressed_bytes,
        };
        let tls = match (v.tls_cert, v.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::ServerSettings {
                cert,
                key,
                client_auth: v.tls_client_auth.unwrap_or(match v.tls_client_ca {
                    Some(_) => ClientAuth::Required,
                    None => ClientAuth::None,
                }),
                client_ca: v.tls_client_ca,
                reload: Duration::from_millis(v.tls_reload_ms.max(10)),
            }),
            (None, None) => {
                if v.tls_client_ca.is_some() || v.tls_client_auth.is_some_and(|a| a != ClientAuth::None) {
                    return Err(invalid("tls_client_ca", "client certificates need --tls-cert and --tls-key"));
                }
                None
            }
            _ => return Err(invalid("tls_cert", "--tls-cert and --tls-key go together")),
        };
        if tls.as_ref().is_some_and(|t| t.client_auth != ClientAuth::None && t.client_ca.is_none()) {
            return Err(invalid("tls_client_auth", "requested or required client certificates need --tls-client-ca"));
        }
        let sni = match v.sni_host_pattern.filter(|p| !p.is_empty()) {
            None => None,
            Some(_) if tls.is_none() => {
                return Err(invalid("sni_host_pattern", "SNI routing needs TLS: give --tls-cert and --tls-key"));
            }
            Some(p) => Some(crate::tls::SniPattern::parse(&p).map_err(|m| invalid("sni_host_pattern", m))?),
        };
        let http_tls = match (v.http_tls_cert, v.http_tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::ServerSettings {
                cert,
                key,
                client_ca: None,
                client_auth: ClientAuth::None,
                reload: Duration::from_millis(v.tls_reload_ms.max(10)),
            }),
            (None, None) => None,
            _ => return Err(invalid("http_tls_cert", "--http-tls-cert and --http-tls-key go together")),
        };
        let upstream_settings = crate::tls::UpstreamSettings {
            ca: v.upstream_ca,
            cert: v.upstream_cert,
            key: v.upstream_key,
            server_name: v.upstream_tls_server_name,
            insecure: v.upstream_tls_insecure,
        };
        let upstream_tls = if v.upstream_tls {
            if upstream_settings.cert.is_some() != upstream_settings.key.is_some() {
                return Err(invalid("upstream_cert", "--upstream-cert and --upstream-key go together"));
            }
            Some(upstream_settings)
        } else {
            if upstream_settings != crate::tls::UpstreamSettings::default() {
                return Err(invalid("upstream_tls", "the --upstream-ca/-cert/-key/-tls-* options need --upstream-tls"));
            }
            None
        };
        let nats = v.nats_url.filter(|u| !u.is_empty()).map(|url| NatsConfig {
            url,
            stream: v.nats_stream,
            subjects: vec![format!("{subject_prefix}.>"), format!("{rejected_prefix}.>")],
            storage: v.mirror_storage,
            max_age: Duration::from_secs(v.mirror_max_age_secs),
            max_bytes: v.mirror_max_bytes,
            max_messages: v.mirror_max_messages,
            // The stream counts the NATS headers too (id, type, validation: a few hundred bytes).
            max_message_size: i32::try_from(max_event_bytes.saturating_add(4096)).unwrap_or(i32::MAX),
            duplicate_window: Duration::from_secs(v.mirror_duplicate_window_secs),
            discard: v.mirror_discard,
            spec_bucket: v.spec_bucket,
            window: v.mirror_window,
            batch: v.mirror_batch,
        });
        let deny = crate::subscriptions::sink::DenyList::parse(&v.sink_deny_networks)
            .map_err(|m| invalid("sink_deny_networks", m))?;
        crate::subscriptions::resource::check_subject(&v.deadletter_prefix)
            .map_err(|m| invalid("deadletter_prefix", m))?;
        if v.deadletter_prefix.starts_with(&format!("{subject_prefix}."))
            || v.deadletter_prefix.starts_with(&format!("{rejected_prefix}."))
            || v.deadletter_prefix == subject_prefix
            || v.deadletter_prefix == rejected_prefix
        {
            return Err(invalid("deadletter_prefix", "must not overlap the mirror's subject prefixes"));
        }
        if !v.resources.is_empty() && nats.is_none() {
            return Err(invalid("resources", "subscriptions need NATS: give --nats-url"));
        }
        let subscriptions = nats.as_ref().map(|n| crate::subscriptions::SubsConfig {
            stream: n.stream.clone(),
            subject_prefix: subject_prefix.clone(),
            rejected_prefix: rejected_prefix.clone(),
            bucket: v.resource_bucket.clone(),
            deadletter_stream: v.deadletter_stream.clone(),
            deadletter_prefix: v.deadletter_prefix.clone(),
            storage: n.storage,
            max_age: n.max_age,
            max_bytes: n.max_bytes,
            deny: deny.clone(),
            origin: v.webhook_origin.clone(),
            files: v.resources.clone(),
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
            idle_timeout: match v.idle_timeout_ms {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
            max_broker_listeners,
            broker_forget: Duration::from_millis(v.broker_forget_ms),
            connect_timeout: Duration::from_millis(v.connect_timeout_ms),
            tls,
            upstream_tls,
            http_tls,
            sni,
            shutdown_timeout: Duration::from_millis(v.shutdown_timeout_ms),
            specs: v.spec,
            spec_dir,
            policies,
            admin_token,
            max_spec_bytes: v.max_spec_bytes,
            nats,
            mirror,
            subscriptions,
            ws_buffer: v.ws_buffer.max(1),
            ws_slow: Duration::from_millis(v.ws_slow_ms),
            ws_max_buffered_bytes: v.ws_max_buffered_bytes.max(1),
            http_header_timeout: Duration::from_millis(v.http_header_timeout_ms.max(1)),
            http_request_timeout: Duration::from_millis(v.http_request_timeout_ms.max(1)),
            http_max_connections: v.http_max_connections.max(1),
            log: v.log,
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
        // The frame reader's own default, which the table restates as a literal for `--help`.
        assert_eq!(c.max_frame_bytes, crate::wire::frame::DEFAULT_MAX_FRAME_BYTES);
        assert_eq!(c.spec_dir.as_deref(), Some(Path::new("eventgate-specs")));
        assert_eq!(c.policies.default, Policy::Annotate);
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.nats.is_none() && c.admin_token.is_none());
    }

    /// Runs this module's test `name` again in a child process whose only `EVENTGATE_*` variables
    /// are `vars`: clap reads the process environment, which a test cannot safely change while
    /// other tests run. True in that child, where the test goes on; false once the child passed.
    fn in_child_with_env(name: &str, vars: &[(&str, &str)]) -> bool {
        const CHILD: &str = "CONFIG_TESTS_CHILD";
        if std::env::var_os(CHILD).is_some() {
            return true;
        }
        let path = module_path!().split_once("::").map_or(module_path!(), |(_, p)| p);
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child.args([&format!("{path}::{name}"), "--exact", "--test-threads=1"]).env(CHILD, "1");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("EVENTGATE_") {
                child.env_remove(key);
            }
        }
        let out = child.envs(vars.iter().copied()).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(" 1 passed"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        false
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let env = [
            ("EVENTGATE_MAX_IN_FLIGHT", "7"),
            ("EVENTGATE_MAX_CONNECTIONS", "70"),
            ("EVENTGATE_TOPIC_POLICY", "a=off,b=reject"),
        ];
        if !in_child_with_env("flag_beats_env_beats_file_beats_default", &env) {
            return;
        }
        let file: Settings = serde_saphyr::from_str(
            "max_in_flight: 9\nmax_connections: 90\ntopic_policy: ['c=off']\nws_buffer: 33\nlog_format: json\n",
        )
        .unwrap();
        let c = Cli::try_parse_from(["x", "--max-in-flight", "5"]).unwrap().s.over(file).resolve().unwrap();
        let defaults = Settings::default().resolve().unwrap();
        assert_eq!(c.max_in_flight, 5, "the flag beats the environment and the file");
        assert_eq!(c.max_connections, 70, "the environment beats the file");
        let mut topics: Vec<_> = c.policies.overrides.keys().map(String::as_str).collect();
        topics.sort_unstable();
        assert_eq!(topics, ["a", "b"], "a list from the environment replaces the file's");
        assert_eq!((c.ws_buffer, c.log_format), (33, LogFormat::Json), "the file beats the default");
        assert_eq!(c.http_max_connections, defaults.http_max_connections, "the default when nothing sets it");
        assert_ne!(defaults.ws_buffer, 33);
        assert_ne!(defaults.log_format, LogFormat::Json);
    }

    #[test]
    fn help_shows_every_default_and_clap_applies_none() {
        let cmd = Settings::augment_args(clap::Command::new("x"));
        let ids: Vec<&str> = cmd.get_arguments().map(|a| a.get_id().as_str()).collect();
        let keys: Vec<&str> = OPTIONS.iter().map(|(key, _)| *key).collect();
        assert_eq!(ids, keys);
        for (arg, (key, fallback)) in cmd.get_arguments().zip(OPTIONS) {
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            assert!(help.ends_with(&format!(". [default: {}]", fallback.text())), "{key}: {help}");
            // A default applied by clap would look like a flag and hide the file's value.
            assert!(arg.get_default_values().is_empty(), "{key}");
        }
    }

    #[test]
    fn the_readme_table_lists_every_option_with_its_default() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        // Cells of the rows: flag, environment variable, YAML key, default, meaning.
        let rows: Vec<Vec<String>> = readme
            .lines()
            .skip_while(|l| !l.starts_with("| flag | environment | YAML key | default |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| l.replace("\\|", "/").split('|').map(|c| c.trim().to_owned()).collect())
            .collect();
        assert!(!rows.is_empty(), "the README's configuration table was not found");
        let key_of = |row: &Vec<String>| row.get(3).and_then(|c| c.split('`').nth(1)).map(str::to_owned);
        let cmd = Settings::augment_args(clap::Command::new("x"));
        let mut wrong = Vec::new();
        for (key, fallback) in OPTIONS {
            let arg = cmd.get_arguments().find(|a| a.get_id() == key).unwrap();
            let Some(row) = rows.iter().find(|r| key_of(r).as_deref() == Some(key)) else {
                wrong.push(format!("{key}: no row"));
                continue;
            };
            let flag = format!("`--{}", arg.get_long().unwrap_or_default());
            let env = format!("`{}`", arg.get_env().map(|e| e.to_string_lossy()).unwrap_or_default());
            let list = matches!(arg.get_action(), clap::ArgAction::Append);
            let expected = [
                // A flag with a value shows it (`--listen ADDR`); a switch shows none (`--upstream-tls`).
                (
                    1,
                    if row[1].contains(' ') {
                        format!("{flag} {}", row[1].split_once(' ').unwrap().1)
                    } else {
                        format!("{flag}`")
                    },
                ),
                (2, env),
                (3, if list { format!("`{key}` (list)") } else { format!("`{key}`") }),
                (
                    4,
                    match fallback {
                        Fallback::Value(value) => format!("`{value}`"),
                        _ => fallback.text().to_owned(),
                    },
                ),
            ];
            for (column, cell) in expected {
                if row[column] != cell {
                    wrong.push(format!("{key}: README has {}, the code {cell}", row[column]));
                }
            }
        }
        for row in &rows {
            // `--config` names the file itself and has no key.
            if let Some(key) = key_of(row).filter(|k| !OPTIONS.iter().any(|(o, _)| o == k)) {
                wrong.push(format!("{key}: in the README, not in the code"));
            }
        }
        assert!(wrong.is_empty(), "README.md's configuration table disagrees with the code:\n{}", wrong.join("\n"));
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
