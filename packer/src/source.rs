//! Packer inputs, read as a stream of records so that a manifest of any size
//! never has to fit in memory.
//!
//! Two manifest syntaxes are accepted, told apart by their first byte: a JSON
//! array (the original DES format) and JSON Lines. A directory can also be
//! packed as-is, every file getting the same `created_at`.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::error::{Context, bail};
use des_format::Timestamp;
use des_format::v3::{MAX_CONTENT_TYPE_LEN, MAX_META_LEN, MAX_UID_LEN};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// One file to pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub uid: String,
    pub created_at: Timestamp,
    pub source: SourceRef,
    pub content_type: Option<String>,
    /// Compact JSON text of an object, keys in their original order.
    pub meta: Option<String>,
    /// From the manifest's `size_bytes` (a symlink's target size in a dir
    /// walk; regular files there have none: the builder stats them anyway).
    pub size_hint: Option<u64>,
    /// 1-based position in the input, for error reports: the physical line in
    /// JSON Lines, the element number in a JSON array, the entry number in a
    /// directory walk.
    pub line: u64,
}

/// Where a file's bytes are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceRef {
    Local(PathBuf),
    /// An object read through `des_storage` (`s3://bucket/key` in manifests).
    S3 {
        bucket: String,
        key: String,
    },
}

impl SourceRef {
    /// Parses `s3://bucket/key`. The key must be one `des_storage` can address
    /// (no empty, `.` or `..` segments), so a bad one fails here, with its
    /// manifest line, rather than at upload time.
    pub fn parse_s3(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{url:?} is not an s3:// URL"))?;
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .ok_or_else(|| format!("source {url:?} is not s3://bucket/key"))?;
        des_storage::object::check_key(key)
            .map_err(|_| format!("source {url:?}: object key {key:?} is not supported"))?;
        Ok(Self::S3 {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }

    pub fn local_path(&self) -> Option<&Path> {
        match self {
            Self::Local(p) => Some(p),
            Self::S3 { .. } => None,
        }
    }
}

impl fmt::Display for SourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(p) => write!(f, "{}", p.display()),
            Self::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

/// A record that could not be used; the rest of the input goes on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecordFailure {
    pub line: u64,
    pub uid: Option<String>,
    pub source: Option<String>,
    pub kind: crate::report::FailureKind,
    pub reason: String,
}

impl RecordFailure {
    fn at(line: u64, reason: impl Into<String>) -> Self {
        Self {
            line,
            uid: None,
            source: None,
            kind: crate::report::FailureKind::Record,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for RecordFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}", self.line)?;
        if let Some(uid) = &self.uid {
            write!(f, " (uid {uid:?})")?;
        }
        if let Some(src) = &self.source {
            write!(f, " ({src})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for RecordFailure {}

#[derive(Debug, Clone)]
pub enum Input {
    Manifest(PathBuf),
    Dir {
        root: PathBuf,
        created_at: Timestamp,
    },
    /// Loose objects under an S3 prefix (`--from-s3`), packed in batches by
    /// `run::pack` (see `crate::from_s3`).
    FromS3(crate::from_s3::FromS3),
}

pub(crate) type Sink<'a> =
    &'a mut dyn FnMut(Result<FileRecord, RecordFailure>) -> crate::error::Result<()>;

/// Calls `f` for every record or per-record failure; returns Err only for fatal problems
/// (manifest unreadable, not JSON at all, directory missing) or if `f` returns Err.
pub fn read_input(
    input: &Input,
    mut f: impl FnMut(Result<FileRecord, RecordFailure>) -> crate::error::Result<()>,
) -> crate::error::Result<()> {
    match input {
        Input::Manifest(path) => read_manifest(path, &mut f),
        Input::Dir { root, created_at } => crate::walk::read_dir(root, *created_at, &mut f),
        // Listing needs the runtime and is read batch by batch, with
        // checkpoints in between: `run::pack_into` drives it, not this.
        Input::FromS3(spec) => bail!(
            "{} is a bucket listing: pack it with des_packer::pack",
            spec.url()
        ),
    }
}

// ---------------------------------------------------------------------------
// Manifests

fn read_manifest(path: &Path, f: Sink<'_>) -> crate::error::Result<()> {
    let file =
        File::open(path).with_context(|| format!("cannot open manifest {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let (first, skipped_lines) = skip_leading_whitespace(&mut reader)
        .with_context(|| format!("cannot read manifest {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new(""));
    match first {
        None => Ok(()),
        Some(b'[') => read_json_array(path, reader, base, f),
        Some(b'{') => read_json_lines(path, reader, skipped_lines + 1, base, f),
        Some(b) => bail!(
            "manifest {} is neither a JSON array nor JSON Lines (starts with {:?})",
            path.display(),
            char::from(b)
        ),
    }
}

/// Consumes a UTF-8 BOM and leading whitespace, returning the first other byte
/// (not consumed) and how many newlines were skipped, so that JSON Lines
/// numbering still matches what an editor shows.
fn skip_leading_whitespace(r: &mut impl BufRead) -> io::Result<(Option<u8>, u64)> {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    if r.fill_buf()?.starts_with(BOM) {
        r.consume(BOM.len());
    }
    let mut newlines = 0;
    loop {
        let buf = r.fill_buf()?;
        let Some(pos) = buf.iter().position(|b| !b.is_ascii_whitespace()) else {
            if buf.is_empty() {
                return Ok((None, newlines));
            }
            newlines += count_newlines(buf);
            let n = buf.len();
            r.consume(n);
            continue;
        };
        let first = buf.get(pos).copied();
        newlines += count_newlines(buf.get(..pos).unwrap_or_default());
        r.consume(pos);
        return Ok((first, newlines));
    }
}

fn count_newlines(b: &[u8]) -> u64 {
    b.iter().filter(|&&c| c == b'\n').count() as u64
}

fn read_json_lines(
    path: &Path,
    mut reader: impl BufRead,
    first_line: u64,
    base: &Path,
    f: Sink<'_>,
) -> crate::error::Result<()> {
    let mut buf = Vec::new();
    let mut line = first_line;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("cannot read manifest {} at line {line}", path.display()))?;
        if n == 0 {
            return Ok(());
        }
        if !buf.trim_ascii().is_empty() {
            f(parse_json_line(buf.trim_ascii(), line, base))?;
        }
        line += 1;
    }
}

fn parse_json_line(text: &[u8], line: u64, base: &Path) -> Result<FileRecord, RecordFailure> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let raw = RawRecordSeed
        .deserialize(&mut de)
        .and_then(|raw| de.end().map(|()| raw))
        .map_err(|e| RecordFailure::at(line, format!("invalid JSON: {e}")))?;
    raw.into_record(line, base)
}

fn read_json_array(
    path: &Path,
    reader: impl BufRead,
    base: &Path,
    f: Sink<'_>,
) -> crate::error::Result<()> {
    let mut de = serde_json::Deserializer::from_reader(reader);
    let mut visitor = ArrayVisitor {
        base,
        sink: f,
        elements: 0,
        sink_error: None,
    };
    let result = (&mut de)
        .deserialize_seq(&mut visitor)
        .and_then(|()| de.end());
    if let Some(e) = visitor.sink_error {
        return Err(e);
    }
    result.with_context(|| {
        format!(
            "manifest {}: JSON syntax error at array element {} (cannot resynchronise)",
            path.display(),
            visitor.elements + 1
        )
    })
}

/// Hands array elements to the sink one at a time, so the array is never
/// materialised.
struct ArrayVisitor<'a, 'f> {
    base: &'a Path,
    sink: Sink<'f>,
    elements: u64,
    /// The sink's own error, kept intact; serde only gets a placeholder to stop.
    sink_error: Option<crate::error::PackError>,
}

impl<'de> Visitor<'de> for &mut ArrayVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of file records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element_seed(RawRecordSeed)? {
            self.elements += 1;
            let line = self.elements;
            if let Err(e) = (self.sink)(raw.into_record(line, self.base)) {
                self.sink_error = Some(e);
                return Err(de::Error::custom("stopped by the record consumer"));
            }
        }
        Ok(())
    }
}

/// A manifest element with every known field kept loosely typed. Parsing it
/// fails only on JSON syntax errors: in a streamed array anything else must be
/// a per-record failure, since serde cannot resume after a visitor error.
#[derive(Default)]
struct RawRecord {
    uid: Option<Value>,
    created_at: Option<Value>,
    source: Option<Value>,
    source_path: Option<Value>,
    content_type: Option<Value>,
    meta: Option<String>,
    size_bytes: Option<Value>,
    problem: Option<String>,
}

struct RawRecordSeed;

impl<'de> DeserializeSeed<'de> for RawRecordSeed {
    type Value = RawRecord;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RawRecord, D::Error> {
        d.deserialize_any(RawRecordVisitor)
    }
}

struct RawRecordVisitor;

impl RawRecordVisitor {
    fn not_an_object<E>(what: &str) -> Result<RawRecord, E> {
        Ok(RawRecord {
            problem: Some(format!("expected a JSON object, got {what}")),
            ..RawRecord::default()
        })
    }
}

impl<'de> Visitor<'de> for RawRecordVisitor {
    type Value = RawRecord;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a file record object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRecord, A::Error> {
        let mut r = RawRecord::default();
        while let Some(key) = map.next_key::<String>()? {
            let slot = match key.as_str() {
                "uid" => &mut r.uid,
                "created_at" => &mut r.created_at,
                "source" => &mut r.source,
                "source_path" => &mut r.source_path,
                "content_type" => &mut r.content_type,
                "size_bytes" => &mut r.size_bytes,
                "meta" => {
                    let mut text = String::new();
                    map.next_value_seed(CompactJson(&mut text))?;
                    set_once(&mut r.meta, text, "meta", &mut r.problem);
                    continue;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let value = map.next_value::<Value>()?;
            set_once(slot, value, &key, &mut r.problem);
        }
        Ok(r)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawRecord, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Self::not_an_object("an array")
    }

    fn visit_bool<E>(self, _: bool) -> Result<RawRecord, E> {
        Self::not_an_object("a boolean")
    }

    fn visit_i64<E>(self, _: i64) -> Result<RawRecord, E> {
        Self::not_an_object("a number")
    }

    fn visit_u64<E>(self, _: u64) -> Result<RawRecord, E> {
        Self::not_an_object("a number")
    }

    fn visit_f64<E>(self, _: f64) -> Result<RawRecord, E> {
        Self::not_an_object("a number")
    }

    fn visit_str<E>(self, _: &str) -> Result<RawRecord, E> {
        Self::not_an_object("a string")
    }

    fn visit_unit<E>(self) -> Result<RawRecord, E> {
        Self::not_an_object("null")
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, key: &str, problem: &mut Option<String>) {
    if slot.is_some() {
        problem.get_or_insert_with(|| format!("duplicate field {key:?}"));
    } else {
        *slot = Some(value);
    }
}

/// Re-emits any JSON value as compact text while it is parsed, keeping object
/// keys in their original order (`serde_json::Value` would sort them).
struct CompactJson<'a>(&'a mut String);

impl<'de> DeserializeSeed<'de> for CompactJson<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CompactJson<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.0.push_str(if v { "true" } else { "false" });
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.push_str(&v.to_string());
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.push_str(&v.to_string());
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        // JSON text cannot hold a non-finite number, so `from_f64` only fails
        // on values the parser never produces; `null` is serde_json's own choice.
        match serde_json::Number::from_f64(v) {
            Some(n) => self.0.push_str(&n.to_string()),
            None => self.0.push_str("null"),
        }
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        push_json_string(self.0, v);
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.push_str("null");
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.push('[');
        let mut first = true;
        loop {
            let mark = self.0.len();
            if !first {
                self.0.push(',');
            }
            if seq.next_element_seed(CompactJson(self.0))?.is_none() {
                self.0.truncate(mark);
                break;
            }
            first = false;
        }
        self.0.push(']');
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.push('{');
        let mut first = true;
        while let Some(key) = map.next_key::<String>()? {
            if !first {
                self.0.push(',');
            }
            first = false;
            push_json_string(self.0, &key);
            self.0.push(':');
            map.next_value_seed(CompactJson(self.0))?;
        }
        self.0.push('}');
        Ok(())
    }
}

fn push_json_string(out: &mut String, s: &str) {
    // Serialising a &str to JSON cannot fail; the fallback only keeps this total.
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

impl RawRecord {
    fn into_record(self, line: u64, base: &Path) -> Result<FileRecord, RecordFailure> {
        let uid = self.uid.as_ref().and_then(|v| uid_text(v).ok());
        let source = self
            .source
            .as_ref()
            .or(self.source_path.as_ref())
            .and_then(Value::as_str)
            .map(str::to_string);
        self.validate(base, line)
            .map_err(move |reason| RecordFailure {
                line,
                uid,
                source,
                kind: crate::report::FailureKind::Record,
                reason,
            })
    }

    fn validate(self, base: &Path, line: u64) -> Result<FileRecord, String> {
        if let Some(p) = self.problem {
            return Err(p);
        }
        let uid = uid_text(self.uid.as_ref().ok_or("missing field \"uid\"")?)?;
        let created_at = match self.created_at {
            Some(Value::String(s)) => Timestamp::parse_rfc3339(&s).map_err(|e| e.to_string())?,
            Some(_) => return Err("created_at must be an RFC 3339 string".into()),
            None => return Err("missing field \"created_at\"".into()),
        };
        let source = source_path(self.source, self.source_path, base)?;
        let content_type = optional_string(self.content_type, "content_type")?;
        if content_type
            .as_ref()
            .is_some_and(|c| c.len() > MAX_CONTENT_TYPE_LEN)
        {
            return Err(format!("content_type is over {MAX_CONTENT_TYPE_LEN} bytes"));
        }
        let meta = self.meta.filter(|m| m != "null");
        check_meta(meta.as_deref())?;
        let size_hint = size_bytes(self.size_bytes)?;
        Ok(FileRecord {
            uid,
            created_at,
            source,
            content_type,
            meta,
            size_hint,
            line,
        })
    }
}

/// The original DES allowed numeric ids, so integers are taken as their
/// decimal text (which routes the same way as the all-digit string).
fn uid_text(v: &Value) -> Result<String, String> {
    let uid = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
        _ => return Err("uid must be a string or an integer".into()),
    };
    check_uid(&uid)?;
    Ok(uid)
}

pub(crate) fn check_uid(uid: &str) -> Result<(), String> {
    if uid.is_empty() {
        return Err("uid must not be empty".into());
    }
    if uid.len() > MAX_UID_LEN {
        return Err(format!("uid is over {MAX_UID_LEN} bytes"));
    }
    Ok(())
}

fn source_path(
    source: Option<Value>,
    source_path: Option<Value>,
    base: &Path,
) -> Result<SourceRef, String> {
    let text = match (source, source_path) {
        (Some(a), Some(b)) if a != b => return Err("source and source_path disagree".into()),
        (Some(v), _) | (None, Some(v)) => match v {
            Value::String(s) if !s.is_empty() => s,
            _ => return Err("source must be a non-empty string".into()),
        },
        (None, None) => return Err("missing field \"source\" (or \"source_path\")".into()),
    };
    if text.starts_with("s3://") {
        return SourceRef::parse_s3(&text);
    }
    // Resolving `http://…` against the manifest directory would silently look
    // for a local file of that name.
    if text.contains("://") {
        return Err(format!(
            "source {text:?}: only local paths and s3:// are supported"
        ));
    }
    Ok(SourceRef::Local(base.join(text)))
}

fn optional_string(v: Option<Value>, key: &str) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{key} must be a string")),
    }
}

fn check_meta(meta: Option<&str>) -> Result<(), String> {
    let Some(m) = meta else { return Ok(()) };
    if !m.starts_with('{') {
        return Err("meta must be a JSON object".into());
    }
    if m.len() > MAX_META_LEN {
        return Err(format!("meta is over {MAX_META_LEN} bytes"));
    }
    Ok(())
}

fn size_bytes(v: Option<Value>) -> Result<Option<u64>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| "size_bytes must be a non-negative integer".into()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;

    pub(crate) type Item = Result<FileRecord, RecordFailure>;

    pub(crate) fn collect(input: &Input) -> crate::error::Result<Vec<Item>> {
        let mut out = Vec::new();
        read_input(input, |r| {
            out.push(r);
            Ok(())
        })?;
        Ok(out)
    }

    fn manifest(dir: &Path, name: &str, text: &str) -> Input {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        Input::Manifest(p)
    }

    pub(crate) fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    pub(crate) fn ok(item: &Item) -> &FileRecord {
        item.as_ref().unwrap()
    }

    pub(crate) fn failed(item: &Item) -> &RecordFailure {
        item.as_ref().unwrap_err()
    }

    #[test]
    fn json_array_original_format() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"
        [
          {"uid": 12345, "created_at": "2024-05-17T10:00:00Z", "size_bytes": 10, "source_path": "files/a.bin"},
          {"uid": "abc", "created_at": "2024-05-17 10:00:00", "source_path": "b"},
          17,
          {"uid": "m", "created_at": "2024-05-18T00:00:00+02:00", "source": "/abs/m.json",
           "content_type": "application/json", "meta": {"z": 1, "a": [true, null, "q\"x"], "f": 1.5}},
          {"uid": "bad-meta", "created_at": "2024-05-17T10:00:00Z", "source": "c", "meta": [1]},
          {"uid": "", "created_at": "2024-05-17T10:00:00Z", "source": "d"}
        ]
        "#;
        let input = manifest(dir.path(), "m.json", text);
        let items = collect(&input).unwrap();
        assert_eq!(items.len(), 6);

        let a = ok(&items[0]);
        assert_eq!(a.uid, "12345");
        assert_eq!(a.line, 1);
        assert_eq!(a.source, SourceRef::Local(dir.path().join("files/a.bin")));
        assert_eq!(a.size_hint, Some(10));
        assert_eq!(a.created_at, ts("2024-05-17T10:00:00Z"));
        assert_eq!(a.meta, None);

        let b = failed(&items[1]);
        assert_eq!(
            (b.line, b.uid.as_deref(), b.source.as_deref()),
            (2, Some("abc"), Some("b"))
        );
        assert!(b.reason.contains("RFC 3339"), "{}", b.reason);

        assert_eq!(failed(&items[2]).line, 3);
        assert!(failed(&items[2]).reason.contains("object"));

        let m = ok(&items[3]);
        assert_eq!(m.source, SourceRef::Local(PathBuf::from("/abs/m.json")));
        assert_eq!(m.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            m.meta.as_deref(),
            Some(r#"{"z":1,"a":[true,null,"q\"x"],"f":1.5}"#)
        );
        assert_eq!(m.line, 4);

        assert!(
            failed(&items[4])
                .reason
                .contains("meta must be a JSON object")
        );
        assert_eq!(failed(&items[4]).line, 5);
        assert!(failed(&items[5]).reason.contains("empty"));
    }

    #[test]
    fn json_array_syntax_error_is_fatal_and_names_the_element() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"[{"uid":"a","created_at":"2024-05-17T10:00:00Z","source":"a"},
                       {"uid":"b","created_at": ,"source":"b"},
                       {"uid":"c","created_at":"2024-05-17T10:00:00Z","source":"c"}]"#;
        let input = manifest(dir.path(), "m.json", text);
        let mut seen = Vec::new();
        let err = read_input(&input, |r| {
            seen.push(r);
            Ok(())
        })
        .unwrap_err();
        assert_eq!(
            seen.len(),
            1,
            "records before the error are still delivered"
        );
        assert!(format!("{err:#}").contains("element 2"), "{err:#}");

        let trailing = manifest(dir.path(), "t.json", "[] x");
        assert!(collect(&trailing).is_err());
        let unterminated = manifest(dir.path(), "u.json", r#"[{"uid":"a"}"#);
        assert!(collect(&unterminated).is_err());
    }

    #[test]
    fn json_lines_with_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let text = concat!(
            "\n",
            "{\"uid\":\"a\",\"created_at\":\"2024-05-17T10:00:00Z\",\"source\":\"x/a\"}\n",
            "\n",
            "{\"uid\":\"b\",\"created_at\":\"2024-05-17T10:00:00Z\",\"source\":\"b\"\n",
            "{\"uid\":7,\"created_at\":\"2024-05-17T10:00:00.5Z\",\"source_path\":\"c\",\"size_bytes\":3}\r\n",
            "{\"uid\":\"d\",\"source\":\"d\"}\n",
            "{\"uid\":\"e\",\"created_at\":\"2024-05-17T10:00:00Z\",\"source\":\"e\"} {}\n",
            "{\"uid\":1.5,\"created_at\":\"2024-05-17T10:00:00Z\",\"source\":\"f\"}\n",
            "{\"uid\":\"g\",\"uid\":\"h\",\"created_at\":\"2024-05-17T10:00:00Z\",\"source\":\"g\"}\n",
            "{\"uid\":\"i\",\"created_at\":\"2024-05-17T10:00:00Z\",\"source\":\"i\",\"size_bytes\":-1}\n",
            "{\"uid\":\"j\",\"created_at\":\"2024-05-17T10:00:00Z\",\"source\":\"https://b/j\"}\n",
            "{\"uid\":\"k\",\"created_at\":\"2024-05-17T10:00:00Z\",\"source\":\"k\",\"meta\":null,\"extra\":[1]}",
        );
        let input = manifest(dir.path(), "m.jsonl", text);
        let items = collect(&input).unwrap();
        let lines: Vec<(u64, bool)> = items
            .iter()
            .map(|i| match i {
                Ok(r) => (r.line, true),
                Err(f) => (f.line, false),
            })
            .collect();
        assert_eq!(
            lines,
            [
                (2, true),
                (4, false),
                (5, true),
                (6, false),
                (7, false),
                (8, false),
                (9, false),
                (10, false),
                (11, false),
                (12, true)
            ]
        );
        assert_eq!(
            ok(&items[0]).source,
            SourceRef::Local(dir.path().join("x/a"))
        );
        assert!(failed(&items[1]).reason.contains("invalid JSON"));
        let c = ok(&items[2]);
        assert_eq!((c.uid.as_str(), c.size_hint), ("7", Some(3)));
        assert_eq!(c.created_at.micros() % 1_000_000, 500_000);
        assert!(failed(&items[3]).reason.contains("created_at"));
        assert_eq!(failed(&items[3]).uid.as_deref(), Some("d"));
        assert!(failed(&items[5]).reason.contains("uid must be"));
        assert!(failed(&items[6]).reason.contains("duplicate field"));
        assert!(failed(&items[7]).reason.contains("size_bytes"));
        assert!(failed(&items[8]).reason.contains("s3:// are supported"));
        assert_eq!(ok(&items[9]).meta, None);
    }

    #[test]
    fn s3_sources_are_not_resolved_against_the_manifest_dir() {
        let dir = tempfile::tempdir().unwrap();
        let text = concat!(
            "{\"uid\":\"a\",\"created_at\":\"2024-05-17T10:00:00Z\",\"source\":\"s3://bkt/in/a.bin\"}\n",
            "{\"uid\":\"b\",\"created_at\":\"2024-05-17T10:00:00Z\",\"source\":\"s3://bkt\"}\n",
            "{\"uid\":\"c\",\"created_at\":\"2024-05-17T10:00:00Z\",\"source\":\"s3://bkt/x//y\"}\n",
            "{\"uid\":\"d\",\"created_at\":\"2024-05-17T10:00:00Z\",\"source\":\"s3:///k\"}\n",
        );
        let input = manifest(dir.path(), "m.jsonl", text);
        let items = collect(&input).unwrap();
        let a = ok(&items[0]);
        assert_eq!(
            a.source,
            SourceRef::S3 {
                bucket: "bkt".into(),
                key: "in/a.bin".into()
            }
        );
        assert_eq!(a.source.to_string(), "s3://bkt/in/a.bin");
        assert!(failed(&items[1]).reason.contains("s3://bucket/key"));
        assert!(failed(&items[2]).reason.contains("not supported"));
        assert!(failed(&items[3]).reason.contains("s3://bucket/key"));
    }

    #[test]
    fn fatal_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let csv = manifest(dir.path(), "m.csv", "uid,created_at\n1,2\n");
        assert!(collect(&csv).is_err());
        assert!(collect(&Input::Manifest(dir.path().join("missing.jsonl"))).is_err());
        let empty = manifest(dir.path(), "e.jsonl", " \n\n ");
        assert!(collect(&empty).unwrap().is_empty());
        let missing = Input::Dir {
            root: dir.path().join("nope"),
            created_at: ts("2024-01-01T00:00:00Z"),
        };
        assert!(collect(&missing).is_err());
        let file_root = Input::Dir {
            root: dir.path().join("m.csv"),
            created_at: ts("2024-01-01T00:00:00Z"),
        };
        assert!(collect(&file_root).is_err());
    }

    #[test]
    fn consumer_error_stops_reading() {
        let dir = tempfile::tempdir().unwrap();
        let rec = r#"{"uid":"a","created_at":"2024-05-17T10:00:00Z","source":"a"}"#;
        for input in [
            manifest(dir.path(), "m.json", &format!("[{rec},{rec},{rec}]")),
            manifest(dir.path(), "m.jsonl", &format!("{rec}\n{rec}\n{rec}\n")),
        ] {
            let mut calls = 0;
            let err = read_input(&input, |_| {
                calls += 1;
                if calls == 2 {
                    crate::error::bail!("consumer is full")
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
            assert_eq!(calls, 2);
            assert_eq!(err.to_string(), "consumer is full");
        }
    }
}
