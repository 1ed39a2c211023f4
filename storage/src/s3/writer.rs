//! Streaming uploads: one PutObject for small objects, a multipart upload for
//! anything larger than one part. Memory stays at about two parts: the one
//! being filled and the one in flight.

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use tokio::task::JoinHandle;

use super::error::map_sdk_error;
use super::store::{S3Store, abort_upload};
use crate::error::{Error, Result};
use crate::object::{ObjectWriter, PutMode, PutResult};

/// S3's limit on parts per upload.
const MAX_PARTS: i32 = 10_000;

pub(crate) struct S3Writer {
    store: S3Store,
    key: String,
    mode: PutMode,
    buf: BytesMut,
    size: u64,
    upload: Option<Upload>,
    /// A part failed to upload: the object would have a hole, so nothing more
    /// may be written or completed.
    poisoned: bool,
}

struct Upload {
    id: String,
    next_part: i32,
    done: Vec<CompletedPart>,
    in_flight: Option<JoinHandle<Result<CompletedPart>>>,
}

impl S3Writer {
    pub(crate) fn new(store: S3Store, key: &str, mode: PutMode) -> Self {
        Self {
            store,
            key: key.to_string(),
            mode,
            buf: BytesMut::new(),
            size: 0,
            upload: None,
            poisoned: false,
        }
    }

    fn check_poisoned(&self) -> Result<()> {
        if self.poisoned {
            return Err(Error::Invalid(format!(
                "{}: an earlier part failed to upload",
                self.key
            )));
        }
        Ok(())
    }

    fn part_size(&self) -> usize {
        self.store.config().part_size
    }

    /// Starts the multipart upload on the first full part.
    async fn upload(&mut self) -> Result<&mut Upload> {
        if self.upload.is_none() {
            let out = self
                .store
                .client()
                .await
                .create_multipart_upload()
                .bucket(self.store.bucket())
                .key(self.store.full_key(&self.key))
                .send()
                .await
                .map_err(|e| map_sdk_error(&self.key, e))?;
            let id = out.upload_id().ok_or_else(|| Error::Unavailable {
                msg: format!("{}: CreateMultipartUpload returned no upload id", self.key),
                retry_after: None,
            })?;
            self.upload = Some(Upload {
                id: id.to_string(),
                next_part: 1,
                done: Vec::new(),
                in_flight: None,
            });
        }
        self.upload
            .as_mut()
            .ok_or_else(|| Error::Invalid("upload vanished".into()))
    }

    /// Sends one part in the background after the previous one has landed, so
    /// filling the next part overlaps with the network.
    async fn send_part(&mut self, data: Bytes) -> Result<()> {
        let client = self.store.client().await.clone();
        let (bucket, full) = (
            self.store.bucket().to_string(),
            self.store.full_key(&self.key),
        );
        let key = self.key.clone();
        let upload = self.upload().await?;
        wait_in_flight(upload).await?;
        let number = upload.next_part;
        if number > MAX_PARTS {
            return Err(Error::Invalid(format!(
                "{key}: more than {MAX_PARTS} parts; raise the S3 part size"
            )));
        }
        upload.next_part += 1;
        let id = upload.id.clone();
        upload.in_flight = Some(tokio::spawn(async move {
            let len = i64::try_from(data.len()).unwrap_or(i64::MAX);
            let out = client
                .upload_part()
                .bucket(bucket)
                .key(full)
                .upload_id(id)
                .part_number(number)
                .content_length(len)
                .body(ByteStream::from(data))
                .send()
                .await
                .map_err(|e| map_sdk_error(&key, e))?;
            Ok(CompletedPart::builder()
                .set_e_tag(out.e_tag)
                .part_number(number)
                .build())
        }));
        Ok(())
    }

    async fn complete(&mut self) -> Result<PutResult> {
        if !self.buf.is_empty() {
            let last = self.buf.split().freeze();
            self.send_part(last).await?;
        }
        let client = self.store.client().await.clone();
        let unconditional = self.store.conditional_put_known_unsupported();
        let (bucket, full) = (
            self.store.bucket().to_string(),
            self.store.full_key(&self.key),
        );
        let upload = self.upload().await?;
        wait_in_flight(upload).await?;
        let parts = CompletedMultipartUpload::builder()
            .set_parts(Some(upload.done.clone()))
            .build();
        let mut req = client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(full)
            .upload_id(&upload.id)
            .multipart_upload(parts);
        // A server known to ignore conditions gets none, so a condition it might
        // half-implement on this less-travelled call cannot surprise us.
        if !unconditional {
            req = match &self.mode {
                PutMode::Overwrite => req,
                PutMode::Create => req.if_none_match("*"),
                PutMode::UpdateIfMatch(etag) => req.if_match(etag),
            };
        }
        let out = req.send().await.map_err(|e| map_sdk_error(&self.key, e))?;
        Ok(PutResult {
            etag: out.e_tag().map(str::to_string),
            size: self.size,
        })
    }

    /// Aborts the multipart upload, if one was started.
    async fn abort_upload(&mut self) -> Result<()> {
        let Some(mut upload) = self.upload.take() else {
            return Ok(());
        };
        // A part still uploading could otherwise land after the abort and
        // linger as an orphan.
        let _ = wait_in_flight(&mut upload).await;
        let client = self.store.client().await;
        abort_upload(
            client,
            self.store.bucket(),
            &self.store.full_key(&self.key),
            &upload.id,
        )
        .await
    }
}

async fn wait_in_flight(upload: &mut Upload) -> Result<()> {
    if let Some(h) = upload.in_flight.take() {
        let part = h
            .await
            .map_err(|e| Error::other("S3 part upload task failed", e))??;
        upload.done.push(part);
    }
    Ok(())
}

#[async_trait]
impl ObjectWriter for S3Writer {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.check_poisoned()?;
        self.size += chunk.len() as u64;
        self.buf.extend_from_slice(&chunk);
        while self.buf.len() >= self.part_size() {
            let part = self.buf.split_to(self.part_size()).freeze();
            if let Err(e) = self.send_part(part).await {
                self.poisoned = true;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<PutResult> {
        if let Err(e) = self.check_poisoned() {
            let _ = self.abort_upload().await;
            return Err(e);
        }
        if self.upload.is_none() {
            // Never filled a part: one plain PUT, conditions included.
            let data = self.buf.split().freeze();
            return self.store.put_object(&self.key, data, &self.mode).await;
        }
        let res = self.complete().await;
        if res.is_ok() {
            self.upload = None;
        } else {
            // A failed complete (412 included) leaves the upload open on S3.
            let _ = self.abort_upload().await;
        }
        res
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.buf = BytesMut::new();
        self.abort_upload().await
    }
}

impl Drop for S3Writer {
    /// Dropped mid-upload (error, cancelled task): abort in the background on
    /// the current runtime, best effort. `abort_stale_uploads` catches the
    /// rest, e.g. after a crash.
    fn drop(&mut self) {
        let Some(mut upload) = self.upload.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // The client exists: it started this upload.
        let Some(client) = self.store.client_now().cloned() else {
            return;
        };
        let (bucket, full) = (
            self.store.bucket().to_string(),
            self.store.full_key(&self.key),
        );
        rt.spawn(async move {
            let _ = wait_in_flight(&mut upload).await;
            let _ = abort_upload(&client, &bucket, &full, &upload.id).await;
        });
    }
}
