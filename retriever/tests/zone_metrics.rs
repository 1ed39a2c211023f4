//! A zone's failovers and hedges reach /metrics: a primary that lacks the
//! shards (fallback_on_not_found) sends every read to the replica, which is
//! slow enough that each read of it is hedged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_web::test::{TestRequest, init_service};
use actix_web::web;
use async_trait::async_trait;
use common::*;
use des_retriever::{AppState, Storage};
use des_storage::zones::{S3Location, Zones, ZonesFile};
use des_storage::{GetOptions, GetResult, LocalStore, ObjectStore, Result};

const N_BITS: u8 = 4;

/// Answers every read 30 ms late.
#[derive(Debug)]
struct Slow {
    inner: Arc<dyn ObjectStore>,
}

#[async_trait]
impl ObjectStore for Slow {
    des_storage::forward_methods!(inner =>
        describe, capabilities, head, put, put_writer, delete, list, sweep_leftovers);

    async fn get(&self, key: &str, opts: GetOptions) -> Result<GetResult> {
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.inner.get(key, opts).await
    }
}

#[actix_web::test]
async fn failovers_and_hedges_are_exported_per_zone() {
    let packed = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let uids: Vec<String> = (0..6).map(|i| format!("m{i}.txt")).collect();
    let files: Vec<Spec> = uids.iter().map(|u| Spec::new(u, u.repeat(20))).collect();
    pack(packed.path(), &files, N_BITS, 10 << 20);
    let yaml = format!(
        "n_bits: {N_BITS}\n\
         zones:\n\
         - name: a\n  range: {{start: 0, end: 15}}\n  s3: {{bucket: primary}}\n  \
           replicas: [{{bucket: replica}}]\n  fallback_on_not_found: true\n  hedge_after_ms: 5\n"
    );
    let file = ZonesFile::from_yaml_str(&yaml).unwrap();
    let (primary, replica) = (empty.path().to_path_buf(), packed.path().to_path_buf());
    let zones = Zones::build(&file, |loc: &S3Location| {
        let local = |p: &Path| Arc::new(LocalStore::new(p).unwrap()) as Arc<dyn ObjectStore>;
        Ok(match loc.bucket.as_str() {
            "primary" => local(&primary),
            _ => Arc::new(Slow {
                inner: local(&replica),
            }) as Arc<dyn ObjectStore>,
        })
    })
    .unwrap();
    let state = AppState::open(
        &Storage::zones(Arc::new(zones)),
        &settings(Path::new("/unused")),
    )
    .await
    .unwrap();
    let app = init_service(des_retriever::server::app(web::Data::new(state))).await;
    for uid in &uids {
        let r = call(
            &app,
            TestRequest::get().uri(&file_uri(uid, CREATED)).to_request(),
        )
        .await;
        assert_eq!(
            (r.status, r.bytes()),
            (200, uid.repeat(20).as_bytes()),
            "{uid}"
        );
    }
    let r = call(&app, TestRequest::get().uri("/metrics").to_request()).await;
    let text = String::from_utf8(r.bytes().to_vec()).unwrap();
    let value = |series: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    // Every index and payload read missed the primary, then was hedged on
    // the replica, where both copies are equally slow: the first answers.
    let failovers = value("des_storage_failovers_total{zone=\"a\"}");
    assert!(failovers >= uids.len() as u64, "{failovers}");
    let lost = value("des_storage_hedges_total{outcome=\"lost\",zone=\"a\"}");
    assert!(lost >= uids.len() as u64, "{lost}");
    assert_eq!(
        value("des_storage_hedges_total{outcome=\"won\",zone=\"a\"}"),
        0
    );
}
