//! Prometheus text files for batch tools (`--metrics-file`, read by
//! node-exporter's textfile collector): a run is one process, so counters
//! carry on by reading the previous file, and the file is replaced whole.

use std::path::Path;

/// The samples (`name{labels}`, value) of a previous metrics file at `path`,
/// so counters carry on across runs; missing or unreadable: none.
pub fn previous_samples(path: &Path) -> Vec<(String, f64)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Temp file, rename, fsync of the directory: a textfile collector never
/// reads half a file, and a crash keeps the previous one.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    if let Some(d) = dir {
        std::fs::File::open(d)?.sync_all()?;
    }
    Ok(())
}
