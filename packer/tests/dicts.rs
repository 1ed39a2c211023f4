//! Dictionaries trained while packing (SPEC §6.7): kept only where they
//! pay, the same input trains the same dictionary, every file reads back,
//! `--dict ID` reuses a stored one and `--dict off` uses none.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{CREATED, noise};
use des_format::{Codec, Timestamp};
use des_packer::dicts::{DictMode, DictSettings};
use des_packer::{Input, PackOptions, PackReport, Target, pack_into};
use des_storage::{ByteRange, DesStore, MemoryStore, ObjectStore, ObjectStoreExt, PutOptions};
use tokio::runtime::Runtime;

/// 800 pages a dictionary pays on (an eighth of them sampled), and 800
/// random `.bin` files it cannot.
fn write_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for i in 0..800u64 {
        let page = format!(
            "<html><head><title>Module m{i}</title><link rel=\"stylesheet\" href=\"../s/rustdoc.css\">\
             </head><body class=\"rustdoc mod\"><main><h1>Module <span>m{i}</span></h1>\
             <p>{} items, {} re-exports.</p></main></body></html>",
            i % 23,
            i * 3 % 11
        )
        .repeat(2 + (i % 4) as usize);
        files.push((format!("p{i}.html"), page.into_bytes()));
        files.push((format!("r{i}.bin"), noise(i + 1, 2000 + i as usize)));
    }
    for (name, data) in &files {
        std::fs::write(dir.join(name), data).unwrap();
    }
    files
}

fn pack(rt: &Runtime, objects: &MemoryStore, src: &Path, mode: DictMode) -> PackReport {
    let opts = PackOptions {
        n_bits: Some(4),
        jobs: 2,
        dict: DictSettings {
            mode,
            size: 8 << 10,
            sample_bytes: 256 << 10,
            ..DictSettings::default()
        },
        ..PackOptions::default()
    };
    let input = Input::Dir {
        root: src.to_path_buf(),
        created_at: Timestamp::parse_rfc3339(CREATED).unwrap(),
    };
    let target = Target::single(Arc::new(objects.clone()));
    let report = pack_into(&input, &opts, &target, rt.handle(), false).unwrap();
    assert_eq!(report.files_failed, 0, "{report:?}");
    report
}

/// Reads every file back; returns how many entries name a dictionary.
fn read_back(rt: &Runtime, objects: &MemoryStore, files: &[(String, Vec<u8>)]) -> usize {
    let store = rt
        .block_on(DesStore::open(Arc::new(objects.clone())))
        .unwrap();
    let at = Timestamp::parse_rfc3339(CREATED).unwrap();
    let mut coded = 0;
    for (uid, data) in files {
        let (loaded, located) = rt.block_on(store.find(uid, at)).unwrap();
        coded += usize::from(located.codec == Codec::ZstdDict);
        assert!(
            !uid.ends_with(".bin") || located.codec != Codec::ZstdDict,
            "{uid}"
        );
        assert_eq!(
            rt.block_on(store.read_file(&loaded, &located)).unwrap(),
            *data,
            "{uid}"
        );
    }
    coded
}

#[test]
fn dictionaries_where_they_pay_and_the_same_input_trains_the_same() {
    let rt = Runtime::new().unwrap();
    let src = tempfile::tempdir().unwrap();
    let files = write_files(src.path());

    let first = MemoryStore::new();
    let report = pack(&rt, &first, src.path(), DictMode::Auto);
    let html = report
        .dictionaries
        .iter()
        .find(|d| d.class == ".html")
        .unwrap();
    let id = html.id.clone().expect("the pages' dictionary pays");
    assert!(html.ratio_to_plain < 0.9, "{html:?}");
    // Random bytes: either nothing to train on, or a dictionary not kept.
    assert!(
        report
            .dictionaries
            .iter()
            .all(|d| d.class != ".bin" || d.id.is_none())
    );
    // Every page packed after training uses it: all of them here.
    assert_eq!(read_back(&rt, &first, &files), 800);

    let second = MemoryStore::new();
    let again = pack(&rt, &second, src.path(), DictMode::Auto);
    assert_eq!(again.dictionaries, report.dictionaries, "fixed-seed sample");
    // A later run into the same store reuses the day's dictionary.
    let later = tempfile::tempdir().unwrap();
    for (name, data) in files.iter().take(200) {
        std::fs::write(later.path().join(format!("later-{name}")), data).unwrap();
    }
    let reran = pack(&rt, &first, later.path(), DictMode::Auto);
    let html = reran
        .dictionaries
        .iter()
        .find(|d| d.class == ".html")
        .unwrap();
    assert!(
        html.reused && html.id.as_deref() == Some(id.as_str()),
        "{reran:?}"
    );

    // Reused by id in another store that has it; none at all when off.
    let reuse = MemoryStore::new();
    let key = format!("_dicts/{id}");
    let (_, object) = rt.block_on(first.get_range(&key, ByteRange::All)).unwrap();
    rt.block_on(reuse.put(&key, object, PutOptions::default()))
        .unwrap();
    let fixed = pack(
        &rt,
        &reuse,
        src.path(),
        DictMode::Id(u32::from_str_radix(&id, 16).unwrap()),
    );
    assert!(fixed.dictionaries.is_empty());
    assert_eq!(read_back(&rt, &reuse, &files), 800);
    let off = MemoryStore::new();
    pack(&rt, &off, src.path(), DictMode::Off);
    assert_eq!(read_back(&rt, &off, &files), 0);
    assert!(rt.block_on(off.list_all("_dicts/")).unwrap().is_empty());
}
