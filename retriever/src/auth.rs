//! API keys: `Authorization: Bearer <key>` checked against a keys file that
//! holds only SHA-256 hashes of the keys, so the file can be shared with
//! whoever deploys the service without handing out access.
//!
//! ```toml
//! [[keys]]
//! name = "web-frontend"
//! sha256 = "<hex of sha256(key)>"     # des-retriever hash-key --name web-frontend
//! scopes = ["read"]                   # read, delete, metrics
//! allow_prefixes = ["public/"]        # optional: uids the key may touch
//! deny_prefixes = ["public/secret/"]  # optional: wins over allow
//! expires_at = "2027-01-01T00:00:00Z" # optional
//! ```
//!
//! (YAML: the same under `keys:`.) The file is reloaded on SIGHUP; a file
//! that fails to load leaves the previous keys in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix_web::http::header::{self, HeaderMap};
use arc_swap::ArcSwap;
use des_format::Timestamp;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::config::AuthSetting;
use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Read,
    Delete,
    /// `/metrics` and the detailed `/ready` on the public port (when no
    /// admin listener serves them); uid prefixes do not apply.
    Metrics,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Delete => "delete",
            Self::Metrics => "metrics",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read API keys file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("API keys file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("API keys file {path}: key {name:?}: {message}")]
    Invalid {
        path: PathBuf,
        name: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    sha256: String,
    scopes: Vec<Scope>,
    #[serde(default)]
    allow_prefixes: Vec<String>,
    #[serde(default)]
    deny_prefixes: Vec<String>,
    #[serde(default)]
    expires_at: Option<String>,
}

/// One key, ready to check.
#[derive(Debug)]
pub struct Key {
    pub name: Arc<str>,
    hash: [u8; 32],
    scopes: Vec<Scope>,
    allow_prefixes: Vec<String>,
    deny_prefixes: Vec<String>,
    expires_at: Option<Timestamp>,
}

impl Key {
    fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at
            .is_some_and(|at| at.unix_seconds() <= now.unix_seconds())
    }

    /// Whether the key may do `scope` to `uid`; the error says why not.
    fn permits(&self, scope: Scope, uid: &str) -> Result<(), String> {
        if !self.scopes.contains(&scope) {
            return Err(format!("key {:?} lacks scope {}", self.name, scope.name()));
        }
        if scope == Scope::Metrics {
            return Ok(());
        }
        if self
            .deny_prefixes
            .iter()
            .any(|p| uid.starts_with(p.as_str()))
        {
            return Err(format!("key {:?} may not access this uid", self.name));
        }
        let allowed = self.allow_prefixes.is_empty()
            || self
                .allow_prefixes
                .iter()
                .any(|p| uid.starts_with(p.as_str()));
        if !allowed {
            return Err(format!("key {:?} may not access this uid", self.name));
        }
        Ok(())
    }
}

/// Every key of one version of the keys file.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Arc<Key>>,
}

impl KeySet {
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        let parsed: Result<KeysFile, String> = if yaml {
            serde_norway::from_str(&text).map_err(|e| e.to_string())
        } else {
            toml::from_str(&text).map_err(|e| e.to_string())
        };
        let file = parsed.map_err(|message| AuthError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        Self::from_entries(path, file.keys)
    }

    fn from_entries(path: &Path, entries: Vec<KeyEntry>) -> Result<Self, AuthError> {
        let mut keys: Vec<Arc<Key>> = Vec::with_capacity(entries.len());
        for entry in entries {
            let invalid = |message: String| AuthError::Invalid {
                path: path.to_path_buf(),
                name: entry.name.clone(),
                message,
            };
            let key = compile(&entry).map_err(invalid)?;
            if keys.iter().any(|k| k.name == key.name) {
                return Err(invalid("name used twice".into()));
            }
            // Two names for one key would make "who did this" ambiguous.
            if keys.iter().any(|k| k.hash == key.hash) {
                return Err(invalid("same key hash as another entry".into()));
            }
            keys.push(Arc::new(key));
        }
        Ok(Self { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The entry whose hash matches the presented key. Every entry is
    /// compared, in constant time, so timing tells nothing about near misses.
    fn find(&self, presented: &str) -> Option<&Arc<Key>> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = u32::MAX;
        for (i, key) in self.keys.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            found = u32::conditional_select(&found, &i, key.hash.ct_eq(&digest));
        }
        self.keys.get(usize::try_from(found).ok()?)
    }
}

fn compile(entry: &KeyEntry) -> Result<Key, String> {
    if entry.name.trim().is_empty() {
        return Err("empty name".into());
    }
    let hash = hex::decode(entry.sha256.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or("sha256 must be 64 hex digits (the SHA-256 of the key)")?;
    if entry.scopes.is_empty() {
        return Err("no scopes".into());
    }
    if entry.allow_prefixes.iter().any(String::is_empty) {
        return Err("an empty allow_prefix would allow everything; omit allow_prefixes".into());
    }
    let expires_at = entry
        .expires_at
        .as_deref()
        .map(|s| Timestamp::parse_rfc3339(s.trim()).map_err(|e| format!("expires_at: {e}")))
        .transpose()?;
    Ok(Key {
        name: Arc::from(entry.name.trim()),
        hash,
        scopes: entry.scopes.clone(),
        allow_prefixes: entry.allow_prefixes.clone(),
        deny_prefixes: entry.deny_prefixes.clone(),
        expires_at,
    })
}

/// Who made a request: a key, or nobody when auth is off.
#[derive(Debug, Clone)]
pub struct Principal(Option<Arc<Key>>);

impl Principal {
    pub fn name(&self) -> Option<&str> {
        self.0.as_deref().map(|k| &*k.name)
    }

    /// 403 unless the key may do `scope` to `uid`.
    pub fn authorize(&self, scope: Scope, uid: &str) -> Result<(), ApiError> {
        match &self.0 {
            None => Ok(()),
            Some(key) => key.permits(scope, uid).map_err(ApiError::forbidden),
        }
    }
}

#[derive(Debug)]
pub enum Auth {
    Off,
    Keys {
        path: PathBuf,
        current: ArcSwap<KeySet>,
    },
}

impl Auth {
    pub fn from_setting(setting: &AuthSetting) -> Result<Self, AuthError> {
        match setting {
            AuthSetting::Off => Ok(Self::Off),
            AuthSetting::Keys(path) => {
                let keys = KeySet::load(path)?;
                if keys.is_empty() {
                    tracing::warn!(path = %path.display(), "API keys file has no keys: every request will be refused");
                }
                Ok(Self::Keys {
                    path: path.clone(),
                    current: ArcSwap::from_pointee(keys),
                })
            }
        }
    }

    /// Whether requests need a key.
    pub fn is_on(&self) -> bool {
        !matches!(self, Self::Off)
    }

    /// The keys file, when auth is on.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Off => None,
            Self::Keys { path, .. } => Some(path),
        }
    }

    /// Re-reads the keys file. On error the keys in force stay, so a typo
    /// in an edit cannot lock everyone out (or in).
    pub fn reload(&self) -> Result<usize, AuthError> {
        let Self::Keys { path, current } = self else {
            return Ok(0);
        };
        let keys = KeySet::load(path)?;
        let n = keys.len();
        current.store(Arc::new(keys));
        Ok(n)
    }

    /// 401 unless the request carries a known, unexpired key.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let Self::Keys { current, .. } = self else {
            return Ok(Principal(None));
        };
        let token = bearer(headers)?;
        let keys = current.load();
        let key = keys
            .find(token)
            .ok_or_else(|| ApiError::unauthorized("unknown API key"))?;
        if key.is_expired(Timestamp::now()) {
            return Err(ApiError::unauthorized(format!(
                "API key {:?} has expired",
                key.name
            )));
        }
        Ok(Principal(Some(Arc::clone(key))))
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let missing = || ApiError::unauthorized("send an API key as `Authorization: Bearer <key>`");
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(missing)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(missing)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(missing());
    }
    Ok(token)
}

/// `des-retriever hash-key`: the keys-file entry for `key`.
pub fn key_entry(name: &str, scopes: &[String], key: &str) -> Result<String, String> {
    let scopes = if scopes.is_empty() {
        vec!["read".to_string()]
    } else {
        scopes.to_vec()
    };
    for s in &scopes {
        if !matches!(s.as_str(), "read" | "delete" | "metrics") {
            return Err(format!("scope must be read, delete or metrics, not {s:?}"));
        }
    }
    let quoted: Vec<String> = scopes.iter().map(|s| format!("{s:?}")).collect();
    Ok(format!(
        "[[keys]]\nname = {name:?}\nsha256 = \"{}\"\nscopes = [{}]\n",
        hex::encode(Sha256::digest(key.as_bytes())),
        quoted.join(", ")
    ))
}

/// A new random key: 32 bytes, hex.
pub fn new_key() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests;
