//! The `payctl` binary: parse, run, turn the result into an exit code.

use std::io::IsTerminal;

use clap::Parser;
use payctl::cli::Cli;
use payctl::exit::{exit_for, Exit};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_logging(cli.global.verbose, cli.global.quiet);
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let app = cli.global.app(shutdown);
    let result = match &app {
        Ok(app) => cli.command.run(app).await,
        Err(e) => Err(anyhow::anyhow!("{e:#}")),
    };
    let exit = match result {
        Ok(()) => Exit::Done,
        Err(error) => {
            eprintln!("error: {error:#}");
            exit_for(&error)
        }
    };
    // Every ack has been awaited and stdout flushed; exit without tearing
    // down the clients `app` still holds (see `App::producer`).
    std::process::exit(exit.code().into())
}

/// Logs go to stderr; `RUST_LOG` overrides the -v/-q level.
fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(librdkafka_quiet(level)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// librdkafka reports every reconnect attempt; below -vv only its errors show.
fn librdkafka_quiet(level: &str) -> String {
    let kafka = if level == "debug" { "warn" } else { "error" };
    format!("payctl={level},librdkafka={kafka},rdkafka={kafka},warn")
}

/// SIGINT or SIGTERM asks workers to stop between batches; a second one exits at once.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    for round in 0.. {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if round > 0 {
            match payctl::exit::abandon_note() {
                Some(note) => eprintln!("error: interrupted again, abandoning: {note}"),
                None => eprintln!("error: interrupted again, abandoning"),
            }
            std::process::exit(Exit::Interrupted.code().into());
        }
        tracing::info!("stopping: finishing the batch in hand");
        shutdown.cancel();
    }
}
