//! Publishing a new generation of a shard without silently dropping the
//! files of another packer that published the same shard meanwhile.
//!
//! Where the backend enforces conditional writes (local directories, AWS S3,
//! MinIO), the upload is conditional on the generation we read (`If-Match`
//! its ETag, or `If-None-Match: *` for a new shard): a loser gets
//! `PreconditionFailed` and rebuilds on the winner's generation.
//!
//! Where it does not (Garage ignores both headers), the same rule is
//! approximated in two steps: right before completing the upload, the shard
//! must still be the generation we read (HEAD); right after, re-reading the
//! shard must show our ETag, or else a generation that still holds every file
//! we added (someone built on ours). Otherwise the group is rebuilt on the
//! latest generation. A writer whose check and completion both fall between
//! our completion and our re-read can still win unseen, so on such backends
//! parallel packers must work on disjoint `--shard-range`s
//! (docs/CONCURRENCY.md).

use std::sync::Arc;

use des_storage::bridge::SyncObjectWriter;
use des_storage::{ErrorKind, LoadedIndex, ObjectStore, PutMode, PutResult};

use crate::build::{BuildError, storage_err};
use crate::ingest::Ingest;

/// The shard as we read it before building on it.
enum Base {
    Absent,
    Present { etag: Option<String> },
}

pub(crate) struct Publish<'c> {
    ctx: &'c Ingest<'c>,
    objects: &'c Arc<dyn ObjectStore>,
    key: &'c str,
    base: Base,
    conditional: bool,
}

impl<'c> Publish<'c> {
    pub(crate) fn new(
        ctx: &'c Ingest<'c>,
        objects: &'c Arc<dyn ObjectStore>,
        key: &'c str,
        old: Option<&LoadedIndex>,
    ) -> Self {
        let base = match old {
            None => Base::Absent,
            Some(o) => Base::Present {
                etag: o.object.etag.clone(),
            },
        };
        Self {
            ctx,
            objects,
            key,
            base,
            conditional: objects.capabilities().conditional_put,
        }
    }

    /// The write mode for the upload: conditional where it is enforced.
    pub(crate) fn mode(&self) -> PutMode {
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
    /// generation, or one built on it, is what the shard now holds.
    pub(crate) fn commit(
        self,
        sink: SyncObjectWriter,
        added: &[&str],
    ) -> Result<PutResult, BuildError> {
        if self.conditional {
            return sink.finish().map_err(storage_err);
        }
        if let Err(e) = self.check_unchanged() {
            // The multipart upload is aborted: the shard keeps the winner's generation.
            let _ = sink.abort();
            return Err(e);
        }
        let put = sink.finish().map_err(storage_err)?;
        self.confirm(&put, added)?;
        Ok(put)
    }

    fn check_unchanged(&self) -> Result<(), BuildError> {
        let current = match self.ctx.handle.block_on(self.objects.head(self.key)) {
            Ok(meta) => Some(meta.etag),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(storage_err(e)),
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
            Err(BuildError::Conflict)
        }
    }

    fn confirm(&self, put: &PutResult, added: &[&str]) -> Result<(), BuildError> {
        let latest = self
            .ctx
            .handle
            .block_on(self.ctx.store.load_index(self.key))
            .map_err(|e| {
                BuildError::Fatal(format!(
                    "published {} but could not re-read it to confirm ({e}); \
                     re-run to check",
                    self.key
                ))
            })?;
        // Deleted right after we wrote it: rebuild from nothing.
        let Some(latest) = latest else {
            return Err(BuildError::Conflict);
        };
        if let (Some(ours), Some(now)) = (&put.etag, &latest.object.etag)
            && same_etag(ours, now)
        {
            return Ok(());
        }
        // Replaced after us: fine if the writer built on our generation.
        if added.iter().all(|uid| latest.find(uid).is_some()) {
            Ok(())
        } else {
            Err(BuildError::Conflict)
        }
    }
}

/// `W/"abc"`, `"abc"` and `abc` name the same ETag.
fn same_etag(a: &str, b: &str) -> bool {
    fn bare(e: &str) -> &str {
        let e = e.trim();
        e.strip_prefix("W/").unwrap_or(e).trim_matches('"')
    }
    bare(a) == bare(b)
}

#[cfg(test)]
mod tests {
    use super::same_etag;

    #[test]
    fn etags_compare_without_quotes_or_weak_marker() {
        assert!(same_etag("\"abc-2\"", "abc-2"));
        assert!(same_etag("W/\"abc\"", "\"abc\""));
        assert!(!same_etag("\"abc\"", "\"abd\""));
    }
}
