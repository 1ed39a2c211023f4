//! How a run is written down: operations and jobs as trace text, with what
//! differs between two runs of one seed (clock readings, holder names)
//! masked.

use super::*;

/// A key with what differs from one run of a seed to the next masked:
/// clock readings, the random holder name in big-file ref keys, and the
/// checksum naming a tombstone bundle or segment (their bodies hold the
/// clock's `deleted_at`).
pub(super) fn mask_key(key: &str) -> String {
    let key = mask_crc(&mask_times(key));
    match key.strip_prefix(BIG_REFS_PREFIX) {
        Some(rest) => match rest.split_once('/') {
            Some((hex, _)) => format!("{BIG_REFS_PREFIX}{hex}/<holder>"),
            None => key,
        },
        None => key,
    }
}

fn mask_crc(key: &str) -> String {
    for ext in [".jsonl", ".seg"] {
        let Some(stem) = key.strip_suffix(ext) else {
            continue;
        };
        if !key.starts_with("_tombstones/") {
            continue;
        }
        // A segment's name may end with its record count after the checksum.
        let (stem, count) = match stem.rsplit_once('-') {
            Some((s, n)) if ext == ".seg" && n.bytes().all(|b| b.is_ascii_digit()) => {
                (s, format!("-{n}"))
            }
            _ => (stem, String::new()),
        };
        if let Some((head, crc)) = stem.rsplit_once('-')
            && crc.len() == 8
        {
            return format!("{head}-<crc>{count}{ext}");
        }
    }
    key.to_string()
}

/// Replaces clock readings (`20240601T080000123456Z`) with `<time>`.
pub(super) fn mask_times(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let is_time = b.len() >= i + 22
            && b[i..i + 8].iter().all(u8::is_ascii_digit)
            && b[i + 8] == b'T'
            && b[i + 9..i + 21].iter().all(u8::is_ascii_digit)
            && b[i + 21] == b'Z';
        if is_time {
            out.push_str("<time>");
            i += 22;
        } else {
            out.push(char::from(b[i]));
            i += 1;
        }
    }
    out
}

pub(super) fn job_text(job: &Job, scn: &Scenario) -> String {
    match job {
        Job::Pack { files } => {
            let names: Vec<String> = files
                .iter()
                .filter_map(|&i| scn.files.get(i))
                .map(|f| {
                    let big = if f.big_key.is_some() { "*" } else { "" };
                    format!("{}@{}{big}", f.uid, f.date % 100)
                })
                .collect();
            format!("pack [{}] (* = big file)", names.join(" "))
        }
        Job::Repack(s) => format!(
            "repack max-delay {} min-garbage-ratio {} big-file-grace {}",
            if s.max_delay_zero { "0" } else { "1d" },
            s.min_garbage_ratio,
            if s.grace_zero { "0" } else { "1d" }
        ),
        Job::Delete { pairs } => {
            let names: Vec<String> = pairs
                .iter()
                .map(|(u, d)| format!("{u}@{}", d % 100))
                .collect();
            format!("delete [{}]", names.join(" "))
        }
        Job::PlaceHold(h) => format!(
            "place hold {} uid-prefix {:?} date {:?}",
            h.name, h.uid_prefix, h.date
        ),
        Job::ReleaseHold { name } => format!("release hold {name}"),
        Job::Retention { prefix } => format!("retention rule: uids {prefix:?}* live 1 day"),
    }
}
