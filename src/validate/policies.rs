//! Policies: what happens to the records of each topic of a Produce request.
//!
//! [`Policies::decide`] picks the policy of a topic: a configured override first, then the channel's
//! `x-eventgate-policy`, then the default; a topic no document describes follows [`UnknownTopic`]
//! unless an override turns it `off`. The [`Decision`] is to pass the records untouched, to check
//! them (then annotate or reject the invalid ones), or to refuse them.

use std::collections::HashMap;
use std::sync::Arc;

use super::catalog::Catalog;
use super::route::Route;
use crate::asyncapi::Policy;

/// What happens to records of topics no document describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum UnknownTopic {
    /// Forward them untouched.
    #[default]
    Pass,
    /// Refuse them with INVALID_RECORD.
    Reject,
}

/// How policies are chosen per topic.
#[derive(Debug, Clone)]
pub struct Policies {
    /// For described topics whose channel sets no `x-eventgate-policy`.
    pub default: Policy,
    /// Per-topic overrides from the configuration; they beat the documents.
    pub overrides: HashMap<String, Policy>,
    pub unknown_topic: UnknownTopic,
    /// The work budget of one Produce request ([`Budget`](super::batch::Budget)).
    pub max_decompressed_bytes: usize,
}

impl Default for Policies {
    fn default() -> Self {
        Self {
            default: Policy::Annotate,
            overrides: HashMap::new(),
            unknown_topic: UnknownTopic::Pass,
            max_decompressed_bytes: 64 << 20,
        }
    }
}

/// What to do with one topic of a Produce request.
pub enum Decision<'c> {
    /// Forward untouched.
    Pass,
    /// Check every record against `route` and apply `policy` (annotate or reject).
    Check { route: &'c Arc<Route>, policy: Policy },
    /// Refuse: no document describes the topic and `unknown_topic` is `reject`.
    RejectUnknown,
}

impl Policies {
    pub fn decide<'c>(&self, catalog: &'c Catalog, topic: &str) -> Decision<'c> {
        let forced = self.overrides.get(topic).copied();
        match catalog.route(topic) {
            Some(route) => match forced.or(route.policy).unwrap_or(self.default) {
                Policy::Off => Decision::Pass,
                policy => Decision::Check { route, policy },
            },
            None if forced == Some(Policy::Off) => Decision::Pass,
            None => match self.unknown_topic {
                UnknownTopic::Pass => Decision::Pass,
                UnknownTopic::Reject => Decision::RejectUnknown,
            },
        }
    }

    /// Whether any Produce request could need inspection at all.
    pub fn active(&self, catalog: &Catalog) -> bool {
        !catalog.is_empty() || self.unknown_topic == UnknownTopic::Reject
    }
}
