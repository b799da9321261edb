//! Validated runtime configuration. Library code sees these, never clap.

use std::path::PathBuf;
use std::time::Duration;

/// Where the Kafka brokers are and any raw librdkafka options (`-X k=v`).
/// Its `Debug` form masks secret options (see [`is_secret_option`]).
#[derive(Clone)]
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

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let options: Vec<String> = self
            .options
            .iter()
            .map(|(key, value)| masked_option(key, value))
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("options", &options)
            .finish()
    }
}

/// True for a librdkafka setting whose value is a secret: passwords,
/// client secrets, tokens, private keys. Such values are stored where the
/// user put them but never printed.
pub fn is_secret_option(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "oauthbearer.config",
        "key.pem",
        "ssl_key",
        "jaas",
    ]
    .iter()
    .any(|part| key.contains(part))
}

/// `key=value` for printing, with a secret value replaced by `***`.
pub fn masked_option(key: &str, value: &str) -> String {
    if is_secret_option(key) {
        format!("{key}={MASK}")
    } else {
        format!("{key}={value}")
    }
}

/// What a secret is printed as.
pub const MASK: &str = "***";

/// The secret values of this run (passwords, secret `-X` options), kept so
/// that anything written to stderr can be scrubbed of them: a last guard
/// behind masking where a value is printed, for the texts payctl does not
/// write itself (librdkafka's and the Redis client's error messages).
static SECRETS: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Shortest value scrubbed: shorter ones would turn common words into `***`.
const SHORTEST_SCRUBBED: usize = 4;

/// Remembers a secret value for [`scrub`].
pub fn register_secret(value: &str) {
    if value.len() < SHORTEST_SCRUBBED {
        return;
    }
    if let Ok(mut secrets) = SECRETS.write() {
        if !secrets.iter().any(|s| s == value) {
            secrets.push(value.to_string());
            // Longest first, so a secret containing another is replaced whole.
            secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }
}

/// Remembers the secrets of a run's settings: secret `-X` values and the
/// Redis URL's password (as typed and percent-decoded).
pub fn register_secrets(kafka: &KafkaConfig, redis: &RedisConfig) {
    for (key, value) in &kafka.options {
        if is_secret_option(key) {
            register_secret(value);
        }
    }
    if let Some(RedisPassword(password)) = &redis.password {
        register_secret(password);
    }
    if let Ok(url) = url::Url::parse(&redis.url) {
        // A user name alone may be a password typed in the wrong place
        // (as `masked_url` assumes too); beside a password it is a name.
        let secret = url.password().unwrap_or(url.username());
        register_secret(secret);
        // `url` keeps userinfo percent-encoded; the server sees it decoded.
        if let Ok(decoded) = percent_encoding::percent_decode_str(secret).decode_utf8() {
            register_secret(&decoded);
        }
    }
}

/// `text` with every registered secret replaced by `***`.
pub fn scrub(text: &str) -> std::borrow::Cow<'_, str> {
    let Ok(secrets) = SECRETS.read() else {
        return text.into();
    };
    let mut text = std::borrow::Cow::Borrowed(text);
    for secret in secrets.iter() {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), MASK).into();
        }
    }
    text
}

/// A URL for printing: its password (or a user name given without one,
/// which may be a password put in the wrong place) replaced by `***`.
/// A URL too malformed to parse keeps nothing of what precedes its last `@`.
pub fn masked_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            let masked = if parsed.password().is_some() {
                parsed.set_password(Some(MASK))
            } else if !parsed.username().is_empty() {
                parsed.set_username(MASK)
            } else {
                Ok(())
            };
            match masked {
                Ok(()) => parsed.to_string(),
                Err(()) => format!("{}://{MASK}", parsed.scheme()),
            }
        }
        Err(_) => match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}{MASK}{}", &url[..scheme + 3], &url[at..])
            }
            (None, Some(at)) => format!("{MASK}{}", &url[at..]),
            _ => url.to_string(),
        },
    }
}

/// How to reach Redis, as whom, and whom to trust. Its `Debug` form masks
/// the URL's password.
#[derive(Clone, Default)]
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
        masked_url(&self.url)
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.display_url())
            .field("username", &self.username)
            .field("password", &self.password)
            .field("password_file", &self.password_file)
            .field("tls", &self.tls)
            .finish()
    }
}

/// The pipeline's topic names. Every one can be changed by flag and env.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Transfers waiting to be processed (the versioned transfer service).
    pub transfers: String,
    /// Outcome events in the notification service's shape.
    pub transactions: String,
    /// Rate changes (the banking app).
    pub rate_changes: String,
    /// Conversion requests (the converter service).
    pub conversions: String,
    /// Subscription payment requests (the subscription pipeline).
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
    /// Where to serve the worker's metrics, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
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
        assert_eq!(with.display_url(), "redis://user:***@host:6379/0");
        assert!(!format!("{with:?}").contains("secret"));
        let without = RedisConfig {
            url: RedisConfig::DEFAULT_URL.into(),
            ..RedisConfig::default()
        };
        assert_eq!(without.display_url(), RedisConfig::DEFAULT_URL);
        for (url, shown) in [
            ("redis://:secret@host/0", "redis://:***@host/0"),
            ("rediss://secret@host:6380", "rediss://***@host:6380"),
            ("redis://us er:secret@host", "redis://us%20er:***@host"),
            ("redis://user:secret@[bad", "redis://***@[bad"),
            ("secret@host", "***@host"),
        ] {
            assert_eq!(masked_url(url), shown, "{url}");
        }
    }

    #[test]
    fn scrubs_registered_secrets() {
        register_secrets(
            &KafkaConfig {
                brokers: "b".into(),
                options: vec![("sasl.password".into(), "pa55word-x".into())],
            },
            &RedisConfig {
                url: "redis://payctl:s%40cret-y@host/0".into(),
                ..RedisConfig::default()
            },
        );
        let text = "failed for pa55word-x and s@cret-y and s%40cret-y";
        assert_eq!(scrub(text), "failed for *** and *** and ***");
        assert_eq!(scrub("nothing here"), "nothing here");
    }

    #[test]
    fn hides_secret_kafka_options() {
        let kafka = KafkaConfig {
            brokers: "b:9093".into(),
            options: vec![
                ("sasl.password".into(), "hunter2".into()),
                ("sasl.oauthbearer.client.secret".into(), "s3".into()),
                ("ssl.key.password".into(), "k3y".into()),
                ("security.protocol".into(), "SASL_SSL".into()),
            ],
        };
        let shown = format!("{kafka:?}");
        for secret in ["hunter2", "s3", "k3y"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("security.protocol=SASL_SSL"), "{shown}");
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
