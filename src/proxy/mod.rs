//! Proxy connections: listeners, the per-connection pipeline, and the broker address scheme.
//!
//! [`Gateway`] is the state every connection shares: configuration, the [`nodes::NodeRegistry`],
//! the shutdown signal and the metrics handles. [`Gateway::listen`] opens the bootstrap listener;
//! per-broker listeners are opened by [`Gateway::advertise`] as brokers appear in responses. Each
//! accepted client gets a [`connection`] pipeline to exactly one upstream broker.
//!
//! Everything a peer can make eventgate open is bounded: client connections by `max_connections`,
//! broker listeners by `max_broker_listeners` (brokers no answer has named for `broker_forget_ms`
//! are forgotten), and a broker address that leads back to eventgate itself is refused, both when
//! an answer names it and when one of eventgate's own upstream connections arrives at a listener.

pub mod chain;
pub mod connection;
pub mod nodes;
pub mod produce;
pub mod stages;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::protocol::StrBytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, split_host_port};
use crate::mirror::Mirror;
use crate::telemetry::{ProxyMetrics, Throttle, ValidationMetrics};
use crate::validate::Validation;
use crate::wire::rewrite::AdvertiseError;
use nodes::{NodeRegistry, Observed, Upstream};

/// A listener that could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the Kafka listener on {addr}: {source}")]
pub struct ListenError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Which broker a listener leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The bootstrap listener: any of the configured upstream bootstrap servers.
    Bootstrap,
    /// A per-broker listener.
    Node(i32),
}

/// State shared by every listener and connection.
pub struct Gateway {
    pub config: Config,
    nodes: NodeRegistry,
    /// Client connections allowed at once (`max_connections`).
    connections: Arc<Semaphore>,
    /// Local addresses of eventgate's own broker connections, to recognise one that loops back.
    outgoing: Arc<Mutex<HashSet<SocketAddr>>>,
    /// Refused client connections are logged at most once a second, with their count.
    refusals: Throttle,
    /// Cancelled on SIGTERM/SIGINT: listeners stop accepting, connections stop reading requests.
    pub shutdown: CancellationToken,
    /// Every listener and connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    pub metrics: ProxyMetrics,
    /// Documents in force and policies, read by every Produce request.
    pub validation: Arc<Validation>,
    pub validation_metrics: ValidationMetrics,
    /// The CloudEvents mirror, when NATS is configured or someone watches the live feed.
    pub mirror: Option<Arc<Mirror>>,
    /// The stages every request and answer go through ([`stages::standard`]).
    pub chain: chain::Chain,
    /// TLS toward the clients and toward the brokers, when configured.
    pub tls: Tls,
    next_bootstrap: AtomicUsize,
}

/// The TLS sides of a gateway (see [`crate::tls`]).
#[derive(Default)]
pub struct Tls {
    /// The Kafka listeners speak TLS.
    pub server: Option<Arc<crate::tls::Server>>,
    /// eventgate connects to the brokers over TLS.
    pub upstream: Option<crate::tls::Upstream>,
    /// The admin listener speaks HTTPS.
    pub http: Option<Arc<crate::tls::Server>>,
}

impl Tls {
    /// Loads what `config` asks for; any unreadable file fails the start.
    pub fn load(config: &Config) -> Result<Self, crate::tls::TlsError> {
        Ok(Self {
            server: config.tls.clone().map(crate::tls::Server::load).transpose()?,
            upstream: config.upstream_tls.as_ref().map(crate::tls::Upstream::load).transpose()?,
            http: config.http_tls.clone().map(crate::tls::Server::load).transpose()?,
        })
    }
}

impl Gateway {
    /// A gateway without TLS.
    pub fn new(config: Config, validation: Arc<Validation>, mirror: Option<Arc<Mirror>>) -> Arc<Self> {
        Self::with_tls(config, validation, mirror, Tls::default())
    }

    pub fn with_tls(config: Config, validation: Arc<Validation>, mirror: Option<Arc<Mirror>>, tls: Tls) -> Arc<Self> {
        Arc::new(Self {
            nodes: NodeRegistry::new(config.max_broker_listeners),
            connections: Arc::new(Semaphore::new(config.max_connections)),
            outgoing: Arc::default(),
            refusals: Throttle::new(Duration::from_secs(1)),
            config,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            metrics: ProxyMetrics::new(),
            validation,
            validation_metrics: ValidationMetrics::new(),
            mirror,
            chain: stages::standard(),
            tls,
            next_bootstrap: AtomicUsize::new(0),
        })
    }

    /// Binds the bootstrap listener, and the listeners of brokers given fixed ports (so a busy port
    /// fails the start, not a client's first request), and starts accepting. Returns the bootstrap
    /// address.
    pub async fn listen(self: &Arc<Self>) -> Result<SocketAddr, ListenError> {
        let at = |addr| move |source| ListenError { addr, source };
        let listener = TcpListener::bind(self.config.listen).await.map_err(at(self.config.listen))?;
        let addr = listener.local_addr().map_err(at(self.config.listen))?;
        tracing::info!(%addr, upstream = ?self.config.upstream, "kafka bootstrap listener ready");
        self.tasks.spawn(accept_loop(self.clone(), listener, Target::Bootstrap, self.shutdown.clone()));
        for (&node_id, &port) in &self.config.node_ports {
            let node_addr = SocketAddr::new(self.config.listen.ip(), port);
            let listener = bind_now(node_addr).map_err(at(node_addr))?;
            self.nodes.reserve(node_id, port);
            tracing::info!(node_id, addr = %node_addr, "broker listener ready (fixed port)");
            self.tasks.spawn(accept_loop(self.clone(), listener, Target::Node(node_id), self.shutdown.clone()));
        }
        self.tasks.spawn(forget_brokers(self.clone()));
        for server in self.tls.server.iter().chain(&self.tls.http) {
            self.tasks.spawn(server.clone().watch(self.shutdown.clone()));
        }
        Ok(addr)
    }

    /// The first port above the fixed node range, where other ids get theirs.
    fn overflow_base(&self) -> u16 {
        let cfg = &self.config;
        cfg.node_port_base.saturating_add(u16::try_from(cfg.node_id_max).unwrap_or(u16::MAX)).saturating_add(1)
    }

    /// Whether `host:port` is one of eventgate's own Kafka or admin listeners.
    fn is_own_listener(&self, host: &str, port: u16) -> bool {
        let cfg = &self.config;
        let ours = port == cfg.listen.port() || port == cfg.http_listen.port() || self.nodes.serves_port(port);
        if !ours {
            return false;
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<std::net::IpAddr>() {
            Ok(ip) => ip == cfg.listen.ip() || ip.is_loopback() || (cfg.listen.ip().is_unspecified() && is_local(ip)),
            Err(_) => bare.eq_ignore_ascii_case("localhost") || bare.eq_ignore_ascii_case(&cfg.advertised_host),
        }
    }

    /// Whether a client at `peer` is one of eventgate's own broker connections.
    pub fn is_own_upstream_connection(&self, peer: SocketAddr) -> bool {
        self.outgoing.lock().unwrap_or_else(|p| p.into_inner()).contains(&peer)
    }

    /// The address clients must use for broker `node_id`, which the cluster reports at
    /// `host:port`. Opens the broker's listener the first time the broker is seen.
    pub fn advertise(self: &Arc<Self>, node_id: i32, host: &str, port: i32) -> Result<(StrBytes, i32), AdvertiseError> {
        let fail = |reason: String| AdvertiseError { node_id, host: host.to_owned(), port, reason };
        let upstream_port = u16::try_from(port).map_err(|_| fail("port out of range".into()))?;
        if self.is_own_listener(host, upstream_port) {
            return Err(fail(
                "that is one of eventgate's own listeners: the broker would loop back to eventgate".into(),
            ));
        }
        let upstream = Upstream { host: host.to_owned(), port: upstream_port };
        let cfg = &self.config;
        if let Some(sni) = &cfg.sni {
            // Every broker is served on the bootstrap port under a name of its own: nothing to
            // open, only where the broker lives to remember (bounded like the listeners).
            let port = cfg.listen.port();
            if let Observed::New(_) = self.nodes.observe(node_id, upstream.clone(), Some(port), port).map_err(fail)? {
                self.nodes.confirm(node_id, upstream, port, CancellationToken::new());
            }
            return Ok((StrBytes::from_string(sni.host(node_id)), i32::from(port)));
        }
        let overflow_base = self.overflow_base();
        let port = match self
            .nodes
            .observe(node_id, upstream.clone(), cfg.fixed_node_port(node_id), overflow_base)
            .map_err(fail)?
        {
            Observed::Known(p) => p,
            Observed::New(p) => {
                let addr = SocketAddr::new(cfg.listen.ip(), p);
                let listener = match bind_now(addr) {
                    Ok(l) => l,
                    Err(e) => {
                        self.nodes.release(p, overflow_base);
                        return Err(fail(format!("cannot listen on {addr}: {e}")));
                    }
                };
                let stop = self.shutdown.child_token();
                let confirmed = self.nodes.confirm(node_id, upstream.clone(), p, stop.clone());
                if confirmed == p {
                    tracing::info!(node_id, %addr, %upstream, "broker listener ready");
                    self.tasks.spawn(accept_loop(self.clone(), listener, Target::Node(node_id), stop));
                } else {
                    self.nodes.release(p, overflow_base);
                }
                confirmed
            }
        };
        Ok((StrBytes::from_string(cfg.advertised_host.clone()), i32::from(port)))
    }

    /// Opens a connection to the broker behind `target`. The guard keeps its local address known
    /// as eventgate's own (see [`Gateway::is_own_upstream_connection`]) while it lives.
    pub async fn connect(&self, target: Target) -> Result<(TcpStream, String, Outgoing), String> {
        let candidates: Vec<String> = match target {
            Target::Bootstrap => {
                let all = &self.config.upstream;
                let start = self.next_bootstrap.fetch_add(1, Ordering::Relaxed);
                (0..all.len()).map(|i| all[(start + i) % all.len()].clone()).collect()
            }
            Target::Node(id) => match self.nodes.upstream(id) {
                Some(u) => vec![u.to_string()],
                None => return Err(format!("broker {id} is not known yet: no answer has named it")),
            },
        };
        let mut errors = Vec::new();
        for addr in candidates {
            let attempt = match split_host_port(&addr) {
                Ok((host, port)) => {
                    tokio::time::timeout(self.config.connect_timeout, TcpStream::connect((host, port))).await
                }
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            match attempt {
                Ok(Ok(stream)) => {
                    let local = stream.local_addr().map_err(|e| format!("{addr}: {e}"))?;
                    self.outgoing.lock().unwrap_or_else(|p| p.into_inner()).insert(local);
                    return Ok((stream, addr, Outgoing { set: self.outgoing.clone(), local }));
                }
                Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
                Err(_) => errors.push(format!("{addr}: timed out after {:?}", self.config.connect_timeout)),
            }
        }
        Err(errors.join("; "))
    }
}

/// Binds a listener synchronously, so the port is open before the caller goes on.
fn bind_now(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    TcpListener::from_std(std_listener)
}

/// A broker connection's local address, known as eventgate's own until dropped.
pub struct Outgoing {
    set: Arc<Mutex<HashSet<SocketAddr>>>,
    local: SocketAddr,
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.local);
    }
}

/// Whether `ip` is an address of this machine that a wildcard listener answers on.
fn is_local(ip: std::net::IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || std::net::TcpListener::bind((ip, 0)).is_ok()
}

/// Accepts clients until `stop` (shutdown, or the broker being forgotten). Past `max_connections`
/// a new client is closed at once and counted.
async fn accept_loop(gw: Arc<Gateway>, listener: TcpListener, target: Target, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((socket, peer)) => match gw.connections.clone().try_acquire_owned() {
                Ok(permit) => {
                    let gw2 = gw.clone();
                    gw.tasks.spawn(async move {
                        connection::serve(gw2, socket, peer, target).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    drop(socket);
                    gw.metrics.connections_refused.increment(1);
                    if let Some(refused) = gw.refusals.note() {
                        let limit = gw.config.max_connections;
                        tracing::warn!(%peer, refused, limit, "refusing client connections: max_connections reached");
                    }
                }
            },
            Err(e) => {
                // Typically EMFILE: back off instead of spinning, keep the listener.
                tracing::warn!(?target, error = %e, "accept failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
    if let Target::Node(id) = target
        && !gw.shutdown.is_cancelled()
    {
        tracing::info!(node_id = id, "broker listener closed: no answer has named the broker for broker_forget_ms");
    }
}

/// Forgets brokers that no answer has named for `broker_forget` (their listeners close).
async fn forget_brokers(gw: Arc<Gateway>) {
    let every = (gw.config.broker_forget / 4).clamp(Duration::from_millis(50), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = gw.shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        let gone = gw.nodes.forget_unseen(gw.config.broker_forget, gw.overflow_base());
        if !gone.is_empty() {
            gw.metrics.brokers_forgotten.increment(gone.len() as u64);
        }
        gw.metrics.broker_listeners.set(gw.nodes.len() as f64);
    }
}
