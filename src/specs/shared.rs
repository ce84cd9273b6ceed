//! Documents shared through a JetStream key-value bucket, so every eventgate instance validates with
//! the same set: an upload to one instance reaches all of them within a second.
//!
//! An upload is checked locally first (parse, compile, topic conflicts), then written to the bucket,
//! then installed locally. Every instance watches the bucket from its current values onwards
//! (`watch_with_history`) and installs what others write; an update whose text it already has is a
//! no-op, so an instance's own writes come back harmlessly.

use std::sync::Arc;

use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{Put, SpecStore, StoreError, Summary};
use crate::nats::{NatsConfig, ensure_bucket, until_ready};

/// What the bucket holds per document id.
#[derive(Serialize, Deserialize)]
struct Envelope {
    text: String,
    uploaded_at: String,
}

/// Why a shared write failed.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the document bucket is not reachable yet (NATS): {0}")]
    Unavailable(String),
}

impl SpecStore {
    /// Uploads through the bucket: checked here, written there, installed here.
    pub async fn put_shared(self: &Arc<Self>, id: String, text: String) -> Result<(Put, Summary), SharedError> {
        let bucket = self.bucket().ok_or_else(|| SharedError::Unavailable("not connected".into()))?;
        let store = self.clone();
        let (put, summary, compiled, id, text) = tokio::task::spawn_blocking(move || {
            let at = crate::validate::batch::now_rfc3339();
            store.check(&id, &text, &at).map(|(put, summary, compiled)| (put, summary, compiled, id, text))
        })
        .await
        .map_err(|e| SharedError::Unavailable(e.to_string()))??;
        let envelope = serde_json::to_vec(&Envelope { text: text.clone(), uploaded_at: summary.uploaded_at.clone() })
            .unwrap_or_default();
        bucket.put(&id, Bytes::from(envelope)).await.map_err(|e| SharedError::Unavailable(e.to_string()))?;
        // Installed here at once (compiled once); this instance's watcher then sees the same text.
        let (_, summary) = self.install_prepared(&id, &text, compiled, summary, false)?;
        Ok((put, summary))
    }

    /// Deletes through the bucket.
    pub async fn delete_shared(self: &Arc<Self>, id: &str) -> Result<(), SharedError> {
        let bucket = self.bucket().ok_or_else(|| SharedError::Unavailable("not connected".into()))?;
        self.check_deletable(id)?;
        bucket.delete(id).await.map_err(|e| SharedError::Unavailable(e.to_string()))?;
        // This instance's own watcher may have applied the deletion already.
        match self.remove(id) {
            Ok(()) | Err(StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Keeps the local set in step with the bucket until `shutdown`.
    pub async fn sync(
        self: Arc<Self>,
        js: async_nats::jetstream::Context,
        config: NatsConfig,
        shutdown: CancellationToken,
    ) {
        let Some(bucket) = until_ready("document bucket", &shutdown, || ensure_bucket(&js, &config)).await else {
            return;
        };
        self.set_bucket(bucket.clone());
        loop {
            let watch = match bucket.watch_with_history(">").await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the document bucket; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
            };
            self.follow(watch, &shutdown).await;
            if shutdown.is_cancelled() {
                return;
            }
        }
    }

    async fn follow(self: &Arc<Self>, mut watch: kv::Watch, shutdown: &CancellationToken) {
        loop {
            let entry = tokio::select! {
                e = watch.next() => e,
                _ = shutdown.cancelled() => return,
            };
            let entry = match entry {
                Some(Ok(e)) => e,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "document bucket watch failed; watching again");
                    return;
                }
                None => return,
            };
            let store = self.clone();
            let id = entry.key.clone();
            let applied = tokio::task::spawn_blocking(move || match entry.operation {
                Operation::Put => match serde_json::from_slice::<Envelope>(&entry.value) {
                    Ok(env) => store.install_shared(&entry.key, &env.text, env.uploaded_at).map(|_| ()),
                    Err(e) => Err(StoreError::Io {
                        id: entry.key.clone(),
                        dir: "nats".into(),
                        source: std::io::Error::other(format!("unreadable bucket entry: {e}")),
                    }),
                },
                Operation::Delete | Operation::Purge => match store.remove(&entry.key) {
                    Err(StoreError::NotFound(_)) => Ok(()),
                    other => other,
                },
            })
            .await;
            match applied {
                Ok(Ok(())) => tracing::debug!(id, "document bucket change applied"),
                Ok(Err(e)) => tracing::error!(id, error = %e, "document from the bucket not applied"),
                Err(e) => tracing::error!(id, error = %e, "document bucket task failed"),
            }
        }
    }
}
