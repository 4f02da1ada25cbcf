//! The chatd binary: `chatd serve` runs the server, `chatd migrate` applies
//! database migrations and exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chatd::app::{App, AppError};
use chatd::config::{Config, LogFormat};
use chatd::http::serve::{ServeLimits, serve as serve_http};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// jemalloc instead of the system allocator: every token allocates a few
/// small buffers on one worker thread and frees them on another, which
/// glibc's per-thread arenas handle with locks and heap trimming. The
/// benchmark (BENCHMARKS.md) has the before and after.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "chatd",
    version,
    about = "Streams LLM chat replies over SSE with a server-side tool loop"
)]
struct Cli {
    /// TOML config file (see config.example.toml). CHATD_* variables override it.
    #[arg(long, global = true, env = "CHATD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server (creating and migrating the database).
    Serve {
        /// Listen address; overrides the config and CHATD_LISTEN.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Create the database if needed, apply migrations and exit.
    Migrate,
    /// Exit 0 if GET <url> answers 200 within 2 s (a container HEALTHCHECK
    /// without curl in the image).
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
}

/// After the drain, how long open connections get to close before exit.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("chatd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Log lines are written to stdout by a thread of their own, never by
    // the runtime's workers: a write to a file or a pipe can block (a full
    // pipe, a file system busy with the database's writes), and a worker
    // blocked in it stalls every stream it serves (BENCHMARKS.md, fix 25).
    // Not lossy: when 8,192 lines wait (the output is stuck), a thread that
    // logs waits too. The queue is allocated whole at start, 32 bytes a
    // line: tracing-appender's default of 128,000 lines took 4 MB. The
    // guard writes out what is queued when `main` returns.
    let (writer, _log_guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(8_192)
        .lossy(false)
        .thread_name("chatd-log")
        .finish(std::io::stdout());
    match config.http.log_format {
        LogFormat::Plain => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(writer)
            .init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chatd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatd: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, mut config: Config) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Healthcheck { url } => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
            let status = client.get(&url).send().await?.status();
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("{url} answered {status}").into())
            }
        }
        Command::Migrate => {
            chatd::store::open(&config.database_url, config.chat.writer_queue_events).await?;
            println!("database {} is migrated", config.database_url);
            Ok(())
        }
        Command::Serve { listen } => {
            if let Some(addr) = listen {
                config.listen = addr;
                config.validate()?;
            }
            serve(config).await.map_err(Into::into)
        }
    }
}

/// Serves until SIGTERM or Ctrl-C, then: stop accepting connections, let
/// running replies finish within `chat.drain_timeout_ms`, interrupt the rest
/// (stored as `interrupted`), let their streams close, and return.
async fn serve(config: Config) -> Result<(), AppError> {
    let addr = config.listen;
    let drain = Duration::from_millis(config.chat.drain_timeout_ms);
    let model = config.llm.model.clone();
    let upstream = config.llm.base_url.clone();
    let metrics_listen = config.http.metrics_listen;
    let limits = ServeLimits::from_config(&config.http);
    let backlog = config.http.listen_backlog;
    let app = App::build(config).await?;
    let listener = chatd::http::serve::bind(addr, backlog).map_err(|source| AppError::Bind { addr, source })?;
    tracing::info!(%addr, %upstream, model = %model, "chatd listening");
    if let Some(metrics_addr) = metrics_listen {
        let chat = app.chat.clone();
        let metrics_listener = chatd::http::serve::bind(metrics_addr, backlog).map_err(|source| AppError::Bind {
            addr: metrics_addr,
            source,
        })?;
        tracing::info!(addr = %metrics_addr, "metrics listening");
        tokio::spawn(async move {
            let served = serve_http(
                metrics_listener,
                chatd::http::metrics_router(chat),
                limits,
                std::future::pending(),
            );
            if let Err(e) = served.await {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let chat = app.chat.clone();
    let drained = tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
        tracing::info!(running = chat.running(), "draining replies");
        chat.shutdown(drain).await;
        tracing::info!("every reply is stored");
    });
    let mut stop = stop_rx.clone();
    let server = serve_http(listener, app.router.clone(), limits, async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    let mut stopped = stop_rx;
    tokio::select! {
        result = server => result.map_err(AppError::Serve)?,
        _ = async {
            let _ = stopped.wait_for(|s| *s).await;
            tokio::time::sleep(drain + CLOSE_GRACE).await;
        } => tracing::warn!("connections still open after the drain; exiting"),
    }
    // The server may finish before the drain does (no connections open).
    let _ = drained.await;
    app.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
