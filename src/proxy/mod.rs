//! Proxy connections: listeners, the per-connection pipeline, and the broker address scheme.
//!
//! [`Gateway`] is the state every connection shares: configuration, the [`nodes::NodeRegistry`],
//! the shutdown signal and the metrics handles. [`Gateway::listen`] opens the bootstrap listener;
//! per-broker listeners are opened by [`Gateway::advertise`] as brokers appear in responses. Each
//! accepted client gets a [`connection`] pipeline to exactly one upstream broker.

pub mod connection;
pub mod nodes;
pub mod produce;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kafka_protocol::protocol::StrBytes;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, split_host_port};
use crate::mirror::Mirror;
use crate::telemetry::{ProxyMetrics, ValidationMetrics};
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
    next_bootstrap: AtomicUsize,
}

impl Gateway {
    pub fn new(config: Config, validation: Arc<Validation>, mirror: Option<Arc<Mirror>>) -> Arc<Self> {
        Arc::new(Self {
            config,
            nodes: NodeRegistry::default(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            metrics: ProxyMetrics::new(),
            validation,
            validation_metrics: ValidationMetrics::new(),
            mirror,
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
        self.tasks.spawn(accept_loop(self.clone(), listener, Target::Bootstrap));
        for (&node_id, &port) in &self.config.node_ports {
            let node_addr = SocketAddr::new(self.config.listen.ip(), port);
            let listener = bind_now(node_addr).map_err(at(node_addr))?;
            self.nodes.reserve(node_id, port);
            tracing::info!(node_id, addr = %node_addr, "broker listener ready (fixed port)");
            self.tasks.spawn(accept_loop(self.clone(), listener, Target::Node(node_id)));
        }
        Ok(addr)
    }

    /// The address clients must use for broker `node_id`, which the cluster reports at
    /// `host:port`. Opens the broker's listener the first time the broker is seen.
    pub fn advertise(self: &Arc<Self>, node_id: i32, host: &str, port: i32) -> Result<(StrBytes, i32), AdvertiseError> {
        let fail = |reason: String| AdvertiseError { node_id, host: host.to_owned(), port, reason };
        let upstream_port = u16::try_from(port).map_err(|_| fail("port out of range".into()))?;
        let upstream = Upstream { host: host.to_owned(), port: upstream_port };
        let cfg = &self.config;
        let overflow_base =
            cfg.node_port_base.saturating_add(u16::try_from(cfg.node_id_max).unwrap_or(u16::MAX)).saturating_add(1);
        let port = match self
            .nodes
            .observe(node_id, upstream.clone(), cfg.fixed_node_port(node_id), overflow_base)
            .map_err(fail)?
        {
            Observed::Known(p) => p,
            Observed::New(p) => {
                let addr = SocketAddr::new(cfg.listen.ip(), p);
                let listener = bind_now(addr).map_err(|e| fail(format!("cannot listen on {addr}: {e}")))?;
                let confirmed = self.nodes.confirm(node_id, upstream.clone(), p);
                if confirmed == p {
                    tracing::info!(node_id, %addr, %upstream, "broker listener ready");
                    self.tasks.spawn(accept_loop(self.clone(), listener, Target::Node(node_id)));
                }
                confirmed
            }
        };
        Ok((StrBytes::from_string(cfg.advertised_host.clone()), i32::from(port)))
    }

    /// Opens a connection to the broker behind `target`.
    pub async fn connect(&self, target: Target) -> Result<(TcpStream, String), String> {
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
                Ok(Ok(stream)) => return Ok((stream, addr)),
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

async fn accept_loop(gw: Arc<Gateway>, listener: TcpListener, target: Target) {
    loop {
        let accepted = tokio::select! {
            _ = gw.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((socket, peer)) => {
                gw.tasks.spawn(connection::serve(gw.clone(), socket, peer, target));
            }
            Err(e) => {
                // Typically EMFILE: back off instead of spinning, keep the listener.
                tracing::warn!(?target, error = %e, "accept failed");
                tokio::select! {
                    _ = gw.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}
