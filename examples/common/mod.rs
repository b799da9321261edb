//! What the examples share: where the local stack is, read from the
//! environment as `payctl` reads it, and a suffix that makes a run's
//! names (accounts, groups, topics) its own.
#![allow(dead_code)]

use payctl::config::{KafkaConfig, RedisConfig};

/// The brokers in `KAFKA_BOOTSTRAP_SERVERS` (default: localhost:9092).
///
/// A 1 s session makes a worker's group join quick; the local Tansu allows
/// it, a real Kafka refuses anything under its `group.min.session.timeout.ms`
/// (6 s by default): leave `options` empty there.
pub fn kafka() -> KafkaConfig {
    KafkaConfig {
        brokers: std::env::var("KAFKA_BOOTSTRAP_SERVERS")
            .unwrap_or_else(|_| KafkaConfig::DEFAULT_BROKERS.into()),
        options: vec![
            ("session.timeout.ms".into(), "1000".into()),
            ("heartbeat.interval.ms".into(), "250".into()),
        ],
    }
}

/// The Redis in `REDIS_URL` (default: redis://127.0.0.1:6379/0); a
/// `redis+cluster://` URL reaches a Redis Cluster.
pub fn redis() -> RedisConfig {
    RedisConfig {
        url: std::env::var("REDIS_URL").unwrap_or_else(|_| RedisConfig::DEFAULT_URL.into()),
        ..RedisConfig::default()
    }
}

/// Eight hex digits no other run uses.
pub fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}
