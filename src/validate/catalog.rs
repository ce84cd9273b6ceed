//! The catalog: the compiled documents in force, indexed by topic, and the one shared with every
//! connection.
//!
//! A [`Catalog`] is immutable once built: changing the documents builds a new one ([`Catalog::with`],
//! [`Catalog::without`]), refused with a [`Conflict`] when two documents claim the same topic.
//! [`Validation`] holds the catalog in force behind `arc-swap`: the spec store swaps a new one in
//! atomically, and the produce path reads whichever one is current without a lock.

use std::collections::HashMap;
use std::sync::Arc;

use super::compile::CompiledDoc;
use super::policies::Policies;
use super::route::Route;
use crate::asyncapi::topic::TopicMatcher;

/// Two documents claim the same topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic `{topic}` is already described by document `{other}`")]
pub struct Conflict {
    pub topic: String,
    pub other: String,
}

/// The compiled documents in force, with a topic index. Immutable once built.
#[derive(Default)]
pub struct Catalog {
    docs: Vec<Arc<CompiledDoc>>,
    exact: HashMap<String, Arc<Route>>,
    /// Patterns, most specific (longest literal part) first.
    patterns: Vec<(TopicMatcher, Arc<Route>)>,
}

impl Catalog {
    /// Indexes `docs`; fails if two of them claim the same topic.
    pub fn new(mut docs: Vec<Arc<CompiledDoc>>) -> Result<Self, Conflict> {
        docs.sort_by(|a, b| a.id.cmp(&b.id));
        let mut claims: HashMap<String, &str> = HashMap::new();
        let mut exact = HashMap::new();
        let mut patterns = Vec::new();
        for d in &docs {
            for (matcher, route) in &d.routes {
                if let Some(other) = claims.insert(matcher.claim_key(), &d.id) {
                    return Err(Conflict { topic: route.address.clone(), other: other.to_owned() });
                }
                match matcher {
                    TopicMatcher::Exact(t) => {
                        exact.insert(t.clone(), route.clone());
                    }
                    TopicMatcher::Pattern { .. } => patterns.push((matcher.clone(), route.clone())),
                }
            }
        }
        patterns.sort_by_key(|(m, _)| match m {
            TopicMatcher::Pattern { literal_len, .. } => std::cmp::Reverse(*literal_len),
            TopicMatcher::Exact(_) => std::cmp::Reverse(usize::MAX),
        });
        Ok(Self { docs, exact, patterns })
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    pub fn doc(&self, id: &str) -> Option<&Arc<CompiledDoc>> {
        self.docs.iter().find(|d| d.id == id)
    }

    /// The route for `topic`: an exact address first, else the most specific pattern.
    pub fn route(&self, topic: &str) -> Option<&Arc<Route>> {
        self.exact.get(topic).or_else(|| self.patterns.iter().find(|(m, _)| m.matches(topic)).map(|(_, r)| r))
    }

    /// A catalog with `doc` added (replacing a document of the same id).
    /// A conflict names the document already in force, whichever id sorts first.
    pub fn with(&self, doc: Arc<CompiledDoc>) -> Result<Self, Conflict> {
        let mut docs: Vec<_> = self.docs.iter().filter(|d| d.id != doc.id).cloned().collect();
        let claims: HashMap<String, &Route> = doc.routes.iter().map(|(m, r)| (m.claim_key(), &**r)).collect();
        for other in &docs {
            if let Some((m, _)) = other.routes.iter().find(|(m, _)| claims.contains_key(&m.claim_key())) {
                let topic = claims.get(&m.claim_key()).map(|r| r.address.clone()).unwrap_or_default();
                return Err(Conflict { topic, other: other.id.clone() });
            }
        }
        docs.push(doc);
        Self::new(docs)
    }

    /// A catalog without document `id`.
    pub fn without(&self, id: &str) -> Self {
        let docs = self.docs.iter().filter(|d| d.id != id).cloned().collect();
        // Removing a document cannot create a conflict.
        Self::new(docs).unwrap_or_default()
    }
}

/// The catalog in force and the policies, shared by every connection. The catalog is swapped
/// atomically when documents change; readers never wait.
pub struct Validation {
    pub catalog: arc_swap::ArcSwap<Catalog>,
    pub policies: Policies,
}

impl Validation {
    pub fn new(policies: Policies) -> Self {
        Self { catalog: arc_swap::ArcSwap::from_pointee(Catalog::default()), policies }
    }
}
