//! Validated runtime configuration. Library code sees these, never clap.

use std::path::PathBuf;
use std::time::Duration;

/// Where the Kafka brokers are and any raw librdkafka options (`-X k=v`).
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub brokers: String,
    /// Raw librdkafka settings applied last, so they win over payctl's defaults.
    pub options: Vec<(String, String)>,
}

impl KafkaConfig {
    /// The default bootstrap list.
    pub const DEFAULT_BROKERS: &'static str = "localhost:9092";
}

/// How to reach Redis, as whom, and whom to trust.
#[derive(Debug, Clone, Default)]
pub struct RedisConfig {
    /// A `redis://` or `rediss://` (TLS) URL; may carry a user and a
    /// password, so it is never printed whole.
    pub url: String,
    /// The ACL user, when the URL does not name one (`REDIS_USERNAME`).
    pub username: Option<String>,
    /// The password from the environment (`REDIS_PASSWORD`), kept out of
    /// the command line, where `ps` would show it.
    pub password: Option<RedisPassword>,
    /// A file holding the password (`--redis-password-file`), read when
    /// connecting: one trailing newline is not part of it.
    pub password_file: Option<PathBuf>,
    /// TLS settings for `rediss://` URLs.
    pub tls: RedisTls,
}

/// A Redis password. Its `Debug` prints `***`, so no log line or error
/// that shows a config can show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisPassword(pub String);

impl RedisPassword {
    /// The environment variable that holds it: never a flag, which `ps`
    /// and shell histories would show.
    pub const ENV: &'static str = "REDIS_PASSWORD";

    /// The password in `REDIS_PASSWORD`, if set and not empty.
    pub fn from_env() -> anyhow::Result<Option<RedisPassword>> {
        match std::env::var(Self::ENV) {
            Ok(password) if password.is_empty() => Ok(None),
            Ok(password) => Ok(Some(RedisPassword(password))),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                anyhow::bail!("{} is not valid UTF-8", Self::ENV)
            }
        }
    }
}

impl std::fmt::Debug for RedisPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisPassword(***)")
    }
}

/// Whom a `rediss://` connection trusts, and what it shows the server.
/// Without a CA file, the system's trusted roots verify the server.
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    /// PEM certificates of the CA(s) that signed the server's certificate,
    /// trusted instead of the system roots (`--redis-ca-file`).
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate (chain), for servers that ask for one.
    pub cert_file: Option<PathBuf>,
    /// The PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl RedisConfig {
    /// The default URL.
    pub const DEFAULT_URL: &'static str = "redis://127.0.0.1:6379/0";

    /// The URL with any password replaced by `***`, for messages.
    pub fn display_url(&self) -> String {
        match (self.url.find("://"), self.url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &self.url[..scheme + 3], &self.url[at..])
            }
            _ => self.url.clone(),
        }
    }
}

/// The pipeline's topic names. Every one can be changed by flag and env.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Transfers waiting to be processed (seed 001).
    pub transfers: String,
    /// Outcome events in seed 000's shape.
    pub transactions: String,
    /// Rate changes (seed 002).
    pub rate_changes: String,
    /// Conversion requests (seed 004).
    pub conversions: String,
    /// Subscription payment requests (seed 003).
    pub payments: String,
}

impl Topics {
    /// The suffix of a topic's dead-letter topic.
    pub const DLQ_SUFFIX: &'static str = ".dlq";

    /// The dead-letter topic of `topic`.
    pub fn dlq(topic: &str) -> String {
        format!("{topic}{}", Self::DLQ_SUFFIX)
    }
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            transfers: "money_transfers".into(),
            transactions: "payment_transactions".into(),
            rate_changes: "rate_changes".into(),
            conversions: "conversion_requests".into(),
            payments: "payments".into(),
        }
    }
}

/// When a worker stops on its own (it always stops on SIGINT/SIGTERM).
#[derive(Debug, Clone, Default)]
pub struct WorkerLimits {
    /// Stop after this many messages.
    pub max_messages: Option<u64>,
    /// Stop when no message has arrived for this long.
    pub until_idle: Option<Duration>,
    /// Most messages applied in one Redis round trip.
    pub batch_size: usize,
}

impl WorkerLimits {
    /// The default batch bound.
    pub const DEFAULT_BATCH_SIZE: usize = 1000;
    /// The largest batch bound accepted.
    pub const MAX_BATCH_SIZE: usize = 100_000;
}

/// The longest duration a flag takes: a year.
pub const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// A flag's number of seconds as a duration: finite, not negative, at most
/// [`MAX_SECONDS`]; anything else is a clear error naming the flag.
pub fn seconds(flag: &str, secs: f64) -> anyhow::Result<Duration> {
    seconds_from(flag, secs, 0.0)
}

/// Like [`seconds`], with a smallest value other than 0 (a timeout of zero
/// would time every call out at once). NaN, negatives or `1e20` are a clear
/// error, never a panic.
pub fn seconds_from(flag: &str, secs: f64, min: f64) -> anyhow::Result<Duration> {
    if !(secs.is_finite() && (min..=MAX_SECONDS).contains(&secs)) {
        anyhow::bail!(
            "{flag} must be a number of seconds from {min} to {MAX_SECONDS} (one year), got {secs}"
        );
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_redis_passwords() {
        let with = RedisConfig {
            url: "redis://user:secret@host:6379/0".into(),
            ..RedisConfig::default()
        };
        assert_eq!(with.display_url(), "redis://***@host:6379/0");
        let without = RedisConfig {
            url: RedisConfig::DEFAULT_URL.into(),
            ..RedisConfig::default()
        };
        assert_eq!(without.display_url(), RedisConfig::DEFAULT_URL);
    }

    #[test]
    fn seconds_are_bounded() {
        assert_eq!(seconds("--x", 1.5).unwrap(), Duration::from_millis(1500));
        for bad in [1e20, -1.0, f64::NAN, f64::INFINITY] {
            let message = seconds("--until-idle", bad).unwrap_err().to_string();
            assert!(message.starts_with("--until-idle must be"), "{message}");
        }
    }
}
