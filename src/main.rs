//! The `mailroom` binary: parses flags, sets up logging, and either serves (binding the
//! listeners and calling [`mailroom::run`]) or runs one client command. Errors are reported on
//! stderr with a non-zero exit code; `serve` exits 0 after a clean drain.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mailroom::cli;
use mailroom::config::{Config, Overrides};

/// mimalloc: messages are allocated on one thread and often freed on another (an HTTP worker
/// and the I/O arbiter or a CPU pool thread), a pattern glibc's allocator handles slowly (see
/// BENCHMARKS.md). Built without transparent huge pages (`no_thp`), which would count whole
/// 2 MiB pages in RSS.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mailroom",
    version,
    about = "Message dispatch on actix: serve, or talk to a server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (reads ./config.toml when --config is not given and it exists).
    Serve {
        /// The configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen on this address instead of server.bind.
        #[arg(long)]
        bind: Option<String>,
    },
    /// Submit one message and print the answer.
    Send(cli::SendArgs),
    /// Submit every line of an NDJSON file concurrently; print a summary.
    Batch(cli::BatchArgs),
    /// Show a message's status (optionally waiting for it to finish).
    Status(cli::IdArgs),
    /// Cancel a queued or delayed message.
    Cancel(cli::IdArgs),
    /// Replay a dead letter.
    Retry(cli::IdArgs),
    /// List the routes.
    Routes(cli::Remote),
    /// List the dead letters.
    DeadLetters(cli::Remote),
    /// Check a configuration file (default ./config.toml) without starting anything.
    CheckConfig {
        /// The file to check.
        path: Option<PathBuf>,
    },
    /// Inspect a journal folder (`storage.path`).
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Read every record and check its checksum; report segments, records, a torn tail, or
    /// corruption (with its file and offset). Exit 0 when the journal can be opened, 1 when
    /// it is corrupt, 2 when it cannot be read.
    Check {
        /// The journal's folder (storage.path).
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, bind } => match serve(config, bind) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mailroom: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::CheckConfig { path } => cli::check_config(path),
        Command::Journal {
            command: JournalCommand::Check { path },
        } => cli::check_journal(&path),
        client => actix_web::rt::System::new().block_on(async move {
            match client {
                Command::Send(a) => cli::send(a).await,
                Command::Batch(a) => cli::batch(a).await,
                Command::Status(a) => cli::status(a).await,
                Command::Cancel(a) => cli::cancel(a).await,
                Command::Retry(a) => cli::retry(a).await,
                Command::Routes(r) => cli::get(r, "/v1/routes").await,
                Command::DeadLetters(r) => cli::get(r, "/v1/dead-letters").await,
                Command::Serve { .. } | Command::CheckConfig { .. } | Command::Journal { .. } => {
                    unreachable!("handled above")
                }
            }
        }),
    }
}

fn serve(config: Option<PathBuf>, bind: Option<String>) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Processor panics are caught, counted and answered as failed messages; log each as one
    // structured line instead of the default hook's stderr dump (which, with RUST_BACKTRACE set,
    // also resolves a backtrace per panic: slow, and hundreds of MB of debug info in memory).
    std::panic::set_hook(Box::new(|info| {
        let text = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-text panic".into());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::warn!(
            thread = std::thread::current().name().unwrap_or("?"),
            %location,
            panic = %text,
            "panicked (processor panics are caught: the message fails and the processor restarts)"
        );
    }));
    let loaded = Config::load(config.as_deref(), &Overrides { bind })?;
    match &loaded.file {
        Some(f) => tracing::info!(file = %f.display(), "configuration loaded"),
        None => tracing::info!(
            "no config file (none given, no ./config.toml): built-in defaults and MAILROOM_ variables"
        ),
    }
    let listeners = mailroom::Listeners::bind(&loaded.config)?;
    actix_web::rt::System::new().block_on(async move {
        let report = mailroom::run(listeners, loaded.config, shutdown_signal())
            .await
            .context("mailroom stopped")?;
        tracing::info!(
            drained = report.drained,
            unfinished = report.unfinished.len(),
            "bye"
        );
        Ok(())
    })
}

/// Resolves on SIGTERM or SIGINT (ctrl-c).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use actix_rt::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = actix_rt::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(_) => {
                let _ = actix_rt::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = actix_rt::signal::ctrl_c().await;
    }
}
