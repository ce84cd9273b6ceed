//! The AsyncAPI conformance corpus: every document in `tests/fixtures/asyncapi/` is loaded through
//! the engine the gateway uses (`specs::prepare`, a `Catalog`, `Route::check` on a real record) and
//! checked against the cases of its sidecar `<name>.cases.json`:
//!
//! ```json
//! {
//!   "about": "what the document exercises",
//!   "asyncapi": "3.1.0",                  // optional: the version the summary reports
//!   "topics": ["a.{id}", "b"],            // optional: exactly the topics it claims
//!   "warnings": ["no address"],           // optional: each appears in some warning
//!   "unrouted": ["c"],                    // optional: topics no channel of it matches
//!   "refused": "not supported",           // for documents that must not load: part of the error
//!   "cases": [
//!     {"name": "what it shows", "topic": "a.7",
//!      "key": "k", "headers": {"h": "v"},  // optional
//!      "value": {"any": "JSON"},           // sent as its JSON text; or "text": "sent as is";
//!                                          // neither: a tombstone (null value)
//!      "valid": true,
//!      "message": "m",                     // optional, valid cases: the message it matched
//!      "error": "part of an error",        // optional, invalid cases
//!      "unchecked": true}                  // optional, invalid cases: no message could check it
//!   ]
//! }
//! ```
//!
//! A failure names the file and the case; all failures are reported at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use eventgate::specs::{Source, prepare};
use eventgate::validate::{Catalog, Outcome, check_sample};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sidecar {
    #[allow(dead_code)]
    about: String,
    asyncapi: Option<String>,
    topics: Option<Vec<String>>,
    #[serde(default)]
    warnings: Vec<String>,
    #[serde(default)]
    unrouted: Vec<String>,
    refused: Option<String>,
    #[serde(default)]
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    topic: String,
    key: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    value: Option<Value>,
    text: Option<String>,
    valid: bool,
    message: Option<String>,
    error: Option<String>,
    #[serde(default)]
    unchecked: bool,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/asyncapi")
}

/// The corpus documents (every `.yaml`, `.yml` and `.json` that is not a sidecar), sorted.
fn documents() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("the corpus directory")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            !name.ends_with(".cases.json")
                && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
        })
        .collect();
    docs.sort();
    docs
}

fn stem(doc: &Path) -> String {
    doc.file_stem().and_then(|s| s.to_str()).expect("a UTF-8 file name").to_owned()
}

fn sidecar_of(doc: &Path) -> Result<Sidecar, String> {
    let path = corpus_dir().join(format!("{}.cases.json", stem(doc)));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// What a document showed: its version and whether it had valid and invalid cases.
#[derive(Default)]
struct Seen {
    asyncapi: Option<String>,
    valid: usize,
    invalid: usize,
}

/// Checks one document against its sidecar; every failure is pushed as `<file>: <what>`.
fn check_document(doc: &Path, failures: &mut Vec<String>) -> Seen {
    let file = doc.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
    let mut fail = |what: String| failures.push(format!("{file}: {what}"));
    let mut seen = Seen::default();
    let sidecar = match sidecar_of(doc) {
        Ok(s) => s,
        Err(e) => {
            fail(format!("no usable sidecar: {e}"));
            return seen;
        }
    };
    let text = match std::fs::read_to_string(doc) {
        Ok(t) => t,
        Err(e) => {
            fail(format!("cannot read: {e}"));
            return seen;
        }
    };
    let (compiled, summary) = match (prepare(&stem(doc), &text, Source::File, String::new()), &sidecar.refused) {
        (Err(e), Some(needle)) => {
            if !e.to_string().contains(needle.as_str()) {
                fail(format!("refused, but the error does not mention `{needle}`: {e}"));
            }
            return seen;
        }
        (Err(e), None) => {
            fail(format!("refused: {e}"));
            return seen;
        }
        (Ok(_), Some(needle)) => {
            fail(format!("loaded, but should be refused with `{needle}`"));
            return seen;
        }
        (Ok(loaded), None) => loaded,
    };
    seen.asyncapi = Some(summary.asyncapi.clone());
    if let Some(v) = &sidecar.asyncapi
        && *v != summary.asyncapi
    {
        fail(format!("asyncapi is {}, expected {v}", summary.asyncapi));
    }
    if let Some(topics) = &sidecar.topics {
        let expected: BTreeSet<&String> = topics.iter().collect();
        let got: BTreeSet<&String> = summary.topics.iter().collect();
        if expected != got {
            fail(format!("claims topics {got:?}, expected {expected:?}"));
        }
    }
    for w in &sidecar.warnings {
        if !summary.warnings.iter().any(|s| s.contains(w.as_str())) {
            fail(format!("no warning mentions `{w}`: {:?}", summary.warnings));
        }
    }
    let catalog = match Catalog::new(vec![Arc::new(compiled)]) {
        Ok(c) => c,
        Err(e) => {
            fail(format!("cannot be put in a catalog: {e}"));
            return seen;
        }
    };
    for topic in &sidecar.unrouted {
        if let Some(route) = catalog.route(topic) {
            fail(format!("topic `{topic}` should match no channel, but matches `{}`", route.address));
        }
    }
    if sidecar.cases.is_empty() {
        fail("has no cases".into());
    }
    for case in &sidecar.cases {
        let mut fail = |what: String| failures.push(format!("{file}: case `{}`: {what}", case.name));
        let Some(route) = catalog.route(&case.topic) else {
            fail(format!("no channel matches topic `{}`", case.topic));
            continue;
        };
        let value = match (&case.value, &case.text) {
            (Some(v), None) => Some(v.to_string().into_bytes()),
            (None, Some(t)) => Some(t.clone().into_bytes()),
            (None, None) => None,
            (Some(_), Some(_)) => {
                fail("has both `value` and `text`".into());
                continue;
            }
        };
        let outcome = check_sample(route, case.key.as_deref(), value.as_deref(), &case.headers);
        match (&outcome, case.valid) {
            (Outcome::Valid(i), true) => {
                seen.valid += 1;
                let name = route.messages.get(*i).map(|m| m.name.as_str()).unwrap_or_default();
                if let Some(m) = &case.message
                    && m != name
                {
                    fail(format!("valid as message `{name}`, expected `{m}`"));
                }
            }
            (Outcome::Invalid(errors), false) if !case.unchecked => {
                seen.invalid += 1;
                if let Some(needle) = &case.error
                    && !errors.iter().any(|e| e.contains(needle.as_str()))
                {
                    fail(format!("invalid, but no error mentions `{needle}`: {errors:?}"));
                }
            }
            (Outcome::Unchecked(_), false) if case.unchecked => seen.invalid += 1,
            (outcome, valid) => fail(format!(
                "expected {}, got {outcome:?}",
                match (valid, case.unchecked) {
                    (true, _) => "valid",
                    (false, false) => "invalid",
                    (false, true) => "unchecked",
                }
            )),
        }
    }
    seen
}

#[test]
fn every_corpus_document_checks_its_cases() {
    let docs = documents();
    assert!(!docs.is_empty(), "no documents in {}", corpus_dir().display());
    let mut failures = Vec::new();
    for doc in &docs {
        check_document(doc, &mut failures);
    }
    assert!(failures.is_empty(), "{} corpus failure(s):\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn every_sidecar_belongs_to_a_document() {
    let stems: BTreeSet<String> = documents().iter().map(|d| stem(d)).collect();
    for entry in std::fs::read_dir(corpus_dir()).expect("the corpus directory") {
        let name = entry.expect("a directory entry").file_name().to_string_lossy().into_owned();
        if let Some(s) = name.strip_suffix(".cases.json") {
            assert!(stems.contains(s), "{name} has no document");
        }
    }
}

#[test]
fn the_corpus_covers_every_version_both_formats_and_the_yaml_styles() {
    let mut failures = Vec::new();
    let mut versions = BTreeMap::new();
    let mut json_documents = 0;
    for doc in documents() {
        let seen = check_document(&doc, &mut failures);
        if let Some(v) = seen.asyncapi {
            let entry = versions.entry(v).or_insert((0, 0));
            entry.0 += seen.valid;
            entry.1 += seen.invalid;
            if doc.extension().is_some_and(|e| e == "json") && seen.valid > 0 && seen.invalid > 0 {
                json_documents += 1;
            }
        }
    }
    for v in ["2.0.0", "2.1.0", "2.2.0", "2.3.0", "2.4.0", "2.5.0", "2.6.0", "3.0.0", "3.1.0"] {
        match versions.get(v) {
            Some((valid, invalid)) if *valid > 0 && *invalid > 0 => {}
            other => failures.push(format!("AsyncAPI {v}: no document with valid and invalid cases ({other:?})")),
        }
    }
    if json_documents == 0 {
        failures.push("no JSON document with valid and invalid cases".into());
    }
    // Each YAML style appears somewhere in a document that loads and has cases.
    let yaml: String = documents()
        .iter()
        .filter(|d| d.extension().is_some_and(|e| e != "json"))
        .filter(|d| sidecar_of(d).is_ok_and(|s| s.refused.is_none() && !s.cases.is_empty()))
        .map(|d| std::fs::read_to_string(d).unwrap_or_default())
        .collect();
    for (style, marker) in [
        ("literal block", ": |\n"),
        ("literal block, keep", ": |+\n"),
        ("literal block, strip", ": |-\n"),
        ("folded block", ": >\n"),
        ("folded block, keep", ": >+\n"),
        ("folded block, strip", ": >-\n"),
        ("single-quoted", ": '"),
        ("double-quoted", ": \""),
        ("flow mapping", ": {"),
        ("flow sequence", ": ["),
        ("anchor", ": &"),
        ("alias", ": *"),
        ("merge key", "<<: *"),
        ("YAML 1.1 boolean spelling", ": [on, off"),
    ] {
        if !yaml.contains(marker) {
            failures.push(format!("no YAML document uses {style} (`{}`)", marker.escape_debug()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
