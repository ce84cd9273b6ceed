//! Subscriptions: the mirrored CloudEvents delivered to HTTP sinks, reliably, as declared by
//! resources (`Variable`, `Channel`, `Subscription`: [`resource`]).
//!
//! ```text
//! eventgate apply -f / PUT /subscriptions/x / --resources
//!        │ checked as a whole set (refs, channels, deny list)
//!        ▼
//!   JetStream KV bucket (`--resource-bucket`) ──watch──▶ every instance's Subscriptions::state
//!                                                               │ reconcile: one worker per subscription
//!   mirror stream ──durable consumer `eg-sub-<name>` (shared)──▶ worker ─▶ filter ─▶ sink (HTTP)
//!                                                                │ 2xx: ack  · retryable: NAK with delay
//!                                                                │ 410: pause · 4xx / exhausted: dead letter
//!                                                                ▼
//!                                        `<deadletter prefix>.<subscription>` (own stream) or a channel
//! ```
//!
//! Resources live in a key-value bucket (`<kind>.<name>`; `paused.<name>` for paused
//! subscriptions, `replay.<name>` for the last replay), so every instance sees the same set and each runs a worker per subscription on
//! the same durable consumer: JetStream splits the events between them. Retries are NAKs with a
//! delay and attempts are JetStream's delivery count, so both survive restarts; an event is
//! acknowledged only after its sink answered 2xx (or it was dead-lettered), so a crash delivers it
//! again rather than losing it: at least once, once in normal operation.

pub mod apply;
pub mod deliver;
pub mod encode;
pub mod filter;
pub mod resource;
pub mod sink;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::nats::{NatsConfig, NatsError, Storage, until_ready};
use resource::{Kind, Resource, ResourceError, Resources, Spec};

/// Settings of subscriptions (from [`crate::config::Config`]).
#[derive(Debug, Clone)]
pub struct SubsConfig {
    /// The mirror stream and its subject prefixes.
    pub stream: String,
    pub subject_prefix: String,
    pub rejected_prefix: String,
    /// Bucket of resources.
    pub bucket: String,
    /// Stream of dead letters and its subject prefix.
    pub deadletter_stream: String,
    pub deadletter_prefix: String,
    pub storage: Storage,
    /// Limits of the dead-letter stream (the mirror's).
    pub max_age: Duration,
    pub max_bytes: i64,
    /// Networks sinks may not be in.
    pub deny: sink::DenyList,
    /// `WebHook-Request-Origin` of handshakes.
    pub origin: String,
    /// Resource files given with `--resources`.
    pub files: Vec<std::path::PathBuf>,
}

/// Why a resource operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SubsError {
    #[error(transparent)]
    Invalid(#[from] ResourceError),
    #[error("no {0} `{1}`")]
    NotFound(Kind, String),
    #[error("{0}/{1} is used by {2}; change or delete those first")]
    InUse(Kind, String, String),
    #[error("the resource bucket is not reachable yet (NATS): {0}")]
    Unavailable(String),
    #[error("{0}")]
    Conflict(String),
}

/// What an apply did to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Updated,
    Unchanged,
    Deleted,
}

/// One line of an apply's report.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub kind: Kind,
    pub name: String,
    pub action: Action,
}

/// Which resources a prune may delete: those whose labels hold every `key=value` (all resources
/// when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(Vec<(String, String)>);

impl Selector {
    /// Reads `key=value[,key=value…]`.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut pairs = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').ok_or_else(|| format!("selector `{item}`: use key=value"))?;
            pairs.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        Ok(Selector(pairs))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// The shared state: resources as the bucket holds them, and which subscriptions are paused.
#[derive(Default)]
struct State {
    resources: Resources,
    /// Paused subscriptions, with why.
    paused: BTreeMap<String, Value>,
    /// When each subscription was last replayed: a change restarts its workers everywhere, on
    /// the recreated consumer.
    replays: BTreeMap<String, String>,
    /// The bucket revision of each resource as this instance last saw it: an apply writes only
    /// over that revision, so two applies racing on two instances cannot silently overwrite each
    /// other (the second is refused and can be run again).
    revisions: HashMap<String, u64>,
}

/// The subscriptions service of one eventgate instance.
pub struct Subscriptions {
    pub config: SubsConfig,
    js: jetstream::Context,
    state: Mutex<State>,
    bucket: OnceLock<kv::Store>,
    /// Bumped on every change of `state`; the reconciler waits on it.
    changed: watch::Sender<u64>,
    pub sinks: sink::Sinks,
    stats: Mutex<HashMap<String, Arc<deliver::Stats>>>,
    /// Serializes applies from this instance.
    apply_lock: tokio::sync::Mutex<()>,
}

fn unavailable(e: impl std::fmt::Display) -> SubsError {
    SubsError::Unavailable(e.to_string())
}

/// Reads eventgate's environment (`{{sys:NAME}}`).
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The key of a resource in the bucket.
fn key(kind: Kind, name: &str) -> String {
    format!("{}.{name}", kind.key_prefix())
}

impl Subscriptions {
    pub fn new(config: SubsConfig, js: jetstream::Context) -> Result<Arc<Self>, sink::ClientError> {
        let sinks = sink::Sinks::new(config.deny.clone(), config.origin.clone())?;
        Ok(Arc::new(Self {
            config,
            js,
            state: Mutex::new(State::default()),
            bucket: OnceLock::new(),
            changed: watch::channel(0).0,
            sinks,
            stats: Mutex::new(HashMap::new()),
            apply_lock: tokio::sync::Mutex::new(()),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    fn bucket(&self) -> Result<&kv::Store, SubsError> {
        self.bucket.get().ok_or_else(|| SubsError::Unavailable("not connected".into()))
    }

    /// The resources now.
    pub fn resources(&self) -> Resources {
        self.state().resources.clone()
    }

    /// Why `name` is paused, if it is.
    pub fn paused(&self, name: &str) -> Option<Value> {
        self.state().paused.get(name).cloned()
    }

    /// When `name` was last replayed.
    pub fn replayed(&self, name: &str) -> Option<String> {
        self.state().replays.get(name).cloned()
    }

    /// This instance's counters for `name`.
    pub fn stats(&self, name: &str) -> Arc<deliver::Stats> {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(deliver::Stats::new(name)))
            .clone()
    }

    /// Connects the bucket and the dead-letter stream, applies `--resources`, then follows the
    /// bucket and runs the workers until `shutdown`.
    pub async fn run(self: Arc<Self>, nats: NatsConfig, startup: Vec<Resource>, shutdown: CancellationToken) {
        let me = self.clone();
        let Some(bucket) = until_ready("resource bucket", &shutdown, || me.ensure_jetstream(&nats)).await else {
            return;
        };
        let _ = self.bucket.set(bucket.clone());
        // The bucket's current values first, so startup resources are compared with them.
        let watch = loop {
            match bucket.watch_with_history(">").await {
                Ok(w) => break w,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the resource bucket; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        };
        let (caught_up_tx, caught_up) = tokio::sync::oneshot::channel();
        let follower = tokio::spawn(self.clone().follow(bucket, watch, caught_up_tx, shutdown.clone()));
        let _ = caught_up.await;
        if !startup.is_empty() {
            match self.apply(startup, false, false).await {
                Ok(report) => {
                    for a in report {
                        tracing::info!(kind = %a.kind, name = a.name, action = ?a.action, "--resources");
                    }
                }
                Err(e) => tracing::error!(error = %e, "--resources could not be applied"),
            }
        }
        let reporter = tokio::spawn(self.clone().report(shutdown.clone()));
        deliver::reconcile(self.clone(), self.changed.subscribe(), shutdown.clone()).await;
        let _ = follower.await;
        let _ = reporter.await;
    }

    /// Creates the bucket of resources and the stream of dead letters.
    async fn ensure_jetstream(&self, nats: &NatsConfig) -> Result<kv::Store, NatsError> {
        let storage = match self.config.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        };
        let dl = stream::Config {
            name: self.config.deadletter_stream.clone(),
            subjects: vec![format!("{}.>", self.config.deadletter_prefix)],
            description: Some("Events eventgate's subscriptions could not deliver".into()),
            storage,
            max_age: self.config.max_age,
            max_bytes: self.config.max_bytes,
            max_message_size: nats.max_message_size.saturating_add(8192),
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        self.js
            .get_or_create_stream(dl)
            .await
            .map_err(|e| NatsError::JetStream(format!("stream {}: {e}", self.config.deadletter_stream)))?;
        let bucket = NatsConfig { spec_bucket: self.config.bucket.clone(), ..nats.clone() };
        crate::nats::ensure_bucket(&self.js, &bucket).await
    }

    /// Applies the bucket's changes to the local state.
    async fn follow(
        self: Arc<Self>,
        bucket: kv::Store,
        mut watch: kv::Watch,
        caught_up: tokio::sync::oneshot::Sender<()>,
        shutdown: CancellationToken,
    ) {
        let mut caught_up = Some(caught_up);
        // The watch marks the end of the current values with `delta == 0`; an empty bucket sends
        // nothing at all, hence the short wait.
        loop {
            let next = tokio::select! {
                n = watch.next() => n,
                _ = tokio::time::sleep(Duration::from_millis(300)), if caught_up.is_some() => {
                    if let Some(tx) = caught_up.take() { let _ = tx.send(()); }
                    continue;
                }
                _ = shutdown.cancelled() => return,
            };
            let entry = match next {
                Some(Ok(e)) => e,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "resource bucket watch failed; watching again");
                    match bucket.watch_from_revision(">", 1).await {
                        Ok(w) => {
                            watch = w;
                            continue;
                        }
                        Err(_) => {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    }
                }
                None => return,
            };
            self.apply_entry(&entry);
            if entry.delta == 0
                && let Some(tx) = caught_up.take()
            {
                let _ = tx.send(());
            }
        }
    }

    /// One bucket entry into the local state.
    fn apply_entry(&self, entry: &kv::Entry) {
        let Some((prefix, name)) = entry.key.split_once('.') else { return };
        let put = matches!(entry.operation, kv::Operation::Put);
        let mut st = self.state();
        if put {
            let seen = st.revisions.entry(entry.key.clone()).or_default();
            *seen = (*seen).max(entry.revision);
        } else {
            st.revisions.remove(&entry.key);
        }
        if prefix == "replay" {
            if put {
                st.replays.insert(name.to_owned(), String::from_utf8_lossy(&entry.value).into_owned());
            } else {
                st.replays.remove(name);
            }
        } else if prefix == "paused" {
            if put {
                let why = serde_json::from_slice(&entry.value).unwrap_or(Value::Null);
                st.paused.insert(name.to_owned(), why);
            } else {
                st.paused.remove(name);
            }
        } else if let Some(kind) = Kind::from_key_prefix(prefix) {
            if put {
                match serde_json::from_slice::<Value>(&entry.value)
                    .map_err(|e| ResourceError::new(&entry.key, e.to_string()))
                    .and_then(|v| Resource::from_value(v, &entry.key))
                {
                    Ok(r) => st.resources.insert(r),
                    Err(e) => tracing::error!(key = entry.key, error = %e, "resource from the bucket not applied"),
                }
            } else {
                st.resources.of_mut(kind).remove(name);
            }
        } else {
            return;
        }
        drop(st);
        self.bump();
    }

    /// Applies resources: each created, updated or left unchanged; with `prune`, every resource
    /// they do not declare is deleted. The whole resulting set is checked first; nothing is
    /// written unless all of it holds. With `dry_run`, nothing is written at all.
    pub async fn apply(&self, docs: Vec<Resource>, prune: bool, dry_run: bool) -> Result<Vec<Applied>, SubsError> {
        self.apply_scoped(docs, prune.then(Selector::default), dry_run).await
    }

    /// [`apply`](Self::apply) where `prune` deletes only the undeclared resources whose labels
    /// match the selector (all of them when it is empty), so teams sharing an eventgate each
    /// prune their own.
    pub async fn apply_scoped(
        &self,
        docs: Vec<Resource>,
        prune: Option<Selector>,
        dry_run: bool,
    ) -> Result<Vec<Applied>, SubsError> {
        let _guard = self.apply_lock.lock().await;
        let current = self.resources();
        let mut next = match &prune {
            None => current.clone(),
            Some(selector) => {
                // What the selector does not cover stays as it is.
                let mut kept = Resources::default();
                for r in current.iter().filter(|r| !selector.matches(&r.metadata.labels)) {
                    kept.insert(r.clone());
                }
                kept
            }
        };
        let mut seen = std::collections::HashSet::new();
        for r in &docs {
            if !seen.insert((r.kind(), r.name().to_owned())) {
                return Err(SubsError::Invalid(ResourceError::new(r.id(), "declared twice")));
            }
            next.insert(r.clone());
        }
        next.check(&env)?;
        for (name, r) in &next.subscriptions {
            if let Spec::Subscription(sub) = &r.spec
                && let Some(subject) = sub.delivery.dead_letter.as_ref().and_then(|d| d.subject.as_deref())
                && !subject.starts_with(&format!("{}.", self.config.deadletter_prefix))
            {
                // Any other subject could reach JetStream's API, the mirror's own subjects, or nothing.
                return Err(SubsError::Invalid(ResourceError::new(
                    format!("Subscription/{name}: spec.delivery.deadLetter.subject"),
                    format!("`{subject}` must be under `{}.` (--deadletter-prefix)", self.config.deadletter_prefix),
                )));
            }
        }
        // Only sinks whose address this apply changes are looked up (each lookup may take up to
        // 5 s, under the apply lock); the others were checked when they were applied, and are
        // checked again at every connection.
        for (name, _) in next.channels.iter() {
            if let Ok(ch) = next.resolve_channel(name, &env)
                && current.resolve_channel(name, &env).ok().map(|c| c.url) != Some(ch.url.clone())
            {
                self.sinks
                    .deny
                    .check_host(&ch.url)
                    .await
                    .map_err(|m| SubsError::Invalid(ResourceError::new(format!("Channel/{name}: spec.url"), m)))?;
            }
        }
        let mut report = Vec::new();
        for kind in [Kind::Variable, Kind::Channel, Kind::Subscription] {
            for (name, r) in next.of(kind) {
                let action = match current.get(kind, name) {
                    None => Action::Created,
                    Some(old) if old == r => Action::Unchanged,
                    Some(_) => Action::Updated,
                };
                report.push((Applied { kind, name: name.clone(), action }, Some(r.clone())));
            }
        }
        for kind in [Kind::Subscription, Kind::Channel, Kind::Variable] {
            for name in current.of(kind).keys() {
                if next.get(kind, name).is_none() {
                    report.push((Applied { kind, name: name.clone(), action: Action::Deleted }, None));
                }
            }
        }
        if !dry_run {
            let bucket = self.bucket()?.clone();
            for (a, r) in &report {
                // A subscription's consumer exists before any instance starts a worker for it,
                // and once apply answers, so `start: new` misses nothing mirrored after that.
                if let (Action::Created | Action::Updated | Action::Unchanged, Some(r)) = (a.action, r)
                    && let Spec::Subscription(sub) = &r.spec
                {
                    let channel = next.resolve_channel(&sub.channel, &env)?;
                    deliver::ensure_consumer(&self.js, &self.config, &a.name, sub, &channel)
                        .await
                        .map_err(SubsError::Unavailable)?;
                }
                match (a.action, r) {
                    (Action::Created | Action::Updated, Some(r)) => {
                        let value = Bytes::from(serde_json::to_vec(&r.to_value(true)).unwrap_or_default());
                        let k = key(a.kind, &a.name);
                        let raced = || {
                            SubsError::Conflict(format!(
                                "{}/{} was changed by another apply meanwhile; nothing after it was written: run \
                                 apply again",
                                a.kind, a.name
                            ))
                        };
                        let revision = match (a.action, self.revision(&k)) {
                            (Action::Updated, Some(rev)) => bucket.update(&k, value, rev).await.map_err(|e| {
                                if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                                    raced()
                                } else {
                                    unavailable(e)
                                }
                            })?,
                            _ => bucket.create(&k, value).await.map_err(|e| {
                                if e.kind() == kv::CreateErrorKind::AlreadyExists { raced() } else { unavailable(e) }
                            })?,
                        };
                        let mut st = self.state();
                        let seen = st.revisions.entry(k).or_default();
                        *seen = (*seen).max(revision);
                        st.resources.insert(r.clone());
                    }
                    (Action::Deleted, _) => self.remove(&bucket, a.kind, &a.name).await?,
                    _ => {}
                }
            }
            self.bump();
        }
        Ok(report.into_iter().map(|(a, _)| a).collect())
    }

    /// Deletes one resource, unless another uses it.
    pub async fn delete(&self, kind: Kind, name: &str) -> Result<(), SubsError> {
        let _guard = self.apply_lock.lock().await;
        let current = self.resources();
        if current.get(kind, name).is_none() {
            return Err(SubsError::NotFound(kind, name.to_owned()));
        }
        let users = current.users_of(kind, name);
        if !users.is_empty() {
            return Err(SubsError::InUse(kind, name.to_owned(), users.join(", ")));
        }
        let bucket = self.bucket()?.clone();
        self.remove(&bucket, kind, name).await?;
        self.bump();
        Ok(())
    }

    /// The revision of `key` this instance last saw.
    fn revision(&self, key: &str) -> Option<u64> {
        self.state().revisions.get(key).copied()
    }

    async fn remove(&self, bucket: &kv::Store, kind: Kind, name: &str) -> Result<(), SubsError> {
        let k = key(kind, name);
        bucket.delete_expect_revision(&k, self.revision(&k)).await.map_err(|e| {
            SubsError::Conflict(format!("{kind}/{name} was changed by another apply meanwhile ({e}); run again"))
        })?;
        self.state().revisions.remove(&k);
        self.state().resources.of_mut(kind).remove(name);
        if kind == Kind::Subscription {
            let _ = bucket.delete(format!("paused.{name}")).await;
            let _ = bucket.delete(format!("replay.{name}")).await;
            self.state().paused.remove(name);
            self.state().replays.remove(name);
            // Its position goes with it: applying it again starts afresh.
            if let Ok(s) = self.js.get_stream(&self.config.stream).await {
                let _ = s.delete_consumer(&deliver::consumer_name(name)).await;
            }
        }
        Ok(())
    }

    /// Pauses a subscription on every instance (a sink answered 410, or an operator asked).
    pub async fn pause(&self, name: &str, why: Value) -> Result<(), SubsError> {
        let bucket = self.bucket()?.clone();
        bucket
            .put(format!("paused.{name}"), Bytes::from(serde_json::to_vec(&why).unwrap_or_default()))
            .await
            .map_err(|e| SubsError::Unavailable(e.to_string()))?;
        self.state().paused.insert(name.to_owned(), why);
        self.bump();
        Ok(())
    }

    /// Resumes a paused subscription.
    pub async fn resume(&self, name: &str) -> Result<(), SubsError> {
        if self.resources().get(Kind::Subscription, name).is_none() {
            return Err(SubsError::NotFound(Kind::Subscription, name.to_owned()));
        }
        let bucket = self.bucket()?.clone();
        bucket.delete(format!("paused.{name}")).await.map_err(|e| SubsError::Unavailable(e.to_string()))?;
        self.state().paused.remove(name);
        self.bump();
        Ok(())
    }

    /// Re-delivers from a stream position: the subscription's consumer is recreated there.
    pub async fn replay(&self, name: &str, from: deliver::Start) -> Result<(), SubsError> {
        let r = self.resources();
        let Some(Resource { spec: Spec::Subscription(s), .. }) = r.get(Kind::Subscription, name) else {
            return Err(SubsError::NotFound(Kind::Subscription, name.to_owned()));
        };
        let channel = r.resolve_channel(&s.channel, &env)?;
        deliver::recreate_consumer(&self.js, &self.config, name, s, &channel, from)
            .await
            .map_err(SubsError::Unavailable)?;
        self.stats(name).replays.increment(1);
        // Every instance restarts its worker on the new consumer.
        let at = crate::validate::batch::now_rfc3339();
        self.bucket()?
            .put(format!("replay.{name}"), Bytes::from(at.clone()))
            .await
            .map_err(|e| SubsError::Unavailable(e.to_string()))?;
        self.state().replays.insert(name.to_owned(), at);
        self.bump();
        Ok(())
    }

    /// A subscription as the API shows it: close to the CloudEvents Subscriptions API (`id`,
    /// `source`, `types`, `filters`, `sink`, `protocol`, `protocolsettings`), with eventgate's own
    /// fields and its status.
    pub async fn describe(&self, name: &str) -> Result<Value, SubsError> {
        let r = self.resources();
        let Some(res @ Resource { spec: Spec::Subscription(s), .. }) = r.get(Kind::Subscription, name) else {
            return Err(SubsError::NotFound(Kind::Subscription, name.to_owned()));
        };
        let channel = match r.get(Kind::Channel, &s.channel) {
            Some(Resource { spec: Spec::Channel(c), .. }) => Some(c.clone()),
            _ => None,
        };
        let consumer = deliver::consumer_info(&self.js, &self.config.stream, name).await;
        let mut v = json!({
            "id": name,
            "types": s.types,
            "filters": s.filters,
            "sink": channel.as_ref().map(|c| c.url.clone()),
            "protocol": "HTTP",
            "protocolsettings": channel.as_ref().map(|c| json!({
                "method": c.method,
                "headers": c.headers.keys().map(|k| (k.clone(), Value::String("(set)".into()))).collect::<BTreeMap<_, _>>(),
            })),
            "resource": res.to_value(false),
            "status": self.stats(name).view(self.paused(name), consumer),
        });
        if let Some(source) = &s.source {
            v["source"] = Value::String(source.clone());
        }
        Ok(v)
    }

    /// Puts each subscription's consumer lag into `/metrics` every few seconds.
    async fn report(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.cancelled() => return,
            }
            let names: Vec<String> = self.state().resources.subscriptions.keys().cloned().collect();
            for name in names {
                if let Some(info) = deliver::consumer_info(&self.js, &self.config.stream, &name).await {
                    let stats = self.stats(&name);
                    stats.pending.set(info.num_pending as f64);
                    stats.in_flight.set(info.num_ack_pending as f64);
                }
                self.stats(&name).paused.set(if self.paused(&name).is_some() { 1.0 } else { 0.0 });
            }
        }
    }
}

/// Reads `--resources` files and directories (`*.yaml`, `*.yml`, `*.json`), checked as a set
/// with the environment: references must resolve within the files.
pub fn load_files(paths: &[std::path::PathBuf]) -> Result<Vec<Resource>, String> {
    let out = apply::read(paths)?;
    let mut set = Resources::default();
    for r in &out {
        set.insert(r.clone());
    }
    set.check(&env).map_err(|e| e.to_string())?;
    Ok(out)
}
