//! The one helper integration tests drive the real binary through, against
//! the real broker and Redis that `scripts/stack.sh up` starts.
//!
//! Addresses come from `KAFKA_BOOTSTRAP_SERVERS` and `REDIS_URL` (defaults:
//! the local stack). Every test makes its own topics, group and account ids,
//! so tests never see each other's data.
#![allow(dead_code)]

pub mod processor;
pub mod tls;

use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

pub fn brokers() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/15".into())
}

/// Fails the test loudly when the stack is not up: no test passes without it.
fn require_stack() {
    for addr in [brokers(), redis_addr()] {
        let first = addr
            .split(',')
            .next()
            .unwrap()
            .replace("localhost", "127.0.0.1");
        let sock = first
            .parse()
            .unwrap_or_else(|e| panic!("bad address {first}: {e}"));
        TcpStream::connect_timeout(&sock, Duration::from_secs(2)).unwrap_or_else(|e| {
            panic!("{first} is not reachable ({e}); start the stack: scripts/stack.sh up")
        });
    }
}

fn redis_addr() -> String {
    let url = redis_url();
    let rest = url.split("://").nth(1).unwrap();
    let hostport = rest.rsplit('@').next().unwrap().split('/').next().unwrap();
    hostport.to_string()
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// An empty config directory for this test process, given to every payctl
/// run as `XDG_CONFIG_HOME`, so the profiles of whoever runs the tests never
/// reach them (a test that is about profiles passes its own).
pub fn config_home() -> std::path::PathBuf {
    static HOME: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    HOME.get_or_init(|| {
        let dir = std::env::temp_dir().join(unique("payctl-config"));
        std::fs::create_dir_all(&dir).expect("test config dir");
        dir
    })
    .clone()
}

/// What a run of `payctl` did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Parses stdout as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts the exit code, showing everything the run printed if it differs.
    pub fn expect(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "payctl exited {} (wanted {code})\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// One test's private pipeline: its own topics and consumer group.
pub struct Pipeline {
    pub transfers: String,
    pub transactions: String,
    pub rate_changes: String,
    pub conversions: String,
    pub payments: String,
    pub group: String,
}

impl Pipeline {
    /// Makes fresh topics (and their DLQs) on the real broker.
    pub fn new() -> Pipeline {
        require_stack();
        let pipeline = Pipeline {
            transfers: unique("transfers"),
            transactions: unique("transactions"),
            rate_changes: unique("rates"),
            conversions: unique("conversions"),
            payments: unique("payments"),
            group: unique("group"),
        };
        let mut args = vec![
            "topics".to_string(),
            "create".into(),
            "--partitions".into(),
            "3".into(),
        ];
        for topic in [
            &pipeline.transfers,
            &pipeline.transactions,
            &pipeline.rate_changes,
            &pipeline.conversions,
            &pipeline.payments,
        ] {
            args.push(topic.clone());
            args.push(format!("{topic}.dlq"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        pipeline.payctl(&args).expect(0);
        pipeline
    }

    /// Runs `payctl` against the stack with this pipeline's topics.
    pub fn payctl(&self, args: &[&str]) -> Run {
        self.payctl_env(args, &[])
    }

    /// Like [`Pipeline::payctl`], with extra environment.
    pub fn payctl_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let Output {
            status,
            stdout,
            stderr,
        } = self.command(args, env).output().expect("running payctl");
        Run {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    /// Starts `payctl` in the background (a worker), stdout and stderr piped.
    pub fn spawn(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
        self.command(args, env)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting payctl")
    }

    /// Starts `payctl` with a pipe to its stdin.
    pub fn spawn_with_stdin(&self, args: &[&str]) -> std::process::Child {
        self.command(args, &[])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting payctl")
    }

    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_payctl"));
        command
            .args(args)
            .env("KAFKA_BOOTSTRAP_SERVERS", brokers())
            .env("REDIS_URL", redis_url())
            .env(
                "PAYCTL_KAFKA_OPTIONS",
                "session.timeout.ms=1000 heartbeat.interval.ms=250",
            )
            .env("PAYCTL_TOPIC_TRANSFERS", &self.transfers)
            .env("PAYCTL_TOPIC_TRANSACTIONS", &self.transactions)
            .env("PAYCTL_TOPIC_RATE_CHANGES", &self.rate_changes)
            .env("PAYCTL_TOPIC_CONVERSIONS", &self.conversions)
            .env("PAYCTL_TOPIC_PAYMENTS", &self.payments)
            .env("PAYCTL_PAYMENTS_GROUP", &self.group)
            .env("PAYCTL_TRANSFER_GROUP", &self.group)
            .env("PAYCTL_NOTIFY_GROUP", &self.group)
            .env("PAYCTL_RATES_GROUP", &self.group)
            .env("XDG_CONFIG_HOME", config_home())
            .env_remove("PAYCTL_PROFILE")
            .env_remove("PAYCTL_OUTPUT")
            .env_remove("RUST_LOG");
        // Redis credentials and TLS settings of the shell that runs the
        // tests are not the stack's; a test that wants them passes `env`.
        for secured in [
            "REDIS_USERNAME",
            "REDIS_PASSWORD",
            "REDIS_PASSWORD_FILE",
            "REDIS_CA_FILE",
            "REDIS_CERT_FILE",
            "REDIS_KEY_FILE",
        ] {
            command.env_remove(secured);
        }
        for (k, v) in env {
            command.env(k, v);
        }
        command
    }

    /// Runs the transfer worker until it has been idle for 2 s; returns its summary.
    pub fn process(&self, extra: &[&str]) -> serde_json::Value {
        let mut args = vec![
            "transfer",
            "process",
            "--until-idle",
            "2",
            "--output",
            "json",
        ];
        args.extend_from_slice(extra);
        self.payctl(&args).expect(0).json()
    }
}

/// Opens a USD account named `prefix-<unique>` with `balance` through
/// `payctl` (as `run` runs it), and returns its id.
pub fn open_account_with(run: impl Fn(&[&str]) -> Run, prefix: &str, balance: &str) -> String {
    let id = unique(prefix);
    run(&[
        "accounts",
        "open",
        &id,
        "--currency",
        "USD",
        "--balance",
        balance,
    ])
    .expect(0);
    id
}

/// Opens a USD account on the shared stack; see [`open_account_with`].
pub fn open_account(p: &Pipeline, prefix: &str, balance: &str) -> String {
    open_account_with(|args| p.payctl(args), prefix, balance)
}

/// Waits for a spawned payctl and collects what it printed.
pub fn finish(child: std::process::Child) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("waiting for payctl");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Sends a signal (TERM, INT) to a child.
pub fn signal(child: &std::process::Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Every record on a topic, as (key, value), read from the beginning until
/// nothing more arrives for a second and a half.
///
/// Idle time, not the high watermark, says when to stop: Tansu's ListOffsets
/// answers the base offset of the last batch + 1, which undercounts when a
/// batch holds several records.
pub fn read_topic(topic: &str) -> Vec<(Option<String>, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("test consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_millis(1500) {
        assert!(Instant::now() < deadline, "{topic} never went quiet");
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("reading test topic");
            records.push((
                message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
            ));
            last = Instant::now();
        }
    }
    records
}

/// Produces raw values to a topic, as another client would.
pub fn produce_raw(topic: &str, key: &str, values: &[&str]) {
    produce_with_headers(topic, key, &[], values);
}

/// Like [`produce_raw`], each record with `headers`.
pub fn produce_with_headers(topic: &str, key: &str, headers: &[(&str, &str)], values: &[&str]) {
    use rdkafka::message::{Header, OwnedHeaders};
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("test producer");
    for value in values {
        let mut record = BaseRecord::to(topic).key(key).payload(*value);
        if !headers.is_empty() {
            let owned = headers.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
                h.insert(Header {
                    key,
                    value: Some(*value),
                })
            });
            record = record.headers(owned);
        }
        producer.send(record).map_err(|(e, _)| e).expect("enqueue");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
}

/// A direct Redis connection, to look at state as another client would:
/// to the single Redis, or, when `REDIS_URL` is a `redis+cluster://` URL
/// (`PAYCTL_TEST_REDIS=cluster` in scripts/test.sh), to the cluster.
pub fn redis() -> TestRedis {
    let url = redis_url();
    match url.strip_prefix("redis+cluster://") {
        Some(nodes) => TestRedis::Cluster(Box::new(
            redis::cluster::ClusterClient::new(
                nodes
                    .split(',')
                    .map(|node| format!("redis://{node}"))
                    .collect::<Vec<_>>(),
            )
            .expect("cluster url")
            .get_connection()
            .expect("connecting to the Redis Cluster"),
        )),
        None => TestRedis::Single(
            redis::Client::open(url)
                .expect("redis url")
                .get_connection()
                .expect("connecting to Redis"),
        ),
    }
}

/// Runs `cmd` on the Redis server, or on every master of the cluster
/// (an ACL user, say, which each server keeps on its own).
pub fn on_every_server(cmd: &redis::Cmd) {
    let url = redis_url();
    let servers: Vec<String> = match url.strip_prefix("redis+cluster://") {
        Some(nodes) => nodes.split(',').map(|n| format!("redis://{n}")).collect(),
        None => vec![url],
    };
    for server in servers {
        let mut con = redis::Client::open(server.as_str())
            .and_then(|c| c.get_connection())
            .unwrap_or_else(|e| panic!("{server}: {e}"));
        let _: redis::Value = cmd
            .query(&mut con)
            .unwrap_or_else(|e| panic!("{server}: {e}"));
    }
}

/// The tests' Redis URL with a user and password.
pub fn redis_url_as(user: &str, password: &str) -> String {
    let url = redis_url();
    let (scheme, rest) = url.split_once("://").expect("a URL");
    format!("{scheme}://{user}:{password}@{rest}")
}

/// Whether the tests run against a Redis Cluster.
pub fn on_cluster() -> bool {
    redis_url().starts_with("redis+cluster://")
}

/// [`redis`]'s connection: commands route by key on a cluster.
pub enum TestRedis {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl redis::ConnectionLike for TestRedis {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<redis::Value> {
        match self {
            TestRedis::Single(c) => c.req_packed_command(cmd),
            TestRedis::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        match self {
            TestRedis::Single(c) => c.req_packed_commands(cmd, offset, count),
            TestRedis::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn req_command(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        match self {
            TestRedis::Single(c) => c.req_command(cmd),
            TestRedis::Cluster(c) => c.req_command(cmd),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            TestRedis::Single(c) => c.get_db(),
            TestRedis::Cluster(c) => c.get_db(),
        }
    }

    fn supports_pipelining(&self) -> bool {
        match self {
            TestRedis::Single(c) => c.supports_pipelining(),
            TestRedis::Cluster(c) => c.supports_pipelining(),
        }
    }

    fn check_connection(&mut self) -> bool {
        match self {
            TestRedis::Single(c) => c.check_connection(),
            TestRedis::Cluster(c) => c.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            TestRedis::Single(c) => c.is_open(),
            TestRedis::Cluster(c) => c.is_open(),
        }
    }
}

/// A private redis-server on a free loopback port, for tests that stop and
/// restart Redis. Its data is saved in `dir` across restarts.
pub struct PrivateRedis {
    pub port: u16,
    pub dir: std::path::PathBuf,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(unique("redis"));
        std::fs::create_dir_all(&dir).unwrap();
        let redis = PrivateRedis { port, dir };
        redis.resume();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts (again) from the saved data.
    pub fn resume(&self) {
        let status = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--daemonize",
                "yes",
            ])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir.to_str().unwrap(),
            ])
            .status()
            .expect("redis-server (scripts/stack.sh up installs it)");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "private redis did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Saves and stops.
    pub fn stop(&self) {
        let mut con = redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let _: Result<(), _> = redis::cmd("SHUTDOWN").arg("SAVE").query(&mut con);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "private redis did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            self.stop();
        }
    }
}
