//! `des-retriever`: see `--help`. Exit codes: 0 clean shutdown, 1 server
//! error after start, 2 bad usage/configuration, store not openable or
//! listen address not bindable.

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use des_retriever::config::{
    Cli, Command, EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME, HashKeyArgs, HealthcheckArgs, Settings,
};
use des_retriever::{AppState, Storage, auth, server, tombstones};

fn main() -> ExitCode {
    // clap exits with 2 on usage errors itself.
    let cli = Cli::parse();
    match cli.command {
        Some(Command::HashKey(args)) => return hash_key(&args),
        Some(Command::Healthcheck(args)) => return healthcheck(&args),
        None => {}
    }
    let settings = match Settings::resolve(cli.opts, &|k| std::env::var(k).ok()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("des-retriever: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    server::init_tracing(settings.log_format);
    ExitCode::from(actix_web::rt::System::new().block_on(run(settings)))
}

fn healthcheck(args: &HealthcheckArgs) -> ExitCode {
    let timeout = std::time::Duration::from_secs(args.timeout_secs.0.max(1));
    match des_retriever::healthcheck::check(&args.url, timeout) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => {
            eprintln!("des-retriever: unhealthy: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Prints a new key (or hashes the one on stdin) and its keys-file entry.
fn hash_key(args: &HashKeyArgs) -> ExitCode {
    let key = if args.stdin {
        let mut s = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut s) {
            eprintln!("des-retriever: reading the key from stdin: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
        s.trim().to_string()
    } else {
        auth::new_key()
    };
    if key.is_empty() {
        eprintln!("des-retriever: empty key");
        return ExitCode::from(EXIT_CONFIG);
    }
    match auth::key_entry(&args.name, &args.scopes, &key) {
        Ok(entry) => {
            if !args.stdin {
                // Shown once, on stderr: `hash-key >> keys.toml` must append
                // only the entry (the hash), never the key itself.
                eprintln!("API key (give it to the client; it is not stored): {key}");
            }
            print!("{entry}");
            ExitCode::from(EXIT_OK)
        }
        Err(e) => {
            eprintln!("des-retriever: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

async fn run(settings: Settings) -> u8 {
    let opened = match Storage::open(&settings.source, &settings.connection) {
        Ok(storage) => AppState::open(&storage, &settings).await,
        Err(e) => Err(e.into()),
    };
    let state = match opened {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(store = %settings.source, error = %e, "cannot start");
            return EXIT_CONFIG;
        }
    };
    if let Err(e) = server::reload_keys_on_sighup(Arc::clone(&state.auth)) {
        tracing::error!(error = %e, "cannot watch SIGHUP");
        return EXIT_CONFIG;
    }
    if let Some(every) = settings.keys_poll_interval {
        server::reload_keys_when_changed(Arc::clone(&state.auth), every);
    }
    if let Some(deleted) = &state.deleted {
        tombstones::spawn_polling(Arc::clone(deleted), settings.tombstone_poll_interval);
    }
    let server = match server::bind(&settings, state) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(listen = %settings.listen, error = %e, "cannot listen");
            return EXIT_CONFIG;
        }
    };
    match server.run().await {
        Ok(()) => {
            tracing::info!("shut down cleanly");
            EXIT_OK
        }
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            EXIT_RUNTIME
        }
    }
}
