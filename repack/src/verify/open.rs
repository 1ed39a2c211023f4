//! Turning a command-line location into a store and what to verify in it.

use std::path::Path;
use std::sync::Arc;

use des_storage::cli::Connection;
use des_storage::store::{DEFAULT_N_BITS, SHARD_EXT, STORE_CONFIG_KEY};
use des_storage::{DesStore, Error, ErrorKind, Layout, LocalStore, ObjectStore, Result};

/// What the location named.
#[derive(Debug)]
pub enum Scope {
    /// A store root: verify every shard in it.
    Store,
    /// One shard object. `standalone` when it is not at its place in a v3
    /// store, so its key promises nothing about its contents.
    Shard { key: String, standalone: bool },
}

#[derive(Debug)]
pub struct Opened {
    pub store: DesStore,
    pub scope: Scope,
}

/// Opens `location`: a shard file or object (`…/X.des`), or a store root (a
/// directory, `file://` or remote URL). `layout` and `n_bits` apply to store
/// roots; `layout: None` means a v3 store.
pub async fn open(
    location: &str,
    layout: Option<Layout>,
    n_bits: Option<u8>,
    connection: &Connection,
) -> Result<Opened> {
    let local = match location.split_once("://") {
        None => Some(location),
        Some(("file", path)) => Some(path),
        Some(_) => None,
    };
    let is_shard = match local {
        // Checked first: opening a LocalStore creates its root, and a typo must
        // not leave an empty "store" behind.
        Some(path) => std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .is_file(),
        // Remote prefixes cannot be told from objects by asking; go by the name.
        None => location.ends_with(SHARD_EXT),
    };
    if !is_shard {
        let objects = des_storage::open_location_with(location, connection)?;
        let store = open_store(objects, layout, n_bits).await?;
        return Ok(Opened {
            store,
            scope: Scope::Store,
        });
    }
    if layout.is_some() {
        return Err(Error::Invalid(
            "--layout applies to store roots; a shard's layout is read from its tail".into(),
        ));
    }
    let parts = match local {
        Some(path) => local_parts(Path::new(path))?,
        None => url_parts(location, connection)?,
    };
    open_shard(parts, n_bits).await
}

async fn open_store(
    objects: Arc<dyn ObjectStore>,
    layout: Option<Layout>,
    n_bits: Option<u8>,
) -> Result<DesStore> {
    match layout {
        None | Some(Layout::V3) => {
            let store = DesStore::open(objects).await?;
            match n_bits {
                Some(n) if n != store.n_bits() => Err(Error::Invalid(format!(
                    "store {} has n_bits {}, not {n}",
                    store.describe(),
                    store.n_bits()
                ))),
                _ => Ok(store),
            }
        }
        Some(Layout::Legacy) => {
            let n = n_bits.ok_or_else(|| {
                Error::Invalid(
                    "--layout legacy needs --n-bits: Python DES stores do not record it".into(),
                )
            })?;
            if has_config(objects.as_ref()).await? {
                return Err(Error::Invalid(format!(
                    "{} is a v3 store ({STORE_CONFIG_KEY} exists); drop --layout legacy",
                    objects.describe()
                )));
            }
            DesStore::legacy(objects, n)
        }
    }
}

async fn has_config(objects: &dyn ObjectStore) -> Result<bool> {
    match objects.head(STORE_CONFIG_KEY).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// A shard and the two stores it may belong to.
struct ShardParts {
    /// Its directory, holding it (and legacy `_bigFiles/`) under `name`.
    dir_store: Arc<dyn ObjectStore>,
    /// Two levels up, where a v3 store root would be, with the directory's name.
    root: Option<(Arc<dyn ObjectStore>, String)>,
    name: String,
}

fn utf8_name(p: &Path) -> Result<&str> {
    p.file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Invalid(format!("{}: not a UTF-8 file name", p.display())))
}

fn local_parts(path: &Path) -> Result<ShardParts> {
    let path = path
        .canonicalize()
        .map_err(|e| Error::io(&path.display().to_string(), e))?;
    let name = utf8_name(&path)?.to_string();
    let dir = path
        .parent()
        .ok_or_else(|| Error::Invalid(format!("{}: no parent directory", path.display())))?;
    let root = match dir.parent() {
        Some(root) => Some((
            Arc::new(LocalStore::new(root)?) as Arc<dyn ObjectStore>,
            utf8_name(dir)?.to_string(),
        )),
        None => None,
    };
    Ok(ShardParts {
        dir_store: Arc::new(LocalStore::new(dir)?),
        root,
        name,
    })
}

/// `scheme://bucket/a/b/DIR/NAME` split into where its v3 store root would
/// be (`…/a/b`, with `DIR`), its directory and its name.
#[derive(Debug, PartialEq, Eq)]
struct SplitUrl<'a> {
    /// `None` when the directory is the bucket itself.
    root: Option<(&'a str, &'a str)>,
    dir: &'a str,
    name: &'a str,
}

fn split_url(location: &str) -> Option<SplitUrl<'_>> {
    let (scheme, rest) = location.split_once("://")?;
    let (dir, name) = location.rsplit_once('/')?;
    if name.is_empty() || !rest.contains('/') {
        return None;
    }
    let root = dir
        .rsplit_once('/')
        .filter(|(root, _)| root.len() > scheme.len() + 3);
    Some(SplitUrl { root, dir, name })
}

fn url_parts(location: &str, connection: &Connection) -> Result<ShardParts> {
    let SplitUrl { root, dir, name } = split_url(location)
        .ok_or_else(|| Error::Invalid(format!("{location}: not a shard inside a bucket")))?;
    let root = match root {
        Some((root, dir_name)) => Some((
            des_storage::open_location_with(root, connection)?,
            dir_name.to_string(),
        )),
        None => None,
    };
    Ok(ShardParts {
        dir_store: des_storage::open_location_with(dir, connection)?,
        root,
        name: name.to_string(),
    })
}

/// A v3 shard's big files live at its store root, two levels up; anything
/// else is verified from its own directory (legacy `_bigFiles/` sits beside
/// the shard).
async fn open_shard(parts: ShardParts, n_bits: Option<u8>) -> Result<Opened> {
    let in_v3_store = match &parts.root {
        Some((root, _)) => has_config(root.as_ref()).await?,
        None => false,
    };
    if let (true, Some((root, dir_name))) = (in_v3_store, parts.root) {
        let store = DesStore::open(root).await?;
        let key = format!("{dir_name}/{}", parts.name);
        return Ok(Opened {
            store,
            scope: Scope::Shard {
                key,
                standalone: false,
            },
        });
    }
    let store = DesStore::legacy(parts.dir_store, n_bits.unwrap_or(DEFAULT_N_BITS))?;
    Ok(Opened {
        store,
        scope: Scope::Shard {
            key: parts.name,
            standalone: true,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::{SplitUrl, split_url};

    #[test]
    fn shard_urls() {
        let split = |root, dir, name| Some(SplitUrl { root, dir, name });
        assert_eq!(
            split_url("s3://b/p/20240101/0A.des"),
            split(
                Some(("s3://b/p", "20240101")),
                "s3://b/p/20240101",
                "0A.des"
            )
        );
        assert_eq!(
            split_url("s3://b/20240101/0A.des"),
            split(Some(("s3://b", "20240101")), "s3://b/20240101", "0A.des")
        );
        assert_eq!(split_url("s3://b/0A.des"), split(None, "s3://b", "0A.des"));
        assert_eq!(split_url("s3://b.des"), None);
    }
}
