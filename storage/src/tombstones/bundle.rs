//! Bundles: many tombstones logged as one object, so a batch of deletions
//! costs one write, not one per file.
//!
//! A bundle is `_tombstones/<time>-bundle-<count>-<crc32c>.jsonl`: one
//! tombstone per line (the same JSON as a record), each `(uid, date)` once,
//! created once and never modified, like a record. Its name carries the
//! count and the body's CRC32C, so a damaged or truncated bundle is an error,
//! never a silently shorter list. Listing a bundle costs one GET (its members
//! are not in the name); every other rule is the record's: a member is named
//! as a record logged at the bundle's time would be, is marked applied by
//! that name, and is merged into a segment like a record. The object is
//! deleted by compaction only once every member is in a verified segment.
//!
//! Readers older than bundles skip them (the name does not parse as a
//! record), so every reader must be upgraded before any writer logs one.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use des_format::Timestamp;
use futures::{StreamExt, TryStreamExt};

use super::key::{LOG_PREFIX, LogName, encode_bundle_name, encode_name, parse_bundle_name};
use super::log::TombstoneLog;
use super::record::Tombstone;
use crate::error::{Error, ErrorKind, Result};
use crate::object::{ByteRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions};

/// Most tombstones in one bundle: a reader holds a whole bundle at once.
pub const MAX_BUNDLE: usize = 10_000;

/// Bundles read at once while expanding a listing.
const READ_CONCURRENCY: usize = 16;

fn encode(ts: &[&Tombstone]) -> Result<Bytes> {
    let mut body = Vec::new();
    for t in ts {
        body.extend_from_slice(&t.to_json()?);
        body.push(b'\n');
    }
    Ok(Bytes::from(body))
}

/// The members of the bundle `name` (under [`LOG_PREFIX`]), checked against
/// the count and checksum its name promises.
pub(crate) async fn read_bundle(objects: &dyn ObjectStore, name: &str) -> Result<Vec<Tombstone>> {
    let key = format!("{LOG_PREFIX}{name}");
    let meta = parse_bundle_name(name).ok_or_else(|| Error::corrupt(&key, "not a bundle name"))?;
    let (_, body) = objects.get_range(&key, ByteRange::All).await?;
    if crc32c::crc32c(&body) != meta.crc {
        return Err(Error::corrupt(&key, "bundle checksum mismatch"));
    }
    let mut out = Vec::with_capacity(meta.count);
    for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let t: Tombstone = serde_json::from_slice(line).map_err(|e| Error::corrupt(&key, e))?;
        t.validate().map_err(|e| Error::corrupt(&key, e))?;
        out.push(t);
    }
    if out.len() != meta.count {
        return Err(Error::corrupt(
            &key,
            "bundle holds fewer tombstones than named",
        ));
    }
    Ok(out)
}

/// The member names of a bundle's tombstones.
pub(crate) fn member_names(bundle: &str, logged_at: Timestamp, ts: &[Tombstone]) -> Vec<LogName> {
    ts.iter()
        .map(|t| LogName {
            name: encode_name(logged_at, t.date, &t.uid),
            logged_at,
            date: t.date,
            uid: Some(t.uid.clone()),
            bundle: Some(bundle.to_string()),
        })
        .collect()
}

/// Names under [`LOG_PREFIX`] (prefix removed) → log names: records parse
/// from their names, bundles are read (one GET each). Others are skipped.
pub(crate) async fn expand(objects: &dyn ObjectStore, names: Vec<String>) -> Result<Vec<LogName>> {
    let read = futures::stream::iter(names)
        .map(|name| async move {
            if let Some(n) = super::key::parse_name(&name) {
                return Ok(vec![n]);
            }
            let Some(b) = parse_bundle_name(&name) else {
                return Ok(Vec::new());
            };
            match read_bundle(objects, &name).await {
                Ok(ts) => Ok(member_names(&name, b.logged_at, &ts)),
                // Compacted between the listing and now: its members are
                // in a segment the caller lists next.
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(e),
            }
        })
        .buffered(READ_CONCURRENCY);
    let all: Vec<Vec<LogName>> = read.try_collect().await?;
    Ok(all.into_iter().flatten().collect())
}

/// Object names (under [`LOG_PREFIX`]) whose every member is in `gone`:
/// records in it, and bundles all of whose members in `names` are.
pub(crate) fn fully_gone<'a>(
    names: impl IntoIterator<Item = &'a LogName>,
    gone: &HashSet<String>,
) -> Vec<String> {
    let mut objects: BTreeMap<&str, bool> = BTreeMap::new();
    for n in names {
        let all = objects.entry(n.object()).or_insert(true);
        *all &= gone.contains(&n.name);
    }
    objects
        .into_iter()
        .filter(|(_, all)| *all)
        .map(|(o, _)| o.to_string())
        .collect()
}

impl TombstoneLog {
    /// Logs many tombstones, a bundle per store of the placement and per
    /// [`MAX_BUNDLE`]; returns the key holding each, in input order. A
    /// pair given twice is logged once. Retries are safe: a bundle already
    /// written with the same content is taken as written.
    pub async fn append_bundle(&self, ts: &[Tombstone]) -> Result<Vec<String>> {
        self.append_bundle_at(ts, Timestamp::now()).await
    }

    pub(crate) async fn append_bundle_at(
        &self,
        ts: &[Tombstone],
        at: Timestamp,
    ) -> Result<Vec<String>> {
        let mut by_store: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        let mut first: HashMap<(&str, u32), usize> = HashMap::new();
        let mut same_as = vec![None; ts.len()];
        for (i, t) in ts.iter().enumerate() {
            t.validate()?;
            if let Some(&j) = first.get(&(t.uid.as_str(), t.date)) {
                same_as[i] = Some(j);
                continue;
            }
            first.insert((t.uid.as_str(), t.date), i);
            by_store
                .entry(self.objects_for(&t.uid)?.0)
                .or_default()
                .push(i);
        }
        let mut keys = vec![String::new(); ts.len()];
        for (store, members) in by_store {
            for chunk in members.chunks(MAX_BUNDLE) {
                let key = match chunk {
                    [one] => self.append_at(&ts[*one], at).await?,
                    _ => {
                        let part: Vec<&Tombstone> = chunk.iter().map(|&i| &ts[i]).collect();
                        self.put_bundle(store, &part, at).await?
                    }
                };
                for &i in chunk {
                    keys[i] = key.clone();
                }
            }
        }
        for (i, j) in same_as.iter().enumerate() {
            if let Some(j) = j {
                keys[i] = keys[*j].clone();
            }
        }
        Ok(keys)
    }

    async fn put_bundle(
        &self,
        store: usize,
        ts: &[&Tombstone],
        mut at: Timestamp,
    ) -> Result<String> {
        let objects = self.objects(store)?;
        let body = encode(ts)?;
        let crc = crc32c::crc32c(&body);
        for _ in 0..16 {
            let key = format!("{LOG_PREFIX}{}", encode_bundle_name(at, ts.len(), crc));
            let create = PutOptions {
                mode: PutMode::Create,
            };
            match objects.put(&key, body.clone(), create).await {
                Ok(_) => return Ok(key),
                // Same name means same count and checksum: a retry of a
                // write that landed. Anything else moves on a microsecond.
                Err(e) if e.kind() == ErrorKind::PreconditionFailed => {
                    if objects.get_range(&key, ByteRange::All).await?.1 == body {
                        return Ok(key);
                    }
                    at = Timestamp::from_micros(at.micros() + 1);
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Invalid("could not find a free bundle name".into()))
    }
}
