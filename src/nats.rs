//! The connection to NATS and the JetStream resources eventgate owns: the mirror stream and the
//! key-value bucket of uploaded documents.
//!
//! eventgate never waits for NATS to start: the client connects (and reconnects) in the background,
//! and the stream and bucket are created or updated as soon as the server answers. Until then the
//! Kafka path runs as usual and the mirror buffers.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

/// Stream and bucket settings.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    pub url: String,
    pub stream: String,
    pub subjects: Vec<String>,
    pub storage: Storage,
    pub max_age: Duration,
    pub max_bytes: i64,
    pub max_messages: i64,
    pub max_message_size: i32,
    pub duplicate_window: Duration,
    /// What the stream does when full: drop its oldest events, or refuse new ones.
    pub discard: Discard,
    pub spec_bucket: String,
    /// Outstanding publish acknowledgements.
    pub window: usize,
    /// Publish in fast-ingest batches where the server has them.
    pub batch: bool,
}

/// Where JetStream keeps the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    #[default]
    File,
    Memory,
}

/// What a full stream does (JetStream's discard policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Discard {
    /// Drop the oldest events to make room (a bounded history).
    #[default]
    Old,
    /// Refuse new events: each is counted in `eventgate_mirror_refused_events_total` and logged.
    New,
}

/// Why NATS could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("JetStream: {0}")]
    JetStream(String),
}

/// `urls` (one or a comma-separated list) with any credentials replaced by `***`, for logs and
/// errors: `nats://user:secret@host:4222` → `nats://***@host:4222`.
pub fn redact_url(urls: &str) -> String {
    urls.split(',')
        .map(|u| {
            let (scheme, rest) = match u.split_once("://") {
                Some((s, r)) => (Some(s), r),
                None => (None, u),
            };
            let rest = match rest.rsplit_once('@') {
                Some((_, host)) => format!("***@{host}"),
                None => rest.to_owned(),
            };
            match scheme {
                Some(s) => format!("{s}://{rest}"),
                None => rest,
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `options` with the credentials written in `url` (`user:password@`, `token@`): async-nats does
/// not send them from the URL itself. Every connection eventgate makes goes through this.
pub fn with_url_credentials(options: async_nats::ConnectOptions, url: &str) -> async_nats::ConnectOptions {
    match crate::mirror::publisher::url_credentials(url) {
        Some((Some(user), pass, _)) => options.user_and_password(user, pass.unwrap_or_default()),
        Some((_, _, Some(token))) => options.token(token),
        _ => options,
    }
}

/// Connects in the background: returns at once, and the client keeps retrying.
pub async fn connect(config: &NatsConfig) -> Result<async_nats::Client, NatsError> {
    connect_with(config, async_nats::ConnectOptions::new()).await
}

/// [`connect`] for the mirror's publisher: the subjects it publishes to are eventgate's own
/// (`mirror::subject` makes every topic a valid one), so the client does not check each again.
pub async fn connect_publisher(config: &NatsConfig) -> Result<async_nats::Client, NatsError> {
    connect_with(config, async_nats::ConnectOptions::new().skip_subject_validation(true)).await
}

async fn connect_with(
    config: &NatsConfig,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, NatsError> {
    let url = redact_url(&config.url);
    with_url_credentials(options, &config.url)
        .name("eventgate")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let url = url.clone();
            async move {
                match event {
                    async_nats::Event::Connected => tracing::info!(%url, "connected to NATS"),
                    async_nats::Event::Disconnected => tracing::warn!(%url, "disconnected from NATS; reconnecting"),
                    other => tracing::debug!(%url, event = %other, "NATS event"),
                }
            }
        })
        .connect(config.url.as_str())
        .await
        .map_err(|e| NatsError::Connect { url: redact_url(&config.url), reason: e.to_string() })
}

/// A JetStream context with a bounded window of outstanding acknowledgements.
pub fn jetstream(client: async_nats::Client, config: &NatsConfig) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .max_ack_inflight(config.window.max(1))
        .backpressure_on_inflight(true)
        .build(client)
}

/// Creates the mirror stream, or updates it to the configured subjects and limits.
pub async fn ensure_stream(js: &jetstream::Context, config: &NatsConfig) -> Result<stream::Info, NatsError> {
    // A gateway without `--mirror-batch` leaves batches on where another one (or an operator)
    // turned them on: the setting is only ever added here.
    // Only a stream that is not there has no setting to keep; any other failure is tried again
    // (a guess of `false` would turn batches off for the others).
    let batched_now = match js.get_stream(&config.stream).await {
        Ok(s) => s.cached_info().config.allow_batch_publish,
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            false
        }
        Err(e) => return Err(NatsError::JetStream(format!("stream {}: {e}", config.stream))),
    };
    let stream_config = stream::Config {
        name: config.stream.clone(),
        subjects: config.subjects.clone(),
        storage: match config.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        max_age: config.max_age,
        max_bytes: config.max_bytes,
        max_messages: config.max_messages,
        max_message_size: config.max_message_size,
        duplicate_window: config.duplicate_window,
        discard: match config.discard {
            Discard::Old => stream::DiscardPolicy::Old,
            Discard::New => stream::DiscardPolicy::New,
        },
        description: Some("Kafka records mirrored by eventgate as CloudEvents".into()),
        // With `--mirror-batch`, the mirror publishes in fast-ingest batches where the server has
        // them (2.14+; older servers ignore the setting, and the mirror then waits for one answer
        // per event).
        allow_batch_publish: config.batch || batched_now,
        ..Default::default()
    };
    js.create_or_update_stream(stream_config)
        .await
        .map_err(|e| NatsError::JetStream(format!("stream {}: {e}", config.stream)))
}

/// How often the stream's state is read into `/metrics`.
const STREAM_REPORT_EVERY: Duration = Duration::from_secs(10);

/// Puts the stream's limits, discard policy and fill into gauges (`eventgate_mirror_stream_*`),
/// so that a stream about to drop or refuse events is visible before it does.
pub fn report_stream(info: &stream::Info) {
    let c = &info.config;
    let policy = match c.discard {
        stream::DiscardPolicy::Old => "old",
        stream::DiscardPolicy::New => "new",
    };
    for p in ["old", "new"] {
        metrics::gauge!("eventgate_mirror_stream_discard", "policy" => p).set(if p == policy { 1.0 } else { 0.0 });
    }
    metrics::gauge!("eventgate_mirror_stream_max_bytes").set(c.max_bytes as f64);
    metrics::gauge!("eventgate_mirror_stream_max_messages").set(c.max_messages as f64);
    metrics::gauge!("eventgate_mirror_stream_max_age_seconds").set(c.max_age.as_secs_f64());
    metrics::gauge!("eventgate_mirror_stream_max_message_bytes").set(f64::from(c.max_message_size));
    metrics::gauge!("eventgate_mirror_stream_duplicate_window_seconds").set(c.duplicate_window.as_secs_f64());
    metrics::gauge!("eventgate_mirror_stream_messages").set(info.state.messages as f64);
    metrics::gauge!("eventgate_mirror_stream_bytes").set(info.state.bytes as f64);
}

/// Reports the stream's state every [`STREAM_REPORT_EVERY`] until `abort`.
pub async fn watch_stream(js: &jetstream::Context, config: &NatsConfig, abort: &tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(STREAM_REPORT_EVERY) => {}
            _ = abort.cancelled() => return,
        }
        if let Ok(mut s) = js.get_stream(&config.stream).await
            && let Ok(info) = s.info().await
        {
            report_stream(info);
        }
    }
}

/// Creates (or opens) the bucket of uploaded documents.
///
/// The bucket's stream is created directly, in the key-value layout (`KV_<bucket>`, subjects
/// `$KV.<bucket>.>`, roll-ups allowed, direct get), rather than with `create_key_value`, whose
/// account-info query does not parse the answers of the NATS 2.9 servers Debian ships.
pub async fn ensure_bucket(js: &jetstream::Context, config: &NatsConfig) -> Result<kv::Store, NatsError> {
    let err = |e: &dyn std::fmt::Display| NatsError::JetStream(format!("bucket {}: {e}", config.spec_bucket));
    if let Ok(store) = js.get_key_value(config.spec_bucket.as_str()).await {
        return Ok(store);
    }
    let stream_config = stream::Config {
        name: format!("KV_{}", config.spec_bucket),
        description: Some("AsyncAPI documents uploaded to eventgate".into()),
        subjects: vec![format!("$KV.{}.>", config.spec_bucket)],
        max_messages_per_subject: 5,
        storage: match config.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    };
    js.get_or_create_stream(stream_config).await.map_err(|e| err(&e))?;
    js.get_key_value(config.spec_bucket.as_str()).await.map_err(|e| err(&e))
}

/// Retries `f` until it succeeds or `shutdown` fires, logging the first failure and then every
/// tenth.
pub async fn until_ready<T, F, Fut>(what: &str, shutdown: &tokio_util::sync::CancellationToken, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, NatsError>>,
{
    let mut attempt = 0u32;
    loop {
        match f().await {
            Ok(v) => {
                if attempt > 0 {
                    tracing::info!("{what}: ready");
                }
                return Some(v);
            }
            Err(e) => {
                if attempt.is_multiple_of(10) {
                    tracing::warn!(error = %e, "{what}: not ready yet; retrying");
                }
                attempt += 1;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.cancelled() => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_never_reach_logs() {
        assert_eq!(super::redact_url("nats://u:secret@h:4222"), "nats://***@h:4222");
        assert_eq!(super::redact_url("tls://tok@a,nats://b:1"), "tls://***@a,nats://b:1");
        assert_eq!(super::redact_url("h:4222"), "h:4222");
    }
}
