//! The result store: where result bytes live, how they are written and read.
//!
//! One URL selects the backend through `object_store`: a local directory by default
//! (`./results`, `file:///var/lib/sluice`), or `s3://bucket/prefix` with the options of
//! `[results.options]`. Layout: `<prefix>/results/<bucket>/<execution id>.<attempt>.<ext>`,
//! where the bucket is the first 8 hex digits of the (UUIDv7, time-ordered) id: a new
//! bucket every ~65 s, so a local directory gets one new subdirectory per minute rather
//! than one per execution (creating a directory on a large ext4 filesystem scans its
//! block groups: it was a quarter of a worker's CPU on trivial executions). Keys of the
//! earlier layout, `results/<execution id>/<attempt>.<ext>`, are still read and
//! collected. The attempt is part of the key, so a stale worker that lost its lease can
//! never overwrite the object of the attempt that replaced it.
//!
//! Writes are multipart uploads of `part_bytes` parts, at most `upload_concurrency` in
//! flight, so a result of any size takes bounded memory (see [`ResultWriter`]). A write is
//! only visible once [`ResultWriter::finish`] completes it; [`ResultWriter::abort`] leaves
//! nothing behind.
//!
//! This module never touches Postgres or ClickHouse.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::signer::{Method, Signer};
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use uuid::Uuid;

use crate::config::ResultsConfig;
use crate::execution::Format;

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("invalid result store URL `{url}`: {message}")]
    Url { url: String, message: String },
    #[error("result object not found: {0}")]
    NotFound(String),
    #[error("result store error: {0}")]
    Store(#[from] object_store::Error),
}

#[derive(Clone, Debug)]
pub struct ResultStore {
    store: Arc<dyn ObjectStore>,
    /// Presigns download URLs (S3); `None` for a local directory, whose links the API
    /// signs itself.
    signer: Option<Arc<dyn Signer>>,
    prefix: Path,
    part_bytes: usize,
    upload_concurrency: usize,
}

impl ResultStore {
    pub fn new(config: &ResultsConfig) -> Result<ResultStore, ResultsError> {
        let url = to_url(&config.url)?;
        let bad = |message: String| ResultsError::Url {
            url: config.url.clone(),
            message,
        };
        let mut signer: Option<Arc<dyn Signer>> = None;
        let (store, prefix): (Arc<dyn ObjectStore>, Path) = if url.scheme() == "file" {
            // Our own: object_store's parse_url does not create the directory.
            let dir = url
                .to_file_path()
                .map_err(|_| bad("not a local path".into()))?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| bad(format!("cannot create directory: {e}")))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| bad(e.to_string()))?;
            (Arc::new(fs), Path::default())
        } else if url.scheme() == "s3" {
            // Built here rather than by parse_url_opts so the same client can presign.
            let mut builder = AmazonS3Builder::new().with_url(url.to_string());
            for (key, value) in &config.options {
                let key: AmazonS3ConfigKey = key
                    .to_ascii_lowercase()
                    .parse()
                    .map_err(|e: object_store::Error| bad(e.to_string()))?;
                builder = builder.with_config(key, value);
            }
            let s3 = Arc::new(builder.build().map_err(|e| bad(e.to_string()))?);
            signer = Some(s3.clone());
            let prefix = Path::from_url_path(url.path()).map_err(|e| bad(e.to_string()))?;
            (s3, prefix)
        } else {
            let options: BTreeMap<String, String> = config.options.clone();
            let (store, prefix) =
                object_store::parse_url_opts(&url, options).map_err(|e| bad(e.to_string()))?;
            (Arc::from(store), prefix)
        };
        Ok(ResultStore {
            store,
            signer,
            prefix,
            part_bytes: config.part_bytes,
            upload_concurrency: config.upload_concurrency,
        })
    }

    /// Where attempt `attempt` of execution `id` stores its result.
    pub fn key(&self, id: Uuid, attempt: i32, format: Format) -> String {
        let id = id.to_string();
        format!("results/{}/{id}.{attempt}.{}", &id[..8], format.extension())
    }

    fn path(&self, key: &str) -> Path {
        if self.prefix.as_ref().is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        }
    }

    /// Starts a streaming write of `key`.
    pub fn writer(&self, key: &str) -> ResultWriter {
        ResultWriter {
            store: self.store.clone(),
            path: self.path(key),
            part_bytes: self.part_bytes,
            upload_concurrency: self.upload_concurrency,
            state: WriterState::Buffering {
                chunks: Vec::new(),
                len: 0,
            },
            bytes: 0,
            small: BytesMut::new(),
        }
    }

    /// Size of a stored object.
    pub async fn size(&self, key: &str) -> Result<u64, ResultsError> {
        let meta = self
            .store
            .head(&self.path(key))
            .await
            .map_err(|e| not_found(key, e))?;
        Ok(meta.size)
    }

    /// Streams `range` (or all) of an object.
    pub async fn read(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, ResultsError>>, ResultsError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        let result = self
            .store
            .get_opts(&self.path(key), options)
            .await
            .map_err(|e| not_found(key, e))?;
        Ok(result
            .into_stream()
            .map(|r| r.map_err(ResultsError::from))
            .boxed())
    }

    /// A URL that downloads `key` without credentials for `expires_in`, when the backend
    /// can presign (S3); `None` for a local directory.
    pub async fn presigned_url(
        &self,
        key: &str,
        expires_in: std::time::Duration,
    ) -> Result<Option<url::Url>, ResultsError> {
        match &self.signer {
            Some(signer) => Ok(Some(
                signer
                    .signed_url(Method::GET, &self.path(key), expires_in)
                    .await?,
            )),
            None => Ok(None),
        }
    }

    /// Deletes an object; deleting a missing one is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), ResultsError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every stored result object with its last-modified time, as the store lists them
    /// (streamed: the listing is never held whole).
    pub fn objects(&self) -> BoxStream<'static, Result<(String, DateTime<Utc>), ResultsError>> {
        let base = self.path("results");
        let prefix = self.prefix.to_string();
        self.store
            .list(Some(&base))
            .map(move |meta| {
                let meta = meta?;
                let full = meta.location.to_string();
                let key = match prefix.as_str() {
                    "" => full,
                    p => full
                        .strip_prefix(&format!("{p}/"))
                        .map(String::from)
                        .unwrap_or(full),
                };
                Ok((key, meta.last_modified))
            })
            .boxed()
    }

    /// Keys of every stored result object, sorted (for tests and tools).
    pub async fn list_keys(&self) -> Result<Vec<String>, ResultsError> {
        let mut keys: Vec<String> = self
            .objects()
            .map(|o| o.map(|(k, _)| k))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        keys.sort();
        Ok(keys)
    }

    /// The execution a result key belongs to, in either layout (see the module comment).
    pub fn execution_of(key: &str) -> Option<Uuid> {
        let mut parts = key.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("results"), Some(dir), Some(file), None) => Uuid::parse_str(dir)
                .ok()
                .or_else(|| file.split('.').next().and_then(|id| id.parse().ok())),
            _ => None,
        }
    }
}

fn not_found(key: &str, e: object_store::Error) -> ResultsError {
    match e {
        object_store::Error::NotFound { .. } => ResultsError::NotFound(key.to_string()),
        other => ResultsError::Store(other),
    }
}

/// `./results` and `/var/lib/x` are paths; anything with `://` is a URL.
fn to_url(text: &str) -> Result<url::Url, ResultsError> {
    if text.contains("://") {
        return url::Url::parse(text).map_err(|e| ResultsError::Url {
            url: text.to_string(),
            message: e.to_string(),
        });
    }
    let path = std::path::absolute(text).map_err(|e| ResultsError::Url {
        url: text.to_string(),
        message: e.to_string(),
    })?;
    url::Url::from_directory_path(&path).map_err(|_| ResultsError::Url {
        url: text.to_string(),
        message: "not an absolute path".into(),
    })
}

/// A result being written, without copying its bytes: chunks are kept as the
/// reference-counted buffers the HTTP client produced and handed to the upload as they
/// are. A result smaller than one part is stored with a single PUT; a larger one becomes
/// a multipart upload of `part_bytes` parts with at most `upload_concurrency` in flight,
/// so at most `part_bytes * (upload_concurrency + 1)` bytes are held at once.
///
/// Dropping it without [`finish`](Self::finish) leaves no visible object, but call
/// [`abort`](Self::abort) so uploaded parts are removed at once.
pub struct ResultWriter {
    store: Arc<dyn ObjectStore>,
    path: Path,
    part_bytes: usize,
    upload_concurrency: usize,
    state: WriterState,
    bytes: u64,
    /// Small chunks gathered until `COALESCE_BYTES`.
    small: BytesMut,
}

/// Chunks smaller than this are copied together before they reach the store.
const COALESCE_BYTES: usize = 64 * 1024;

enum WriterState {
    /// Less than one part so far.
    Buffering {
        chunks: Vec<Bytes>,
        len: usize,
    },
    Uploading(WriteMultipart),
}

impl ResultWriter {
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), ResultsError> {
        self.bytes += chunk.len() as u64;
        // Large chunks travel as they are; small ones (old servers send many of a few
        // KiB) are gathered first, since each piece costs the store a write of its own.
        if chunk.len() >= COALESCE_BYTES {
            self.flush_small().await?;
            return self.push(chunk).await;
        }
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            if self.small.capacity() == 0 {
                self.small.reserve(COALESCE_BYTES);
            }
            let (now, later) = rest.split_at(rest.len().min(COALESCE_BYTES - self.small.len()));
            self.small.extend_from_slice(now);
            rest = later;
            if self.small.len() == COALESCE_BYTES {
                self.flush_small().await?;
            }
        }
        Ok(())
    }

    /// Hands what was gathered to the store as a buffer of its own. Each piece owns
    /// exactly one allocation of `COALESCE_BYTES`, so the parts held in memory are about
    /// as large as their content. Splitting one growing buffer instead left a piece in
    /// an allocation up to twice its size, and copied the buffer's tail at every
    /// regrowth: a ~1 GB result from 18.16 (whose chunks are a few KiB) peaked at
    /// 40-48 MiB alone and once at 70 MiB in a full bench run; now 36-40 MiB, with about
    /// 0.1-0.2 s less worker CPU. Small chunks fill each piece to the byte (a chunk may
    /// end one piece and start the next), so a piece is one write for the store.
    async fn flush_small(&mut self) -> Result<(), ResultsError> {
        if self.small.is_empty() {
            return Ok(());
        }
        let gathered = std::mem::take(&mut self.small).freeze();
        self.push(gathered).await
    }

    async fn push(&mut self, chunk: Bytes) -> Result<(), ResultsError> {
        match &mut self.state {
            WriterState::Uploading(upload) => {
                upload.wait_for_capacity(self.upload_concurrency).await?;
                upload.put(chunk);
            }
            WriterState::Buffering { chunks, len } => {
                *len += chunk.len();
                chunks.push(chunk);
                if *len >= self.part_bytes {
                    let chunks = std::mem::take(chunks);
                    let multipart = self.store.put_multipart(&self.path).await?;
                    let mut upload =
                        WriteMultipart::new_with_chunk_size(multipart, self.part_bytes);
                    for c in chunks {
                        upload.put(c);
                    }
                    self.state = WriterState::Uploading(upload);
                }
            }
        }
        Ok(())
    }

    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Completes the upload; the object becomes visible.
    pub async fn finish(mut self) -> Result<u64, ResultsError> {
        self.flush_small().await?;
        match self.state {
            WriterState::Buffering { chunks, .. } => {
                let payload: PutPayload = chunks.into_iter().collect();
                self.store.put(&self.path, payload).await?;
            }
            WriterState::Uploading(upload) => {
                upload.finish().await?;
            }
        }
        Ok(self.bytes)
    }

    /// Cancels the upload and removes what was uploaded.
    pub async fn abort(self) {
        if let WriterState::Uploading(upload) = self.state
            && let Err(e) = upload.abort().await
        {
            tracing::warn!(error = %e, "could not abort a result upload");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_execution_in_both_layouts() {
        let store = ResultStore::new(&ResultsConfig {
            url: std::env::temp_dir()
                .join("sluice-key-test")
                .display()
                .to_string(),
            ..Default::default()
        })
        .expect("a local store");
        let id = Uuid::now_v7();
        let key = store.key(id, 2, Format::CSV);
        let text = id.to_string();
        assert_eq!(key, format!("results/{}/{text}.2.csv", &text[..8]));
        assert_eq!(ResultStore::execution_of(&key), Some(id));
        assert_eq!(
            ResultStore::execution_of(&format!("results/{id}/1.ndjson")),
            Some(id),
            "the earlier layout"
        );
        assert_eq!(ResultStore::execution_of("results/README"), None);
        assert_eq!(ResultStore::execution_of("results/0000/x.1.csv"), None);
    }

    /// Small chunks are gathered into pieces that each own one allocation no larger than
    /// `COALESCE_BYTES`, so what a part holds in memory is about its content.
    #[tokio::test]
    async fn gathered_pieces_own_allocations_the_size_of_their_content() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = ResultStore::new(&ResultsConfig {
            url: dir.path().display().to_string(),
            ..Default::default()
        })
        .expect("a local store");
        let mut writer = store.writer("results/x/1.csv");
        // Chunks of a few KiB, as 18.16 sends them, odd-sized so pieces do not line up.
        for i in 0..200u8 {
            writer
                .write(Bytes::from(vec![i; 4_000 + usize::from(i)]))
                .await
                .expect("buffered");
        }
        writer.flush_small().await.expect("flushed");
        let WriterState::Buffering { chunks, len } = &mut writer.state else {
            panic!("less than one part stays buffered");
        };
        assert_eq!(*len as u64, writer.bytes);
        let pieces = std::mem::take(chunks);
        let last = pieces.len() - 1;
        assert!(last > 10, "{} pieces", pieces.len());
        for (i, piece) in pieces.into_iter().enumerate() {
            let len = piece.len();
            let owned = piece
                .try_into_mut()
                .unwrap_or_else(|_| panic!("piece {i} shares its allocation"));
            // Full, but for the rest flushed at the end.
            assert!(i == last || len == COALESCE_BYTES, "piece {i}: {len} bytes");
            assert!(
                owned.capacity() <= COALESCE_BYTES,
                "piece {i}: {len} bytes in an allocation of {}",
                owned.capacity()
            );
        }
    }
}
