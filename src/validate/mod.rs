//! Validation: AsyncAPI documents compiled into validators, and records checked against them.
//!
//! The way through, one module per step (each item is re-exported here):
//!
//! * [`compile`](mod@compile) turns a [`Document`](crate::asyncapi::Document) into a [`CompiledDoc`]:
//!   every payload, header and key schema compiled once into a `jsonschema` validator (draft-07,
//!   formats checked, linear-time regular expressions), the whole document registered so `$ref`s
//!   inside schemas resolve; channels sharing a topic form one [`Route`].
//! * [`catalog`]: a [`Catalog`] is the immutable set of compiled documents with a topic index;
//!   [`Validation`] holds the one in force, which the spec store swaps atomically and the produce
//!   path reads without a lock.
//! * [`policies`]: [`Policies::decide`] says what becomes of a topic's records ([`Decision`]): passed,
//!   checked (then annotated or rejected), or refused as an unknown topic.
//! * [`route`]: [`Route::check`] checks one record against a route's messages; it is valid when it
//!   matches at least one ([`Outcome`]). [`check_sample`] checks a sample given as parts (HTTP and
//!   `eventgate validate`) with the same engine.
//! * [`batch`] applies a route to a partition's record batches: untouched, annotated, rejected or
//!   unreadable, all paid from the request's [`Budget`](batch::Budget).
//! * [`content_type`]: the content-type classifier, shared with the mirror, and how validation reads
//!   a payload by its content type (JSON, text, or not checkable).

pub mod batch;
pub mod catalog;
pub mod compile;
pub mod content_type;
pub mod policies;
pub mod route;

pub use catalog::{Catalog, Conflict, Validation};
pub use compile::{CompiledDoc, CompiledMessage, compile};
pub use policies::{Decision, Policies, UnknownTopic};
pub(crate) use route::capped;
pub use route::{ANNOTATION_HEADER, MAX_ERROR_BYTES, MAX_ERRORS, Outcome, Route, check_sample};

#[cfg(test)]
mod tests;
