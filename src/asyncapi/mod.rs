//! The AsyncAPI model: documents (2.0–2.6, 3.0 and 3.1, YAML or JSON) reduced to what eventgate needs,
//! the Kafka topics they describe and the messages allowed on each.
//!
//! No maintained AsyncAPI crate exists, so a document is kept as the `serde_json::Value` it parses
//! to, and [`Document`] is a thin typed view over it: every channel with the topic (or topic
//! pattern) it maps to, and every message of the channel with *JSON pointers* to its payload,
//! headers and key schemas. Schemas are not copied or inlined: the validator registers the whole
//! document and compiles `{"$ref": "<document>#<pointer>"}`, so nested and recursive `$ref`s inside
//! schemas resolve exactly as JSON Schema defines. `$ref`s around schemas (channels, messages,
//! traits, bindings) are followed here, with cycle detection; references to other files are refused,
//! all of them in one error.
//!
//! * [`parse`] turns text into a value with errors a person can act on (line and column); YAML is
//!   read with the YAML 1.2 core schema, as the official AsyncAPI parser reads it.
//! * [`model`] walks 2.x and 3.x documents into [`Document`].
//! * [`topic`] matches Kafka topic names against channel addresses with `{parameters}`.

pub mod model;
pub mod parse;
pub mod topic;

pub use model::{Channel, Document, MAX_LISTED_REFS, Message, Policy, SUPPORTED_VERSIONS, SchemaFormat, SchemaSlot};

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    Syntax(String),
    #[error("not an AsyncAPI document: {0}")]
    NotAsyncApi(String),
    /// A well-formed version eventgate cannot read.
    #[error("AsyncAPI {0} is not supported: eventgate reads {SUPPORTED_VERSIONS}")]
    Version(String),
    /// An `asyncapi` field that is not a version at all.
    #[error("`asyncapi: {found}` is not a version eventgate reads: {why}")]
    VersionFormat { found: String, why: String },
    #[error("{at}: unresolved $ref {reference}: {why}")]
    Ref { at: String, reference: String, why: String },
    /// `$ref`s to other files: the first [`MAX_LISTED_REFS`] as (where, reference), and how many
    /// there are in all.
    #[error("{}", external_refs(refs, *total))]
    ExternalRefs { refs: Vec<(String, String)>, total: usize },
    #[error("{at}: {why}")]
    Invalid { at: String, why: String },
}

fn external_refs(refs: &[(String, String)], total: usize) -> String {
    let mut text = format!(
        "{} to other files: eventgate reads one self-contained document, so only references within \
         the document (`#/...`) are supported; bundle it first (`asyncapi bundle`): ",
        if total == 1 { "a $ref".to_owned() } else { format!("{total} $refs") }
    );
    let listed: Vec<String> = refs.iter().map(|(at, reference)| format!("{at} → {reference}")).collect();
    text.push_str(&listed.join("; "));
    if total > refs.len() {
        text.push_str(&format!("; and {} more", total - refs.len()));
    }
    text
}

/// Parses and models a document in one step.
pub fn load(text: &str) -> Result<Document, SpecError> {
    Document::from_value(parse::parse(text)?)
}
