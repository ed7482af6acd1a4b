//! The `api` binary: parse the configuration, open the log, bind, serve until signalled.
//! Exit codes: 0 after a clean shutdown (or `--help`, `--version`, a healthy probe),
//! 1 for a runtime failure (log file, port, forced shutdown, unhealthy probe),
//! 2 for bad usage or configuration.

use std::process::ExitCode;
use std::sync::Arc;

use api::App;
use api::config::{self, Command, Config};
use api::logging::{self, Sink};

/// The static (musl) build's allocator: musl's own is slow per request (docs/performance.md).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

fn main() -> ExitCode {
    let command = match config::parse(std::env::args_os().skip(1), |k| std::env::var_os(k)) {
        Ok(command) => command,
        Err(e) => {
            logging::to_stderr(&format!("error: {e}\n\n{}", config::help()));
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            to_stdout(&config::help());
            ExitCode::SUCCESS
        }
        Command::Version => {
            to_stdout(&format!("api {}\n", env!("CARGO_PKG_VERSION")));
            ExitCode::SUCCESS
        }
        Command::Healthcheck(cfg) => report(api::probe(&cfg)),
        Command::PrepareLogs(cfg, uid, gid) => report(api::prepare_dir(&cfg.log_file, uid, gid)),
        Command::Serve(cfg) => serve(cfg),
    }
}

/// Prints a one-line outcome; failure is exit 1 (never 2, which Docker's HEALTHCHECK reserves).
fn report(outcome: Result<String, String>) -> ExitCode {
    match outcome {
        Ok(line) => {
            to_stdout(&format!("{line}\n"));
            ExitCode::SUCCESS
        }
        Err(line) => {
            logging::to_stderr(&line);
            ExitCode::FAILURE
        }
    }
}

/// Prints to stdout, ignoring failure (`api --help | head -1` closes the pipe early).
fn to_stdout(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn serve(cfg: Config) -> ExitCode {
    let sink = match Sink::open(&cfg) {
        Ok(sink) => sink,
        Err(e) => {
            logging::to_stderr(&format!("error: {e}"));
            return ExitCode::FAILURE;
        }
    };
    logging::init(cfg.log_level, &sink).expect("the logger is installed once, here");

    let mut runtime = match cfg.workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if cfg.workers > 1 {
        runtime.worker_threads(cfg.workers);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            logging::to_stderr(&format!("error: cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };

    let result = runtime.block_on(async {
        let listener = api::listen(&cfg).await?;
        let metrics = api::listen_metrics(&cfg, &listener).await?;
        let shutdown = api::listen_for_signals(sink.clone())?;
        log::info!(
            addr:% = listener.local_addr()?,
            version = env!("CARGO_PKG_VERSION"),
            log_file:% = cfg.log_file.display(),
            log_level:% = cfg.log_level.as_str().to_ascii_lowercase(),
            max_connections = cfg.max_connections as u64,
            max_body_bytes = cfg.max_body_bytes as u64,
            grace_ms = cfg.grace.as_millis() as u64,
            drain_delay_ms = cfg.drain_delay.as_millis() as u64,
            event_sync = cfg.event_sync.as_str(),
            log_max_bytes = cfg.log_rotation.max_bytes,
            log_keep = cfg.log_rotation.keep as u64,
            log_max_age:% = cfg
                .log_rotation
                .max_age
                .map_or_else(|| "none".to_string(), |a| format!("{}s", a.as_secs()));
            "listening"
        );
        let app = Arc::new(App::new(cfg, sink.clone()));
        if let Some(metrics) = metrics {
            log::info!(addr:% = metrics.local_addr()?; "metrics listening");
            tokio::spawn(api::serve_metrics(metrics, Arc::clone(&app)));
        }
        api::run(listener, app, shutdown).await
    });
    // Connections still open after a forced shutdown are dropped with the runtime.
    runtime.shutdown_background();
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    };
    sink.close();
    code
}
