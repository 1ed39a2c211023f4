//! Publishing a new generation of a shard without silently dropping what
//! another writer (a packer, the repacker) published meanwhile.
//!
//! Where the backend enforces conditional writes (local directories, AWS S3,
//! MinIO), the upload is conditional on the generation read (`If-Match` its
//! ETag, or `If-None-Match: *` for a new shard): a loser gets
//! [`PublishError::Conflict`] and rebuilds on the winner's generation.
//!
//! Where it does not (Garage ignores both headers), the rule is approximated
//! in two steps: right before completing the upload, the shard must still be
//! the generation read (HEAD); right after, re-reading the shard must show our
//! ETag, or a generation that the caller accepts as built on ours (the
//! `still_ours` check: a packer's added files are all there, a repacker's
//! dropped files are all gone). A writer whose check and completion both fall
//! between our completion and our re-read can still win unseen: on such
//! backends parallel packers must work on disjoint shard ranges
//! (docs/CONCURRENCY.md).

use std::sync::Arc;

use tokio::runtime::Handle;

use crate::bridge::SyncObjectWriter;
use crate::error::{Error, ErrorKind};
use crate::object::{ObjectStore, PutMode, PutResult};
use crate::store::{DesStore, LoadedIndex};

/// Why a publish did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The shard changed under us: rebuild on its current generation.
    #[error("the shard changed while it was being rebuilt")]
    Conflict,
    #[error(transparent)]
    Store(#[from] Error),
}

impl PublishError {
    /// A store error that is a lost condition is a conflict.
    pub fn from_store(e: Error) -> Self {
        if e.kind() == ErrorKind::PreconditionFailed {
            Self::Conflict
        } else {
            Self::Store(e)
        }
    }
}

/// The generation a writer built on.
#[derive(Debug, Clone)]
enum Base {
    Absent,
    Present { etag: Option<String> },
}

/// One attempt to publish one shard generation.
#[derive(Debug)]
pub struct ShardPublish {
    objects: Arc<dyn ObjectStore>,
    key: String,
    base: Base,
    conditional: bool,
}

impl ShardPublish {
    /// `base` is the generation the new one is built on (`None`: no shard yet).
    pub fn new(objects: Arc<dyn ObjectStore>, key: &str, base: Option<&LoadedIndex>) -> Self {
        let base = match base {
            None => Base::Absent,
            Some(o) => Base::Present {
                etag: o.object.etag.clone(),
            },
        };
        let conditional = objects.capabilities().conditional_put;
        Self {
            objects,
            key: key.to_string(),
            base,
            conditional,
        }
    }

    /// The write mode for the upload: conditional where it is enforced.
    pub fn mode(&self) -> PutMode {
        if !self.conditional {
            return PutMode::Overwrite;
        }
        match &self.base {
            Base::Absent => PutMode::Create,
            Base::Present { etag: Some(e) } => PutMode::UpdateIfMatch(e.clone()),
            // No ETag to condition on (a backend without ETags): last writer wins.
            Base::Present { etag: None } => PutMode::Overwrite,
        }
    }

    /// Completes the upload (nothing is visible before) and makes sure our
    /// generation, or one `still_ours` accepts, is what the shard now holds.
    /// Call from a blocking thread.
    pub fn commit_blocking(
        self,
        handle: &Handle,
        store: &DesStore,
        sink: SyncObjectWriter,
        still_ours: impl Fn(&LoadedIndex) -> bool,
    ) -> Result<PutResult, PublishError> {
        if self.conditional {
            return sink.finish().map_err(PublishError::from_store);
        }
        if let Err(e) = handle.block_on(self.check_unchanged()) {
            // The upload is aborted: the shard keeps the other writer's generation.
            let _ = sink.abort();
            return Err(e);
        }
        let put = sink.finish().map_err(PublishError::from_store)?;
        handle.block_on(self.confirm(store, &put, still_ours))?;
        Ok(put)
    }

    async fn check_unchanged(&self) -> Result<(), PublishError> {
        let current = match self.objects.head(&self.key).await {
            Ok(meta) => Some(meta.etag),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(PublishError::Store(e)),
        };
        let unchanged = match (&self.base, current) {
            (Base::Absent, None) => true,
            (Base::Present { etag: Some(ours) }, Some(Some(now))) => same_etag(ours, &now),
            // Nothing to compare: the re-read after publishing still checks.
            (Base::Present { etag: None }, Some(_)) => true,
            _ => false,
        };
        if unchanged {
            Ok(())
        } else {
            Err(PublishError::Conflict)
        }
    }

    async fn confirm(
        &self,
        store: &DesStore,
        put: &PutResult,
        still_ours: impl Fn(&LoadedIndex) -> bool,
    ) -> Result<(), PublishError> {
        let latest = store.load_index(&self.key).await.map_err(|e| {
            PublishError::Store(Error::Invalid(format!(
                "published {} but could not re-read it to confirm ({e}); re-run to check",
                self.key
            )))
        })?;
        // Deleted right after we wrote it: rebuild from nothing.
        let Some(latest) = latest else {
            return Err(PublishError::Conflict);
        };
        if let (Some(ours), Some(now)) = (&put.etag, &latest.object.etag)
            && same_etag(ours, now)
        {
            return Ok(());
        }
        if still_ours(&latest) {
            Ok(())
        } else {
            Err(PublishError::Conflict)
        }
    }
}

/// Runs `attempt` until it does not end in a conflict, at most `retries`
/// extra times; `Ok(None)` when every attempt conflicted. Each attempt must
/// re-read the shard (and whatever it decides from, such as tombstones).
pub fn rebuild_on_conflict<T, E>(
    retries: u32,
    mut attempt: impl FnMut() -> Result<T, E>,
    is_conflict: impl Fn(&E) -> bool,
) -> Result<Option<T>, E> {
    for _ in 0..=retries {
        match attempt() {
            Ok(v) => return Ok(Some(v)),
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// `W/"abc"`, `"abc"` and `abc` name the same ETag.
pub fn same_etag(a: &str, b: &str) -> bool {
    fn bare(e: &str) -> &str {
        let e = e.trim();
        e.strip_prefix("W/").unwrap_or(e).trim_matches('"')
    }
    bare(a) == bare(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    use crate::memory::MemoryStore;
    use crate::object::{
        Capabilities, GetOptions, GetResult, ListPage, ObjectMeta, ObjectWriter, PutOptions,
    };

    /// A store that, like Garage, does not enforce conditional writes, and
    /// whose HEAD of `fail/…` keys fails as an outage would.
    #[derive(Debug)]
    struct Unconditional(MemoryStore);

    #[async_trait::async_trait]
    impl ObjectStore for Unconditional {
        fn describe(&self) -> String {
            "unconditional".into()
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                conditional_put: false,
            }
        }
        async fn get(&self, key: &str, opts: GetOptions) -> crate::Result<GetResult> {
            self.0.get(key, opts).await
        }
        async fn head(&self, key: &str) -> crate::Result<ObjectMeta> {
            if key.starts_with("fail/") {
                return Err(crate::Error::Unavailable {
                    msg: "injected".into(),
                    retry_after: None,
                });
            }
            self.0.head(key).await
        }
        async fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> crate::Result<PutResult> {
            self.0.put(key, data, opts).await
        }
        async fn put_writer(
            &self,
            key: &str,
            opts: PutOptions,
        ) -> crate::Result<Box<dyn ObjectWriter>> {
            self.0.put_writer(key, opts).await
        }
        async fn delete(&self, key: &str) -> crate::Result<()> {
            self.0.delete(key).await
        }
        async fn list(&self, prefix: &str, start_after: Option<&str>) -> crate::Result<ListPage> {
            self.0.list(prefix, start_after).await
        }
    }

    fn publish(objects: &Arc<dyn ObjectStore>, key: &str, base: Base) -> ShardPublish {
        ShardPublish {
            objects: Arc::clone(objects),
            key: key.into(),
            base,
            conditional: objects.capabilities().conditional_put,
        }
    }

    /// Where conditions are not enforced, the re-check before publishing is
    /// what stops a writer from replacing a generation it did not build on.
    #[tokio::test]
    async fn unchanged_check_sees_another_writer() {
        let objects: Arc<dyn ObjectStore> = Arc::new(Unconditional(MemoryStore::new()));
        let put = |data: &'static str| {
            let o = Arc::clone(&objects);
            async move {
                o.put("s", Bytes::from(data), PutOptions::default())
                    .await
                    .map(|p| p.etag)
            }
        };
        let first = put("gen 1").await.ok().flatten();
        let base = || Base::Present {
            etag: first.clone(),
        };
        assert!(
            publish(&objects, "s", base())
                .check_unchanged()
                .await
                .is_ok()
        );
        assert_eq!(
            publish(&objects, "s", Base::Present { etag: None }).mode(),
            PutMode::Overwrite
        );
        assert!(
            matches!(
                publish(&objects, "s", Base::Absent).check_unchanged().await,
                Err(PublishError::Conflict)
            ),
            "someone published first"
        );
        put("gen 2 by another writer").await.ok();
        assert!(
            matches!(
                publish(&objects, "s", base()).check_unchanged().await,
                Err(PublishError::Conflict)
            ),
            "the base was replaced"
        );
        assert!(
            publish(&objects, "new", Base::Absent)
                .check_unchanged()
                .await
                .is_ok()
        );
        // No ETag to compare: allowed here, the re-read after publishing checks.
        let no_etag = publish(&objects, "s", Base::Present { etag: None });
        assert!(no_etag.check_unchanged().await.is_ok());
        assert!(
            matches!(
                publish(&objects, "fail/s", Base::Absent)
                    .check_unchanged()
                    .await,
                Err(PublishError::Store(_))
            ),
            "an outage is not an absent shard"
        );
    }

    /// A one-entry shard of `uid` on 2024-05-17, and its key in `store`.
    fn one_file_shard(store: &DesStore, uid: &str) -> (String, Bytes) {
        use des_format::Timestamp;
        use des_format::codec::Codec;
        use des_format::v3::{NewEntry, ShardIdent, ShardWriter};
        let ts = Timestamp::parse_rfc3339("2024-05-17T10:00:00Z").unwrap();
        let loc = store.locate(uid, ts).unwrap();
        let ident = ShardIdent {
            date: 20240517,
            shard_index: u16::try_from(loc.shard_index).unwrap(),
            n_bits: store.n_bits(),
            generation: 1,
            digest_alg: store.digest(),
            written_at: ts,
        };
        let mut w = ShardWriter::new(Vec::new(), ident).unwrap();
        let data = uid.as_bytes();
        let entry = NewEntry {
            uid: uid.into(),
            created_at: ts,
            content_type: None,
            meta: None,
            codec: Codec::None,
            orig_len: data.len() as u64,
            digest: store.digest().digest(data),
        };
        w.add_inline(entry, data).unwrap();
        (
            DesStore::shard_key(&loc),
            Bytes::from(w.finish().unwrap().0),
        )
    }

    /// After an unconditional publish, the re-read decides: our generation
    /// (same ETag), or one `still_ours` accepts; anything else (replaced
    /// right after our PUT, or deleted) is a conflict to rebuild from.
    #[tokio::test]
    async fn confirm_rereads_what_the_shard_holds() {
        let objects: Arc<dyn ObjectStore> = Arc::new(Unconditional(MemoryStore::new()));
        let create = crate::CreateOptions {
            n_bits: Some(4),
            digest: None,
        };
        let (store, _) = DesStore::open_or_create(Arc::clone(&objects), create)
            .await
            .unwrap();
        // Two uids of one shard: all-digit uids route by value (0 and 16).
        let (key, ours) = one_file_shard(&store, "0");
        let (key_b, theirs) = one_file_shard(&store, "16");
        assert_eq!(key, key_b);
        let p = publish(&objects, &key, Base::Absent);
        let put = objects
            .put(&key, ours, PutOptions::default())
            .await
            .unwrap();
        let never = |_: &LoadedIndex| false;
        assert!(
            p.confirm(&store, &put, never).await.is_ok(),
            "our own generation"
        );
        objects
            .put(&key, theirs, PutOptions::default())
            .await
            .unwrap();
        assert!(
            matches!(
                p.confirm(&store, &put, never).await,
                Err(PublishError::Conflict)
            ),
            "replaced right after our PUT"
        );
        let holds_16 = |l: &LoadedIndex| l.index.located().iter().any(|e| e.uid == "16");
        assert!(p.confirm(&store, &put, holds_16).await.is_ok());
        objects.delete(&key).await.unwrap();
        assert!(matches!(
            p.confirm(&store, &put, holds_16).await,
            Err(PublishError::Conflict)
        ));
    }

    /// Conditions where the store enforces them, on the generation built on.
    #[test]
    fn write_mode_follows_the_base() {
        let conditional: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
        let unconditional: Arc<dyn ObjectStore> = Arc::new(Unconditional(MemoryStore::new()));
        let etag = || Base::Present {
            etag: Some("\"e1\"".into()),
        };
        assert_eq!(
            publish(&conditional, "s", Base::Absent).mode(),
            PutMode::Create
        );
        assert_eq!(
            publish(&conditional, "s", etag()).mode(),
            PutMode::UpdateIfMatch("\"e1\"".into())
        );
        assert_eq!(
            publish(&conditional, "s", Base::Present { etag: None }).mode(),
            PutMode::Overwrite
        );
        for base in [Base::Absent, etag()] {
            assert_eq!(
                publish(&unconditional, "s", base).mode(),
                PutMode::Overwrite
            );
        }
    }

    /// A lost condition means "rebuild on what is there now"; anything else
    /// is a failure to report.
    #[test]
    fn lost_conditions_are_conflicts() {
        let lost = crate::Error::PreconditionFailed { key: "s".into() };
        assert!(matches!(
            PublishError::from_store(lost),
            PublishError::Conflict
        ));
        let outage = crate::Error::Unavailable {
            msg: "down".into(),
            retry_after: None,
        };
        assert!(matches!(
            PublishError::from_store(outage),
            PublishError::Store(_)
        ));
    }

    #[test]
    fn etags_compare_without_quotes_or_weak_marker() {
        assert!(same_etag("\"abc-2\"", "abc-2"));
        assert!(same_etag("W/\"abc\"", "\"abc\""));
        assert!(!same_etag("\"abc\"", "\"abd\""));
    }

    #[test]
    fn conflicts_are_retried_then_given_up() {
        let mut n = 0;
        let r: Result<Option<u32>, bool> = rebuild_on_conflict(
            2,
            || {
                n += 1;
                Err(true)
            },
            |c| *c,
        );
        assert_eq!((r, n), (Ok(None), 3));
        let r: Result<Option<u32>, bool> = rebuild_on_conflict(2, || Err(false), |c| *c);
        assert_eq!(r, Err(false));
    }
}
