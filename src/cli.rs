//! Command-line parsing and dispatch: `payctl <domain> <verb>`.
//!
//! Each leaf command lives in its domain folder as `Args` + `run`; this file
//! turns global flags into validated config and hands each command only the
//! clients it uses.

use std::sync::OnceLock;

use clap::{CommandFactory, Parser, Subcommand};
use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;

use crate::config::{KafkaConfig, RedisConfig, Topics};
use crate::output::{Format, Output};
use crate::profile::create::GivenFlags;
use crate::profile::Profiles;
use crate::{
    accounts, cluster, dlq, groups, notify, payments, profile, rates, serve, status, topics,
    transactions, transfer,
};

/// payctl: run a payment pipeline on Kafka and Redis.
#[derive(Debug, Parser)]
#[command(name = "payctl", version, propagate_version = true)]
#[command(after_help = "Examples:
  payctl accounts open alice --currency USD --balance 100.00
  payctl transfer initiate --from alice --to bob --amount 12.50
  payctl transfer process --until-idle 5
  payctl transfer list --output json | jq .")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Kafka bootstrap servers [default: the profile's, else localhost:9092].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "KAFKA_BOOTSTRAP_SERVERS"
    )]
    pub brokers: Option<String>,
    /// Redis URL (rediss:// for TLS); a password in it is never printed
    /// [default: the profile's, else redis://127.0.0.1:6379/0].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "REDIS_URL",
        hide_env_values = true
    )]
    pub redis_url: Option<String>,
    /// Redis ACL user, when the URL names none. The password comes from
    /// REDIS_PASSWORD (environment only), --redis-password-file or the URL:
    /// exactly one of them.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "REDIS_USERNAME",
        value_name = "USER"
    )]
    pub redis_username: Option<String>,
    /// File holding the Redis password (a trailing newline is ignored).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "REDIS_PASSWORD_FILE",
        value_name = "PATH"
    )]
    pub redis_password_file: Option<std::path::PathBuf>,
    /// PEM file of the CA(s) that signed the Redis server's certificate, for
    /// rediss:// URLs (default: the system's trusted roots).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "REDIS_CA_FILE",
        value_name = "PATH"
    )]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate, for rediss:// servers that ask for one
    /// (with --redis-key-file).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "REDIS_CERT_FILE",
        value_name = "PATH"
    )]
    pub redis_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of --redis-cert-file.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "REDIS_KEY_FILE",
        value_name = "PATH"
    )]
    pub redis_key_file: Option<std::path::PathBuf>,
    /// Saved connection profile to use instead of the current one (see `payctl profile`).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "PAYCTL_PROFILE"
    )]
    pub profile: Option<String>,
    /// Raw librdkafka option, repeatable (as kcat's -X): -X session.timeout.ms=10000.
    /// PAYCTL_KAFKA_OPTIONS holds more, space-separated; -X wins over it.
    #[arg(
        short = 'X',
        global = true,
        help_heading = "Global options",
        value_name = "KEY=VALUE"
    )]
    pub kafka_option: Vec<String>,
    /// Output format.
    #[arg(
        long,
        short = 'o',
        global = true,
        help_heading = "Global options",
        env = "PAYCTL_OUTPUT",
        value_enum,
        default_value = "table"
    )]
    pub output: Format,
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, help_heading = "Global options", action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr; no progress bars.
    #[arg(
        short,
        long,
        global = true,
        help_heading = "Global options",
        conflicts_with = "verbose"
    )]
    pub quiet: bool,
    /// Topic of transfers to process (the versioned transfer service).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "PAYCTL_TOPIC_TRANSFERS",
        default_value = "money_transfers"
    )]
    pub topic_transfers: String,
    /// Topic of transaction outcome events (the notification service).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "PAYCTL_TOPIC_TRANSACTIONS",
        default_value = "payment_transactions"
    )]
    pub topic_transactions: String,
    /// Topic of rate changes.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "PAYCTL_TOPIC_RATE_CHANGES",
        default_value = "rate_changes"
    )]
    pub topic_rate_changes: String,
    /// Topic of subscription payment requests (the subscription pipeline).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "PAYCTL_TOPIC_PAYMENTS",
        default_value = "payments"
    )]
    pub topic_payments: String,
    /// Topic of conversion requests (the converter service).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "PAYCTL_TOPIC_CONVERSIONS",
        default_value = "conversion_requests"
    )]
    pub topic_conversions: String,
    /// The connection flags that came from the command line itself (not
    /// the environment), for `profile create`.
    #[arg(skip)]
    pub given: GivenFlags,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Accounts and balances.
    #[command(
        subcommand,
        after_help = "Examples:\n  payctl accounts open alice --currency USD --balance 100.00\n  payctl accounts list"
    )]
    Accounts(AccountsCommand),
    /// Money transfers: initiate, process, inspect.
    #[command(
        subcommand,
        after_help = "Examples:\n  payctl transfer initiate --from alice --to bob --amount 12.50\n  payctl transfer process --until-idle 5"
    )]
    Transfer(TransferCommand),
    /// Notifications: the worker, lists, rate watchers.
    #[command(
        subcommand,
        after_help = "Examples:\n  payctl notify consume --until-idle 5\n  payctl notify list --user alice"
    )]
    Notify(NotifyCommand),
    /// Currency rates and exact conversions.
    #[command(
        subcommand,
        after_help = "Examples:\n  payctl rates set USD EUR 0.9215\n  payctl rates convert 100 USD EUR"
    )]
    Rates(RatesCommand),
    /// Subscription payments: submit, save, process, inspect.
    #[command(
        subcommand,
        after_help = "Examples:\n  payctl payments submit --user alice --plan premium --amount 9.99\n  payctl payments process --until-idle 10"
    )]
    Payments(PaymentsCommand),
    /// Kafka topics: list, describe, create, produce, consume, delete, partitions, settings.
    #[command(
        subcommand,
        after_help = "Examples:\n  payctl topics list\n  payctl topics consume payment_transactions --from-beginning -n 5"
    )]
    Topics(TopicsCommand),
    /// The Kafka cluster: brokers, controller, how much it holds.
    #[command(subcommand, after_help = "Examples:\n  payctl cluster info")]
    Cluster(ClusterCommand),
    /// Dead letters: count them, read them, send them back.
    #[command(
        subcommand,
        after_help = "Examples:\n  payctl dlq list\n  payctl dlq show money_transfers -n 5\n  payctl dlq redrive money_transfers --reason 'unknown account' --dry-run"
    )]
    Dlq(DlqCommand),
    /// Consumer groups and their lag.
    #[command(
        subcommand,
        after_help = "Examples:\n  payctl groups list\n  payctl groups lag payctl-transfer-process"
    )]
    Groups(GroupsCommand),
    /// Transaction outcomes (the transaction service's log).
    #[command(
        subcommand,
        after_help = "Examples:\n  payctl transactions log --user alice"
    )]
    Transactions(TransactionsCommand),
    /// The HTTP API: transfers, accounts, rates and conversions, subscriptions; OpenAPI 3 at /api/openapi.
    Serve(serve::Args),
    /// Is the pipeline healthy? Broker, Redis, topics, lag, DLQs.
    Status(status::Args),
    /// Saved connection profiles: brokers, Redis URL and -X options by name.
    #[command(
        subcommand,
        after_help = "Examples:\n  payctl profile create prod --brokers b1:9093 -X security.protocol=SASL_SSL --use\n  payctl profile use local\n  payctl profile list"
    )]
    Profile(ProfileCommand),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  payctl completions bash > /etc/bash_completion.d/payctl\n  payctl completions zsh > \"${fpath[1]}/_payctl\"\n  payctl completions fish > ~/.config/fish/completions/payctl.fish"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    Create(profile::create::Args),
    Use(profile::select::Args),
    List(profile::list::Args),
    Show(profile::show::Args),
    Delete(profile::delete::Args),
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    Info(cluster::InfoArgs),
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    List(dlq::ListArgs),
    Show(dlq::ShowArgs),
    Redrive(dlq::RedriveArgs),
}

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    List(groups::list::Args),
    Lag(groups::lag::Args),
    Reset(groups::reset::Args),
    Delete(groups::delete::Args),
}

#[derive(Debug, Subcommand)]
pub enum PaymentsCommand {
    Submit(payments::submit::SubmitArgs),
    Refund(payments::submit::RefundArgs),
    Save(payments::save::Args),
    Process(payments::process::Args),
    List(payments::list::Args),
    Show(payments::show::Args),
    Stats(payments::stats::Args),
    SimulateProcessor(payments::simulate::Args),
}

#[derive(Debug, Subcommand)]
pub enum TransactionsCommand {
    Log(transactions::log::Args),
}

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    Consume(notify::consume::Args),
    List(notify::list::Args),
    Watch(notify::watch::Args),
    /// Stop notifying a user about a pair.
    Unwatch(notify::watch::Args),
}

#[derive(Debug, Subcommand)]
pub enum RatesCommand {
    Set(rates::set::Args),
    List(rates::list::Args),
    Import(rates::import::Args),
    Convert(rates::convert::Args),
    Serve(rates::serve::Args),
    Result(rates::result::Args),
}

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    Open(accounts::open::Args),
    Deposit(accounts::deposit::Args),
    Show(accounts::show::Args),
    List(accounts::list::Args),
    Audit(accounts::audit::Args),
}

#[derive(Debug, Subcommand)]
pub enum TransferCommand {
    Initiate(transfer::initiate::Args),
    Process(transfer::process::Args),
    Resend(transfer::resend::Args),
    Show(transfer::show::Args),
    List(transfer::list::Args),
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    List(topics::list::Args),
    Describe(topics::describe::Args),
    Create(topics::create::Args),
    Produce(topics::produce::Args),
    Consume(topics::consume::Args),
    Delete(topics::admin::DeleteArgs),
    AddPartitions(topics::admin::AddPartitionsArgs),
    /// A topic's settings: get and set.
    #[command(
        subcommand,
        after_help = "Examples:\n  payctl topics config get money_transfers retention.ms\n  payctl topics config set money_transfers retention.ms=604800000"
    )]
    Config(topics::admin::ConfigCommand),
}

/// Environment variable with librdkafka options, space-separated `KEY=VALUE`s.
pub const KAFKA_OPTIONS_ENV: &str = "PAYCTL_KAFKA_OPTIONS";

/// Validated configuration for one run.
pub struct App {
    pub kafka: KafkaConfig,
    pub redis: RedisConfig,
    pub topics: Topics,
    pub output: Output,
    pub progress: bool,
    pub shutdown: CancellationToken,
    /// Connection flags typed on the command line, for `profile create`.
    pub given: GivenFlags,
    producer: OnceLock<FutureProducer>,
    ordered_producer: OnceLock<FutureProducer>,
}

impl App {
    /// The run's Kafka producer, made on first use.
    ///
    /// It lives as long as the `App`, which `main` never drops: it exits the
    /// process once every ack has been awaited, sparing short commands the
    /// ~100 ms rdkafka's producer teardown spends joining its poll thread.
    pub fn producer(&self) -> anyhow::Result<&FutureProducer> {
        if let Some(producer) = self.producer.get() {
            return Ok(producer);
        }
        let producer = self.kafka.producer()?;
        Ok(self.producer.get_or_init(|| producer))
    }

    /// Like [`App::producer`], keeping each key's records in order through
    /// retries: for commands that send many records.
    pub fn ordered_producer(&self) -> anyhow::Result<&FutureProducer> {
        if let Some(producer) = self.ordered_producer.get() {
            return Ok(producer);
        }
        let producer = self.kafka.ordered_producer()?;
        Ok(self.ordered_producer.get_or_init(|| producer))
    }
}

/// A setting's value from its flag or environment variable; empty counts
/// as not given (`REDIS_URL= payctl …` falls back to the profile).
fn given(value: &Option<String>) -> Option<String> {
    value.clone().filter(|v| !v.trim().is_empty())
}

impl Cli {
    /// Parses the command line (exiting with clap's message on a usage
    /// error), noting which connection flags were typed rather than taken
    /// from the environment.
    pub fn parse_command_line() -> Cli {
        use clap::parser::ValueSource;
        use clap::FromArgMatches as _;
        let matches = Cli::command().get_matches();
        let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        let typed = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
        let global = &cli.global;
        let typed_path =
            |id: &str, value: &Option<std::path::PathBuf>| value.clone().filter(|_| typed(id));
        cli.global.given = GivenFlags {
            brokers: given(&global.brokers).filter(|_| typed("brokers")),
            redis_url: given(&global.redis_url).filter(|_| typed("redis_url")),
            kafka_options: global.kafka_option.clone(),
            redis_username: given(&global.redis_username).filter(|_| typed("redis_username")),
            redis_password_file: typed_path("redis_password_file", &global.redis_password_file),
            redis_ca_file: typed_path("redis_ca_file", &global.redis_ca_file),
            redis_cert_file: typed_path("redis_cert_file", &global.redis_cert_file),
            redis_key_file: typed_path("redis_key_file", &global.redis_key_file),
        };
        cli
    }

    /// The validated configuration of this run. Profile commands do not
    /// apply a profile (they must work while the current one is broken).
    pub fn app(&self, shutdown: CancellationToken) -> anyhow::Result<App> {
        let with_profile = !matches!(self.command, Command::Profile(_));
        self.global.app(shutdown, with_profile)
    }
}

impl GlobalArgs {
    /// Validates the global flags, filling what they leave out from the
    /// selected profile (when `with_profile`) and then the defaults.
    pub fn app(&self, shutdown: CancellationToken, with_profile: bool) -> anyhow::Result<App> {
        let saved = match with_profile {
            true => {
                let path = Profiles::path()?;
                let profiles = Profiles::load(&path)?;
                let selected = profiles.selected(self.profile.as_deref(), &path)?;
                selected.map(|(name, profile, _)| {
                    tracing::debug!("using profile {name} from {}", path.display());
                    profile.clone()
                })
            }
            false => None,
        }
        .unwrap_or_default();
        let from_env = std::env::var(KAFKA_OPTIONS_ENV).unwrap_or_default();
        // Later options win: the profile's, then the environment's, then -X.
        let options = saved
            .kafka_options
            .iter()
            .map(String::from)
            .chain(from_env.split_whitespace().map(String::from))
            .chain(self.kafka_option.iter().cloned())
            .filter(|o| !o.trim().is_empty())
            .map(|option| {
                option
                    .split_once('=')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .ok_or_else(|| anyhow::anyhow!("-X {option:?}: expected KEY=VALUE"))
            })
            .collect::<anyhow::Result<_>>()?;
        let redis_url = given(&self.redis_url)
            .or(saved.redis_url)
            .unwrap_or_else(|| RedisConfig::DEFAULT_URL.into());
        let redis_password = crate::config::RedisPassword::from_env()?;
        // A profile's password file stands in only for a password given
        // nowhere else: the environment, a flag or the URL in use win.
        let parsed = url::Url::parse(&redis_url).ok();
        let url_has_password = parsed.as_ref().is_some_and(|u| u.password().is_some());
        let url_has_user = parsed.as_ref().is_some_and(|u| !u.username().is_empty());
        let redis_password_file = match (&self.redis_password_file, &redis_password) {
            (Some(file), _) => Some(file.clone()),
            (None, None) if !url_has_password => saved.redis_password_file,
            (None, _) => None,
        };
        let app = App {
            kafka: KafkaConfig {
                brokers: given(&self.brokers)
                    .or(saved.brokers)
                    .unwrap_or_else(|| KafkaConfig::DEFAULT_BROKERS.into()),
                options,
            },
            redis: RedisConfig {
                url: redis_url,
                username: given(&self.redis_username)
                    .or(saved.redis_username.filter(|_| !url_has_user)),
                password: redis_password,
                password_file: redis_password_file,
                tls: crate::config::RedisTls {
                    ca_file: self.redis_ca_file.clone().or(saved.redis_ca_file),
                    cert_file: self.redis_cert_file.clone().or(saved.redis_cert_file),
                    key_file: self.redis_key_file.clone().or(saved.redis_key_file),
                },
            },
            topics: Topics {
                transfers: self.topic_transfers.clone(),
                transactions: self.topic_transactions.clone(),
                rate_changes: self.topic_rate_changes.clone(),
                conversions: self.topic_conversions.clone(),
                payments: self.topic_payments.clone(),
            },
            output: Output::new(self.output),
            progress: !self.quiet,
            shutdown,
            given: self.given.clone(),
            producer: OnceLock::new(),
            ordered_producer: OnceLock::new(),
        };
        crate::config::register_secrets(&app.kafka, &app.redis);
        Ok(app)
    }
}

impl Command {
    /// Runs the command with only the clients it needs.
    pub async fn run(self, app: &App) -> anyhow::Result<()> {
        let out = app.output;
        match self {
            Command::Accounts(command) => {
                let mut redis = app.redis.connect().await?;
                match command {
                    AccountsCommand::Open(args) => accounts::open::run(args, &mut redis, out).await,
                    AccountsCommand::Deposit(args) => {
                        accounts::deposit::run(args, &mut redis, out).await
                    }
                    AccountsCommand::Show(args) => accounts::show::run(args, &mut redis, out).await,
                    AccountsCommand::List(args) => accounts::list::run(args, &mut redis, out).await,
                    AccountsCommand::Audit(args) => {
                        accounts::audit::run(args, &mut redis, out).await
                    }
                }
            }
            Command::Transfer(TransferCommand::Initiate(args)) => {
                let mut redis = app.redis.connect().await?;
                let producer = match args.file {
                    Some(_) => app.ordered_producer()?,
                    None => app.producer()?,
                };
                let topic = &app.topics.transfers;
                let (progress, shutdown) = (app.progress, app.shutdown.clone());
                transfer::initiate::run(args, &mut redis, producer, topic, out, progress, shutdown)
                    .await
            }
            Command::Transfer(TransferCommand::Process(args)) => {
                let redis = app.redis.connect().await?;
                transfer::process::run(
                    args,
                    &app.kafka,
                    redis,
                    &app.topics,
                    out,
                    app.shutdown.clone(),
                )
                .await
            }
            Command::Transfer(TransferCommand::Resend(args)) => {
                let mut redis = app.redis.connect().await?;
                let (producer, topic) = (app.ordered_producer()?, &app.topics.transfers);
                transfer::resend::run(args, &mut redis, producer, topic, out, app.progress).await
            }
            Command::Transfer(TransferCommand::Show(args)) => {
                transfer::show::run(args, &mut app.redis.connect().await?, out).await
            }
            Command::Transfer(TransferCommand::List(args)) => {
                transfer::list::run(args, &mut app.redis.connect().await?, out).await
            }
            Command::Notify(NotifyCommand::Consume(args)) => {
                let redis = app.redis.connect().await?;
                let shutdown = app.shutdown.clone();
                notify::consume::run(args, &app.kafka, redis, &app.topics, out, shutdown).await
            }
            Command::Notify(NotifyCommand::List(args)) => {
                notify::list::run(args, &mut app.redis.connect().await?, out).await
            }
            Command::Notify(NotifyCommand::Watch(args)) => {
                notify::watch::run(args, &mut app.redis.connect().await?, out, true).await
            }
            Command::Notify(NotifyCommand::Unwatch(args)) => {
                notify::watch::run(args, &mut app.redis.connect().await?, out, false).await
            }
            Command::Rates(RatesCommand::Serve(args)) => {
                let redis = app.redis.connect().await?;
                let (topic, shutdown) = (&app.topics.conversions, app.shutdown.clone());
                rates::serve::run(args, &app.kafka, redis, topic, out, shutdown).await
            }
            Command::Rates(RatesCommand::Set(args)) => {
                let mut redis = app.redis.connect().await?;
                rates::set::run(
                    args,
                    &mut redis,
                    app.producer()?,
                    &app.topics.rate_changes,
                    out,
                )
                .await
            }
            Command::Rates(RatesCommand::Import(args)) => {
                let mut redis = app.redis.connect().await?;
                rates::import::run(
                    args,
                    &mut redis,
                    app.producer()?,
                    &app.topics.rate_changes,
                    out,
                )
                .await
            }
            Command::Rates(RatesCommand::List(args)) => {
                rates::list::run(args, &mut app.redis.connect().await?, out).await
            }
            Command::Rates(RatesCommand::Convert(args)) => {
                let mut redis = app.redis.connect().await?;
                let topic = &app.topics.conversions;
                rates::convert::run(args, &mut redis, || app.producer(), topic, out).await
            }
            Command::Rates(RatesCommand::Result(args)) => {
                rates::result::run(args, &mut app.redis.connect().await?, out).await
            }
            Command::Payments(PaymentsCommand::Submit(args)) => {
                let mut redis = app.redis.connect().await?;
                payments::submit::submit(
                    args,
                    &mut redis,
                    app.producer()?,
                    &app.topics.payments,
                    out,
                )
                .await
            }
            Command::Payments(PaymentsCommand::Refund(args)) => {
                let mut redis = app.redis.connect().await?;
                payments::submit::refund(
                    args,
                    &mut redis,
                    app.producer()?,
                    &app.topics.payments,
                    out,
                )
                .await
            }
            Command::Payments(PaymentsCommand::Save(args)) => {
                let redis = app.redis.connect().await?;
                let (topic, shutdown) = (&app.topics.payments, app.shutdown.clone());
                payments::save::run(args, &app.kafka, redis, topic, out, shutdown).await
            }
            Command::Payments(PaymentsCommand::Process(args)) => {
                let mut redis = app.redis.connect().await?;
                let (topic, shutdown) = (&app.topics.transactions, app.shutdown.clone());
                let producer = app.producer()?;
                payments::process::run(
                    args,
                    &mut redis,
                    producer,
                    topic,
                    out,
                    app.progress,
                    shutdown,
                )
                .await
            }
            Command::Payments(PaymentsCommand::List(args)) => {
                payments::list::run(args, &mut app.redis.connect().await?, out).await
            }
            Command::Payments(PaymentsCommand::Show(args)) => {
                payments::show::run(args, &mut app.redis.connect().await?, out).await
            }
            Command::Payments(PaymentsCommand::Stats(args)) => {
                payments::stats::run(args, &mut app.redis.connect().await?, out).await
            }
            Command::Payments(PaymentsCommand::SimulateProcessor(args)) => {
                payments::simulate::run(args, app.shutdown.clone()).await
            }
            Command::Topics(TopicsCommand::List(args)) => {
                topics::list::run(args, &app.kafka, out).await
            }
            Command::Topics(TopicsCommand::Describe(args)) => {
                topics::describe::run(args, &app.kafka, out).await
            }
            Command::Topics(TopicsCommand::Produce(args)) => {
                let producer = app.ordered_producer()?;
                topics::produce::run(args, &app.kafka, producer, out, app.progress).await
            }
            Command::Topics(TopicsCommand::Consume(args)) => {
                topics::consume::run(args, &app.kafka, app.shutdown.clone()).await
            }
            Command::Serve(args) => {
                let redis = app.redis.connect().await?;
                let producer = app.producer()?.clone();
                let (topics, shutdown) = (&app.topics, app.shutdown.clone());
                serve::run(args, &app.kafka, redis, producer, topics, shutdown).await
            }
            Command::Cluster(ClusterCommand::Info(args)) => {
                cluster::info(args, &app.kafka, out).await
            }
            Command::Topics(TopicsCommand::Delete(args)) => {
                topics::admin::delete(args, &app.kafka, out).await
            }
            Command::Topics(TopicsCommand::AddPartitions(args)) => {
                topics::admin::add_partitions(args, &app.kafka, out).await
            }
            Command::Topics(TopicsCommand::Config(topics::admin::ConfigCommand::Get(args))) => {
                topics::admin::config_get(args, &app.kafka, out).await
            }
            Command::Topics(TopicsCommand::Config(topics::admin::ConfigCommand::Set(args))) => {
                topics::admin::config_set(args, &app.kafka, out).await
            }
            Command::Dlq(DlqCommand::List(args)) => {
                dlq::list(args, &app.kafka, out, app.shutdown.clone()).await
            }
            Command::Dlq(DlqCommand::Show(args)) => {
                dlq::show(args, &app.kafka, out, app.shutdown.clone()).await
            }
            Command::Dlq(DlqCommand::Redrive(args)) => {
                let mut redis = app.redis.connect().await?;
                let producer = app.producer()?;
                let (progress, shutdown) = (app.progress, app.shutdown.clone());
                dlq::redrive(
                    args, &app.kafka, &mut redis, producer, out, progress, shutdown,
                )
                .await
            }
            Command::Groups(GroupsCommand::List(args)) => {
                groups::list::run(args, &app.kafka, out).await
            }
            Command::Groups(GroupsCommand::Lag(args)) => {
                groups::lag::run(args, &app.kafka, out, app.shutdown.clone()).await
            }
            Command::Groups(GroupsCommand::Reset(args)) => {
                groups::reset::run(args, &app.kafka, out).await
            }
            Command::Groups(GroupsCommand::Delete(args)) => {
                groups::delete::run(args, &app.kafka, out).await
            }
            Command::Transactions(TransactionsCommand::Log(args)) => {
                let (topic, shutdown) = (&app.topics.transactions, app.shutdown.clone());
                transactions::log::run(args, &app.kafka, topic, out, shutdown).await
            }
            Command::Status(args) => {
                status::run(args, &app.kafka, &app.redis, &app.topics, out).await
            }
            Command::Completions { shell } => {
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut Cli::command(), "payctl", &mut script);
                crate::output::line(String::from_utf8_lossy(&script).trim_end()).map(|_| ())
            }
            Command::Topics(TopicsCommand::Create(args)) => {
                topics::create::run(args, &app.kafka, out).await
            }
            Command::Profile(command) => match command {
                ProfileCommand::Create(args) => profile::create::run(args, &app.given, out),
                ProfileCommand::Use(args) => profile::select::run(args, out),
                ProfileCommand::List(args) => profile::list::run(args, out),
                ProfileCommand::Show(args) => profile::show::run(args, out),
                ProfileCommand::Delete(args) => profile::delete::run(args, out),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }

    /// Every command's --help ends with examples.
    #[test]
    fn every_command_has_examples() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name());
            let help = command
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            if !(help.starts_with("Examples:\n") && help.contains("payctl "))
                && command.get_name() != "help"
            {
                missing.push(path.clone());
            }
            for sub in command.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no examples in --help of: {missing:?}");
    }

    /// Help and the README name the services payctl replaces by what they
    /// do, never by the numbers they had while payctl was being designed.
    #[test]
    fn help_and_readme_name_services_not_design_numbers() {
        let numbered = regex::Regex::new(r"(?i)\bseeds?\b[^\n]{0,3}\b0\d\d\b").unwrap();
        fn walk(
            command: &mut clap::Command,
            path: &str,
            found: &mut Vec<String>,
            re: &regex::Regex,
        ) {
            let path = format!("{path} {}", command.get_name());
            let help = command.render_long_help().to_string();
            if let Some(hit) = re.find(&help) {
                found.push(format!("{path}: {}", hit.as_str()));
            }
            for sub in command.get_subcommands_mut() {
                walk(sub, &path, found, re);
            }
        }
        let mut found = Vec::new();
        let mut cli = super::Cli::command();
        cli.build();
        walk(&mut cli, "", &mut found, &numbered);
        let readme = include_str!("../README.md");
        found.extend(
            numbered
                .find_iter(readme)
                .map(|m| format!("README.md: {}", m.as_str())),
        );
        assert!(found.is_empty(), "numbered services in: {found:#?}");
        // The check sees the old wording.
        assert!(numbered.is_match("Transaction outcomes (seed 004's log)"));
        assert!(numbered.is_match("### Transfers (seeds 001, 002, 004)"));
    }
}
