//! `chatd-bench`: measures what chatd adds on top of its upstream.
//!
//! `chatd-bench run` starts a fast mock OpenAI-compatible upstream (this
//! binary again, as `chatd-bench mock`) and the release `chatd` binary as
//! separate processes on 127.0.0.1, drives concurrent chats through
//! `POST /api/chat` with a load client that parses the SSE, runs the same
//! load straight against the mock (the floor), and prints one JSON object per
//! scenario and a final summary with ratios and a pass/fail per target.
//! BENCHMARKS.md describes the method and holds the latest numbers.

mod client;
mod mock;
mod procfs;
mod report;
mod scenarios;
mod servers;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chatd-bench",
    about = "Benchmarks chatd against a mock OpenAI-compatible upstream"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenarios; prints one JSON object per scenario, then a summary.
    Run(RunArgs),
    /// Serve the mock upstream (used by `run`; prints `listening ADDR`).
    Mock {
        /// Address to bind; port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
}

/// Options of `chatd-bench run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// A scenario name, a comma-separated list, or `all` (every scenario but
    /// `smoke`). Names: smoke, requests, c1, c64, c512, c2000, c10000, c10000_h1, tool, long_reply,
    /// long_conversation, sqlite500.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Repeats of each scenario (chatd and direct back to back each time);
    /// the report gives medians. Default: 3 (1 with --quick).
    #[arg(long)]
    repeat: Option<usize>,
    /// Small sizes: a smoke run of every scenario in under a minute.
    #[arg(long)]
    quick: bool,
    /// The chatd binary; default: `chatd` next to this executable.
    #[arg(long)]
    chatd: Option<PathBuf>,
    /// RUST_LOG given to chatd (its default is `info`).
    #[arg(long, default_value = "info")]
    chatd_log: String,
}

/// Soft open-file limit wanted for 10,000 streams (the bench, chatd and the
/// mock each hold about one or two descriptors per stream).
const WANTED_NOFILE: u64 = 65_536;
/// Set on the re-executed process so that it does not try again.
const RAISED_ENV: &str = "CHATD_BENCH_NOFILE_RAISED";

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Run(_) = &cli.command {
        raise_nofile_by_reexec();
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chatd-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Mock { listen } => mock::serve(listen).await,
            Command::Run(args) => scenarios::run(args).await,
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        // Every scenario ran, but a target was missed: the JSON says which.
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("chatd-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (at most
/// [`WANTED_NOFILE`]) by re-executing this process through `sh -c 'ulimit -n
/// N; exec ...'`: std has no setrlimit and libc is not a dependency. The
/// children (mock, chatd) inherit the raised limit. The hard limit itself
/// cannot be raised without CAP_SYS_RESOURCE; the 10,000-stream scenario
/// adapts to it (see `scenarios::client_protocol`).
fn raise_nofile_by_reexec() {
    if std::env::var_os(RAISED_ENV).is_some() {
        return;
    }
    let Some((soft, hard)) = procfs::nofile_limits() else {
        return;
    };
    let target = hard.min(WANTED_NOFILE);
    if soft >= target {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n \"$1\" || exit 97; shift; exec \"$@\"")
        .arg("sh")
        .arg(target.to_string())
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(RAISED_ENV, "1")
        .exec();
    eprintln!("chatd-bench: could not re-execute to raise the open-file limit ({err}); going on with {soft}");
}
