//! Redis: connecting (TLS, ACL users), the key names payctl shares with the services it replaces, and Lua
//! scripts loaded once and called by SHA.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, TlsCertificates,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{RedisConfig, RedisPassword, RedisTls};

/// Key names. Seed formats (`transfer:{id}`, `notifications:{user}`) must not change.
pub mod keys {
    /// A transfer record, the versioned transfer service's JSON.
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
    /// A user's notifications, oldest first (the notification service).
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
    /// On a Redis Cluster, [`NOTIFY_APPLIED`] of one hash slot's lists: a
    /// batch's notifications are pushed one slot at a time, each slot's
    /// with its own record, in the same atomic step.
    pub fn notify_applied_in(slot: u16) -> String {
        format!("{NOTIFY_APPLIED}:{}", super::slot_tag(slot))
    }
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

/// A live Redis connection: to one server (reconnecting by itself after
/// it comes back), or to a Redis Cluster (`redis+cluster://`), following
/// `MOVED` and `ASK` to the master that holds each key's slot.
#[derive(Clone)]
pub enum Redis {
    Single(ConnectionManager),
    Cluster(Arc<ClusterHandle>),
}

/// A Redis Cluster connection that is built again when it stops answering.
///
/// The redis crate's cluster connection (1.8) does not always recover from
/// a master killed and restarted: requests for that master's slots time
/// out, one after another, for good (seen in the fault suite's
/// `cluster_master_kill`). A request that fails that way (a timeout, a
/// dropped or refused connection) has payctl connect afresh from the seed
/// nodes, once for all the requests that failed on the same connection;
/// the failed request itself is answered with its error and retried by the
/// caller, as after any passing failure.
pub struct ClusterHandle {
    client: redis::cluster::ClusterClient,
    connection: std::sync::Mutex<(ClusterConnection, u64)>,
    rebuilding: tokio::sync::Mutex<()>,
}

impl ClusterHandle {
    fn current(&self) -> (ClusterConnection, u64) {
        let guard = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        (guard.0.clone(), guard.1)
    }

    /// Connects again, unless another request did since `generation`.
    async fn rebuild(&self, generation: u64) {
        let _one = self.rebuilding.lock().await;
        if self.current().1 != generation {
            return;
        }
        let fresh = tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_connection()).await;
        match fresh {
            Ok(Ok(connection)) => {
                tracing::warn!("the Redis Cluster stopped answering; connected again");
                let mut guard = self.connection.lock().unwrap_or_else(|e| e.into_inner());
                *guard = (connection, generation + 1);
            }
            Ok(Err(e)) => tracing::warn!("connecting to the Redis Cluster again: {e}"),
            Err(_) => tracing::warn!("connecting to the Redis Cluster again: timed out"),
        }
    }

    /// Runs `request` on the current connection, and connects again when
    /// it fails as a broken connection does.
    async fn run<T>(
        &self,
        request: impl AsyncFnOnce(&mut ClusterConnection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let (mut connection, generation) = self.current();
        let result = request(&mut connection).await;
        if let Err(e) = &result {
            let broken = e.is_timeout()
                || e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || matches!(
                    e.kind(),
                    redis::ErrorKind::ClusterConnectionNotFound
                        | redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown)
                );
            if broken {
                self.rebuild(generation).await;
            }
        }
        result
    }
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Redis::Single(_) => "Redis(single server)",
            Redis::Cluster(_) => "Redis(cluster)",
        })
    }
}

impl Redis {
    /// Whether this is a Redis Cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Redis::Cluster(_))
    }
}

impl Redis {
    /// Runs `cmd` on the one server, or on every master of the cluster;
    /// each answer with the address that gave it ('' on one server).
    pub async fn on_every_master<T: redis::FromRedisValue>(
        &mut self,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<Vec<(String, T)>> {
        match self {
            Redis::Single(_) => Ok(vec![(String::new(), cmd.query_async(self).await?)]),
            Redis::Cluster(handle) => {
                use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
                let (mut connection, _) = handle.current();
                let answers = connection
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                    )
                    .await?;
                let mut by_master: Vec<(String, T)> = redis::from_redis_value::<
                    std::collections::HashMap<String, redis::Value>,
                >(answers)?
                .into_iter()
                .map(|(node, answer)| Ok((node, redis::from_redis_value(answer)?)))
                .collect::<redis::RedisResult<_>>()?;
                by_master.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(by_master)
            }
        }
    }
}

impl redis::aio::ConnectionLike for Redis {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Redis::Single(c) => c.req_packed_command(cmd),
            Redis::Cluster(c) => {
                let c = c.clone();
                Box::pin(async move {
                    c.run(async |connection: &mut ClusterConnection| {
                        connection.req_packed_command(cmd).await
                    })
                    .await
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Redis::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Redis::Cluster(c) => {
                let c = c.clone();
                Box::pin(async move {
                    c.run(async |connection: &mut ClusterConnection| {
                        connection
                            .req_packed_commands(pipeline, offset, count)
                            .await
                    })
                    .await
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Redis::Single(c) => c.get_db(),
            Redis::Cluster(c) => c.current().0.get_db(),
        }
    }
}

/// Runs `commands`, each about keys of one hash slot and outside any
/// transaction, in as few round trips as the server allows, and answers
/// each in order with its own result: one pipeline on a single server; on
/// a cluster, where a pipeline must stay within one slot, each command on
/// its own, many in flight at once. An error of the connection is the
/// outer `Err`.
pub async fn query_each<T: redis::FromRedisValue>(
    redis: &mut Redis,
    commands: Vec<redis::Cmd>,
) -> redis::RedisResult<Vec<redis::RedisResult<T>>> {
    use futures::StreamExt as _;
    match redis {
        Redis::Single(_) => {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for command in commands {
                pipe.add_command(command);
            }
            pipe.query_async(redis).await
        }
        Redis::Cluster(_) => {
            let shared = redis.clone();
            let answers = futures::stream::iter(commands)
                .map(|command| {
                    let mut cluster = shared.clone();
                    async move { command.query_async::<T>(&mut cluster).await }
                })
                .buffered(CLUSTER_IN_FLIGHT)
                .collect()
                .await;
            connection_failure_first(answers)
        }
    }
}

/// Runs script invocations, each about keys of one hash slot, many in
/// flight at once, and answers each in order with its own result. Each
/// loads its script where it runs if that server does not know it (a
/// restarted master, a slot moved to another). An error of the connection
/// is the outer `Err`, as in [`query_each`].
pub async fn invoke_each<T: redis::FromRedisValue>(
    redis: &mut Redis,
    invocations: Vec<redis::ScriptInvocation<'_>>,
) -> redis::RedisResult<Vec<redis::RedisResult<T>>> {
    use futures::StreamExt as _;
    let shared = redis.clone();
    let answers = futures::stream::iter(invocations)
        .map(|invocation| {
            let mut connection = shared.clone();
            async move { invocation.invoke_async::<T>(&mut connection).await }
        })
        .buffered(CLUSTER_IN_FLIGHT)
        .collect()
        .await;
    connection_failure_first(answers)
}

/// A connection failure among `answers` fails them all, as one pipeline
/// on one server would: the caller retries the whole, each step being
/// idempotent. Errors of a command itself stay with its answer.
fn connection_failure_first<T>(
    answers: Vec<redis::RedisResult<T>>,
) -> redis::RedisResult<Vec<redis::RedisResult<T>>> {
    if let Some(e) = answers.iter().find_map(|a| {
        a.as_ref()
            .err()
            .filter(|e| crate::failure::classify_redis(e) != crate::failure::Class::Permanent)
    }) {
        return Err(e.clone());
    }
    Ok(answers)
}

/// Commands in flight at once on a cluster connection, in [`query_each`].
const CLUSTER_IN_FLIGHT: usize = 128;

/// Hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The hash slot of `key`, as Redis Cluster computes it: CRC16 (XMODEM) of
/// the key's hash tag (the text between its first `{` and the next `}`, if
/// not empty) or else of the whole key, modulo [`SLOTS`].
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % SLOTS
}

/// A key of payctl's own in the same hash slot as `key`, named after it:
/// `{KEY}:SUFFIX`, or, when `key` holds a brace of its own (ids from a
/// topic may), `{TAG}KEY:SUFFIX` with the tag of `key`'s slot: braces in
/// an id must not split a transfer's keys over two slots.
pub fn beside(key: &str, suffix: &str) -> String {
    if key.contains(['{', '}']) {
        format!("{}{key}:{suffix}", slot_tag(slot(key.as_bytes())))
    } else {
        format!("{{{key}}}:{suffix}")
    }
}

/// A hash tag (`{…}`, braces included) that puts a key in `slot`: how
/// payctl keeps its own per-slot records (for example which offsets a
/// worker has applied) beside keys whose names it must not change.
pub fn slot_tag(wanted: u16) -> &'static str {
    static TAGS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        let mut tags = vec![String::new(); usize::from(SLOTS)];
        let mut missing = tags.len();
        // About 170,000 CRCs cover every slot (the coupon collector's n ln n).
        for n in 0u64.. {
            let text = n.to_string();
            let found = &mut tags[usize::from(slot(text.as_bytes()))];
            if found.is_empty() {
                *found = format!("{{{text}}}");
                missing -= 1;
                if missing == 0 {
                    break;
                }
            }
        }
        tags
    });
    &TAGS[usize::from(wanted % SLOTS)]
}

/// The URL scheme of a Redis Cluster: `redis+cluster://[user:password@]host:port,host:port`.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// The same over TLS: `rediss+cluster://…`, every node reached with TLS.
pub const CLUSTER_TLS_SCHEME: &str = "rediss+cluster://";

/// The seed nodes of a `redis+cluster://` URL, each as a `redis://` URL
/// with the same user information; `None` for another scheme. Any of them
/// is enough to find the rest of the cluster.
pub fn cluster_nodes(url: &str) -> anyhow::Result<Option<Vec<String>>> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
        ("redis", rest)
    } else if let Some(rest) = url.strip_prefix(CLUSTER_TLS_SCHEME) {
        ("rediss", rest)
    } else {
        return Ok(None);
    };
    if rest.contains("#insecure") {
        anyhow::bail!(
            "#insecure would skip checking the Redis servers' certificates, which payctl \
             refuses; trust the CA that signed them with --redis-ca-file"
        );
    }
    if rest.contains('#') {
        // A fragment would ride on one node's URL, with whatever it means there.
        anyhow::bail!("a Redis Cluster URL takes no #fragment");
    }
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !(path.is_empty() || path == "0") {
        anyhow::bail!("a Redis Cluster has only database 0, not /{path}");
    }
    let nodes: Vec<String> = hosts
        .split(',')
        .map(|node| format!("{scheme}://{userinfo}{}", node.trim()))
        .collect();
    for node in &nodes {
        let parsed = url::Url::parse(node)
            .map_err(|e| anyhow::anyhow!("{:?} is not host:port: {e}", node.rsplit('@').next()))?;
        if parsed.host_str().is_none_or(str::is_empty) || parsed.port().is_none() {
            anyhow::bail!(
                "{:?} is not host:port (a cluster URL lists its nodes: {CLUSTER_SCHEME}host:port,host:port)",
                parsed.host_str().unwrap_or_default()
            );
        }
    }
    Ok(Some(nodes))
}

/// How long connecting (TCP, TLS, AUTH, SELECT) may take in all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl RedisConfig {
    /// Connects, failing fast with the URL (password hidden) if Redis is
    /// down, refuses the credentials, or cannot be trusted.
    pub async fn connect(&self) -> anyhow::Result<Redis> {
        if let Some(nodes) = cluster_nodes(&self.url)? {
            return self.connect_cluster(nodes).await;
        }
        let client = self.client()?;
        let tls = is_tls(client.get_connection_info().addr());
        let authenticates = client
            .get_connection_info()
            .redis_settings()
            .password()
            .is_some();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(1);
        let connected = tokio::time::timeout(
            CONNECT_TIMEOUT,
            ConnectionManager::new_with_config(client, config),
        )
        .await;
        let mut redis = match connected {
            Ok(Ok(redis)) => Redis::Single(redis),
            Ok(Err(e)) => return Err(self.connect_error(e, tls)),
            Err(_) => {
                // A plaintext server reads a TLS hello as the start of a
                // command line and waits for the rest of it.
                let hint = if tls {
                    " (if the port does not speak TLS, use redis://)"
                } else {
                    ""
                };
                anyhow::bail!(
                    "connecting to Redis at {}: timed out after {}s{hint}",
                    self.display_url(),
                    CONNECT_TIMEOUT.as_secs()
                )
            }
        };
        if !authenticates {
            // Without a password nothing was sent yet: a server that wants
            // one says NOAUTH here, in the words of a connection error,
            // rather than at the command's first read.
            let ping = redis::cmd("PING");
            match tokio::time::timeout(CONNECT_TIMEOUT, ping.query_async::<()>(&mut redis)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(self.connect_error(e, tls)),
                Err(_) => anyhow::bail!(
                    "connecting to Redis at {}: PING timed out after {}s",
                    self.display_url(),
                    CONNECT_TIMEOUT.as_secs()
                ),
            }
        }
        Ok(redis)
    }

    /// Connects to the Redis Cluster that `nodes` belong to, and checks
    /// that it serves every slot.
    async fn connect_cluster(&self, nodes: Vec<String>) -> anyhow::Result<Redis> {
        let tls = nodes.iter().any(|node| node.starts_with("rediss://"));
        if !tls {
            if let Some(flag) = self.tls.flag_given() {
                anyhow::bail!(
                    "{flag} is for TLS, but {} is not a TLS URL: use {CLUSTER_TLS_SCHEME} to connect with TLS",
                    self.display_url()
                );
            }
        }
        let mut infos = Vec::with_capacity(nodes.len());
        for node in &nodes {
            let info = node
                .as_str()
                .into_connection_info()
                .with_context(|| format!("reading the Redis URL {}", self.display_url()))?;
            let settings = self.credentials(info.redis_settings().clone())?;
            infos.push(info.set_redis_settings(settings));
        }
        let mut builder = redis::cluster::ClusterClient::builder(infos)
            .connection_timeout(Duration::from_secs(3))
            .response_timeout(Duration::from_secs(10))
            .retries(3);
        if tls {
            // The one crypto provider this build has; a second install is a no-op.
            let _ = rustls::crypto::ring::default_provider().install_default();
            builder = builder.certs(self.tls.certificates()?);
        }
        let client = builder
            .build()
            .with_context(|| format!("reading the Redis URL {}", self.display_url()))?;
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_connection()).await;
        let mut redis = match connected {
            Ok(Ok(connection)) => Redis::Cluster(Arc::new(ClusterHandle {
                client,
                connection: std::sync::Mutex::new((connection, 0)),
                rebuilding: tokio::sync::Mutex::new(()),
            })),
            Ok(Err(e)) => return Err(self.connect_error(e, tls)),
            Err(_) => anyhow::bail!(
                "connecting to the Redis Cluster at {}: timed out after {}s",
                self.display_url(),
                CONNECT_TIMEOUT.as_secs()
            ),
        };
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut redis)
            .await
            .map_err(|e| self.connect_error(e, tls))?;
        if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
            anyhow::bail!(
                "the Redis Cluster at {} is not serving every slot (CLUSTER INFO says {})",
                self.display_url(),
                info.lines()
                    .find(|l| l.starts_with("cluster_state"))
                    .unwrap_or("no cluster_state")
                    .trim()
            );
        }
        Ok(redis)
    }

    /// The client this config describes, without contacting Redis: the URL
    /// parsed, the password taken from exactly one place, and for
    /// `rediss://` the trusted roots and any client certificate read.
    pub fn client(&self) -> anyhow::Result<redis::Client> {
        let url = self.display_url();
        let info = self
            .url
            .as_str()
            .into_connection_info()
            .with_context(|| format!("reading the Redis URL {url}"))?;
        if let ConnectionAddr::TcpTls { insecure: true, .. } = info.addr() {
            // The redis crate would accept any certificate: anyone on the
            // path could read the payment pipeline's data and its password.
            anyhow::bail!(
                "{url}: #insecure would skip checking the Redis server's certificate, \
                 which payctl refuses; trust the CA that signed it with --redis-ca-file"
            );
        }
        let settings = self.credentials(info.redis_settings().clone())?;
        let info = info.set_redis_settings(settings);
        if !is_tls(info.addr()) {
            if let Some(flag) = self.tls.flag_given() {
                anyhow::bail!(
                    "{flag} is for TLS, but {url} is not a TLS URL: use rediss:// to connect with TLS"
                );
            }
            return redis::Client::open(info)
                .with_context(|| format!("reading the Redis URL {url}"));
        }
        // The one crypto provider this build has; a second install is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certificates = self.tls.certificates()?;
        redis::Client::build_with_tls(info, certificates)
            .with_context(|| format!("setting up TLS for Redis at {url}"))
    }

    /// The URL's settings with the user and password payctl was given.
    /// A password given in two places is refused rather than one silently
    /// winning: an operator who sets REDIS_PASSWORD expects it to be used.
    fn credentials(
        &self,
        mut settings: RedisConnectionInfo,
    ) -> anyhow::Result<RedisConnectionInfo> {
        let username = self.username.as_deref().filter(|u| !u.is_empty());
        match (settings.username(), username) {
            (Some(in_url), Some(given)) if in_url != given => anyhow::bail!(
                "the Redis user is given twice, {in_url:?} in the URL and {given:?} in \
                 --redis-username (REDIS_USERNAME): give one"
            ),
            (None, Some(given)) => settings = settings.set_username(given),
            _ => {}
        }
        let in_url = settings.password().is_some();
        let password = match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => anyhow::bail!(
                "the Redis password is given twice, in {} and --redis-password-file \
                 (REDIS_PASSWORD_FILE): give one",
                RedisPassword::ENV
            ),
            (Some(_), None) if in_url => anyhow::bail!(
                "the Redis password is given twice, in the URL and in {}: give one",
                RedisPassword::ENV
            ),
            (None, Some(_)) if in_url => anyhow::bail!(
                "the Redis password is given twice, in the URL and in --redis-password-file \
                 (REDIS_PASSWORD_FILE): give one"
            ),
            (Some(password), None) => Some(password.clone()),
            (None, Some(path)) => Some(read_password_file(path)?),
            (None, None) => None,
        };
        if let Some(password) = password {
            settings = settings.set_password(password.0);
        }
        if let (Some(user), None) = (settings.username(), settings.password()) {
            // The redis crate would send no AUTH at all and run as `default`.
            anyhow::bail!(
                "Redis user {user:?} has no password: set {} or --redis-password-file, \
                 or put it in the URL",
                RedisPassword::ENV
            );
        }
        Ok(settings)
    }

    /// A connection failure in one line that says what to check, with the
    /// Redis error kept in the chain for [`crate::failure::classify`].
    fn connect_error(&self, e: redis::RedisError, tls: bool) -> anyhow::Error {
        let url = self.display_url();
        let text = e.to_string();
        // The redis crate words these its own way ("Password authentication
        // failed - AuthenticationFailed"); say what the server meant.
        let refused = if e.kind() == redis::ErrorKind::AuthenticationFailed {
            Some(
                "the server refused this user and password (a wrong password, an unknown or \
                 disabled user, or a server without passwords)"
                    .to_string(),
            )
        } else if text.contains("Authentication required") {
            Some(format!(
                "NOAUTH the server wants a password: set {}, --redis-password-file or put it in the URL",
                RedisPassword::ENV
            ))
        } else if let Some(code @ ("WRONGPASS" | "NOPERM")) = e.code() {
            Some(format!("{code} {}", e.detail().unwrap_or_default()))
        } else {
            None
        };
        if let Some(refused) = refused {
            return anyhow::anyhow!("Redis authentication failed at {url}: {refused}");
        }
        let hint = if tls && text.contains("CertificateRequired") {
            Some("the server asks for a client certificate: give --redis-cert-file and --redis-key-file")
        } else if tls && text.contains("invalid peer certificate") {
            Some("the server's certificate is not trusted (is --redis-ca-file the CA that signed it?)")
        } else if tls && (text.contains("corrupt message") || text.contains("InvalidContentType")) {
            Some("the server does not speak TLS (for a plaintext port, use redis://)")
        } else if !tls && !e.is_connection_refusal() && e.is_connection_dropped() {
            Some("the server closed the connection (if it only speaks TLS, use rediss://)")
        } else {
            None
        };
        let e = anyhow::Error::new(e);
        let e = match hint {
            Some(hint) => e.context(hint),
            None => e,
        };
        e.context(format!("connecting to Redis at {url}"))
    }
}

impl RedisTls {
    /// The first TLS flag given, for a message when the URL is not TLS.
    fn flag_given(&self) -> Option<&'static str> {
        [
            (&self.ca_file, "--redis-ca-file (REDIS_CA_FILE)"),
            (&self.cert_file, "--redis-cert-file (REDIS_CERT_FILE)"),
            (&self.key_file, "--redis-key-file (REDIS_KEY_FILE)"),
        ]
        .into_iter()
        .find_map(|(path, flag)| path.as_ref().map(|_| flag))
    }

    /// The PEM files, read and checked so a wrong file is named now, not
    /// found out as a failed handshake.
    fn certificates(&self) -> anyhow::Result<TlsCertificates> {
        let root_cert = match &self.ca_file {
            Some(path) => Some(read_certificates(path, "--redis-ca-file")?),
            None => None,
        };
        let client_tls = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let client_cert = read_certificates(cert, "--redis-cert-file")?;
                let client_key = std::fs::read(key)
                    .with_context(|| format!("reading --redis-key-file {}", key.display()))?;
                let parsed = PrivateKeyDer::from_pem_slice(&client_key).map_err(|e| {
                    anyhow::anyhow!(
                        "--redis-key-file {} holds no PEM private key: {e}",
                        key.display()
                    )
                })?;
                // rustls refuses some pairs (a v1 certificate, a key of
                // another certificate) only when the connection is set up.
                let chain = CertificateDer::pem_slice_iter(&client_cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| anyhow::anyhow!("--redis-cert-file {}: {e}", cert.display()))?;
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_client_auth_cert(chain, parsed)
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "--redis-cert-file {} with --redis-key-file {} is not a usable \
                             client certificate: {e}",
                            cert.display(),
                            key.display()
                        )
                    })?;
                Some(ClientTlsConfig {
                    client_cert,
                    client_key,
                })
            }
            (None, None) => None,
            _ => anyhow::bail!("--redis-cert-file and --redis-key-file go together: give both"),
        };
        Ok(TlsCertificates {
            client_tls,
            root_cert,
        })
    }
}

/// True for a `rediss://` address.
fn is_tls(addr: &ConnectionAddr) -> bool {
    matches!(addr, ConnectionAddr::TcpTls { .. })
}

/// A PEM file's bytes, once it is known to hold at least one certificate.
fn read_certificates(path: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {flag} {}", path.display()))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))?;
    if certificates.is_empty() {
        anyhow::bail!("{flag} {} holds no PEM certificate", path.display());
    }
    Ok(pem)
}

/// The password in a file: its one line, without the newline an editor or
/// `echo` adds. The content never appears in a message.
fn read_password_file(path: &Path) -> anyhow::Result<RedisPassword> {
    let context = || format!("reading --redis-password-file {}", path.display());
    let text = std::fs::read_to_string(path).with_context(context)?;
    let line = text.strip_suffix('\n').unwrap_or(&text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.is_empty() {
        anyhow::bail!("--redis-password-file {} is empty", path.display());
    }
    if line.contains(['\n', '\r']) {
        anyhow::bail!(
            "--redis-password-file {} holds more than one line; it must hold only the password",
            path.display()
        );
    }
    crate::config::register_secret(line);
    Ok(RedisPassword(line.to_string()))
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
    ///
    /// On a Redis Cluster it does nothing: there every call is an
    /// [`Script::invocation`], which loads the script on the master that
    /// runs it when that master does not know it. A `SCRIPT LOAD` sent to
    /// every master waited forever on the connection to a master killed and
    /// restarted (seen in the fault suite's `cluster_master_kill`).
    pub async fn load(&self, redis: &mut Redis) -> anyhow::Result<()> {
        if redis.is_cluster() {
            return Ok(());
        }
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn config(url: &str) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            ..RedisConfig::default()
        }
    }

    fn temp_file(name: &str, content: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("payctl-store-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    fn settings(config: &RedisConfig) -> RedisConnectionInfo {
        config
            .client()
            .unwrap()
            .get_connection_info()
            .redis_settings()
            .clone()
    }

    fn refusal(config: &RedisConfig) -> String {
        format!("{:#}", config.client().unwrap_err())
    }

    #[test]
    fn slots_are_the_clusters_and_every_slot_has_a_tag() {
        // Figures from Redis's cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}".as_slice()));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        for key in [
            "account:alice",
            "account:a{b}c",
            "transfer:{}",
            "account:}{",
            "x{",
        ] {
            let beside = beside(key, "debits");
            assert_eq!(slot(beside.as_bytes()), slot(key.as_bytes()), "{beside}");
            assert!(beside.contains(key));
        }
        assert_eq!(beside("account:alice", "debits"), "{account:alice}:debits");
        for s in [0, 1, 5461, 12182, SLOTS - 1] {
            let tag = slot_tag(s);
            assert_eq!(slot(format!("notify:applied:{tag}").as_bytes()), s, "{tag}");
        }
    }

    #[test]
    fn the_password_comes_from_one_place() {
        let from_url = config("redis://payctl:in-url@host:6379/0");
        assert_eq!(settings(&from_url).username(), Some("payctl"));
        assert_eq!(settings(&from_url).password(), Some("in-url"));

        let from_env = RedisConfig {
            username: Some("payctl".into()),
            password: Some(RedisPassword("from-env".into())),
            ..config("redis://host:6379/0")
        };
        assert_eq!(settings(&from_env).username(), Some("payctl"));
        assert_eq!(settings(&from_env).password(), Some("from-env"));

        let twice = RedisConfig {
            password: Some(RedisPassword("from-env".into())),
            ..from_url.clone()
        };
        let message = refusal(&twice);
        assert!(message.contains("given twice"), "{message}");
        assert!(!message.contains("in-url") && !message.contains("from-env"));

        let file = temp_file("password", "from-file\n");
        let env_and_file = RedisConfig {
            password_file: Some(file.clone()),
            ..from_env.clone()
        };
        assert!(refusal(&env_and_file).contains("given twice"));
        let url_and_file = RedisConfig {
            password_file: Some(file),
            ..from_url
        };
        assert!(refusal(&url_and_file).contains("given twice"));
    }

    #[test]
    fn a_password_file_holds_one_line() {
        for (content, want) in [
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("s3 cret", "s3 cret"),
        ] {
            let from_file = RedisConfig {
                password_file: Some(temp_file("password", content)),
                ..config("redis://payctl@host:6379/0")
            };
            assert_eq!(settings(&from_file).password(), Some(want));
        }
        for (content, why) in [("\n", "is empty"), ("one\ntwo\n", "more than one line")] {
            let bad = RedisConfig {
                password_file: Some(temp_file("password", content)),
                ..config("redis://host:6379/0")
            };
            let message = refusal(&bad);
            assert!(message.contains(why), "{message}");
            assert!(
                !message.contains("two"),
                "the file's content shows: {message}"
            );
        }
        let missing = RedisConfig {
            password_file: Some("/nonexistent/payctl-password".into()),
            ..config("redis://host:6379/0")
        };
        assert!(refusal(&missing).starts_with("reading --redis-password-file"));
    }

    #[test]
    fn a_user_without_a_password_is_refused() {
        let message = refusal(&RedisConfig {
            username: Some("payctl".into()),
            ..config("redis://host:6379/0")
        });
        assert!(message.contains("has no password"), "{message}");
        let message = refusal(&RedisConfig {
            username: Some("other".into()),
            ..config("redis://payctl:pw@host:6379/0")
        });
        assert!(message.contains("user is given twice"), "{message}");
    }

    #[test]
    fn tls_is_verified_or_refused() {
        let message = refusal(&config("rediss://host:6380/0#insecure"));
        assert!(
            message.contains("#insecure") && message.contains("refuses"),
            "{message}"
        );

        let plain_with_ca = RedisConfig {
            tls: RedisTls {
                ca_file: Some("/etc/hostname".into()),
                ..RedisTls::default()
            },
            ..config("redis://host:6379/0")
        };
        assert!(refusal(&plain_with_ca).contains("use rediss://"));

        let not_pem = RedisConfig {
            tls: RedisTls {
                ca_file: Some(temp_file("ca.pem", "not a certificate\n")),
                ..RedisTls::default()
            },
            ..config("rediss://host:6380/0")
        };
        assert!(refusal(&not_pem).contains("holds no PEM certificate"));

        let half = RedisConfig {
            tls: RedisTls {
                key_file: Some("/etc/hostname".into()),
                ..RedisTls::default()
            },
            ..config("rediss://host:6380/0")
        };
        assert!(refusal(&half).contains("go together"));

        // System roots by default.
        let system = config("rediss://host:6380/0").client().unwrap();
        assert!(is_tls(system.get_connection_info().addr()));
    }

    #[test]
    fn a_password_never_shows_in_debug() {
        let with = RedisConfig {
            password: Some(RedisPassword("hunter2".into())),
            ..config("redis://host:6379/0")
        };
        assert!(!format!("{with:?}").contains("hunter2"));
    }
}
