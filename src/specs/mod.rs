//! The spec store: the registry of uploaded AsyncAPI documents.
//!
//! Every change (upload, replace, delete, or a document loaded with `--spec`) is parsed and compiled
//! *before* it touches anything; then, under one short lock, the new [`Catalog`] is checked for topic
//! conflicts, persisted, and swapped into [`Validation::catalog`]. Produce requests already in flight
//! finish with the catalog they started with; the next one sees the new document. Nothing on the
//! Kafka path ever waits on this lock.
//!
//! Uploaded documents persist in a directory (`<id>.spec` holds the original text, `<id>.json` its
//! metadata), written atomically; documents given with `--spec` are loaded at every start and not
//! written there. With NATS, documents live in a JetStream key-value bucket instead ([`shared`]).

pub mod shared;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::asyncapi::{self, SpecError};
use crate::validate::batch::now_rfc3339;
use crate::validate::{Catalog, CompiledDoc, Conflict, Validation, compile};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid document id `{0}`: use 1-128 characters from A-Z a-z 0-9 . _ -")]
    BadId(String),
    #[error(transparent)]
    Invalid(#[from] SpecError),
    #[error(transparent)]
    Conflict(#[from] Conflict),
    #[error("no document `{0}`")]
    NotFound(String),
    #[error("document `{0}` was loaded from a file given with --spec and cannot be changed over the API")]
    Pinned(String),
    #[error("cannot persist document `{id}` in {dir}: {source}")]
    Io { id: String, dir: PathBuf, source: std::io::Error },
}

/// Where a document came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Upload,
    File,
}

/// What the registry tells about a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub id: String,
    pub title: String,
    /// `info.version`.
    pub version: String,
    /// The `asyncapi` version.
    pub asyncapi: String,
    /// Topics (or topic templates) the document claims.
    pub topics: Vec<String>,
    pub sha256: String,
    pub uploaded_at: String,
    pub source: Source,
    /// Things worth knowing that did not stop the document from loading.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
struct Entry {
    text: Arc<str>,
    summary: Summary,
}

/// Metadata persisted beside a document's text.
#[derive(Serialize, Deserialize)]
struct Meta {
    uploaded_at: String,
}

/// The registry of documents.
pub struct SpecStore {
    validation: Arc<Validation>,
    dir: Option<PathBuf>,
    entries: Mutex<BTreeMap<String, Entry>>,
    /// Documents are shared through NATS (the bucket is set once it is reachable).
    shared: bool,
    bucket: OnceLock<async_nats::jetstream::kv::Store>,
}

/// Whether `put` created or replaced a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Created,
    Replaced,
}

fn check_id(id: &str) -> Result<(), StoreError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !id.starts_with('.');
    if ok { Ok(()) } else { Err(StoreError::BadId(id.to_owned())) }
}

fn sha256_hex(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses, models and compiles a document, and summarizes it.
pub fn prepare(
    id: &str,
    text: &str,
    source: Source,
    uploaded_at: String,
) -> Result<(CompiledDoc, Summary), StoreError> {
    check_id(id)?;
    let doc = asyncapi::load(text)?;
    let summary = Summary {
        id: id.to_owned(),
        title: doc.title.clone(),
        version: doc.info_version.clone(),
        asyncapi: doc.asyncapi.clone(),
        topics: doc.topics(),
        sha256: sha256_hex(text),
        uploaded_at,
        source,
        warnings: doc.warnings.clone(),
    };
    let compiled = compile(id, doc)?;
    Ok((compiled, summary))
}

impl SpecStore {
    /// Opens the store, loading documents persisted in `dir`. A persisted document that no longer
    /// loads is logged and left on disk, not deleted.
    pub fn open(validation: Arc<Validation>, dir: Option<PathBuf>) -> Result<Self, StoreError> {
        let store =
            Self { validation, dir, entries: Mutex::new(BTreeMap::new()), shared: false, bucket: OnceLock::new() };
        if let Some(dir) = &store.dir {
            let io = |source| StoreError::Io { id: "*".into(), dir: dir.clone(), source };
            std::fs::create_dir_all(dir).map_err(io)?;
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(io)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "spec"))
                .collect();
            files.sort();
            for path in files {
                let Some(id) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
                    continue;
                };
                let loaded = std::fs::read_to_string(&path)
                    .map_err(|source| StoreError::Io { id: id.clone(), dir: dir.clone(), source })
                    .and_then(|text| {
                        let meta: Option<Meta> = std::fs::read(dir.join(format!("{id}.json")))
                            .ok()
                            .and_then(|b| serde_json::from_slice(&b).ok());
                        let at = meta.map(|m| m.uploaded_at).unwrap_or_else(now_rfc3339);
                        store.install(&id, &text, Source::Upload, at, false)
                    });
                match loaded {
                    Ok(_) => tracing::info!(id, "loaded persisted AsyncAPI document"),
                    Err(e) => {
                        tracing::error!(id, error = %e, "persisted AsyncAPI document not loaded")
                    }
                }
            }
        }
        Ok(store)
    }

    /// A store whose documents are shared through a NATS bucket (see [`shared`]).
    pub fn open_shared(validation: Arc<Validation>) -> Self {
        Self { validation, dir: None, entries: Mutex::new(BTreeMap::new()), shared: true, bucket: OnceLock::new() }
    }

    /// Whether documents are shared through NATS.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    fn bucket(&self) -> Option<async_nats::jetstream::kv::Store> {
        self.bucket.get().cloned()
    }

    fn set_bucket(&self, bucket: async_nats::jetstream::kv::Store) {
        let _ = self.bucket.set(bucket);
    }

    /// Checks a document as `put` would, without installing it; says whether it would replace one
    /// and hands back the compiled document for [`Self::install_prepared`].
    pub fn check(&self, id: &str, text: &str, at: &str) -> Result<(Put, Summary, Arc<CompiledDoc>), StoreError> {
        let (compiled, summary) = prepare(id, text, Source::Upload, at.to_owned())?;
        let compiled = Arc::new(compiled);
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (put, _) = self.admit(&entries, id, Source::Upload, compiled.clone())?;
        Ok((put, summary, compiled))
    }

    /// What installing `compiled` as document `id` would do, decided under the entries lock: refused
    /// (pinned, or a topic conflict), or created/replaced with this catalog.
    fn admit(
        &self,
        entries: &BTreeMap<String, Entry>,
        id: &str,
        source: Source,
        compiled: Arc<CompiledDoc>,
    ) -> Result<(Put, Catalog), StoreError> {
        let put = match entries.get(id) {
            Some(e) if e.summary.source == Source::File && source == Source::Upload => {
                return Err(StoreError::Pinned(id.to_owned()));
            }
            Some(_) => Put::Replaced,
            None => Put::Created,
        };
        Ok((put, self.validation.catalog.load().with(compiled)?))
    }

    /// Installs a document that came through the bucket (or was just written to it); a text
    /// already in force is left alone.
    fn install_shared(&self, id: &str, text: &str, at: String) -> Result<(Put, Summary), StoreError> {
        {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = entries.get(id)
                && e.summary.sha256 == sha256_hex(text)
            {
                return Ok((Put::Replaced, e.summary.clone()));
            }
        }
        self.install(id, text, Source::Upload, at, false)
    }

    fn check_deletable(&self, id: &str) -> Result<(), StoreError> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(id) {
            None => Err(StoreError::NotFound(id.to_owned())),
            Some(e) if e.summary.source == Source::File => Err(StoreError::Pinned(id.to_owned())),
            Some(_) => Ok(()),
        }
    }

    /// Removes a document from the local set only.
    fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.remove_with(id, |_| Ok(()))
    }

    /// Removes document `id` under one lock: checks it may go, runs `before` (e.g. deleting its
    /// files), then swaps in a catalog without it.
    fn remove_with(&self, id: &str, before: impl FnOnce(&str) -> Result<(), StoreError>) -> Result<(), StoreError> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(id) {
            None => return Err(StoreError::NotFound(id.to_owned())),
            Some(e) if e.summary.source == Source::File => return Err(StoreError::Pinned(id.to_owned())),
            Some(_) => {}
        }
        before(id)?;
        let catalog: Catalog = self.validation.catalog.load().without(id);
        self.validation.catalog.store(Arc::new(catalog));
        entries.remove(id);
        Ok(())
    }

    /// Loads a document from a file given with `--spec` (id: the file name without extension).
    pub fn load_file(&self, path: &Path) -> Result<Summary, StoreError> {
        let id = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        let text = std::fs::read_to_string(path).map_err(|source| StoreError::Io {
            id: id.clone(),
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            source,
        })?;
        self.install(&id, &text, Source::File, now_rfc3339(), false).map(|(_, s)| s)
    }

    /// Uploads or replaces document `id`.
    pub fn put(&self, id: &str, text: &str) -> Result<(Put, Summary), StoreError> {
        self.install(id, text, Source::Upload, now_rfc3339(), true)
    }

    fn install(
        &self,
        id: &str,
        text: &str,
        source: Source,
        at: String,
        persist: bool,
    ) -> Result<(Put, Summary), StoreError> {
        // The expensive part happens before the lock.
        let (compiled, summary) = prepare(id, text, source, at)?;
        self.install_prepared(id, text, Arc::new(compiled), summary, persist)
    }

    /// Installs an already compiled document: checks, persists, swaps the catalog, under one lock.
    fn install_prepared(
        &self,
        id: &str,
        text: &str,
        compiled: Arc<CompiledDoc>,
        summary: Summary,
        persist: bool,
    ) -> Result<(Put, Summary), StoreError> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (put, catalog) = self.admit(&entries, id, summary.source, compiled)?;
        if persist && let Some(dir) = &self.dir {
            self.write(dir, id, text, &summary.uploaded_at)?;
        }
        self.validation.catalog.store(Arc::new(catalog));
        entries.insert(id.to_owned(), Entry { text: text.into(), summary: summary.clone() });
        Ok((put, summary))
    }

    fn write(&self, dir: &Path, id: &str, text: &str, uploaded_at: &str) -> Result<(), StoreError> {
        let io = |source| StoreError::Io { id: id.to_owned(), dir: dir.to_path_buf(), source };
        let meta = serde_json::to_vec(&Meta { uploaded_at: uploaded_at.to_owned() }).unwrap_or_default();
        for (name, bytes) in [(format!("{id}.json"), meta.as_slice()), (format!("{id}.spec"), text.as_bytes())] {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, bytes).map_err(io)?;
            std::fs::rename(&tmp, dir.join(&name)).map_err(io)?;
        }
        Ok(())
    }

    /// Deletes document `id`.
    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.remove_with(id, |_| self.unpersist(id))
    }

    fn unpersist(&self, id: &str) -> Result<(), StoreError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        for name in [format!("{id}.spec"), format!("{id}.json")] {
            match std::fs::remove_file(dir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::Io { id: id.to_owned(), dir: dir.clone(), source }),
            }
        }
        Ok(())
    }

    /// Every document's summary, by id.
    pub fn list(&self) -> Vec<Summary> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.values().map(|e| e.summary.clone()).collect()
    }

    /// A document's original text.
    pub fn text(&self, id: &str) -> Option<Arc<str>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(id).map(|e| e.text.clone())
    }

    /// The validation state this store feeds.
    pub fn validation(&self) -> &Arc<Validation> {
        &self.validation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Policies;

    const DEMO: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/asyncapi/demo.yaml"));

    fn store(dir: Option<PathBuf>) -> SpecStore {
        SpecStore::open(Arc::new(Validation::new(Policies::default())), dir).unwrap()
    }

    #[test]
    fn upload_replace_conflict_delete_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(Some(dir.path().to_path_buf()));
        let (put, summary) = s.put("demo", DEMO).unwrap();
        assert_eq!(put, Put::Created);
        assert_eq!(summary.topics, vec!["event-gateway-demo"]);
        assert_eq!(summary.sha256.len(), 64);
        assert!(s.validation().catalog.load().route("event-gateway-demo").is_some());
        let (put, summary) = s.put("demo", DEMO).unwrap();
        assert_eq!(put, Put::Replaced);
        assert!(matches!(s.put("other", DEMO), Err(StoreError::Conflict(c)) if c.other == "demo"));
        // The owner is named whichever id sorts first.
        assert!(matches!(s.put("aaa", DEMO), Err(StoreError::Conflict(c)) if c.other == "demo"));
        assert!(matches!(s.put("bad id!", DEMO), Err(StoreError::BadId(_))));
        assert!(matches!(s.put("broken", "asyncapi: [").unwrap_err(), StoreError::Invalid(_)));

        // A new store over the same directory has the document back.
        let again = store(Some(dir.path().to_path_buf()));
        assert_eq!(again.list()[0].uploaded_at, summary.uploaded_at);
        assert_eq!(&*again.text("demo").unwrap(), DEMO);
        again.delete("demo").unwrap();
        assert!(again.validation().catalog.load().route("event-gateway-demo").is_none());
        assert!(store(Some(dir.path().to_path_buf())).list().is_empty());
        assert!(matches!(again.delete("demo"), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn documents_from_files_are_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.yaml");
        std::fs::write(&path, DEMO).unwrap();
        let s = store(None);
        assert_eq!(s.load_file(&path).unwrap().source, Source::File);
        assert!(matches!(s.put("demo", DEMO), Err(StoreError::Pinned(_))));
        assert!(matches!(s.delete("demo"), Err(StoreError::Pinned(_))));
    }
}
