//! Shared dictionaries through the binaries: des-pack trains and uses one,
//! des-verify checks dictionary entries and calls a missing dictionary
//! corruption (exit 1), des-repack --recompress decodes them and
//! --recompress-dict moves entries to a dictionary.
//! The binaries of other packages are found next to this test's own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|d| d.parent()).unwrap().join(name)
}

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(binary(bin)).args(args).output().unwrap()
}

fn expect(out: &Output, code: i32) -> String {
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(code), "{text}");
    text
}

/// 800 pages alike enough for a dictionary to pay (an eighth sampled).
fn write_pages(dir: &Path) {
    for i in 0..800 {
        let page = format!(
            "<!DOCTYPE html><html><head><title>Struct T{i}</title><link rel=\"stylesheet\" \
             href=\"../static.files/rustdoc.css\"></head><body class=\"rustdoc struct\"><main>\
             <h1>Struct <span>T{i}</span></h1><p>Implements {} traits; size {} bytes.</p>\
             </main></body></html>",
            i % 17,
            i * 8
        );
        std::fs::write(dir.join(format!("t{i}.html")), page.repeat(2 + i % 3)).unwrap();
    }
}

/// des-pack of `src` into `store` on 2024-05-17, n_bits 4, JSON report.
fn pack_into(src: &Path, store: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "--dir",
        src.to_str().unwrap(),
        "--created-at",
        "2024-05-17T10:00:00Z",
        "--store",
        store,
        "--n-bits",
        "4",
        "--json",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    run("des-pack", &args)
}

#[test]
fn pack_verify_repack_with_a_dictionary_and_without_it() {
    let src = tempfile::tempdir().unwrap();
    write_pages(src.path());
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let pack = |extra: &[&str]| pack_into(src.path(), s, extra);
    let out = pack(&["--dict-sample", "64K", "--dict-size", "8K"]);
    expect(&out, 0);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = report["dictionaries"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        report["dictionaries"][0]["ratio_to_plain"]
            .as_f64()
            .unwrap()
            < 0.9
    );
    assert!(store.path().join("_dicts").join(&id).exists());

    // Unknown dictionary: a usage-level failure before anything is written.
    expect(&pack(&["--dict", "7fffffff"]), 2);

    expect(&run("des-verify", &[s, "--quiet"]), 0);
    let rewrite = run(
        "des-repack",
        &[
            "--store",
            s,
            "--recompress",
            "zstd",
            "--shard",
            "20240517/0",
            "--shard",
            "20240517/7",
        ],
    );
    expect(&rewrite, 0);
    expect(&run("des-verify", &[s, "--quiet"]), 0);
    // Those two are now plain zstd (decoded with their dictionary first);
    // --recompress-dict moves shard 0 back to the dictionary.
    let shard0 = store.path().join("20240517").join("0.des");
    let plain = std::fs::metadata(&shard0).unwrap().len();
    let back = run(
        "des-repack",
        &[
            "--store",
            s,
            "--recompress",
            "auto",
            "--recompress-dict",
            &id,
            "--shard",
            "20240517/0",
        ],
    );
    expect(&back, 0);
    let with_dict = std::fs::metadata(&shard0).unwrap().len();
    assert!(with_dict * 10 < plain * 9, "{with_dict} vs {plain}");
    expect(&run("des-verify", &[s, "--quiet"]), 0);

    std::fs::remove_file(store.path().join("_dicts").join(&id)).unwrap();
    let text = expect(&run("des-verify", &[s, "--quiet"]), 1);
    assert!(text.contains(&format!("_dicts/{id}")), "{text}");
}

/// Records alike enough for a dictionary of their own (the `.json` class).
fn write_records(dir: &Path) {
    for i in 0..800 {
        let rec = format!(
            "{{\"invoice\":{i},\"customer\":\"C-{}\",\"currency\":\"EUR\",\"lines\":[\
             {{\"sku\":\"SKU-{}\",\"qty\":{},\"unit_price\":\"{}.99\"}}],\"status\":\"paid\"}}\n",
            i % 97,
            i % 31,
            1 + i % 5,
            i % 50
        );
        std::fs::write(dir.join(format!("r{i}.json")), rec.repeat(2 + i % 4)).unwrap();
    }
}

/// The dictionary id (8 hex) each stored entry's zstd frame names, by uid
/// (`None`: not compressed with a dictionary).
fn frame_dicts(store: &Path) -> Vec<(String, Option<String>)> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let objects: std::sync::Arc<dyn des_storage::ObjectStore> =
            std::sync::Arc::new(des_storage::LocalStore::new(store).unwrap());
        let s = des_storage::DesStore::open(objects).await.unwrap();
        let mut out = Vec::new();
        for entry in std::fs::read_dir(store.join("20240517")).unwrap() {
            let path = entry.unwrap().path();
            let key = format!("20240517/{}", path.file_name().unwrap().to_str().unwrap());
            let bytes = std::fs::read(&path).unwrap();
            let loaded = s.load_index(&key).await.unwrap().unwrap();
            for l in loaded.index.located() {
                let des_format::shard::Source::InShard { offset } = l.source else {
                    continue;
                };
                let stored = &bytes[offset as usize..(offset + l.stored_len) as usize];
                let id = (l.codec == des_format::codec::Codec::ZstdDict)
                    .then(|| des_format::dict::frame_dict_id(stored))
                    .flatten()
                    .map(des_format::dict::id_hex);
                out.push((l.uid, id));
            }
        }
        out
    })
}

/// `--recompress-dict auto`: each entry moves to its own class's latest
/// dictionary (pages to the `.html` one, records to the `.json` one).
#[test]
fn recompress_dict_auto_takes_each_entrys_class_dictionary() {
    let src = tempfile::tempdir().unwrap();
    write_pages(src.path());
    write_records(src.path());
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let out = pack_into(
        src.path(),
        s,
        &["--dict-sample", "64K", "--dict-size", "8K"],
    );
    expect(&out, 0);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id_of = |class: &str| {
        report["dictionaries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["class"] == class)
            .and_then(|t| t["id"].as_str())
            .unwrap_or_else(|| panic!("no {class} dictionary: {report:#}"))
            .to_string()
    };
    let (html, json) = (id_of(".html"), id_of(".json"));
    assert_ne!(html, json);
    let every_shard: Vec<String> = (0..16).map(|i| format!("20240517/{i:X}")).collect();
    let rewrite = |extra: &[&str]| {
        let mut args = vec!["--store", s, "--quiet"];
        args.extend_from_slice(extra);
        for k in &every_shard {
            args.extend_from_slice(&["--shard", k]);
        }
        run("des-repack", &args)
    };
    expect(&rewrite(&["--recompress", "zstd"]), 0);
    assert!(frame_dicts(store.path()).iter().all(|(_, id)| id.is_none()));
    expect(
        &rewrite(&["--recompress", "auto", "--recompress-dict", "auto"]),
        0,
    );
    let moved = frame_dicts(store.path());
    assert_eq!(moved.len(), 1600);
    for (uid, id) in &moved {
        let want = if uid.ends_with(".html") { &html } else { &json };
        assert_eq!(id.as_ref(), Some(want), "{uid}");
    }
    expect(&run("des-verify", &[s, "--quiet"]), 0);
    // A bad value is a usage error.
    expect(
        &rewrite(&["--recompress", "auto", "--recompress-dict", "sometimes"]),
        2,
    );
}
