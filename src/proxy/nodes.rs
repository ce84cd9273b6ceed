//! The port-per-broker address scheme.
//!
//! Clients reach the cluster through one bootstrap listener plus one listener per upstream broker:
//! broker `NODE_ID` is advertised as `advertised_host:(node_port_base + NODE_ID)` for ids up to
//! `node_id_max`, or at a port fixed with `--node-port NODE_ID=PORT`. Ids outside both get the next
//! free port above the fixed range, in the order they first appear (stable for the life of the
//! process, not across instances: give such brokers a `--node-port`). Because the mapping is a pure
//! function of configuration for ordinary ids, every eventgate instance with the same settings
//! advertises the same addresses.
//!
//! A node's listener is opened the first time the node appears in a response, *before* that
//! response is forwarded, so a client can never be told about a port that is not yet listening.
//! Listeners are bounded (`max_broker_listeners`), and a broker that no answer has named for
//! `broker_forget_ms` is forgotten: its listener closes and its port is free again.
//! Ports fixed with `--node-port` are opened at start instead, and learn their broker's address
//! from the first response that names it.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Where an upstream broker lives, as last reported by the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug)]
struct Node {
    /// Unknown for a fixed port opened at start, until the cluster names the broker.
    upstream: Option<Upstream>,
    port: u16,
    /// When an answer last named the broker.
    seen: Instant,
    /// Stops the broker's listener when the broker is forgotten; `None` for ports fixed at start,
    /// which stay open for the life of the process.
    listener: Option<CancellationToken>,
}

/// What [`NodeRegistry::observe`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Observed {
    /// The node already has a listener on this port.
    Known(u16),
    /// The node is new: a listener must be opened on this port, then [`NodeRegistry::confirm`]ed.
    New(u16),
}

#[derive(Debug, Default)]
struct Inner {
    nodes: HashMap<i32, Node>,
    /// Every port a node holds.
    ports: HashSet<u16>,
    /// Ports above the fixed range given back by forgotten brokers, reused first.
    free_overflow: Vec<u16>,
    /// The next never-used port above the fixed range (0: start at the range's end).
    next_overflow: u32,
}

/// The upstream brokers seen so far and the eventgate port that serves each.
///
/// Bounded: at most `max` brokers have a listener at once; a broker that no answer has named for
/// the forget period is dropped ([`NodeRegistry::forget_unseen`]) and its listener closed. Ports
/// above the fixed range are handed out in constant time.
#[derive(Debug)]
pub struct NodeRegistry {
    inner: Mutex<Inner>,
    max: usize,
}

impl Default for NodeRegistry {
    fn default() -> Self {
        Self::new(1024)
    }
}

impl NodeRegistry {
    pub fn new(max: usize) -> Self {
        Self { inner: Mutex::default(), max }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that broker `node_id` lives at `upstream` and says which port serves it.
    /// `fixed` is the configured port for the id, if any; `overflow_base` is where ports for other
    /// ids start.
    pub fn observe(
        &self,
        node_id: i32,
        upstream: Upstream,
        fixed: Option<u16>,
        overflow_base: u16,
    ) -> Result<Observed, String> {
        let mut inner = self.lock();
        if let Some(node) = inner.nodes.get_mut(&node_id) {
            node.seen = Instant::now();
            match &node.upstream {
                Some(old) if *old == upstream => {}
                Some(old) => {
                    tracing::info!(node_id, from = %old, to = %upstream, "broker moved");
                    node.upstream = Some(upstream);
                }
                None => node.upstream = Some(upstream),
            }
            return Ok(Observed::Known(node.port));
        }
        if inner.nodes.len() >= self.max {
            return Err(format!(
                "eventgate already serves {} brokers, its limit (max_broker_listeners)",
                inner.nodes.len()
            ));
        }
        let port = match fixed {
            Some(p) => p,
            None => inner.overflow_port(overflow_base)?,
        };
        Ok(Observed::New(port))
    }

    /// Records the node once its listener is open on `port`; `listener` closes it. If another
    /// task opened one for the same node meanwhile, that one stays and its port is returned.
    pub fn confirm(&self, node_id: i32, upstream: Upstream, port: u16, listener: CancellationToken) -> u16 {
        let mut inner = self.lock();
        if let Some(node) = inner.nodes.get(&node_id) {
            return node.port;
        }
        inner.ports.insert(port);
        let node = Node { upstream: Some(upstream), port, seen: Instant::now(), listener: Some(listener) };
        inner.nodes.insert(node_id, node);
        port
    }

    /// Gives back a port [`observe`](Self::observe) handed out whose listener could not be used.
    pub fn release(&self, port: u16, overflow_base: u16) {
        let mut inner = self.lock();
        if port >= overflow_base && !inner.ports.contains(&port) {
            inner.free_overflow.push(port);
        }
    }

    /// Where broker `node_id` lives now.
    pub fn upstream(&self, node_id: i32) -> Option<Upstream> {
        self.lock().nodes.get(&node_id).and_then(|n| n.upstream.clone())
    }

    /// Whether `port` is a broker listener of eventgate's.
    pub fn serves_port(&self, port: u16) -> bool {
        self.lock().ports.contains(&port)
    }

    /// Brokers with a listener now.
    pub fn len(&self) -> usize {
        self.lock().nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a broker whose port is fixed and whose listener is open already, before the cluster
    /// has said where the broker lives. It is never forgotten.
    pub fn reserve(&self, node_id: i32, port: u16) {
        let mut inner = self.lock();
        inner.ports.insert(port);
        inner.nodes.entry(node_id).or_insert(Node { upstream: None, port, seen: Instant::now(), listener: None });
    }

    /// Forgets every broker no answer has named for `after`, closing its listener (connections
    /// already made through it go on). Ports fixed at start stay. Returns the forgotten ids.
    pub fn forget_unseen(&self, after: Duration, overflow_base: u16) -> Vec<i32> {
        let mut inner = self.lock();
        let now = Instant::now();
        let gone: Vec<i32> = inner
            .nodes
            .iter()
            .filter(|(_, n)| n.listener.is_some() && now.duration_since(n.seen) >= after)
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            if let Some(node) = inner.nodes.remove(id) {
                inner.ports.remove(&node.port);
                if node.port >= overflow_base {
                    inner.free_overflow.push(node.port);
                }
                if let Some(l) = node.listener {
                    l.cancel();
                }
            }
        }
        gone
    }
}

impl Inner {
    /// A free port above the fixed range, in amortised constant time.
    fn overflow_port(&mut self, base: u16) -> Result<u16, String> {
        while let Some(p) = self.free_overflow.pop() {
            if !self.ports.contains(&p) {
                return Ok(p);
            }
        }
        let mut next = self.next_overflow.max(u32::from(base));
        while next <= u32::from(u16::MAX) {
            let port = next as u16;
            next += 1;
            if !self.ports.contains(&port) {
                self.next_overflow = next;
                return Ok(port);
            }
        }
        self.next_overflow = next;
        Err("no port left above the fixed node range".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(h: &str, p: u16) -> Upstream {
        Upstream { host: h.into(), port: p }
    }

    #[test]
    fn new_known_moved_and_overflow_nodes() {
        let r = NodeRegistry::default();
        let l = CancellationToken::new;
        assert_eq!(r.observe(1, up("k1", 9092), Some(9094), 10000).unwrap(), Observed::New(9094));
        assert_eq!(r.confirm(1, up("k1", 9092), 9094, l()), 9094);
        assert_eq!(r.observe(1, up("k1b", 9092), Some(9094), 10000).unwrap(), Observed::Known(9094));
        assert_eq!(r.upstream(1), Some(up("k1b", 9092)));
        // Ids outside the fixed range take the first unused port above it.
        assert_eq!(r.observe(70000, up("k7", 1), None, 10000).unwrap(), Observed::New(10000));
        r.confirm(70000, up("k7", 1), 10000, l());
        assert_eq!(r.observe(70001, up("k8", 1), None, 10000).unwrap(), Observed::New(10001));
        assert_eq!(r.upstream(5), None);
        // A fixed port opened at start learns its broker from the first answer that names it.
        r.reserve(9, 9200);
        assert_eq!(r.upstream(9), None);
        assert_eq!(r.observe(9, up("k9", 1), Some(9200), 10000).unwrap(), Observed::Known(9200));
        assert_eq!(r.upstream(9), Some(up("k9", 1)));
        assert!(r.serves_port(9200) && r.serves_port(10000) && !r.serves_port(10001));
    }

    #[test]
    fn listeners_are_capped_and_forgotten_brokers_free_their_port() {
        let r = NodeRegistry::new(2);
        let (a, b) = (CancellationToken::new(), CancellationToken::new());
        r.reserve(0, 9000);
        assert_eq!(r.observe(500, up("a", 1), None, 10000).unwrap(), Observed::New(10000));
        r.confirm(500, up("a", 1), 10000, a.clone());
        let refused = r.observe(501, up("b", 1), None, 10000).unwrap_err();
        assert!(refused.contains("max_broker_listeners"), "{refused}");
        // Forgetting closes the listener and frees its port; a fixed port opened at start stays.
        assert_eq!(r.forget_unseen(Duration::ZERO, 10000), vec![500]);
        assert!(a.is_cancelled() && r.serves_port(9000) && !r.serves_port(10000));
        assert_eq!(r.observe(501, up("b", 1), None, 10000).unwrap(), Observed::New(10000));
        r.confirm(501, up("b", 1), 10000, b.clone());
        assert!(r.forget_unseen(Duration::from_secs(3600), 10000).is_empty(), "seen just now");
        assert!(!b.is_cancelled());
    }

    #[test]
    fn overflow_ports_are_handed_out_in_order_and_reused() {
        let r = NodeRegistry::new(60_000);
        for id in 0..15_000 {
            let Observed::New(p) = r.observe(100_000 + id, up("h", 1), None, 20000).unwrap() else { panic!() };
            assert_eq!(p, 20000 + id as u16);
            r.confirm(100_000 + id, up("h", 1), p, CancellationToken::new());
        }
        // Forgotten ports are reused before new ones are taken.
        r.forget_unseen(Duration::ZERO, 20000);
        let Observed::New(p) = r.observe(1, up("h", 1), None, 20000).unwrap() else { panic!() };
        assert!((20000..35000).contains(&p), "{p}");
    }
}
