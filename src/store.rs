//! Redis: connecting, the key names the seeds and payctl share, and Lua
//! scripts loaded once and called by SHA.

use std::time::Duration;

use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::RedisConfig;

/// Key names. Seed formats (`transfer:{id}`, `notifications:{user}`) must not change.
pub mod keys {
    /// A transfer record, seed 001's JSON.
    pub fn transfer(id: &str) -> String {
        format!("transfer:{id}")
    }
    /// Sorted set of transfer ids by creation time (ms).
    pub const TRANSFERS: &str = "transfers";
    /// Ids of transfers stored but not yet acknowledged by the broker.
    pub const UNPUBLISHED_TRANSFERS: &str = "transfers:unpublished";
    /// Sorted set of undecided transfer ids by creation time (ms): added
    /// when a transfer is initiated, removed once it is completed or
    /// rejected. `transfer resend` looks here, not at all history.
    pub const PENDING_TRANSFERS: &str = "transfers:pending";
    /// Ids of unpublished transfers that a replay of their idempotency key
    /// (or `transfer resend`) took over: the initiate that stored one must
    /// not roll it back when its own publish fails.
    pub const ADOPTED_TRANSFERS: &str = "transfers:adopted";
    /// The transfer id a client's idempotency key already created.
    pub fn transfer_idempotency(key: &str) -> String {
        format!("idempotency:transfer:{key}")
    }
    /// An account hash: `currency`, `balance` (integer minor units), `opened_at`.
    pub fn account(id: &str) -> String {
        format!("account:{id}")
    }
    /// Sorted set of account ids by opening time (ms).
    pub const ACCOUNTS: &str = "accounts";
    /// Hash of rates: field `BASE/QUOTE`, value the rate's JSON.
    pub const RATES: &str = "rates";
    /// A conversion request and, once served, its answer.
    pub fn conversion(id: &str) -> String {
        format!("conversion:{id}")
    }
    /// A user's notifications, oldest first (seed 000).
    pub fn notifications(user: &str) -> String {
        format!("notifications:{user}")
    }
    /// Hash of each `money_transfers` partition's highest offset whose
    /// outcome events are acknowledged (field `topic/partition`, value
    /// `offset:timestamp`): a redelivery at or below it is not announced again.
    pub const TRANSFERS_ANNOUNCED: &str = "transfers:announced";
    /// Hash of each input partition's highest applied offset, for
    /// `notify consume` (field `topic/partition`, value `offset:timestamp`).
    pub const NOTIFY_APPLIED: &str = "notify:applied";
    /// Users watching a pair's rate.
    pub fn watchers(pair: &str) -> String {
        format!("watchers:{pair}")
    }
    /// Pairs a user watches.
    pub fn watching(user: &str) -> String {
        format!("watching:{user}")
    }
}

/// Longest id payctl puts into a key.
pub const MAX_ID_BYTES: usize = 128;

/// Checks an id that arrived from outside (a topic, a file) before it goes
/// into a key or a header: 1 to [`MAX_ID_BYTES`] bytes, no control characters
/// and no whitespace. `Err` says why, naming the field.
pub fn check_id(field: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(format!(
            "{field} must be 1 to {MAX_ID_BYTES} bytes, got {}",
            id.len()
        ));
    }
    if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "{field} must not contain whitespace or control characters"
        ));
    }
    Ok(())
}

/// A live Redis connection that reconnects by itself after Redis comes back.
pub type Redis = ConnectionManager;

impl RedisConfig {
    /// Connects, failing fast with the URL (password hidden) if Redis is down.
    pub async fn connect(&self) -> anyhow::Result<Redis> {
        let context = || format!("connecting to Redis at {}", self.display_url());
        let client = redis::Client::open(self.url.as_str()).with_context(context)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(1);
        tokio::time::timeout(
            Duration::from_secs(5),
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| anyhow::anyhow!("timed out after 5s"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(context)
    }
}

/// A Lua script that is loaded once and then called by SHA inside pipelines.
pub struct Script {
    script: redis::Script,
}

impl Script {
    /// Wraps Lua source.
    pub fn new(source: &str) -> Script {
        Script {
            script: redis::Script::new(source),
        }
    }

    /// Loads the script (again). Cheap; call it after a connection error,
    /// since a restarted Redis has forgotten its scripts.
    pub async fn load(&self, redis: &mut Redis) -> anyhow::Result<()> {
        self.script
            .prepare_invoke()
            .load_async(redis)
            .await
            .context("loading a Lua script into Redis")?;
        Ok(())
    }

    /// A one-off invocation (loads the script if Redis does not know it yet).
    pub fn invocation(&self) -> redis::ScriptInvocation<'_> {
        self.script.prepare_invoke()
    }

    /// An `EVALSHA` of this script, ready for keys and args, to add to a pipeline.
    pub fn call(&self, keys: &[&str]) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash()).arg(keys.len()).arg(keys);
        cmd
    }
}

/// Runs a pipeline whose commands each answer a `T`. An empty pipeline
/// (a batch of dead letters, say) answers nothing, without a round trip:
/// Redis would refuse it.
pub async fn run_pipeline<T: redis::FromRedisValue>(
    pipe: &redis::Pipeline,
    redis: &mut Redis,
) -> redis::RedisResult<Vec<T>> {
    if pipe.is_empty() {
        return Ok(Vec::new());
    }
    pipe.query_async(redis).await
}
