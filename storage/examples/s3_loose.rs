//! Uploads every file under a directory to S3 as loose objects and prints a
//! presigned GET for each, so a plain HTTP client (wrk, curl) can read them
//! straight from the server. Used by `bench/retriever_s3.sh` for the
//! "direct GET of a loose object" baseline.
//!
//!   cargo run --release -p des-storage --example s3_loose -- DIR BUCKET PREFIX [SECONDS]
//!
//! Endpoint, region and credentials come from the usual `AWS_*` variables and
//! `DES_S3_*`, as for every DES tool: uploads go through des-storage's own S3
//! store, and the presigning client uses the same addressing style.
//! Output, one line per file in sorted order:
//! `<path relative to DIR>\t</bucket/key?X-Amz-...>` (path and query of the
//! presigned URL, valid for SECONDS, default 3600). `--no-upload` only signs.
//!
//! `--shard-ranges CREATED_AT` reads instead: PREFIX is a DES store that
//! holds DIR's files (packed with that `--created-at`), and each line is
//! `<uid>\t</bucket/prefix/shard?X-Amz-...>\tbytes=<first>-<last>`, a
//! presigned GET of the file's shard plus the `Range` of its entry: exactly
//! the storage request the retriever makes on a hot-cache miss, so the
//! benchmark can measure what the S3 server alone costs for it.

use std::collections::HashMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_s3::presigning::PresigningConfig;
use bytes::Bytes;
use des_format::Timestamp;
use des_storage::{DesStore, LoadedIndex, PutOptions, S3Config};
use futures::{StreamExt, TryStreamExt};

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// Uploads in flight at once.
const PARALLEL: usize = 16;

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let upload = !args.iter().any(|a| a == "--no-upload");
    args.retain(|a| a != "--no-upload");
    let shard_ranges = match args.iter().position(|a| a == "--shard-ranges") {
        Some(i) if i + 1 < args.len() => {
            let at = Timestamp::parse_rfc3339(&args[i + 1])?;
            args.drain(i..i + 2);
            Some(at)
        }
        Some(_) => return Err("--shard-ranges needs CREATED_AT".into()),
        None => None,
    };
    let [dir, bucket, prefix, rest @ ..] = args.as_slice() else {
        return Err("usage: s3_loose DIR BUCKET PREFIX [SECONDS] [--no-upload]".into());
    };
    let expires = match rest.first() {
        Some(s) => Duration::from_secs(s.parse()?),
        None => Duration::from_secs(3600),
    };
    let prefix = prefix.trim_matches('/');
    let dir = Path::new(dir);

    let location = format!("s3://{bucket}/{prefix}");
    let shared = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(S3Config::from_url(&location)?.path_style())
        .build();
    let client = aws_sdk_s3::Client::from_conf(config);

    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.sort();
    let mut entries = Vec::with_capacity(files.len());
    for path in files {
        let rel = path
            .strip_prefix(dir)?
            .to_str()
            .ok_or("file name is not UTF-8")?
            .to_string();
        entries.push((path, rel));
    }

    if let Some(created_at) = shard_ranges {
        let store = DesStore::open(des_storage::open_location(&location)?).await?;
        let out = presign_shard_ranges(
            &client, bucket, prefix, &store, &entries, created_at, expires,
        )
        .await?;
        print!("{out}");
        return Ok(());
    }
    if upload {
        let store = des_storage::open_location(&location)?;
        futures::stream::iter(entries.iter().map(|(path, rel)| {
            let store = &store;
            async move {
                let body = Bytes::from(tokio::fs::read(path).await?);
                store.put(rel, body, PutOptions::default()).await?;
                Ok::<_, Box<dyn Error + Send + Sync>>(())
            }
        }))
        .buffer_unordered(PARALLEL)
        .try_collect::<()>()
        .await?;
        eprintln!("uploaded {} objects to {location}", entries.len());
    }

    let presigning = PresigningConfig::expires_in(expires)?;
    let mut out = String::new();
    for (_, rel) in &entries {
        let path_query = presign(&client, bucket, &object_key(prefix, rel), &presigning).await?;
        out.push_str(rel);
        out.push('\t');
        out.push_str(&path_query);
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}

fn object_key(prefix: &str, rel: &str) -> String {
    if prefix.is_empty() {
        rel.to_string()
    } else {
        format!("{prefix}/{rel}")
    }
}

/// Path and query of a presigned GET (wrk takes the host from its command line).
async fn presign(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    presigning: &PresigningConfig,
) -> Result<String> {
    let req = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .presigned(presigning.clone())
        .await?;
    let uri = req.uri();
    let after_scheme = uri.split_once("://").map_or(uri, |(_, r)| r);
    Ok(after_scheme
        .find('/')
        .map_or("/", |i| &after_scheme[i..])
        .to_string())
}

/// One line per file: its shard's presigned GET and its entry's `Range`. The
/// `Range` header is not signed (a presigned URL signs only `host`), so a
/// client may send it as is.
async fn presign_shard_ranges(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    store: &DesStore,
    entries: &[(PathBuf, String)],
    created_at: Timestamp,
    expires: Duration,
) -> Result<String> {
    let presigning = PresigningConfig::expires_in(expires)?;
    let mut indexes: HashMap<String, (LoadedIndex, String)> = HashMap::new();
    let mut out = String::new();
    for (_, uid) in entries {
        let key = DesStore::shard_key(&store.locate(uid, created_at)?);
        if !indexes.contains_key(&key) {
            let loaded = store.load_index(&key).await?.ok_or("shard not found")?;
            let url = presign(client, bucket, &object_key(prefix, &key), &presigning).await?;
            indexes.insert(key.clone(), (loaded, url));
        }
        let (loaded, url) = &indexes[&key];
        let located = loaded
            .find(uid)
            .ok_or_else(|| format!("{uid} not in {key}"))?;
        let range = located
            .shard_range()
            .ok_or_else(|| format!("{uid} is not inline"))?;
        out.push_str(&format!(
            "{uid}\t{url}\tbytes={}-{}\n",
            range.start,
            range.end - 1
        ));
    }
    Ok(out)
}
