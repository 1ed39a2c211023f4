//! Entries compressed with a shared dictionary (SPEC §6.7) are served
//! byte-exact; a dictionary that is damaged or gone makes them 500s, never
//! wrong bytes, while entries without one are still served.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix_web::test::{TestRequest, call_service, init_service, read_body};
use actix_web::web;
use common::*;
use des_format::{Codec, Timestamp};
use des_storage::DesStore;

/// Pages alike enough for a dictionary to pay, different enough to be files.
fn pages(n: usize) -> Vec<Spec> {
    (0..n)
        .map(|i| {
            let body = format!(
                "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Item {i} \
                 in core::iter</title><link rel=\"stylesheet\" href=\"../../static.files/rustdoc.css\">\
                 </head><body class=\"rustdoc fn\"><nav class=\"sidebar\"><a href=\"../index.html\">\
                 core</a></nav><main><h1>Function <span>item_{i}</span></h1><pre class=\"rust item-decl\">\
                 pub fn item_{i}(x: u{}) -&gt; Option&lt;usize&gt;</pre><p>Returns {} for {}.</p>\
                 </main></body></html>",
                8 << (i % 4),
                i * 7919 % 10007,
                i * 31 % 97
            );
            Spec::new(&format!("docs/core/item_{i}.html"), body.repeat(1 + i % 3))
        })
        .collect()
}

fn pack_with_dicts(dir: &Path, files: &[Spec]) {
    pack_with(dir, files, |o| {
        o.n_bits = Some(4);
        o.dict.sample_bytes = 64 << 10;
        o.dict.size = 8 << 10;
    });
}

/// The uids whose entries name a dictionary.
async fn dictionary_coded(dir: &Path, files: &[Spec]) -> Vec<String> {
    let store = DesStore::open(des_storage::open_location(dir.to_str().unwrap()).unwrap())
        .await
        .unwrap();
    let at = Timestamp::parse_rfc3339(CREATED).unwrap();
    let mut coded = Vec::new();
    for f in files {
        let (_, located) = store.find(&f.uid, at).await.unwrap();
        if located.codec == Codec::ZstdDict {
            coded.push(f.uid.clone());
        }
    }
    coded
}

fn the_dictionary(dir: &Path) -> PathBuf {
    let mut dicts: Vec<_> = std::fs::read_dir(dir.join("_dicts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(dicts.len(), 1, "{dicts:?}");
    dicts.remove(0)
}

/// GETs `uid` from a fresh service (nothing cached); status and body.
async fn get_fresh(dir: &Path, uid: &str) -> (u16, Vec<u8>) {
    let objects = des_storage::open_location(dir.to_str().unwrap()).unwrap();
    let state = web::Data::new(state_on(Arc::clone(&objects), &settings(dir)).await);
    let app = init_service(des_retriever::server::app(state)).await;
    let resp = call_service(
        &app,
        TestRequest::get().uri(&file_uri(uid, CREATED)).to_request(),
    )
    .await;
    let status = resp.status().as_u16();
    (status, read_body(resp).await.to_vec())
}

#[actix_web::test]
async fn dictionary_entries_are_served_and_a_bad_dictionary_is_a_500() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = pages(800);
    // A class of its own, too small to train: stored without a dictionary.
    files.push(Spec::new("docs/README.txt", "plain text, ".repeat(40)));
    pack_with_dicts(dir.path(), &files);
    let coded = dictionary_coded(dir.path(), &files).await;
    assert_eq!(coded.len(), 800, "every page uses the dictionary");

    let (state, counting) = counted(dir.path(), &settings(dir.path())).await;
    let state = web::Data::new(state);
    let app = init_service(des_retriever::server::app(state.clone())).await;
    for f in &files {
        let resp = call_service(
            &app,
            TestRequest::get()
                .uri(&file_uri(&f.uid, CREATED))
                .to_request(),
        )
        .await;
        assert_eq!(resp.status().as_u16(), 200, "{}", f.uid);
        assert_eq!(read_body(resp).await.to_vec(), f.data, "{}", f.uid);
    }
    // Read and verified once, for every entry that needs it.
    let dicts = state.retriever.store().dict_cache();
    assert_eq!(dicts.loads(), 1);
    // The cache holds at least the dictionary's bytes.
    let stored = std::fs::metadata(the_dictionary(dir.path())).unwrap().len();
    assert!(dicts.bytes() >= stored, "{} < {stored}", dicts.bytes());
    // Index and dictionary cached: a file is one range read.
    let before = counting.counts();
    let resp = call_service(
        &app,
        TestRequest::get()
            .uri(&file_uri(&coded[0], CREATED))
            .to_request(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let after = counting.counts();
    assert_eq!(
        (
            after.total() - before.total(),
            after.suffix_get - before.suffix_get
        ),
        (1, 0)
    );

    let plain = files.iter().find(|f| !coded.contains(&f.uid)).unwrap();
    let dict = the_dictionary(dir.path());
    let good = std::fs::read(&dict).unwrap();
    // A flipped byte in the dictionary's bytes, then no dictionary at all.
    let mut bad = good.clone();
    let at = bad.len() - 100;
    bad[at] ^= 0x10;
    std::fs::write(&dict, &bad).unwrap();
    let (status, body) = get_fresh(dir.path(), &coded[0]).await;
    assert_eq!(status, 500, "damaged dictionary");
    assert_ne!(body, files.iter().find(|f| f.uid == coded[0]).unwrap().data);
    std::fs::remove_file(&dict).unwrap();
    assert_eq!(
        get_fresh(dir.path(), &coded[1]).await.0,
        500,
        "missing dictionary"
    );
    let (status, body) = get_fresh(dir.path(), &plain.uid).await;
    assert_eq!(
        (status, body),
        (200, plain.data.clone()),
        "entries without one"
    );
}
