//! What the examples share: where the local stack is, read from the
//! environment as `payctl` reads it, and a suffix that makes a run's
//! names (accounts, groups, topics) its own.
#![allow(dead_code)]

use payctl::accounts;
use payctl::config::{KafkaConfig, RedisConfig};
use payctl::money::{Currency, Money};
use payctl::store::Redis;

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

/// Opens `ex-payer-<suffix>` with 20.00 USD and an empty
/// `ex-payee-<suffix>`; returns their ids.
pub async fn two_accounts(redis: &mut Redis, suffix: &str) -> anyhow::Result<(String, String)> {
    let (payer, payee) = (format!("ex-payer-{suffix}"), format!("ex-payee-{suffix}"));
    let usd = Currency::parse("USD")?;
    let twenty = Money::parse_amount("20.00", usd)?;
    accounts::open(redis, &payer, usd, Some(twenty)).await?;
    accounts::open(redis, &payee, usd, None).await?;
    Ok((payer, payee))
}
