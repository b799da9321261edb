//! payctl: one binary for the people who run a payment pipeline on Kafka and
//! Redis, over this library, which a Rust service can use on its own.
//!
//! # Using the library
//!
//! Every entry point takes a [`config::KafkaConfig`] (the brokers and any
//! librdkafka settings) or a [`store::Redis`] connection (from
//! [`config::RedisConfig::connect`]: a `redis://`, `rediss://` or
//! `redis+cluster://` URL), or both, and works on the same keys and topics
//! as the `payctl` commands, so a service embedding it and the binary can
//! run side by side:
//!
//! ```no_run
//! use payctl::config::{KafkaConfig, RedisConfig};
//!
//! # async fn example() -> anyhow::Result<()> {
//! let kafka = KafkaConfig {
//!     brokers: "localhost:9092".into(),
//!     options: Vec::new(),
//! };
//! let mut redis = RedisConfig {
//!     url: "redis://127.0.0.1:6379/0".into(),
//!     ..RedisConfig::default()
//! }
//! .connect()
//! .await?;
//! let account = payctl::accounts::require(&mut redis, "alice").await?;
//! println!("{} {}", account.balance, account.currency);
//! let lag = payctl::groups::lag::group_lag(&kafka, "payctl-transfer-process", Vec::new()).await?;
//! println!("the transfer worker has {} messages to go", lag.total);
//! # Ok(())
//! # }
//! ```
//!
//! Runnable examples, in the repository's `examples/` directory (`cargo run
//! --example NAME` with the local stack up, `scripts/stack.sh up`; each one
//! is run and its output checked by `tests/examples.rs`):
//!
//! - `initiate_transfer`: initiate a transfer with an idempotency key and
//!   await the broker's acknowledgement ([`transfer::initiate::prepare`],
//!   [`transfer::initiate::Publisher::initiate`]); the same key again
//!   returns the same transfer.
//! - `transfer_one`: open accounts, initiate, and apply the transfer with
//!   the worker `payctl transfer process` runs
//!   ([`transfer::process::TransferProcessor`] on [`worker::run`]).
//! - `own_worker`: your own worker on payctl's consume loop: a small
//!   [`worker::BatchHandler`] with its own idempotent effect in Redis, dead
//!   letters for bytes it cannot read, at-least-once like payctl's workers.
//! - `convert_exact`: store rates ([`rates::set()`]) and convert exactly with
//!   them, direct, inverse and across the pivot ([`rates::all`],
//!   [`rates::convert::compute`]).
//! - `group_lag`: a consumer group's lag per partition
//!   ([`groups::lag::group_lag`]).
//!
//! Money is [`money::Money`] (integer minor units of an ISO 4217
//! [`money::Currency`]) and [`money::Decimal`], never a float. Errors are
//! `anyhow` errors whose class ([`failure::classify`]) says whether a retry
//! can help.
//!
//! # Layout
//! - `cli`: flags, validated [`cli::App`] config, and one-line dispatch per command.
//! - `config`: runtime configuration structs (Kafka, Redis, topics, worker limits).
//! - `input`: files a user hands in (or stdin for `-`), byte-order mark stripped.
//! - `money`: exact decimals, currencies and amounts; never a float.
//! - `output`: the one place that writes stdout (tables or JSON).
//! - `exit`: exit codes and the "answer is no" error.
//! - `failure`: every error's class (passing, permanent, fatal) and what a worker does with it.
//! - `clock`: timestamps.
//! - `kafka`: clients with payctl's defaults; produce-and-await-acks.
//! - `store`: Redis connection, key names, Lua scripts called by SHA.
//! - `worker`: the shared consume → decode → apply → produce → commit cycle.
//! - `events`: `payment_transactions` events in the notification service's shape.
//! - `accounts`: open, deposit, show, list.
//! - `transfer`: initiate, process (the worker), show, list (the versioned transfer service, the banking app).
//! - `rates`: rates, exact conversion (sync, and async over Kafka), the answering worker.
//! - `notify`: the notification worker, notification lists, rate watchers.
//! - `payments`: subscription payments: submit, save, process (processors), views.
//! - `topics`: topic tooling (list, describe, create, produce, consume).
//! - `groups`: consumer groups and their lag.
//! - `transactions`: the transaction outcome log.
//! - `status`: the pipeline health check.
//! - `profile`: saved connection profiles (brokers, Redis URL, librdkafka options) by name.

pub mod accounts;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod dlq;
pub mod events;
pub mod exit;
pub mod failure;
pub mod groups;
pub mod input;
pub mod kafka;
pub mod metrics;
pub mod money;
pub mod notify;
pub mod output;
pub mod payments;
pub mod profile;
pub mod rates;
pub mod serve;
pub mod status;
pub mod store;
pub mod topics;
pub mod transactions;
pub mod transfer;
pub mod worker;
