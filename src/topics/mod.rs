//! Kafka topic tooling.

pub mod create;
