//! `des-retriever`: see `--help`. Exit codes: 0 clean shutdown, 1 server
//! error after start, 2 bad usage/configuration, store not openable or
//! listen address not bindable.

use std::process::ExitCode;

use clap::Parser;
use des_retriever::config::{Cli, EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME, Settings};
use des_retriever::server;

fn main() -> ExitCode {
    // clap exits with 2 on usage errors itself.
    let cli = Cli::parse();
    let settings = match Settings::resolve(cli, &|k| std::env::var(k).ok()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("des-retriever: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    server::init_tracing(settings.log_json);
    ExitCode::from(actix_web::rt::System::new().block_on(run(settings)))
}

async fn run(settings: Settings) -> u8 {
    let retriever = match des_storage::open_location(&settings.store) {
        Ok(objects) => server::open_retriever(objects, &settings).await,
        Err(e) => Err(e),
    };
    let retriever = match retriever {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(store = %settings.store, error = %e, "cannot open store");
            return EXIT_CONFIG;
        }
    };
    let server = match server::bind(&settings, retriever) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(listen = %settings.listen, error = %e, "cannot listen");
            return EXIT_CONFIG;
        }
    };
    match server.await {
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
