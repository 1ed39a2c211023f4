#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod conformance;

use std::sync::Arc;

fn store() -> conformance::Store {
    // The directory is leaked on purpose so it outlives the async test body.
    let dir = tempfile::tempdir().unwrap().keep();
    Arc::new(des_storage::LocalStore::new(dir).unwrap())
}

conformance_tests!(store());

#[tokio::test]
async fn local_temp_files_are_hidden_and_swept() {
    let dir = tempfile::tempdir().unwrap();
    let s = des_storage::LocalStore::new(dir.path()).unwrap();
    std::fs::create_dir_all(dir.path().join("d")).unwrap();
    std::fs::write(dir.path().join("d/.des-tmp-0000-x.des"), b"partial").unwrap();
    use des_storage::ObjectStoreExt;
    assert!(s.list_all("").await.unwrap().is_empty());
    assert_eq!(s.sweep_temp_files(std::time::Duration::ZERO).unwrap(), 1);
}
