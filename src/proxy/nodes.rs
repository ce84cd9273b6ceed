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
//! Ports fixed with `--node-port` are opened at start instead, and learn their broker's address
//! from the first response that names it.

use std::collections::HashMap;
use std::sync::Mutex;

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
}

/// What [`NodeRegistry::observe`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Observed {
    /// The node already has a listener on this port.
    Known(u16),
    /// The node is new: a listener must be opened on this port, then [`NodeRegistry::confirm`]ed.
    New(u16),
}

/// The upstream brokers seen so far and the eventgate port that serves each.
#[derive(Debug, Default)]
pub struct NodeRegistry {
    nodes: Mutex<HashMap<i32, Node>>,
}

impl NodeRegistry {
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
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(node) = nodes.get_mut(&node_id) {
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
        let port = match fixed {
            Some(p) => p,
            None => {
                let used: Vec<u16> = nodes.values().map(|n| n.port).collect();
                (overflow_base..=u16::MAX)
                    .find(|p| !used.contains(p))
                    .ok_or_else(|| "no port left above the fixed node range".to_owned())?
            }
        };
        Ok(Observed::New(port))
    }

    /// Records the node once its listener is open on `port`. If another task opened one for the
    /// same node meanwhile, that one stays and its port is returned.
    pub fn confirm(&self, node_id: i32, upstream: Upstream, port: u16) -> u16 {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.entry(node_id).or_insert(Node { upstream: Some(upstream), port }).port
    }

    /// Where broker `node_id` lives now.
    pub fn upstream(&self, node_id: i32) -> Option<Upstream> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.get(&node_id).and_then(|n| n.upstream.clone())
    }

    /// Records a broker whose port is fixed and whose listener is open already, before the cluster
    /// has said where the broker lives.
    pub fn reserve(&self, node_id: i32, port: u16) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.entry(node_id).or_insert(Node { upstream: None, port });
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
        assert_eq!(r.observe(1, up("k1", 9092), Some(9094), 10000).unwrap(), Observed::New(9094));
        assert_eq!(r.confirm(1, up("k1", 9092), 9094), 9094);
        assert_eq!(r.observe(1, up("k1b", 9092), Some(9094), 10000).unwrap(), Observed::Known(9094));
        assert_eq!(r.upstream(1), Some(up("k1b", 9092)));
        // Ids outside the fixed range take the first unused port above it.
        assert_eq!(r.observe(70000, up("k7", 1), None, 10000).unwrap(), Observed::New(10000));
        r.confirm(70000, up("k7", 1), 10000);
        assert_eq!(r.observe(70001, up("k8", 1), None, 10000).unwrap(), Observed::New(10001));
        assert_eq!(r.upstream(5), None);
        // A fixed port opened at start learns its broker from the first answer that names it.
        r.reserve(9, 9200);
        assert_eq!(r.upstream(9), None);
        assert_eq!(r.observe(9, up("k9", 1), Some(9200), 10000).unwrap(), Observed::Known(9200));
        assert_eq!(r.upstream(9), Some(up("k9", 1)));
    }
}
