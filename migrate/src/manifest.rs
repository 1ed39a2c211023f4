//! Rows become a JSON Lines manifest for `des_packer::pack`, one line per
//! row in the order read, so the packer's per-file failures (reported by
//! line) map back to rows exactly. A row the packer cannot use (no
//! location, a URL scheme it does not read) is still written: the packer
//! then reports it by line like any other failure, and nothing is
//! judged twice.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use des_format::Timestamp;
use serde::{Deserialize, Serialize};

use crate::db::Row;
use crate::error::MigrateError;

/// A manifest line: what the packer reads (`uid`, `created_at`, `source`,
/// `content_type`, `size_bytes`) plus the row's own `file_location`, which
/// the packer ignores and the report quotes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Line {
    pub uid: String,
    pub created_at: String,
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_location: Option<String>,
    /// created_at in microseconds, so reading a line back needs no parsing
    /// of RFC 3339 (ignored by the packer).
    pub us: i64,
}

impl Line {
    pub fn from_row(row: &Row, source_base: &Path) -> Self {
        Self {
            uid: row.uid.clone(),
            created_at: row.created_at.to_rfc3339(),
            source: row.location.as_deref().and_then(|l| source(l, source_base)),
            // The packer treats an empty type as none.
            content_type: row.content_type.clone(),
            // A hint for planning only; a nonsensical one is dropped rather
            // than failing a file that is otherwise fine.
            size_bytes: row.size.and_then(|s| u64::try_from(s).ok()),
            file_location: row.location.clone(),
            us: row.created_at.micros(),
        }
    }

    pub fn created_at(&self) -> Timestamp {
        Timestamp::from_micros(self.us)
    }
}

/// What the packer is given as `source`: `s3://…` as is; `file://` and
/// plain paths as absolute paths (relative ones against `base`, since the
/// manifest's own directory, the packer's default base, is a temp dir);
/// other URLs as is, for the packer to refuse per row. `None` for an empty
/// location.
fn source(location: &str, base: &Path) -> Option<String> {
    if location.is_empty() {
        return None;
    }
    if location.starts_with("s3://") {
        return Some(location.to_string());
    }
    let path = location.strip_prefix("file://").unwrap_or(location);
    if location.contains("://") && path == location {
        return Some(location.to_string());
    }
    let p = Path::new(path);
    Some(if p.is_absolute() {
        path.to_string()
    } else {
        base.join(p).to_string_lossy().into_owned()
    })
}

/// Writes a manifest line by line.
pub struct ManifestWriter {
    path: PathBuf,
    out: BufWriter<File>,
    pub lines: u64,
}

impl ManifestWriter {
    pub fn create(path: &Path) -> Result<Self, MigrateError> {
        let f = File::create(path)
            .map_err(|e| MigrateError::io(format!("creating {}", path.display()), e))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(f),
            lines: 0,
        })
    }

    pub fn push(&mut self, line: &Line) -> Result<(), MigrateError> {
        let err = |e| MigrateError::io(format!("writing {}", self.path.display()), e);
        serde_json::to_writer(&mut self.out, line).map_err(|e| err(e.into()))?;
        self.out.write_all(b"\n").map_err(err)?;
        self.lines += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<u64, MigrateError> {
        self.out
            .flush()
            .map_err(|e| MigrateError::io(format!("writing {}", self.path.display()), e))?;
        Ok(self.lines)
    }
}

/// Reads a manifest written by [`ManifestWriter`] back, with 1-based line
/// numbers (the packer's numbering).
pub fn read_lines(
    path: &Path,
    mut each: impl FnMut(u64, Line) -> Result<(), MigrateError>,
) -> Result<(), MigrateError> {
    let err = |e| MigrateError::io(format!("reading {}", path.display()), e);
    let f = File::open(path).map_err(err)?;
    for (i, text) in BufReader::new(f).lines().enumerate() {
        let text = text.map_err(err)?;
        let line: Line = serde_json::from_str(&text).map_err(|e| err(e.into()))?;
        each(i as u64 + 1, line)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn sources() {
        let base = Path::new("/data");
        assert_eq!(source("s3://b/k", base).unwrap(), "s3://b/k");
        assert_eq!(source("file:///x/y", base).unwrap(), "/x/y");
        assert_eq!(source("/x/y", base).unwrap(), "/x/y");
        assert_eq!(source("a/b", base).unwrap(), "/data/a/b");
        assert_eq!(source("http://h/x", base).unwrap(), "http://h/x");
        assert_eq!(source("", base), None);
    }

    #[test]
    fn lines_round_trip_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let mut w = ManifestWriter::create(&path).unwrap();
        let rows = [
            Row {
                uid: "a\"b".into(),
                created_at: Timestamp::from_micros(1_715_940_000_123_456),
                location: Some("x".into()),
                size: Some(-1),
                content_type: Some("text/plain".into()),
            },
            Row {
                uid: "2".into(),
                created_at: Timestamp::from_micros(0),
                location: None,
                size: Some(5),
                content_type: None,
            },
        ];
        for r in &rows {
            w.push(&Line::from_row(r, Path::new("/base"))).unwrap();
        }
        assert_eq!(w.finish().unwrap(), 2);
        let mut got = Vec::new();
        read_lines(&path, |n, l| {
            got.push((n, l));
            Ok(())
        })
        .unwrap();
        assert_eq!(got[0].0, 1);
        assert_eq!(got[0].1.uid, "a\"b");
        assert_eq!(got[0].1.source.as_deref(), Some("/base/x"));
        assert_eq!(got[0].1.size_bytes, None);
        assert_eq!(got[0].1.created_at(), rows[0].created_at);
        assert_eq!(got[0].1.created_at, "2024-05-17T10:00:00.123456Z");
        assert_eq!(got[1].0, 2);
        assert_eq!(got[1].1.source, None);
    }
}
