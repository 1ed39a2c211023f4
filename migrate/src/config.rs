//! Command line and the validated configuration of a run.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use des_format::Compression;
use des_packer::options::{DEFAULT_BIG_FILE_THRESHOLD, DEFAULT_JOBS, DEFAULT_PLAN_MEMORY};
use des_packer::{PackOptions, SourceRoots};
use des_storage::cli::StoreArgs;
use des_storage::push::Pushgateway;
use des_storage::units::{parse_duration, parse_size};
use serde::Serialize;

use crate::error::MigrateError;

/// The packer lists at most this many failures per run; a batch no larger
/// than that always has every failed row named, so the rows to mark are
/// known exactly.
pub const MAX_BATCH_SIZE: usize = des_packer::report::MAX_REPORTED_FAILURES;
pub const DEFAULT_BATCH_SIZE: usize = 5_000;

/// PostgreSQL truncates longer identifiers silently, which would make a
/// quoted name refer to another column; refuse them instead.
const MAX_IDENT_LEN: usize = 63;

const AFTER_HELP: &str = "\
MODES:
    per-record  rows with <archived-column> = false and <created-at-column> older than
                --archive-age-days, in (created_at, uid) order, --batch-size rows at a
                time; each batch is packed, then marked archived with one UPDATE
    watermark   rows with created_at in (archived_until, now - lag_days], read from the
                one-row --watermark-table (created if missing; lag_days there is
                authoritative, --lag-days only seeds it); the window is packed in one run
                and archived_until advanced once it is durable. The main table is not
                written. If rows fail, archived_until stops just before the earliest
                failed row, so it and everything after it are tried again next cycle
                (already stored files are skipped: packing is idempotent)

EXIT CODES:
    0  every selected row is archived (or there was nothing to do)
    1  some rows failed (file missing, unreadable, outside --source-root, ...): each is
       listed with its reason and left unarchived; all other rows were archived
       (also: a verified source could not be deleted with --delete-source-files)
    2  usage or configuration error (bad argument or connection string, missing table
       or column, no privilege)
    3  database unreachable (refused, timeout, TLS, authentication) or failed during
       the run; rows of the batch in progress are not marked
    4  the store failed as a whole (cannot be opened or written), or local work files
       could not be written; rows of the batch in progress are not marked
    5  another des-migrate holds this table's lock (pg advisory lock); nothing done

Crash safety: rows are marked (or the watermark advanced) only after their files
are durable in the store; a crash in between re-packs them on the next run, which
finds them already stored. --delete-source-files deletes a source only after its
row is marked (or covered by the watermark) and the stored copy was read back and
its digest matched the source's.

Connection string: libpq key=value or postgresql:// URL. sslmode disable, prefer
(default), require (encrypted, certificate not checked), verify-ca (chain checked),
verify-full (chain and host name checked); sslrootcert=FILE (PEM) or the system's
CA certificates. Timestamps without time zone are taken as UTC. Column and table
names are used as given (quoted: case-sensitive); --table may be schema.table.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    PerRecord,
    Watermark,
}

#[derive(Debug, Parser)]
#[command(
    name = "des-migrate",
    version,
    about = "Archive the files listed in a PostgreSQL table into a DES store",
    after_help = des_storage::units::after_help(AFTER_HELP),
    group = StoreArgs::required_group()
)]
pub struct Args {
    /// PostgreSQL connection string (URL or key=value), e.g.
    /// postgresql://des@db/app?sslmode=verify-full
    #[arg(long, env = "DES_MIGRATE_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// per-record (mark rows archived) or watermark (advance archived_until)
    #[arg(long, value_enum, default_value = "per-record")]
    pub mode: Mode,
    /// The table listing the files (schema.table allowed)
    #[arg(long, default_value = "files")]
    pub table: String,
    #[arg(long, default_value = "uid")]
    pub uid_column: String,
    #[arg(long, default_value = "created_at")]
    pub created_at_column: String,
    /// Column holding a local path or s3://bucket/key
    #[arg(long, default_value = "file_location")]
    pub location_column: String,
    /// Optional column with the file size (a planning hint only)
    #[arg(long)]
    pub size_column: Option<String>,
    /// Optional column with the content type stored with each file
    #[arg(long)]
    pub content_type_column: Option<String>,
    /// per-record: boolean column set to true once a row's file is stored
    #[arg(long, default_value = "archived")]
    pub archived_column: String,
    /// per-record: only rows whose created_at is older than this many days
    #[arg(long, default_value_t = 30)]
    pub archive_age_days: u32,
    /// Rows read from the database and packed at a time (per-record: also
    /// marked with one UPDATE); at most 10000
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// watermark: the one-row table (archived_until, lag_days); schema.table allowed
    #[arg(long, default_value = "des_archive_config")]
    pub watermark_table: String,
    /// watermark: lag_days written when the watermark row is created
    #[arg(long, default_value_t = 1)]
    pub lag_days: u32,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Shard bits (4..=16), only when creating the store
    #[arg(long)]
    pub n_bits: Option<u8>,
    /// New store uses SHA-256 content digests instead of BLAKE3
    #[arg(long)]
    pub fips: bool,
    /// auto | zstd | lz4 | none
    #[arg(long, default_value = "auto")]
    pub compression: String,
    #[arg(long, default_value_t = des_format::codec::DEFAULT_ZSTD_LEVEL)]
    pub zstd_level: i32,
    /// Files larger than this become separate objects
    #[arg(long, value_name = "SIZE", default_value_t = DEFAULT_BIG_FILE_THRESHOLD, value_parser = parse_size)]
    pub big_file_threshold: u64,
    /// Shards built in parallel
    #[arg(long, short = 'j', default_value_t = DEFAULT_JOBS)]
    pub jobs: usize,
    /// Packer planning memory before spilling to disk
    #[arg(long, value_name = "SIZE", default_value_t = DEFAULT_PLAN_MEMORY as u64, value_parser = parse_size)]
    pub plan_memory: u64,
    /// Where manifests and the packer's spill files go (default: a temp dir)
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Only read sources inside ROOT (directory or s3://bucket/prefix); repeatable
    #[arg(long = "source-root", value_name = "ROOT")]
    pub source_roots: Vec<String>,
    /// Relative file locations resolve against this directory (default: the
    /// current directory)
    #[arg(long)]
    pub source_base: Option<PathBuf>,
    /// At start, abort multipart uploads / remove temp files of crashed
    /// writers older than this
    #[arg(long, default_value = "24h", value_name = "DURATION", value_parser = parse_duration)]
    pub abort_stale_uploads_after: Duration,
    /// Delete each source once its row is archived and the stored copy was
    /// read back and matched it
    #[arg(long)]
    pub delete_source_files: bool,
    /// Select and check rows (local sources exist), write nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Print the JSON report on stdout instead of the text summary
    #[arg(long)]
    pub json: bool,
    /// Write Prometheus metrics here (counters accumulate across runs)
    #[arg(long, value_name = "PATH", env = "DES_METRICS_FILE")]
    pub metrics_file: Option<PathBuf>,
    /// PUT the run's metrics (those of --metrics-file) to this Prometheus
    /// Pushgateway, group job="des-migrate"; a failed push is a warning and
    /// does not change the exit status
    #[arg(long, value_name = "URL", env = "DES_PUSHGATEWAY_URL", value_parser = Pushgateway::parse)]
    pub pushgateway: Option<Pushgateway>,
    /// Give up connecting to the database after this long
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// No progress on stderr
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// A table or column name, checked and quoted for SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident {
    /// As given (for messages and lock keys).
    pub name: String,
    /// Quoted SQL text: `"name"` or `"schema"."table"`.
    pub sql: String,
}

impl Ident {
    /// A column name: one identifier, taken literally.
    pub fn column(name: &str) -> Result<Self, MigrateError> {
        Ok(Self {
            name: name.to_string(),
            sql: quote_part(name, name)?,
        })
    }

    /// A table name: `table` or `schema.table`.
    pub fn table(name: &str) -> Result<Self, MigrateError> {
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() > 2 {
            return Err(MigrateError::Usage(format!(
                "table name {name:?}: expected TABLE or SCHEMA.TABLE"
            )));
        }
        let quoted = parts
            .iter()
            .map(|p| quote_part(p, name))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: name.to_string(),
            sql: quoted.join("."),
        })
    }
}

/// Quoting makes any name safe to splice into SQL (there is no other way to
/// pass an identifier); the checks catch names PostgreSQL would alter.
fn quote_part(part: &str, whole: &str) -> Result<String, MigrateError> {
    let bad = |why: &str| MigrateError::Usage(format!("name {whole:?}: {why}"));
    if part.is_empty() {
        return Err(bad("empty"));
    }
    if part.contains('\0') {
        return Err(bad("contains a NUL character"));
    }
    if part.len() > MAX_IDENT_LEN {
        return Err(bad("longer than 63 bytes"));
    }
    Ok(format!("\"{}\"", part.replace('"', "\"\"")))
}

/// The business table's names.
#[derive(Debug, Clone)]
pub struct TableNames {
    pub table: Ident,
    pub uid: Ident,
    pub created_at: Ident,
    pub location: Ident,
    pub size: Option<Ident>,
    pub content_type: Option<Ident>,
    pub archived: Ident,
}

/// A validated run configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub connect_timeout: Duration,
    pub mode: Mode,
    pub names: TableNames,
    pub archive_age_days: u32,
    pub batch_size: usize,
    pub watermark_table: Ident,
    pub lag_days: u32,
    /// Store and packing options (`out`/`zones` included).
    pub pack: PackOptions,
    pub work_dir: Option<PathBuf>,
    pub source_base: PathBuf,
    pub delete_source_files: bool,
    pub dry_run: bool,
    /// Progress lines on stderr.
    pub progress: bool,
}

impl Config {
    pub fn from_args(a: &Args) -> Result<Self, MigrateError> {
        if a.batch_size == 0 || a.batch_size > MAX_BATCH_SIZE {
            return Err(MigrateError::Usage(format!(
                "--batch-size must be 1..={MAX_BATCH_SIZE} (the packer names at most that many failed files per run), got {}",
                a.batch_size
            )));
        }
        if a.store.store.is_some() && a.store.zones.is_some() {
            // DES_STORE in the environment is not an explicit choice clap can see.
            return Err(MigrateError::Usage(
                "give either --store (or DES_STORE) or --zones, not both".into(),
            ));
        }
        let names = TableNames {
            table: Ident::table(&a.table)?,
            uid: Ident::column(&a.uid_column)?,
            created_at: Ident::column(&a.created_at_column)?,
            location: Ident::column(&a.location_column)?,
            size: a.size_column.as_deref().map(Ident::column).transpose()?,
            content_type: a
                .content_type_column
                .as_deref()
                .map(Ident::column)
                .transpose()?,
            archived: Ident::column(&a.archived_column)?,
        };
        let pack = PackOptions {
            store: a.store.clone(),
            abort_stale_uploads_after: a.abort_stale_uploads_after,
            n_bits: a.n_bits,
            fips: a.fips,
            compression: Compression::parse(&a.compression, a.zstd_level)
                .map_err(|e| MigrateError::Usage(format!("--compression: {e}")))?,
            big_file_threshold: a.big_file_threshold,
            jobs: a.jobs.max(1),
            plan_memory: usize::try_from(a.plan_memory)
                .map_err(|e| MigrateError::Usage(format!("--plan-memory: {e}")))?,
            source_roots: SourceRoots::new(&a.source_roots)
                .map_err(|e| MigrateError::Usage(e.to_string()))?,
            ..PackOptions::default()
        };
        let source_base = match &a.source_base {
            Some(b) => b.clone(),
            None => std::env::current_dir()
                .map_err(|e| MigrateError::io("reading the current directory", e))?,
        };
        if !source_base.is_absolute() {
            return Err(MigrateError::Usage(format!(
                "--source-base {} must be an absolute path",
                source_base.display()
            )));
        }
        Ok(Self {
            database_url: a.database_url.clone(),
            connect_timeout: a.connect_timeout,
            mode: a.mode,
            names,
            archive_age_days: a.archive_age_days,
            batch_size: a.batch_size,
            watermark_table: Ident::table(&a.watermark_table)?,
            lag_days: a.lag_days,
            pack,
            work_dir: a.work_dir.clone(),
            source_base,
            delete_source_files: a.delete_source_files,
            dry_run: a.dry_run,
            progress: !a.quiet,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn args(extra: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(
            [
                &[
                    "des-migrate",
                    "--database-url",
                    "host=db",
                    "--out",
                    "/tmp/s",
                ][..],
                extra,
            ]
            .concat(),
        )
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(Ident::column("uid").unwrap().sql, "\"uid\"");
        assert_eq!(Ident::column("we\"ird").unwrap().sql, "\"we\"\"ird\"");
        assert_eq!(Ident::table("app.files").unwrap().sql, "\"app\".\"files\"");
        assert!(Ident::table("a.b.c").is_err());
        assert!(Ident::table("a.").is_err());
        assert!(Ident::column("").is_err());
        assert!(Ident::column(&"x".repeat(64)).is_err());
        assert!(Ident::column("a\0b").is_err());
    }

    #[test]
    fn batch_size_is_bounded() {
        for bad in ["0", "10001"] {
            let e = Config::from_args(&args(&["--batch-size", bad]).unwrap()).unwrap_err();
            assert_eq!(e.exit_code(), crate::error::EXIT_CONFIG, "{e}");
        }
        let c = Config::from_args(&args(&["--batch-size", "10000"]).unwrap()).unwrap();
        assert_eq!(c.batch_size, 10_000);
        assert_eq!(c.mode, Mode::PerRecord);
    }

    #[test]
    fn options_reach_the_packer() {
        let a = args(&[
            "--mode",
            "watermark",
            "--jobs",
            "3",
            "--compression",
            "none",
            "--size-column",
            "size_bytes",
            "--source-base",
            "/data",
        ])
        .unwrap();
        let c = Config::from_args(&a).unwrap();
        assert_eq!(c.mode, Mode::Watermark);
        assert_eq!(c.pack.jobs, 3);
        assert_eq!(c.pack.store.store.as_deref(), Some("/tmp/s"));
        assert_eq!(c.names.size.unwrap().sql, "\"size_bytes\"");
        assert!(c.names.content_type.is_none());
        let rel = args(&["--source-base", "data"]).unwrap();
        assert!(Config::from_args(&rel).is_err());
        assert!(args(&["--mode", "sometimes"]).is_err());
    }
}
