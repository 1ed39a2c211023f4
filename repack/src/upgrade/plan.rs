//! What a legacy store holds, from one listing: its (date, shard) groups of
//! parts, its big files, and what the upgrade leaves alone.

use std::collections::BTreeMap;

use des_format::legacy::BIG_FILES_DIR;
use des_format::routing;
use des_storage::store::SHARD_EXT;
use des_storage::{DesStore, Layout, ObjectStore, ObjectStoreExt};

use super::error::UpgradeError;
use crate::verify::place_of;

/// The Python DES's per-part sidecars, which hold its deletions (`sidecar`).
pub(super) const META_EXT: &str = ".meta";

/// The legacy parts of one (date, shard): they become its v3 shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// `YYYYMMDD` as a number.
    pub date: u32,
    pub shard_index: u32,
    pub hex: String,
    /// Part keys in ascending order (the newest part last).
    pub parts: Vec<String>,
}

impl Group {
    pub fn date_dir(&self) -> String {
        format!("{:08}", self.date)
    }

    /// `YYYYMMDD/HEX.des`: the same (date, shard) in the v3 layout.
    pub fn v3_key(&self) -> String {
        format!("{}/{}{SHARD_EXT}", self.date_dir(), self.hex)
    }
}

#[derive(Debug, Default)]
pub struct Listing {
    pub groups: Vec<Group>,
    /// Flat `.des` objects whose names are not shard keys under this n_bits
    /// (`20240517_NONE_0000.des`, lower-case hex, …): no reader finds them,
    /// so the upgrade neither converts nor deletes them.
    pub strays: Vec<String>,
    /// `.meta` sidecars (beside their parts, or left after them).
    pub meta_objects: Vec<String>,
    /// `_bigFiles/<sha256>` keys.
    pub big_files: Vec<String>,
}

/// Lists the legacy store (in place: the whole store, v3 keys included,
/// which are skipped).
pub async fn list(objects: &dyn ObjectStore, n_bits: u8) -> Result<Listing, UpgradeError> {
    let big_prefix = format!("{BIG_FILES_DIR}/");
    let mut groups: BTreeMap<(u32, u32), Group> = BTreeMap::new();
    let mut out = Listing::default();
    for meta in objects.list_all("").await? {
        let key = meta.key;
        if key.ends_with(META_EXT) && !key.starts_with("_des/") {
            out.meta_objects.push(key);
            continue;
        }
        if key.starts_with(&big_prefix) {
            out.big_files.push(key);
            continue;
        }
        if key.contains('/') || !key.ends_with(SHARD_EXT) {
            continue;
        }
        let Some(place) = place_of(Layout::Legacy, &key, n_bits) else {
            out.strays.push(key);
            continue;
        };
        groups
            .entry((place.date, place.shard_index))
            .or_insert_with(|| Group {
                date: place.date,
                shard_index: place.shard_index,
                hex: routing::shard_hex(place.shard_index, n_bits),
                parts: Vec::new(),
            })
            .parts
            .push(key);
    }
    out.groups = groups.into_values().collect();
    for g in &mut out.groups {
        g.parts.sort();
    }
    Ok(out)
}

/// Groups spread over the listing, to check n_bits on before writing.
const SAMPLE_GROUPS: usize = 16;

/// n_bits is not recorded in a legacy store, and a wrong one would create a
/// v3 store routing files elsewhere (store.json is written once). So before
/// anything is written, the entries of a sample of groups must route to the
/// shard their part names. A wrong n_bits sends entries elsewhere in most
/// groups; a damaged or renamed part, in one: so the run stops (nothing
/// done) when a quarter of the sampled groups, and at least two (or the
/// only one), have such entries, and otherwise leaves a bad group to refuse
/// itself when its turn comes.
pub async fn check_n_bits(source: &DesStore, listing: &Listing) -> Result<(), UpgradeError> {
    let n_bits = source.n_bits();
    // Part names are spelt for one n_bits (hex width, index range): most of
    // them not being shard keys under this one says it is not theirs.
    let parts: usize = listing.groups.iter().map(|g| g.parts.len()).sum();
    if listing.strays.len() > parts {
        return Err(UpgradeError::Invalid(format!(
            "{} of {} legacy part names (e.g. {}) are not shard keys with n_bits {n_bits}: \
             wrong --n-bits? Nothing was changed",
            listing.strays.len(),
            listing.strays.len() + parts,
            listing.strays.first().map_or("", String::as_str),
        )));
    }
    let groups = &listing.groups;
    let step = groups.len().div_ceil(SAMPLE_GROUPS).max(1);
    let (mut sampled, mut bad, mut example) = (0usize, 0usize, None);
    for g in groups.iter().step_by(step) {
        let mut elsewhere = None;
        let mut any = false;
        for key in &g.parts {
            // Unreadable parts fail their own group later, with the reason.
            let Ok(Some(loaded)) = source.load_index(key).await else {
                continue;
            };
            for e in loaded.index.located() {
                any = true;
                if routing::shard_index(&e.uid, n_bits).ok() != Some(g.shard_index) {
                    elsewhere.get_or_insert_with(|| format!("{:?} in {key}", e.uid));
                }
            }
        }
        sampled += usize::from(any);
        if let Some(e) = elsewhere {
            bad += 1;
            example.get_or_insert(e);
        }
    }
    if bad > 0 && bad * 4 >= sampled && (bad >= 2 || sampled == 1) {
        return Err(UpgradeError::Invalid(format!(
            "in {bad} of {sampled} sampled (date, shard)s, entries do not route to the shard \
             their part names with n_bits {n_bits} (e.g. {}): wrong --n-bits? Nothing was changed",
            example.unwrap_or_default()
        )));
    }
    Ok(())
}
