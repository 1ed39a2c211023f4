//! Reads every file under DIR back from a store and compares bytes:
//! `cargo run --release -p des-packer --example readback -- STORE DIR CREATED_AT`
//! where STORE is a directory, `s3://bucket/prefix` (AWS environment, as for
//! des-pack) or `--zones FILE` (the uid of each file is its path relative to
//! DIR, as `des-pack --dir` assigns). Prints counts and exits non-zero on any
//! difference.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use des_format::Timestamp;
use des_storage::DesStore;
use des_storage::cli::Connection;
use des_storage::zones::open;
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (location, zones, dir, created) = match args.as_slice() {
        [flag, zones, dir, created] if flag == "--zones" => {
            (None, Some(std::path::Path::new(zones)), dir, created)
        }
        [store, dir, created] => (Some(store.as_str()), None, dir, created),
        _ => bail!("usage: readback (STORE | --zones FILE) DIR CREATED_AT"),
    };
    let ts = Timestamp::parse_rfc3339(created)?;
    let store = Arc::new(
        DesStore::open_placed(open(location, zones, &Connection::default())?.placement).await?,
    );
    let root = std::path::PathBuf::from(dir);
    let files: Vec<std::path::PathBuf> = walkdir::WalkDir::new(&root)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    let started = std::time::Instant::now();
    let results = futures::stream::iter(files.iter().cloned())
        .map(|path| {
            let store = Arc::clone(&store);
            let root = root.clone();
            async move {
                let uid = path
                    .strip_prefix(&root)?
                    .to_str()
                    .context("non-UTF-8 path")?
                    .to_string();
                let want = tokio::fs::read(&path).await?;
                let (_, got) = store
                    .get_file(&uid, ts)
                    .await
                    .with_context(|| uid.clone())?;
                anyhow::ensure!(got == want, "{uid}: bytes differ");
                Ok::<u64, anyhow::Error>(want.len() as u64)
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let (mut ok, mut bytes, mut bad) = (0u64, 0u64, 0u64);
    for r in results {
        match r {
            Ok(n) => {
                ok += 1;
                bytes += n;
            }
            Err(e) => {
                bad += 1;
                eprintln!("MISMATCH {e:#}");
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{ok} files identical ({bytes} bytes), {bad} failed, {secs:.1}s");
    if bad > 0 {
        std::process::exit(1);
    }
    Ok(())
}
