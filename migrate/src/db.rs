//! Every query des-migrate sends. Names come from the configuration, quoted
//! (`config::Ident`); values are always bound parameters.
//!
//! Rows are read in `(created_at, uid)` order with keyset pagination (per
//! record) or through a cursor (a portal, watermark), so memory is bounded by
//! the batch size, never by the table.

use std::time::Duration;

use des_format::Timestamp;
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row as PgRow};

use crate::config::{Ident, TableNames};
use crate::error::MigrateError;
use crate::tls::DbTarget;

/// One row of the business table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub uid: String,
    pub created_at: Timestamp,
    pub location: Option<String>,
    pub size: Option<i64>,
    pub content_type: Option<String>,
}

/// The watermark row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    /// `None`: nothing archived yet (`-infinity`).
    pub archived_until: Option<Timestamp>,
    pub lag_days: i32,
}

pub struct Db {
    client: Client,
    names: TableNames,
    /// SQL types of the key columns (`format_type`), so bound text and
    /// timestamps are cast to the column's own type and indexes are used.
    uid_type: String,
    created_type: String,
    connection: JoinHandle<()>,
}

impl Drop for Db {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

pub fn to_offset(ts: Timestamp) -> Result<OffsetDateTime, MigrateError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts.micros()) * 1_000)
        .map_err(|e| MigrateError::Usage(format!("timestamp {ts:?} out of range: {e}")))
}

/// PostgreSQL keeps microseconds, as DES does: the conversion is exact.
pub fn from_offset(dt: OffsetDateTime) -> Result<Timestamp, MigrateError> {
    i64::try_from(dt.unix_timestamp_nanos().div_euclid(1_000))
        .map(Timestamp::from_micros)
        .map_err(|_| MigrateError::Schema(format!("timestamp {dt} out of range")))
}

impl Db {
    /// Connects, sets the session up (UTC) and checks the business table.
    pub async fn connect(
        target: &DbTarget,
        timeout: Duration,
        names: &TableNames,
    ) -> Result<Self, MigrateError> {
        let tls = target.connector()?;
        let mut config = target.config.clone();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        // Bounds the whole connect (several hosts, TLS, authentication),
        // not only each TCP attempt.
        let connected = tokio::time::timeout(timeout + Duration::from_secs(1), config.connect(tls))
            .await
            .map_err(|_| MigrateError::Connect(format!("timed out after {timeout:?}")))?;
        let (client, connection) = connected.map_err(|e| MigrateError::Connect(error_text(&e)))?;
        // The connection's own error surfaces in the next query's error
        // ("connection closed"), which says what was being done.
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut db = Self {
            client,
            names: names.clone(),
            uid_type: String::new(),
            created_type: String::new(),
            connection,
        };
        // Timestamps without time zone are read and written as UTC, the
        // calendar DES routes by.
        db.client
            .batch_execute("SET TIME ZONE 'UTC'")
            .await
            .map_err(|e| MigrateError::db("setting up the session", e))?;
        db.introspect().await?;
        Ok(db)
    }

    /// Checks the configured columns exist with usable types, and learns the
    /// key columns' types.
    async fn introspect(&mut self) -> Result<(), MigrateError> {
        let n = &self.names;
        let table = &n.table;
        let rows = self
            .client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typcategory::text \
                 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped",
                &[&table.sql],
            )
            .await
            .map_err(|e| match e.as_db_error() {
                Some(d) if d.code().code() == "42P01" => {
                    MigrateError::Schema(format!("table {} does not exist", table.name))
                }
                _ => MigrateError::db("reading the table's columns", e),
            })?;
        let column = |c: &Ident| -> Result<(String, String), MigrateError> {
            rows.iter()
                .find(|r| r.get::<_, String>(0) == c.name)
                .map(|r| (r.get::<_, String>(1), r.get::<_, String>(2)))
                .ok_or_else(|| {
                    MigrateError::Schema(format!("table {} has no column {:?}", table.name, c.name))
                })
        };
        let (uid_type, _) = column(&n.uid)?;
        let (created_type, _) = column(&n.created_at)?;
        if !matches!(
            created_type.as_str(),
            "timestamp with time zone" | "timestamp without time zone"
        ) {
            return Err(MigrateError::Schema(format!(
                "column {:?} is {created_type}, expected a timestamp",
                n.created_at.name
            )));
        }
        column(&n.location)?;
        for c in n.size.iter().chain(&n.content_type) {
            column(c)?;
        }
        self.uid_type = uid_type;
        self.created_type = created_type;
        Ok(())
    }

    /// Per-record mode needs the archived flag; checked only then, so a
    /// watermark setup needs no such column.
    pub async fn check_archived_column(&self) -> Result<(), MigrateError> {
        let n = &self.names;
        let ty: Option<String> = self
            .client
            .query_opt(
                "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                 WHERE a.attrelid = $1::text::regclass AND a.attname = $2 AND a.attnum > 0 \
                 AND NOT a.attisdropped",
                &[&n.table.sql, &n.archived.name],
            )
            .await
            .map_err(|e| MigrateError::db("reading the table's columns", e))?
            .map(|r| r.get(0));
        match ty.as_deref() {
            Some("boolean") => Ok(()),
            Some(other) => Err(MigrateError::Schema(format!(
                "column {:?} is {other}, expected boolean",
                n.archived.name
            ))),
            None => Err(MigrateError::Schema(format!(
                "table {} has no column {:?}",
                n.table.name, n.archived.name
            ))),
        }
    }

    /// One des-migrate per table at a time: a session-level advisory lock,
    /// released by the server when this connection ends, even by `kill -9`.
    pub async fn lock(&self) -> Result<(), MigrateError> {
        let key = format!("des-migrate:{}", self.names.table.sql);
        let got: bool = self
            .client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                &[&key],
            )
            .await
            .map_err(|e| MigrateError::db("taking the advisory lock", e))?
            .get(0);
        if got {
            Ok(())
        } else {
            Err(MigrateError::Locked {
                table: self.names.table.name.clone(),
            })
        }
    }

    /// `now() - days` by the database's clock, which every row was stamped
    /// with (not this machine's).
    pub async fn days_ago(&self, days: i32) -> Result<Timestamp, MigrateError> {
        let row = self
            .client
            .query_one("SELECT now() - make_interval(days => $1)", &[&days])
            .await
            .map_err(|e| MigrateError::db("reading the clock", e))?;
        from_offset(row.get(0))
    }

    fn select_list(&self) -> String {
        let n = &self.names;
        let opt = |c: &Option<Ident>, ty: &str| match c {
            Some(c) => format!("{}::{ty}", c.sql),
            None => format!("NULL::{ty}"),
        };
        format!(
            "{}::text, {}::timestamptz, {}::text, {}, {}",
            n.uid.sql,
            n.created_at.sql,
            n.location.sql,
            opt(&n.size, "bigint"),
            opt(&n.content_type, "text"),
        )
    }

    /// A bound timestamptz as the created_at column's own type.
    fn ts_param(&self, i: usize) -> String {
        format!("${i}::timestamptz::{}", self.created_type)
    }

    /// Per-record: the next `limit` unarchived rows older than `cutoff`,
    /// after `after` in (created_at, uid) order. Rows that fail stay
    /// unarchived; the keyset moves past them, so a run always ends.
    pub async fn unarchived_batch(
        &self,
        cutoff: Timestamp,
        after: Option<&(Timestamp, String)>,
        limit: usize,
    ) -> Result<Vec<Row>, MigrateError> {
        let n = &self.names;
        let keyset = if after.is_some() {
            format!(
                " AND ({}, {}) > ({}, $4::text::{})",
                n.created_at.sql,
                n.uid.sql,
                self.ts_param(3),
                self.uid_type
            )
        } else {
            String::new()
        };
        let sql = format!(
            "SELECT {} FROM {} WHERE {} = false AND {} < {} AND {} IS NOT NULL \
             AND isfinite({}){keyset} ORDER BY {}, {} LIMIT $2",
            self.select_list(),
            n.table.sql,
            n.archived.sql,
            n.created_at.sql,
            self.ts_param(1),
            n.uid.sql,
            n.created_at.sql,
            n.created_at.sql,
            n.uid.sql,
        );
        let cutoff = to_offset(cutoff)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match after {
            Some((ts, uid)) => {
                let ts = to_offset(*ts)?;
                self.client.query(&sql, &[&cutoff, &limit, &ts, uid]).await
            }
            None => self.client.query(&sql, &[&cutoff, &limit]).await,
        }
        .map_err(|e| MigrateError::db("reading unarchived rows", e))?;
        rows.iter().map(to_row).collect()
    }

    /// Marks rows archived with one UPDATE; returns how many were updated.
    pub async fn mark_archived(&self, rows: &[&Row]) -> Result<u64, MigrateError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let n = &self.names;
        let uids: Vec<&str> = rows.iter().map(|r| r.uid.as_str()).collect();
        let times = rows
            .iter()
            .map(|r| to_offset(r.created_at))
            .collect::<Result<Vec<_>, _>>()?;
        let sql = format!(
            "UPDATE {t} SET {a} = true WHERE {a} = false AND ({u}, {c}) IN \
             (SELECT k.u::{ut}, k.c::{ct} FROM unnest($1::text[], $2::timestamptz[]) AS k(u, c))",
            t = n.table.sql,
            a = n.archived.sql,
            u = n.uid.sql,
            c = n.created_at.sql,
            ut = self.uid_type,
            ct = self.created_type,
        );
        self.client
            .execute(&sql, &[&uids, &times])
            .await
            .map_err(|e| MigrateError::db("marking rows archived", e))
    }

    /// Rows still to archive and the oldest one's created_at: per record,
    /// unarchived rows older than `cutoff`; watermark, rows in `(after, upto]`.
    pub async fn pending(
        &self,
        unarchived_before: Option<Timestamp>,
        window: Option<(Option<Timestamp>, Timestamp)>,
    ) -> Result<(u64, Option<Timestamp>), MigrateError> {
        let n = &self.names;
        let mut conds = vec![
            format!("{} IS NOT NULL", n.uid.sql),
            format!("isfinite({})", n.created_at.sql),
        ];
        let mut params: Vec<OffsetDateTime> = Vec::new();
        if let Some(cutoff) = unarchived_before {
            params.push(to_offset(cutoff)?);
            conds.push(format!("{} = false", n.archived.sql));
            conds.push(format!(
                "{} < {}",
                n.created_at.sql,
                self.ts_param(params.len())
            ));
        }
        if let Some((after, upto)) = window {
            if let Some(a) = after {
                params.push(to_offset(a)?);
                conds.push(format!(
                    "{} > {}",
                    n.created_at.sql,
                    self.ts_param(params.len())
                ));
            }
            params.push(to_offset(upto)?);
            conds.push(format!(
                "{} <= {}",
                n.created_at.sql,
                self.ts_param(params.len())
            ));
        }
        let sql = format!(
            "SELECT count(*), min({}::timestamptz) FROM {} WHERE {}",
            n.created_at.sql,
            n.table.sql,
            conds.join(" AND ")
        );
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let row = self
            .client
            .query_one(&sql, &refs)
            .await
            .map_err(|e| MigrateError::db("counting pending rows", e))?;
        let count: i64 = row.get(0);
        let oldest: Option<OffsetDateTime> = row.get(1);
        Ok((
            u64::try_from(count).unwrap_or(0),
            oldest.map(from_offset).transpose()?,
        ))
    }

    /// Reads the watermark row, creating the table and row first when
    /// `create` (not in a dry run). `Ok(None)`: no table and not creating.
    pub async fn watermark(
        &self,
        table: &Ident,
        create: bool,
        initial_lag_days: u32,
    ) -> Result<Option<Watermark>, MigrateError> {
        let exists: bool = self
            .client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.sql])
            .await
            .map_err(|e| MigrateError::db("looking for the watermark table", e))?
            .get(0);
        if !exists && !create {
            return Ok(None);
        }
        if create {
            let lag = i32::try_from(initial_lag_days)
                .map_err(|_| MigrateError::Usage("--lag-days is too large".into()))?;
            // The shape of the original DES's table, so one made by either works.
            // Serialised by the advisory lock: no second row can race in.
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {t} (archived_until timestamptz NOT NULL, lag_days integer NOT NULL); \
                 INSERT INTO {t} (archived_until, lag_days) SELECT '-infinity', {lag} \
                 WHERE NOT EXISTS (SELECT 1 FROM {t})",
                t = table.sql
            );
            self.client
                .batch_execute(&sql)
                .await
                .map_err(|e| MigrateError::db("creating the watermark table", e))?;
        }
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT CASE WHEN isfinite(archived_until) THEN archived_until::timestamptz END, \
                     lag_days::integer FROM {}",
                    table.sql
                ),
                &[],
            )
            .await
            .map_err(|e| MigrateError::db("reading the watermark", e))?;
        let [row] = rows.as_slice() else {
            return Err(MigrateError::Schema(format!(
                "watermark table {} must have exactly one row, it has {}",
                table.name,
                rows.len()
            )));
        };
        let until: Option<OffsetDateTime> = row
            .try_get(0)
            .map_err(|e| MigrateError::db("reading the watermark", e))?;
        let lag_days: Option<i32> = row
            .try_get(1)
            .map_err(|e| MigrateError::db("reading the watermark", e))?;
        let lag_days = lag_days.filter(|d| *d >= 0).ok_or_else(|| {
            MigrateError::Schema(format!(
                "watermark table {}: lag_days must be a non-negative integer",
                table.name
            ))
        })?;
        Ok(Some(Watermark {
            archived_until: until.map(from_offset).transpose()?,
            lag_days,
        }))
    }

    /// Advances `archived_until` from `from` to `to`. The compare-and-set
    /// guards against an operator's edit made during the cycle: it is kept,
    /// and this cycle's result is dropped (an error, nothing lost: the next
    /// cycle starts from the edited value).
    pub async fn advance_watermark(
        &self,
        table: &Ident,
        from: Option<Timestamp>,
        to: Timestamp,
    ) -> Result<(), MigrateError> {
        let to = to_offset(to)?;
        let updated = match from {
            Some(f) => {
                let f = to_offset(f)?;
                let sql = format!(
                    "UPDATE {} SET archived_until = $1 WHERE archived_until::timestamptz = $2",
                    table.sql
                );
                self.client.execute(&sql, &[&to, &f]).await
            }
            None => {
                let sql = format!(
                    "UPDATE {} SET archived_until = $1 \
                     WHERE archived_until IS NULL OR NOT isfinite(archived_until)",
                    table.sql
                );
                self.client.execute(&sql, &[&to]).await
            }
        }
        .map_err(|e| MigrateError::db("advancing the watermark", e))?;
        if updated == 1 {
            Ok(())
        } else {
            Err(MigrateError::Schema(format!(
                "watermark table {} changed during the cycle; not advanced",
                table.name
            )))
        }
    }

    /// Watermark: every row in `(after, upto]`, in (created_at, uid) order,
    /// read through a cursor `chunk` rows at a time and handed to `each`.
    pub async fn stream_window(
        &mut self,
        after: Option<Timestamp>,
        upto: Timestamp,
        chunk: usize,
        mut each: impl FnMut(Row) -> Result<(), MigrateError>,
    ) -> Result<u64, MigrateError> {
        let n = &self.names;
        let mut params: Vec<OffsetDateTime> = vec![to_offset(upto)?];
        let mut lower = String::new();
        if let Some(a) = after {
            params.push(to_offset(a)?);
            lower = format!(" AND {} > {}", n.created_at.sql, self.ts_param(2));
        }
        let sql = format!(
            "SELECT {} FROM {} WHERE {} <= {}{lower} AND {} IS NOT NULL AND isfinite({}) \
             ORDER BY {}, {}",
            self.select_list(),
            n.table.sql,
            n.created_at.sql,
            self.ts_param(1),
            n.uid.sql,
            n.created_at.sql,
            n.created_at.sql,
            n.uid.sql,
        );
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let chunk = i32::try_from(chunk).unwrap_or(i32::MAX);
        let err = |e| MigrateError::db("reading the window's rows", e);
        // A portal lives in a transaction; read-only, it holds no row locks.
        let tx = self.client.transaction().await.map_err(err)?;
        let stmt = tx.prepare(&sql).await.map_err(err)?;
        let portal = tx.bind(&stmt, &refs).await.map_err(err)?;
        let mut total = 0u64;
        loop {
            let rows = tx.query_portal(&portal, chunk).await.map_err(err)?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                each(to_row(r)?)?;
                total += 1;
            }
        }
        tx.commit().await.map_err(err)?;
        Ok(total)
    }
}

fn to_row(r: &PgRow) -> Result<Row, MigrateError> {
    let get_err = |e| MigrateError::db("decoding a row", e);
    let uid: Option<String> = r.try_get(0).map_err(get_err)?;
    let created: OffsetDateTime = r.try_get(1).map_err(get_err)?;
    Ok(Row {
        uid: uid.unwrap_or_default(),
        created_at: from_offset(created)?,
        location: r.try_get(2).map_err(get_err)?,
        size: r.try_get(3).map_err(get_err)?,
        content_type: r.try_get(4).map_err(get_err)?,
    })
}

/// tokio-postgres' Display of a connect error is often just "error
/// connecting to server"; the cause (refused, TLS, password) is below it.
fn error_text(e: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}
