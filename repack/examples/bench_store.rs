//! Builds a local v3 store of incompressible files (codec none) and deletes
//! a share of them, to measure `des-repack`:
//!
//! ```sh
//! cargo run --release -p des-repack --example bench_store -- /tmp/bench 2000 100000 10
//! time target/release/des-repack --store /tmp/bench --min-garbage-ratio 0 --json
//! ```
//!
//! Arguments: DIR FILES SIZE_BYTES DELETE_PERCENT (files spread over one day,
//! 16 shards).

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use des_format::v3::{NewEntry, ShardIdent, ShardWriter};
use des_format::{Codec, Timestamp};
use des_storage::tombstones::{DeleteReason, Tombstone, TombstoneLog};
use des_storage::{CreateOptions, DesStore, LocalStore, ObjectStore, PutOptions};

fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, files, size, pct] = args.as_slice() else {
        bail!("usage: bench_store DIR FILES SIZE_BYTES DELETE_PERCENT");
    };
    let (files, size, pct): (u64, usize, u64) = (files.parse()?, size.parse()?, pct.parse()?);
    let objects: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir)?);
    let create = CreateOptions {
        n_bits: Some(4),
        digest: None,
    };
    let (store, _) = DesStore::open_or_create(Arc::clone(&objects), create).await?;
    let at = Timestamp::parse_rfc3339("2024-05-17T10:00:00Z")?;
    let mut groups: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for i in 0..files {
        groups.entry(u32::try_from(i % 16)?).or_default().push(i);
    }
    for (shard, members) in groups {
        let ident = ShardIdent {
            date: at.date_number(),
            shard_index: u16::try_from(shard)?,
            n_bits: 4,
            generation: 1,
            digest_alg: store.digest(),
            written_at: Timestamp::now(),
        };
        let mut w = ShardWriter::new(Vec::new(), ident)?;
        for i in members {
            let data = noise(i, size);
            w.add_inline(
                NewEntry {
                    // Numeric uids route by value: i lands in shard i mod 16.
                    uid: i.to_string(),
                    created_at: at,
                    content_type: None,
                    meta: None,
                    codec: Codec::None,
                    orig_len: data.len() as u64,
                    digest: store.digest().digest(&data),
                },
                &data,
            )?;
        }
        let (bytes, _) = w.finish()?;
        let key = format!("{}/{shard:X}.des", at.date_dir());
        objects
            .put(&key, Bytes::from(bytes), PutOptions::default())
            .await
            .with_context(|| key.clone())?;
    }
    let log = TombstoneLog::new(&store);
    // A multiplicative hash spreads the deleted files over every shard.
    let chosen = |i: &u64| i.wrapping_mul(2_654_435_761) % 1000 < pct * 10;
    let mut deleted = 0;
    for i in (0..files).filter(chosen) {
        let t = Tombstone::new(i.to_string(), at, DeleteReason::Gdpr, "bench");
        log.append(&t).await?;
        deleted += 1;
    }
    println!(
        "{files} files of {size} bytes in 16 shards, {deleted} deleted ({} MB)",
        files * size as u64 / 1_000_000
    );
    Ok(())
}
