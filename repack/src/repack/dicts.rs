//! Which dictionary `--recompress` compresses an entry with: one stored
//! dictionary for every entry (`--recompress-dict ID`), or each entry's
//! content class's latest dictionary (`--recompress-dict auto`: the one
//! packers last trained or reused for that class), plain zstd where the
//! class has none.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use des_format::dict::{self, EncoderDict};
use des_storage::DesStore;

use crate::error::{RepackError, Result};

/// `--recompress-dict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecompressDictArg {
    Id(u32),
    Auto,
}

impl FromStr for RecompressDictArg {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            id => dict::parse_id(id)
                .map(Self::Id)
                .map_err(|e| format!("{e}, or auto")),
        }
    }
}

#[derive(Debug, Clone)]
pub enum RecompressDict {
    One(Arc<EncoderDict>),
    ByClass(Arc<ClassDicts>),
}

/// Classes remembered (with their dictionary or its absence). A store has
/// few classes with dictionaries; past this, lookups are simply not cached.
const MAX_CLASSES: usize = 256;

/// The latest dictionary of each content class, read and prepared once.
#[derive(Debug)]
pub struct ClassDicts {
    level: i32,
    cache: Mutex<HashMap<String, Option<Arc<EncoderDict>>>>,
}

impl ClassDicts {
    pub fn new(level: i32) -> Self {
        Self {
            level,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// `class`'s latest dictionary, verified and prepared; `None` if it has none.
    pub async fn for_class(
        &self,
        store: &DesStore,
        class: &str,
    ) -> Result<Option<Arc<EncoderDict>>> {
        if let Some(hit) = self.lock().get(class) {
            return Ok(hit.clone());
        }
        let found = match store.latest_dictionary(class).await? {
            Some(latest) => {
                let stored = store.stored_dictionary(latest.id).await?;
                let encoder = stored
                    .encoder(self.level)
                    .map_err(|e| RepackError::Invalid(format!("dictionary of {class:?}: {e}")))?;
                Some(Arc::new(encoder))
            }
            None => None,
        };
        let mut cache = self.lock();
        if cache.len() < MAX_CLASSES {
            cache.insert(class.to_string(), found.clone());
        }
        Ok(found)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<Arc<EncoderDict>>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RecompressDict {
    /// The dictionary for the entry `uid` (of `content_type`).
    pub async fn for_entry(
        &self,
        store: &DesStore,
        uid: &str,
        content_type: Option<&str>,
    ) -> Result<Option<Arc<EncoderDict>>> {
        match self {
            Self::One(d) => Ok(Some(Arc::clone(d))),
            Self::ByClass(c) => {
                c.for_class(store, &dict::content_class(uid, content_type))
                    .await
            }
        }
    }
}
