//! `des-tombstones`: delete files (log tombstones), list and inspect them,
//! set and check retention rules, and manage legal holds.

use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use des_format::Timestamp;
use des_repack::holds::{self, Hold, HoldSet};
use des_repack::open::open_store;
use des_repack::retention::{self, Explanation};
use des_repack::tombstones_cli::{
    AddOutcome, AddReport, AddResult, Defaults, ListFilter, ListedTombstone, TombstoneState,
    add_batch_each, add_one, list, show,
};
use des_storage::DesStore;
use des_storage::cli::StoreArgs;
use des_storage::retention::{self as rules_store, StoredRules};
use des_storage::tombstones::{DeleteReason, Tombstone, TombstoneLog, parse_date};
use serde::Serialize;

const EXIT_CODES: &str = "\
Exit status:
  0  done (show: the file is deleted, by a tombstone or by a retention rule)
  1  some lines of a batch could not be added (each is reported); show: no
     tombstone for that uid and date and no rule expires it; retention show
     and check: no retention rules stored
  2  usage error, or the store could not be read or written; retention set:
     a bad rules file, or another set at the same time (retry)";

/// Delete files from a DES store and inspect deletions.
///
/// `add` logs a tombstone: readers answer 410 Gone for that uid on that UTC
/// day at once, and `des-repack` later removes the bytes from the shard.
#[derive(Debug, Parser)]
#[command(name = "des-tombstones", version, after_help = des_storage::units::after_help(EXIT_CODES))]
struct Cli {
    #[command(flatten)]
    store: StoreArgs,
    /// Machine-readable output on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Delete one file (--uid with --created-at or --date), or many (--from FILE).
    Add(AddArgs),
    /// List tombstones, oldest first.
    List(ListArgs),
    /// Show the tombstones of one uid and day, and whether the bytes are gone.
    Show(ShowArgs),
    /// Retention rules: how long files are kept, by uid prefix. Stored in
    /// the store; readers answer 410 for expired files and des-repack
    /// removes them. No tombstone is written per file.
    #[command(subcommand)]
    Retention(RetentionCmd),
    /// Legal holds: files that must never be deleted while the hold exists.
    #[command(subcommand)]
    Hold(HoldCmd),
    /// Merge applied tombstones into segments now (des-repack does this at
    /// the end of every run). Takes the repacker's lease.
    Compact,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReasonArg {
    Gdpr,
    // The spelling the HTTP API and the records use works here too.
    #[value(alias = "retention_expired")]
    RetentionExpired,
    #[value(alias = "user_request")]
    UserRequest,
}

impl From<ReasonArg> for DeleteReason {
    fn from(r: ReasonArg) -> Self {
        match r {
            ReasonArg::Gdpr => Self::Gdpr,
            ReasonArg::RetentionExpired => Self::RetentionExpired,
            ReasonArg::UserRequest => Self::UserRequest,
        }
    }
}

#[derive(Debug, Args)]
struct AddArgs {
    /// The file's uid.
    #[arg(long, required_unless_present = "from", conflicts_with = "from")]
    uid: Option<String>,
    /// The file's created_at (RFC 3339); its UTC day is what is deleted.
    #[arg(long, conflicts_with = "date")]
    created_at: Option<String>,
    /// The UTC day (YYYYMMDD), when created_at is not known.
    #[arg(long)]
    date: Option<String>,
    /// JSON Lines: {"uid", "created_at" or "date", "reason"?, "deleted_by"?, "ticket_id"?}
    #[arg(long, value_name = "FILE")]
    from: Option<PathBuf>,
    #[arg(long, value_enum)]
    reason: Option<ReasonArg>,
    /// Who asked (a person, a service); recorded in the tombstone.
    #[arg(long)]
    deleted_by: Option<String>,
    /// Ticket or case reference, recorded in the tombstone.
    #[arg(long)]
    ticket: Option<String>,
    /// Log even if the uid and day are already deleted.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StateArg {
    Pending,
    Applied,
}

#[derive(Debug, Args)]
struct ListArgs {
    #[arg(long)]
    uid: Option<String>,
    #[arg(long)]
    uid_prefix: Option<String>,
    /// YYYYMMDD
    #[arg(long)]
    date: Option<String>,
    #[arg(long, value_enum)]
    reason: Option<ReasonArg>,
    /// Logged at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    #[arg(long, value_enum)]
    state: Option<StateArg>,
    #[arg(long)]
    limit: Option<usize>,
}

#[derive(Debug, Args)]
struct ShowArgs {
    #[arg(long)]
    uid: String,
    #[arg(long, conflicts_with = "date", required_unless_present = "date")]
    created_at: Option<String>,
    #[arg(long)]
    date: Option<String>,
}

#[derive(Debug, Subcommand)]
enum RetentionCmd {
    /// Store a rules file as the next version (in every store of the
    /// placement); prints the version.
    Set {
        /// Rules file (TOML): [[rule]] uid_prefix = "...", max_age_days = N
        /// (left out: kept forever); the longest matching prefix wins.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Who sets them (a person, a change ticket); recorded with the version.
        #[arg(long)]
        updated_by: String,
    },
    /// Print the current rules, their version, when and by whom they were set.
    Show,
    /// Report how many files and shards each rule expires now; writes nothing.
    Check {
        /// Evaluate as of this UTC day (YYYYMMDD) instead of today.
        #[arg(long)]
        date: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum HoldCmd {
    /// Place a hold on every file whose uid starts with a prefix.
    Add {
        #[arg(long)]
        name: String,
        /// "" holds every uid.
        #[arg(long)]
        uid_prefix: String,
        /// First held day (YYYYMMDD), inclusive.
        #[arg(long)]
        date_from: Option<String>,
        /// Last held day (YYYYMMDD), inclusive.
        #[arg(long)]
        date_to: Option<String>,
        #[arg(long)]
        created_by: String,
        #[arg(long)]
        ticket: Option<String>,
    },
    List,
    /// Remove a hold; its files' tombstones are then applied by the next repack.
    Release {
        #[arg(long)]
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    let result = match rt {
        Ok(rt) => rt.block_on(run(&cli)),
        Err(e) => Err(e).context("starting the runtime"),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("des-tombstones: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: &Cli) -> Result<u8> {
    let store = open_store(&cli.store, false)
        .await
        .context("opening the store")?;
    let log = TombstoneLog::new(&store);
    match &cli.cmd {
        Cmd::Add(a) => add(cli, &log, a).await,
        Cmd::List(a) => {
            let found = list(&log, &list_filter(a)?).await?;
            print_listed(cli, &found)?;
            Ok(0)
        }
        Cmd::Show(a) => show_file(cli, &store, &log, a).await,
        Cmd::Retention(r) => retention_cmd(cli, &store, r).await,
        Cmd::Hold(h) => hold(cli, &store, h).await,
        Cmd::Compact => {
            let lease = des_repack::lease::LeaseConfig::default();
            let report = des_repack::repack::compact_tombstones(&store, lease).await?;
            if cli.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "compacted: {} tombstones into {} segments, {} leftovers deleted",
                    report.records_merged, report.segments_written, report.leftovers_deleted
                );
            }
            Ok(0)
        }
    }
}

/// `show --json`: the file's tombstones and what the retention rules say.
#[derive(Serialize)]
struct Shown<'a> {
    uid: &'a str,
    date: String,
    /// Deleted by a tombstone or expired by a rule (and not held).
    deleted: bool,
    tombstones: &'a [ListedTombstone],
    /// `null` when the store has no retention rules.
    retention: Option<&'a Explanation>,
}

async fn show_file(cli: &Cli, store: &DesStore, log: &TombstoneLog, a: &ShowArgs) -> Result<u8> {
    let date = day_of(a.created_at.as_deref(), a.date.as_deref())?;
    let found = show(log, &a.uid, date).await?;
    let today = retention::today(Timestamp::now());
    let why = retention::explain(store, &a.uid, date, today).await?;
    let deleted = !found.is_empty() || why.as_ref().is_some_and(|w| w.expired);
    let shown = Shown {
        uid: &a.uid,
        date: format!("{date:08}"),
        deleted,
        tombstones: &found,
        retention: why.as_ref(),
    };
    print(cli, &shown, |out| {
        write_listed(out, &found)?;
        match &why {
            Some(w) => writeln!(out, "{}", explain_text(w)),
            None => writeln!(out, "retention: no rules stored"),
        }
    })?;
    Ok(u8::from(!deleted))
}

fn explain_text(w: &Explanation) -> String {
    let version = format!(
        "rules version {} (set {} by {})",
        w.rules_version, w.rules_updated_at, w.rules_updated_by
    );
    let (Some(prefix), Some(days)) = (&w.uid_prefix, w.max_age_days) else {
        return match &w.uid_prefix {
            Some(p) => format!("retention: kept forever by rule {p:?}, {version}"),
            None => format!("retention: no rule matches, kept forever; {version}"),
        };
    };
    let rule = format!("rule {prefix:?} ({days} days), {version}");
    let on = w.expires_on.as_deref().unwrap_or("-");
    match (&w.held_by, w.expired) {
        (Some(hold), _) => {
            format!(
                "retention: legal hold {hold:?} keeps it; without it expired from {on} by {rule}"
            )
        }
        (None, true) => format!("retention: expired on {on} (00:00 UTC) by {rule}"),
        (None, false) => format!("retention: expires on {on} (00:00 UTC) by {rule}"),
    }
}

async fn retention_cmd(cli: &Cli, store: &DesStore, r: &RetentionCmd) -> Result<u8> {
    match r {
        RetentionCmd::Set { file, updated_by } => {
            let rules = retention::rules_from_path(file)?;
            let stored = rules_store::set(store, &rules, updated_by)
                .await
                .context("storing the retention rules")?;
            print(cli, &stored, |out| {
                writeln!(
                    out,
                    "stored retention rules version {} ({} rules)",
                    stored.version,
                    stored.rules.rules.len()
                )
            })?;
            Ok(0)
        }
        RetentionCmd::Show => {
            let stored = rules_store::load(store).await?;
            print(cli, &stored, |out| match &stored {
                Some(s) => write_rules(out, s),
                None => writeln!(out, "no retention rules stored"),
            })?;
            Ok(u8::from(stored.is_none()))
        }
        RetentionCmd::Check { date } => {
            let today = match date {
                Some(d) => parse_date(d)?,
                None => retention::today(Timestamp::now()),
            };
            let Some(stored) = rules_store::load(store).await? else {
                print(cli, &None::<()>, |out| {
                    writeln!(out, "no retention rules stored")
                })?;
                return Ok(1);
            };
            let report = retention::check(store, &stored, today).await?;
            print(cli, &report, |out| {
                writeln!(
                    out,
                    "rules version {} as of {}: {} of {} files in {} shards expired, {} held; \
                     {} shards wholly expired",
                    report.rules_version,
                    report.date,
                    report.files_expired,
                    report.files_scanned,
                    report.shards_scanned,
                    report.files_held,
                    report.shards_fully_expired
                )?;
                for c in &report.rules {
                    let age = c
                        .max_age_days
                        .map_or_else(|| "forever".into(), |d| format!("{d} days"));
                    writeln!(
                        out,
                        "  {:<24} {age:>12}  through {:<8}  {} files ({} bytes) in {} shards, {} held",
                        format!("{:?}", c.uid_prefix),
                        c.expired_through.as_deref().unwrap_or("-"),
                        c.files_expired,
                        c.bytes_expired,
                        c.shards,
                        c.files_held
                    )?;
                }
                Ok(())
            })?;
            Ok(0)
        }
    }
}

fn write_rules(out: &mut dyn Write, s: &StoredRules) -> std::io::Result<()> {
    writeln!(
        out,
        "version {}, set {} by {}{}",
        s.version,
        s.updated_at,
        s.updated_by,
        s.rules
            .ticket_id
            .as_deref()
            .map(|t| format!(" [{t}]"))
            .unwrap_or_default()
    )?;
    for r in &s.rules.rules {
        match r.max_age_days {
            Some(d) => writeln!(out, "  {:<24} {d} days", format!("{:?}", r.uid_prefix))?,
            None => writeln!(out, "  {:<24} forever", format!("{:?}", r.uid_prefix))?,
        }
    }
    Ok(())
}

fn day_of(created_at: Option<&str>, date: Option<&str>) -> Result<u32> {
    match (created_at, date) {
        (Some(c), _) => Ok(Timestamp::parse_rfc3339(c)?.date_number()),
        (None, Some(d)) => Ok(parse_date(d)?),
        (None, None) => bail!("give --created-at or --date"),
    }
}

async fn add(cli: &Cli, log: &TombstoneLog, a: &AddArgs) -> Result<u8> {
    let defaults = Defaults {
        reason: a.reason.map(DeleteReason::from),
        deleted_by: a.deleted_by.clone(),
        ticket_id: a.ticket.clone(),
    };
    let report = match (&a.from, &a.uid) {
        (Some(path), _) => return add_from(cli, log, path, &defaults, a.force).await,
        (None, Some(uid)) => {
            let (Some(reason), Some(by)) = (defaults.reason, &defaults.deleted_by) else {
                bail!("--reason and --deleted-by are required");
            };
            let mut t = match (&a.created_at, &a.date) {
                (Some(c), _) => Tombstone::new(uid, Timestamp::parse_rfc3339(c)?, reason, by),
                (None, Some(d)) => Tombstone::for_date(uid, parse_date(d)?, reason, by)?,
                (None, None) => bail!("give --created-at or --date"),
            };
            t.ticket_id.clone_from(&defaults.ticket_id);
            let mut report = AddReport::default();
            let r = add_one(log, &t, a.force).await?;
            report.count(&r);
            report.results.push(r);
            report
        }
        (None, None) => bail!("give --uid or --from"),
    };
    print(cli, &report, |out| {
        for r in &report.results {
            write_added(out, r)?;
        }
        write_add_totals(out, &report)
    })?;
    Ok(u8::from(report.failed > 0))
}

/// `add --from`: each line's result is printed as its chunk is logged, so
/// memory follows the chunk, not the file. With `--json`, the same document
/// as a single add's (results, then the counts), written as it goes.
async fn add_from(
    cli: &Cli,
    log: &TombstoneLog,
    path: &std::path::Path,
    defaults: &Defaults,
    force: bool,
) -> Result<u8> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = std::io::stdout();
    if cli.json {
        write!(out, "{{\"results\":[")?;
    }
    let mut first = true;
    let report = add_batch_each(log, BufReader::new(file), defaults, force, |r| {
        if !cli.json {
            return write_added(&mut out, r);
        }
        if !first {
            write!(out, ",")?;
        }
        first = false;
        writeln!(out)?;
        serde_json::to_writer(&mut out, r).map_err(std::io::Error::other)
    })
    .await?;
    if cli.json {
        writeln!(
            out,
            "\n],\"added\":{},\"already_deleted\":{},\"failed\":{}}}",
            report.added, report.already_deleted, report.failed
        )?;
    } else {
        write_add_totals(&mut out, &report)?;
    }
    Ok(u8::from(report.failed > 0))
}

fn write_added(out: &mut dyn Write, r: &AddResult) -> std::io::Result<()> {
    let what = match (&r.uid, &r.date) {
        (Some(u), Some(d)) => format!("{u} ({d})"),
        _ => format!("line {}", r.line),
    };
    match r.outcome {
        AddOutcome::Added => writeln!(out, "deleted {what}: {}", r.key.as_deref().unwrap_or("")),
        AddOutcome::AlreadyDeleted => writeln!(out, "already deleted {what}"),
        AddOutcome::Failed => writeln!(out, "FAILED {what}: {}", r.error.as_deref().unwrap_or("")),
    }
}

fn write_add_totals(out: &mut dyn Write, report: &AddReport) -> std::io::Result<()> {
    writeln!(
        out,
        "{} added, {} already deleted, {} failed",
        report.added, report.already_deleted, report.failed
    )
}

fn list_filter(a: &ListArgs) -> Result<ListFilter> {
    Ok(ListFilter {
        uid: a.uid.clone(),
        uid_prefix: a.uid_prefix.clone(),
        date: a.date.as_deref().map(parse_date).transpose()?,
        reason: a.reason.map(DeleteReason::from),
        since: a
            .since
            .as_deref()
            .map(Timestamp::parse_rfc3339)
            .transpose()?,
        state: a.state.map(|s| match s {
            StateArg::Pending => TombstoneState::Pending,
            StateArg::Applied => TombstoneState::Applied,
        }),
        limit: a.limit,
    })
}

fn print_listed(cli: &Cli, found: &[ListedTombstone]) -> Result<()> {
    print(cli, &found, |out| write_listed(out, found))
}

fn write_listed(out: &mut dyn Write, found: &[ListedTombstone]) -> std::io::Result<()> {
    for t in found {
        let s = &t.tombstone;
        let state = match t.state {
            TombstoneState::Pending => "pending",
            TombstoneState::Applied => "applied",
        };
        writeln!(
            out,
            "{}  {}  {state:<7}  {:<17}  {}  by {}{}",
            t.logged_at,
            s.date_dir(),
            s.reason.as_str(),
            s.uid,
            s.deleted_by,
            s.ticket_id
                .as_deref()
                .map(|x| format!(" [{x}]"))
                .unwrap_or_default()
        )?;
        if let Some(m) = &t.applied {
            writeln!(
                out,
                "    applied {} in {} generation {}: {:?}",
                m.applied_at,
                m.shard_key,
                m.generation.map_or_else(|| "-".into(), |g| g.to_string()),
                m.outcome
            )?;
        }
    }
    Ok(())
}

async fn hold(cli: &Cli, store: &DesStore, h: &HoldCmd) -> Result<u8> {
    match h {
        HoldCmd::Add {
            name,
            uid_prefix,
            date_from,
            date_to,
            created_by,
            ticket,
        } => {
            let mut hold = Hold::new(name, uid_prefix, created_by);
            hold.date_from.clone_from(date_from);
            hold.date_to.clone_from(date_to);
            hold.ticket_id.clone_from(ticket);
            holds::place(store, &hold).await?;
            print(cli, &hold, |out| writeln!(out, "placed hold {name}"))?;
            Ok(0)
        }
        HoldCmd::List => {
            let set = HoldSet::load(store).await?;
            print(cli, &set.holds(), |out| {
                for h in set.holds() {
                    writeln!(
                        out,
                        "{}  prefix {:?}  {}..{}  by {}",
                        h.name,
                        h.uid_prefix,
                        h.date_from.as_deref().unwrap_or("*"),
                        h.date_to.as_deref().unwrap_or("*"),
                        h.created_by
                    )?;
                }
                Ok(())
            })?;
            Ok(0)
        }
        HoldCmd::Release { name } => {
            if !holds::release(store, name).await? {
                bail!("no hold named {name:?}");
            }
            print(cli, &serde_json::json!({"released": name}), |out| {
                writeln!(out, "released hold {name}")
            })?;
            Ok(0)
        }
    }
}

/// `--json`: the value as JSON; otherwise the text `human` writes.
fn print<T: Serialize + ?Sized>(
    cli: &Cli,
    value: &T,
    human: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if cli.json {
        serde_json::to_writer_pretty(&mut out, value)?;
        writeln!(out)?;
    } else {
        human(&mut out)?;
    }
    Ok(())
}
