//! A legal hold placed while a run goes on (I5, `holds_refresh`).

use tokio::runtime::Handle;

use super::*;

/// Two shards (two days), a pending tombstone in each; right after the
/// first shard is done, a hold covering the second shard's deleted file is
/// placed. Returns whether that file is still stored after the run.
async fn held_file_survives(refresh: Duration) -> bool {
    let store = single(Arc::new(MemoryStore::new())).await;
    let on = |at, f: File| File { at, ..f };
    let (day1, day2) = ("2024-05-17T10:00:00Z", "2024-05-18T10:00:00Z");
    let files = [
        on(day1, file("first", noise(1, 3000))),
        on(day2, file("case42/second", noise(2, 3000))),
        on(day1, file("live-a", noise(3, 3000))),
        on(day2, file("live-b", noise(4, 3000))),
    ];
    write(&store, &files).await;
    // The first tombstone is older: its shard goes first.
    delete(&store, &files[0]).await;
    delete(&store, &files[1]).await;
    let mut o = opts();
    o.max_delay = Duration::ZERO;
    o.holds_refresh = refresh;
    let placed = AtomicBool::new(false);
    let report = repack(&store, &o, |p| {
        if matches!(p, Progress::ShardDone(_)) && !placed.swap(true, Ordering::SeqCst) {
            let hold = crate::holds::Hold::new("case-42", "case42/", "legal");
            tokio::task::block_in_place(|| {
                Handle::current().block_on(crate::holds::place(&store, &hold))
            })
            .unwrap();
        }
    })
    .await
    .unwrap();
    assert_eq!(report.shards_failed, 0, "{report:#?}");
    assert!(placed.load(Ordering::SeqCst));
    assert_eq!(read(&store, &files[0]).await, None, "not held: removed");
    for f in &files[2..] {
        assert_eq!(read(&store, f).await, Some(f.data.clone()), "{}", f.uid);
    }
    read(&store, &files[1]).await == Some(files[1].data.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_placed_during_a_run_binds_the_shards_it_starts_after_the_refresh() {
    assert!(
        held_file_survives(Duration::ZERO).await,
        "listed again before the second shard: its file is held and stays"
    );
    assert!(
        !held_file_survives(Duration::from_secs(3600)).await,
        "within the refresh the run works from its first listing"
    );
}
