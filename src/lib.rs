//! payctl: one binary for the people who run a payment pipeline on Kafka and Redis.
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
