//! Deliberate pauses for tests: `DES_MIGRATE_PAUSE_AT=after_pack[:N]`
//! makes des-migrate stop itself with SIGSTOP after its N-th packer run
//! (default the first): files durable in the store, rows not yet marked /
//! watermark not yet advanced. A test can then `kill -9` it there (the
//! crash window the design must survive) or stop the database and resume it.

pub const ENV: &str = "DES_MIGRATE_PAUSE_AT";

/// Stops the process if the environment asks for a pause after pack run `n` (1-based).
pub fn after_pack(n: u64) {
    let Ok(v) = std::env::var(ENV) else { return };
    let wanted = match v.split_once(':') {
        Some(("after_pack", k)) => k.parse::<u64>().ok(),
        None if v == "after_pack" => Some(1),
        _ => None,
    };
    if wanted == Some(n) {
        eprintln!("des-migrate: {ENV}={v}: stopping");
        let me = rustix::process::getpid();
        if let Err(e) = rustix::process::kill_process(me, rustix::process::Signal::STOP) {
            eprintln!("des-migrate: could not stop: {e}");
        }
    }
}
