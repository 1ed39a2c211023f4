//! In-memory backend for unit tests. Behaves like the others (the same
//! conformance suite runs against it), including conditional writes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::error::{Error, Result};
use crate::object::{
    GetOptions, GetResult, LIST_PAGE, ListPage, ObjectMeta, ObjectStore, ObjectWriter, PutMode,
    PutOptions, PutResult, check_key,
};

#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    objects: Mutex<BTreeMap<String, (Bytes, String)>>,
    next_etag: AtomicU64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Bytes, String)>> {
        // A poisoned map is still consistent: every mutation is a single insert/remove.
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn commit(&self, key: &str, data: Bytes, mode: &PutMode) -> Result<PutResult> {
        let mut map = self.lock();
        let current = map.get(key).map(|(_, e)| e.clone());
        match (mode, current) {
            (PutMode::Create, Some(_)) => {
                return Err(Error::PreconditionFailed { key: key.into() });
            }
            (PutMode::UpdateIfMatch(want), cur) if cur.as_deref() != Some(want.as_str()) => {
                return Err(Error::PreconditionFailed { key: key.into() });
            }
            _ => {}
        }
        let etag = format!("\"m{}\"", self.next_etag.fetch_add(1, Ordering::Relaxed));
        let size = data.len() as u64;
        map.insert(key.to_string(), (data, etag.clone()));
        Ok(PutResult {
            etag: Some(etag),
            size,
        })
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    fn describe(&self) -> String {
        "memory://".into()
    }

    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        check_key(key)?;
        let (data, etag) = self
            .inner
            .lock()
            .get(key)
            .cloned()
            .ok_or_else(|| Error::not_found(key))?;
        if opts.if_match.as_ref().is_some_and(|m| *m != etag) {
            return Err(Error::PreconditionFailed { key: key.into() });
        }
        let size = data.len() as u64;
        let range = opts
            .range
            .unwrap_or(crate::object::ByteRange::All)
            .resolve(size)
            .ok_or_else(|| Error::Invalid(format!("{key}: range not satisfiable")))?;
        let slice = data.slice(range.start as usize..range.end as usize);
        let meta = ObjectMeta {
            key: key.into(),
            size,
            etag: Some(etag),
        };
        Ok(GetResult {
            meta,
            range,
            body: Box::pin(futures::stream::iter([Ok(slice)])),
        })
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        check_key(key)?;
        let map = self.inner.lock();
        let (data, etag) = map.get(key).ok_or_else(|| Error::not_found(key))?;
        Ok(ObjectMeta {
            key: key.into(),
            size: data.len() as u64,
            etag: Some(etag.clone()),
        })
    }

    async fn put(&self, key: &str, data: Bytes, opts: PutOptions) -> Result<PutResult> {
        check_key(key)?;
        self.inner.commit(key, data, &opts.mode)
    }

    async fn put_writer(&self, key: &str, opts: PutOptions) -> Result<Box<dyn ObjectWriter>> {
        check_key(key)?;
        Ok(Box::new(MemoryWriter {
            inner: Arc::clone(&self.inner),
            key: key.into(),
            buf: BytesMut::new(),
            opts,
        }))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        self.inner.lock().remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<ListPage> {
        let map = self.inner.lock();
        let lower = match start_after {
            Some(s) if s >= prefix => std::ops::Bound::Excluded(s.to_string()),
            _ => std::ops::Bound::Included(prefix.to_string()),
        };
        let mut objects = Vec::new();
        for (k, (data, etag)) in map.range((lower, std::ops::Bound::Unbounded)) {
            if !k.starts_with(prefix) {
                break;
            }
            objects.push(ObjectMeta {
                key: k.clone(),
                size: data.len() as u64,
                etag: Some(etag.clone()),
            });
            if objects.len() == LIST_PAGE {
                break;
            }
        }
        let next_start_after = if objects.len() == LIST_PAGE {
            objects.last().map(|o| o.key.clone())
        } else {
            None
        };
        Ok(ListPage {
            objects,
            next_start_after,
        })
    }
}

struct MemoryWriter {
    inner: Arc<Inner>,
    key: String,
    buf: BytesMut,
    opts: PutOptions,
}

#[async_trait]
impl ObjectWriter for MemoryWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.buf.extend_from_slice(&chunk);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<PutResult> {
        self.inner
            .commit(&self.key, self.buf.freeze(), &self.opts.mode)
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}
