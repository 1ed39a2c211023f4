//! What the world does to the store besides the actors: executing a
//! granted operation as the backend would (Garage ignoring conditions),
//! time passing (leases and big-file refs expiring), and deliberate
//! sabotage for the checker's self-tests.

use super::*;

/// Runs `op` against the store, as the backend would. A store that ignores
/// conditional writes (Garage) executes them as plain overwrites.
pub(super) fn execute(mem: &MemoryStore, op: &Op, garage: bool) -> Reply {
    let mode = |m: &PutMode| {
        if garage {
            PutMode::Overwrite
        } else {
            m.clone()
        }
    };
    block_on(async {
        match op {
            Op::Get { key, opts } => match mem.get(key, opts.clone()).await {
                Ok(got) => {
                    let (meta, range) = (got.meta.clone(), got.range.clone());
                    match got.bytes().await {
                        Ok(body) => Reply::Get(meta, range, body),
                        Err(e) => Reply::Err(e),
                    }
                }
                Err(e) => Reply::Err(e),
            },
            Op::Head { key } => mem.head(key).await.map_or_else(Reply::Err, Reply::Meta),
            Op::Put { key, data, mode: m } | Op::Finish { key, data, mode: m } => mem
                .put(key, data.clone(), PutOptions { mode: mode(m) })
                .await
                .map_or_else(Reply::Err, Reply::Put),
            Op::PutWriter { key, .. } => {
                des_storage::object::check_key(key).map_or_else(Reply::Err, |()| Reply::Unit)
            }
            Op::Write { .. } | Op::Abort { .. } => Reply::Unit,
            Op::Delete { key } => mem
                .delete(key)
                .await
                .map_or_else(Reply::Err, |()| Reply::Unit),
            Op::List {
                prefix,
                start_after,
            } => mem
                .list(prefix, start_after.as_deref())
                .await
                .map_or_else(Reply::Err, Reply::List),
        }
    })
}

pub(super) fn unavailable(msg: &str) -> Error {
    Error::Unavailable {
        msg: format!("simulated: {msg}"),
        retry_after: None,
    }
}

impl Engine {
    /// Models time passing beyond the lease TTL: whatever lease is left
    /// behind is rewritten as expired. Only ever done while no repacker
    /// that could hold it is alive.
    pub(super) fn expire_lease(&mut self, why: &str) {
        let Ok((_, body)) = block_on(self.mem.get_range(LEASE_KEY, ByteRange::All)) else {
            return;
        };
        let Ok(mut rec) = serde_json::from_slice::<LeaseRecord>(&body) else {
            return;
        };
        rec.expires_at = "1970-01-01T00:00:00Z".into();
        rec.expires_at_us = 0;
        let Ok(body) = serde_json::to_vec(&rec) else {
            return;
        };
        let put = PutOptions {
            mode: PutMode::Overwrite,
        };
        let done = block_on(self.mem.put(LEASE_KEY, Bytes::from(body), put));
        self.event(
            "env",
            format!(
                "{why}: {LEASE_KEY} -> {}",
                if done.is_ok() { "expired" } else { "failed" }
            ),
        );
    }

    /// Models time passing beyond the packers' big-file ref TTL, once every
    /// packer has ended: each ref left behind is rewritten as expired, so a
    /// collection may delete what only those refs kept.
    pub(super) fn expire_big_refs(&mut self) {
        let Ok(refs) = block_on(self.mem.list_all(BIG_REFS_PREFIX)) else {
            return;
        };
        let mut n = 0;
        for meta in refs {
            let Ok((_, body)) = block_on(self.mem.get_range(&meta.key, ByteRange::All)) else {
                continue;
            };
            let Ok(mut rec) = serde_json::from_slice::<serde_json::Value>(&body) else {
                continue;
            };
            if let Some(field) = rec.get_mut("expires_at_us") {
                *field = serde_json::Value::from(0);
            }
            let Ok(body) = serde_json::to_vec(&rec) else {
                continue;
            };
            let put = PutOptions {
                mode: PutMode::Overwrite,
            };
            if block_on(self.mem.put(&meta.key, Bytes::from(body), put)).is_ok() {
                n += 1;
            }
        }
        if n > 0 {
            self.event(
                "env",
                format!("every packer has ended; their {n} big-file refs expire (time passes)"),
            );
        }
    }

    pub(super) fn sabotage(&mut self) {
        if self.sabotage_step.is_some() || self.phase != Phase::Main {
            return;
        }
        let done = match self.cfg.sabotage {
            None => return,
            Some(Sabotage::DeleteBigFile) => self.check.sabotage_big().map(|big| {
                let r = block_on(self.mem.delete(&big));
                (big, r.is_ok())
            }),
            Some(Sabotage::RollbackShard) => self.check.sabotage_rollback().map(|(key, bytes)| {
                let put = PutOptions {
                    mode: PutMode::Overwrite,
                };
                let r = block_on(self.mem.put(&key, bytes, put));
                (key, r.is_ok())
            }),
        };
        if let Some((key, true)) = done {
            self.sabotage_step = Some(self.step);
            self.event(
                "env",
                format!(
                    "SABOTAGE {:?} behind the actors' backs: {key}",
                    self.cfg.sabotage
                ),
            );
            let packers = self.alive_packers.clone();
            self.check
                .observe(&key, &By::env("sabotage"), self.step, &packers);
            self.flush_violations();
        }
    }
}
