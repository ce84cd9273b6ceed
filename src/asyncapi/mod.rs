//! The AsyncAPI model: documents (2.0–2.6 and 3.0, YAML or JSON) reduced to what eventgate needs,
//! the Kafka topics they describe and the messages allowed on each.
//!
//! No maintained AsyncAPI crate exists, so a document is kept as the `serde_json::Value` it parses
//! to, and [`Document`] is a thin typed view over it: every channel with the topic (or topic
//! pattern) it maps to, and every message of the channel with *JSON pointers* to its payload,
//! headers and key schemas. Schemas are not copied or inlined: the validator registers the whole
//! document and compiles `{"$ref": "<document>#<pointer>"}`, so nested and recursive `$ref`s inside
//! schemas resolve exactly as JSON Schema defines. `$ref`s around schemas (channels, messages,
//! traits, bindings) are followed here, with cycle detection.
//!
//! * [`parse`] turns text into a value with errors a person can act on (line and column).
//! * [`model`] walks 2.x and 3.0 documents into [`Document`].
//! * [`topic`] matches Kafka topic names against channel addresses with `{parameters}`.

pub mod model;
pub mod parse;
pub mod topic;

pub use model::{Channel, Document, Message, Policy, SchemaFormat, SchemaSlot};

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    Syntax(String),
    #[error("not an AsyncAPI document: {0}")]
    NotAsyncApi(String),
    #[error("AsyncAPI version {0} is not supported (2.0–2.6 and 3.0 are)")]
    Version(String),
    #[error("{at}: unresolved $ref {reference}: {why}")]
    Ref { at: String, reference: String, why: String },
    #[error("{at}: {why}")]
    Invalid { at: String, why: String },
}

/// Parses and models a document in one step.
pub fn load(text: &str) -> Result<Document, SpecError> {
    Document::from_value(parse::parse(text)?)
}
