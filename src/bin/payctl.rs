//! The `payctl` binary: parse, run, turn the result into an exit code.

use std::io::{IsTerminal, Write};

use payctl::cli::{
    Cli, Command, NotifyCommand, PaymentsCommand, RatesCommand, TopicsCommand, TransactionsCommand,
    TransferCommand,
};
use payctl::config::scrub;
use payctl::exit::{exit_for, Exit};
use payctl::kafka::REACH_TIMEOUT;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    // OpenSSL (librdkafka's TLS) would otherwise register an exit handler
    // that frees its state while librdkafka's threads may still use it: a
    // command that ends on a refused TLS/SASL connection could crash in
    // `exit` after printing its error. Initialised first, without it.
    openssl_sys::init();
    let cli = Cli::parse_command_line();
    init_logging(cli.global.verbose, cli.global.quiet);
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let kafka = kafka_use(&cli.command);
    let app = cli.app(shutdown);
    let result = match &app {
        Ok(app) => {
            let checked = match kafka {
                KafkaUse::First => reachable(app, REACH_TIMEOUT).await,
                _ => Ok(()),
            };
            match checked {
                Ok(()) => cli.command.run(app).await,
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(anyhow::anyhow!("{}", error_text(e))),
    };
    let exit = match result {
        Ok(()) => Exit::Done,
        Err(error) => {
            // A Kafka failure that is really "no broker answers" says so
            // first, and keeps what the command said (what was stored).
            let error = match (&app, kafka) {
                (Ok(app), KafkaUse::Later) if involves_kafka(&error) => {
                    match reachable(app, DIAGNOSE_TIMEOUT).await {
                        Err(unreachable) => error.context(unreachable.to_string()),
                        Ok(()) => error,
                    }
                }
                _ => error,
            };
            // stderr may be closed (`2>&-`) or full (`2>/dev/full`): the
            // exit code still tells.
            let mut text = error_text(&error);
            if payctl::failure::spans_slots(&error) {
                text.push_str(payctl::failure::SPANS_SLOTS_HINT);
            }
            let _ = writeln!(std::io::stderr(), "error: {}", scrub(&text));
            exit_for(&error)
        }
    };
    // Every ack has been awaited and stdout flushed; exit without tearing
    // down the clients `app` still holds (see `App::producer`).
    std::process::exit(exit.code().into())
}

/// How long the check after a Kafka failure waits for a broker.
const DIAGNOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// When a command talks to Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KafkaUse {
    /// Never (Redis only).
    Never,
    /// Kafka is its work (workers, topic tools, bulk jobs): the brokers are
    /// checked before anything else, and an unreachable one fails at once.
    First,
    /// After other work, as one message (a single `transfer initiate`):
    /// no check up front, which would cost every call a round trip; a
    /// failure is checked afterwards, to say the brokers are unreachable.
    Later,
}

fn kafka_use(command: &Command) -> KafkaUse {
    match command {
        Command::Transfer(TransferCommand::Initiate(args)) if args.file.is_some() => {
            KafkaUse::First
        }
        Command::Transfer(TransferCommand::Initiate(_)) => KafkaUse::Later,
        Command::Transfer(TransferCommand::Process(_) | TransferCommand::Resend(_)) => {
            KafkaUse::First
        }
        Command::Notify(NotifyCommand::Consume(_)) | Command::Serve(_) => KafkaUse::First,
        Command::Rates(RatesCommand::Serve(_)) => KafkaUse::First,
        Command::Rates(RatesCommand::Set(_) | RatesCommand::Import(_)) => KafkaUse::Later,
        Command::Rates(RatesCommand::Convert(args)) if args.asynchronous => KafkaUse::Later,
        Command::Payments(PaymentsCommand::Save(_) | PaymentsCommand::Process(_)) => {
            KafkaUse::First
        }
        Command::Payments(PaymentsCommand::Submit(_) | PaymentsCommand::Refund(_)) => {
            KafkaUse::Later
        }
        Command::Topics(TopicsCommand::Produce(_)) => KafkaUse::Later,
        Command::Topics(_) | Command::Groups(_) | Command::Dlq(_) | Command::Cluster(_) => {
            KafkaUse::First
        }
        Command::Transactions(TransactionsCommand::Log(_)) => KafkaUse::First,
        // `status` reports an unreachable broker in its own table.
        Command::Status(_) => KafkaUse::Never,
        Command::Accounts(_)
        | Command::Transfer(TransferCommand::Show(_) | TransferCommand::List(_))
        | Command::Notify(_)
        | Command::Rates(_)
        | Command::Payments(_)
        | Command::Profile(_)
        | Command::Completions { .. } => KafkaUse::Never,
    }
}

/// Checks the brokers answer, off the async threads.
async fn reachable(app: &payctl::cli::App, timeout: std::time::Duration) -> anyhow::Result<()> {
    let kafka = app.kafka.clone();
    tokio::task::spawn_blocking(move || kafka.check_reachable(timeout))
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("checking the Kafka brokers: {e}")))
}

/// True when a librdkafka error is somewhere in the chain.
fn involves_kafka(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.is::<rdkafka::error::KafkaError>())
}

/// The error and its causes, `: `-separated, as `{:#}` prints them, but a
/// cause whose text the previous one already holds is left out
/// (`Connection refused (os error 111): Connection refused (os error 111)`).
fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    let mut previous = String::new();
    for cause in error.chain() {
        let this = cause.to_string();
        if !previous.is_empty() && previous.contains(&this) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&this);
        previous = this;
    }
    text
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
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(librdkafka_quiet(level, verbose)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| ScrubbedStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// stderr for logs, with this run's secrets replaced by `***`: librdkafka's
/// and the Redis client's messages are not payctl's to word. tracing's fmt
/// layer writes each event whole, so a secret is never split across writes.
struct ScrubbedStderr;

impl Write for ScrubbedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(scrub(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// librdkafka reports every reconnect attempt, and payctl reports what
/// matters of them in its own words: librdkafka's lines only from -vv on.
fn librdkafka_quiet(level: &str, verbose: u8) -> String {
    let kafka = if verbose >= 2 { "info" } else { "off" };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let refused = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        );
        let error = anyhow::Error::new(refused).context("connecting to Redis at redis://x");
        assert_eq!(
            error_text(&error),
            "connecting to Redis at redis://x: Connection refused (os error 111)"
        );
        #[derive(Debug, thiserror::Error)]
        #[error("Connection refused (os error 111)")]
        struct Wrapper(#[source] std::io::Error);
        let wrapped = anyhow::Error::new(Wrapper(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        )))
        .context("reading account a");
        assert_eq!(
            error_text(&wrapped),
            "reading account a: Connection refused (os error 111)"
        );
    }
}
