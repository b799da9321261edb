//! A private local stack for one scenario, and the payctl processes that run
//! against it.
//!
//! Every scenario starts its own redis-server and Tansu on free loopback
//! ports with `scripts/stack.sh up` (state, logs and the pids in a fresh
//! directory), so it can stop the broker, kill Redis and read whole topics
//! without touching the shared stack other tests use. Dropping the
//! [`Stack`] stops both; when the scenario failed, the directory (worker
//! logs included) is kept and its path printed.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Options that make Tansu's group joins fast (it answers a JoinGroup after
/// about half the session timeout).
const KAFKA_OPTIONS: &str = "session.timeout.ms=1000 heartbeat.interval.ms=250";

/// The pipeline topics `scripts/stack.sh up` creates, with their env names.
const TOPIC_ENV: [(&str, &str); 5] = [
    ("PAYCTL_TOPIC_TRANSFERS", "money_transfers"),
    ("PAYCTL_TOPIC_TRANSACTIONS", "payment_transactions"),
    ("PAYCTL_TOPIC_RATE_CHANGES", "rate_changes"),
    ("PAYCTL_TOPIC_PAYMENTS", "payments"),
    ("PAYCTL_TOPIC_CONVERSIONS", "conversion_requests"),
];

/// Env that would point payctl elsewhere if it leaked from the caller.
const CLEARED_ENV: [&str; 7] = [
    "PAYCTL_OUTPUT",
    "PAYCTL_TRANSFER_GROUP",
    "PAYCTL_NOTIFY_GROUP",
    "PAYCTL_RATES_GROUP",
    "PAYCTL_PAYMENTS_GROUP",
    "PAYCTL_PROCESSOR_URL",
    "RUST_LOG",
];

/// One scenario's redis-server and Tansu.
pub struct Stack {
    pub name: String,
    pub dir: PathBuf,
    pub redis_port: u16,
    pub kafka_port: u16,
    /// The first of the Redis Cluster's three ports, for a cluster stack.
    pub cluster_port: Option<u16>,
    /// Every payctl run's stderr that mentions a panic: `label: line`.
    panics: Mutex<Vec<String>>,
    /// Numbers the log files of spawned workers.
    spawned: Mutex<usize>,
}

/// Which Redis the scenarios run on: `PAYCTL_FAULTS_REDIS` says, `single`
/// (the default) or `cluster` (a 3-master Redis Cluster, the
/// `redis+cluster://` URL given to payctl as `REDIS_URL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisKind {
    Single,
    Cluster,
}

impl RedisKind {
    pub fn from_env() -> RedisKind {
        match std::env::var("PAYCTL_FAULTS_REDIS").as_deref() {
            Err(_) | Ok("") | Ok("single") => RedisKind::Single,
            Ok("cluster") => RedisKind::Cluster,
            Ok(other) => panic!("PAYCTL_FAULTS_REDIS must be single or cluster, not {other:?}"),
        }
    }
}

impl Stack {
    /// Starts a fresh stack (`scripts/stack.sh up`) on free ports, with the
    /// Redis `PAYCTL_FAULTS_REDIS` picks.
    pub fn up(name: &str) -> Stack {
        Stack::start(name, RedisKind::from_env())
    }

    /// Like [`Stack::up`], always with a 3-master Redis Cluster instead of
    /// the single Redis (`scripts/stack.sh up --redis-cluster`).
    pub fn up_cluster(name: &str) -> Stack {
        Stack::start(name, RedisKind::Cluster)
    }

    fn start(name: &str, kind: RedisKind) -> Stack {
        let dir = std::env::temp_dir().join("payctl-faults").join(format!(
            "{name}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).expect("creating the stack directory");
        let stack = Stack {
            name: name.to_string(),
            dir,
            redis_port: free_port(),
            kafka_port: free_port(),
            cluster_port: (kind == RedisKind::Cluster).then(free_cluster_ports),
            panics: Mutex::new(Vec::new()),
            spawned: Mutex::new(0),
        };
        stack.script("up");
        stack
    }

    /// Which Redis this stack runs, for the scenario's line of figures.
    pub fn redis_kind(&self) -> &'static str {
        match self.cluster_port {
            Some(_) => "Redis Cluster of 3 masters",
            None => "single Redis",
        }
    }

    /// The cluster's master ports.
    pub fn cluster_ports(&self) -> Vec<u16> {
        let base = self.cluster_port.expect("a cluster stack");
        vec![base, base + 1, base + 2]
    }

    /// `kill -9` the cluster master on `port`, and waits until it is gone.
    pub fn kill_master(&self, port: u16) {
        let file = self.dir.join(format!("cluster/{port}/redis.pid"));
        let pid: u32 = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()))
            .trim()
            .parse()
            .expect("a pid");
        send_signal(pid, "KILL");
        wait_closed(port);
    }

    fn script(&self, verb: &str) {
        let mut command = Command::new(stack_script());
        command.arg(verb);
        if let Some(port) = self.cluster_port {
            command
                .arg("--redis-cluster")
                .env("REDIS_CLUSTER_PORT", port.to_string());
        }
        let output = command
            .env("REDIS_PORT", self.redis_port.to_string())
            .env("KAFKA_PORT", self.kafka_port.to_string())
            .env("PAYCTL_STACK_DIR", &self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("running scripts/stack.sh");
        assert!(
            output.status.success(),
            "scripts/stack.sh {verb} failed for {} ({}):\n{}",
            self.name,
            self.dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    pub fn redis_url(&self) -> String {
        match self.cluster_port {
            Some(_) => {
                let nodes: Vec<String> = self
                    .cluster_ports()
                    .iter()
                    .map(|p| format!("127.0.0.1:{p}"))
                    .collect();
                format!("redis+cluster://{}", nodes.join(","))
            }
            None => format!("redis://127.0.0.1:{}/0", self.redis_port),
        }
    }

    /// A fresh connection to the stack's Redis, single or cluster, waiting
    /// up to 30 s for it to answer (it may be loading its data after a
    /// restart, and a cluster must serve every slot again).
    pub fn redis(&self) -> Redis {
        if self.cluster_port.is_none() {
            return Redis::Single(self.server(self.redis_port));
        }
        // Each master up and loaded first, then the cluster whole.
        for port in self.cluster_ports() {
            self.server(port);
        }
        let nodes: Vec<String> = self
            .cluster_ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let attempt = redis::cluster::ClusterClient::new(nodes.clone())
                .and_then(|client| client.get_connection())
                .and_then(|mut con| {
                    let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut con)?;
                    if info.contains("cluster_state:ok") {
                        Ok(con)
                    } else {
                        Err((redis::ErrorKind::Client, "cluster_state is not ok").into())
                    }
                });
            match attempt {
                Ok(con) => return Redis::Cluster(Box::new(con)),
                Err(e) if Instant::now() > deadline => {
                    panic!("{}: the Redis Cluster does not answer: {e}", self.name)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// A connection to each server that holds data: the single Redis, or
    /// every master of the cluster (for DBSIZE and SCAN, which answer for
    /// one server only).
    pub fn redis_servers(&self) -> Vec<redis::Connection> {
        match self.cluster_port {
            Some(_) => self
                .cluster_ports()
                .into_iter()
                .map(|port| self.server(port))
                .collect(),
            None => vec![self.server(self.redis_port)],
        }
    }

    /// A plain connection to the redis-server on `port`, waiting up to 30 s
    /// for it to answer PING (not LOADING).
    fn server(&self, port: u16) -> redis::Connection {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).expect("redis url");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let attempt = client
                .get_connection_with_timeout(Duration::from_secs(2))
                .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con).map(|_| con));
            match attempt {
                Ok(con) => return con,
                Err(e) if Instant::now() > deadline => {
                    panic!("{}: Redis on port {port} does not answer: {e}", self.name)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn pid(&self, service: &str) -> u32 {
        let file = self.dir.join(format!("{service}.pid"));
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{} holds no pid: {e}", file.display()))
    }

    /// Freezes the broker (`kill -STOP`): connections stay open, nothing answers.
    pub fn stop_broker(&self) {
        send_signal(self.pid("tansu"), "STOP");
    }

    /// Lets a frozen broker go on (`kill -CONT`).
    pub fn continue_broker(&self) {
        send_signal(self.pid("tansu"), "CONT");
    }

    /// `kill -9` redis-server (on a cluster, every master), and waits until
    /// its port is closed.
    pub fn kill_redis(&self) {
        match self.cluster_port {
            Some(_) => {
                for port in self.cluster_ports() {
                    self.kill_master(port);
                }
            }
            None => {
                send_signal(self.pid("redis"), "KILL");
                wait_closed(self.redis_port);
            }
        }
    }

    /// `scripts/stack.sh up` again: starts what is down (Redis from its data).
    pub fn restart(&self) {
        self.script("up");
    }

    /// Creates topics (each with its `.dlq`) with `partitions` partitions.
    pub fn create_topics(&self, partitions: u32, topics: &[&str]) {
        let mut args = vec![
            "topics".to_string(),
            "create".into(),
            "--partitions".into(),
            partitions.to_string(),
        ];
        for topic in topics {
            args.push(topic.to_string());
            args.push(format!("{topic}.dlq"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.payctl(&args, &[]).expect_success();
    }

    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_payctl"));
        command
            .args(args)
            .env("KAFKA_BOOTSTRAP_SERVERS", self.brokers())
            .env("REDIS_URL", self.redis_url())
            .env("PAYCTL_KAFKA_OPTIONS", KAFKA_OPTIONS)
            .stdin(Stdio::null());
        for name in CLEARED_ENV {
            command.env_remove(name);
        }
        for (name, topic) in TOPIC_ENV {
            command.env(name, topic);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        command
    }

    /// Runs payctl to its end.
    pub fn payctl(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let output = self.command(args, env).output().expect("running payctl");
        let run = Run {
            label: format!("payctl {}", args.join(" ")),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        self.note_panics(&run.label, &run.stderr);
        run
    }

    /// Starts payctl in the background; its stdout and stderr go to files
    /// in the stack directory (`<label>-<n>.out`, `.err`).
    pub fn spawn(&self, label: &str, args: &[&str], env: &[(&str, &str)]) -> Worker {
        let n = {
            let mut spawned = self.spawned.lock().unwrap();
            *spawned += 1;
            *spawned
        };
        let stdout = self.dir.join(format!("{label}-{n}.out"));
        let stderr = self.dir.join(format!("{label}-{n}.err"));
        let child = self
            .command(args, env)
            .stdout(File::create(&stdout).expect("worker stdout file"))
            .stderr(File::create(&stderr).expect("worker stderr file"))
            .spawn()
            .expect("starting payctl");
        Worker {
            label: format!("{label}#{n}"),
            child,
            stdout,
            stderr,
        }
    }

    /// Records a panic a worker printed, so the scenario can fail on it.
    pub fn note_panics(&self, label: &str, stderr: &str) {
        let mut panics = self.panics.lock().unwrap();
        for line in stderr.lines().filter(|l| l.contains("panicked")) {
            panics.push(format!("{label}: {line}"));
        }
    }

    /// Every panic any payctl run of this stack printed.
    pub fn panics(&self) -> Vec<String> {
        self.panics.lock().unwrap().clone()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // A scenario that failed mid-stall must not leave a frozen broker.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("tansu.pid")) {
            let _ = Command::new("kill")
                .args(["-CONT", pid.trim()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new(stack_script())
            .arg("down")
            .env(
                "REDIS_CLUSTER_PORT",
                self.cluster_port.unwrap_or(7001).to_string(),
            )
            .env("REDIS_PORT", self.redis_port.to_string())
            .env("KAFKA_PORT", self.kafka_port.to_string())
            .env("PAYCTL_STACK_DIR", &self.dir)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if std::thread::panicking() {
            eprintln!(
                "{}: stack state and worker logs kept in {}",
                self.name,
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A connection to the stack's Redis: the single server, or the cluster
/// (each command routed to the master of its key's slot; boxed, as it is
/// several times the size of a single connection).
pub enum Redis {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Redis {
    /// Runs one command; on a cluster, MGET is split by slot.
    pub fn query<T: redis::FromRedisValue>(
        &mut self,
        command: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        match self {
            Redis::Single(con) => command.query(con),
            Redis::Cluster(con) => command.query(con.as_mut()),
        }
    }

    /// Runs commands pipelined, in order: one round trip on a single Redis,
    /// one per master on a cluster (a plain pipeline would send them all to
    /// the master of the first key's slot).
    pub fn pipeline<T: redis::FromRedisValue>(
        &mut self,
        commands: impl IntoIterator<Item = redis::Cmd>,
    ) -> redis::RedisResult<T> {
        match self {
            Redis::Single(con) => {
                let mut pipe = redis::pipe();
                for command in commands {
                    pipe.add_command(command);
                }
                pipe.query(con)
            }
            Redis::Cluster(con) => {
                let mut pipe = redis::cluster::cluster_pipe();
                for command in commands {
                    pipe.add_command(command);
                }
                pipe.query(con.as_mut())
            }
        }
    }
}

/// What a finished payctl run printed.
#[derive(Debug)]
pub struct Run {
    pub label: String,
    /// `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Panics, showing everything the run printed, unless it exited 0.
    pub fn expect_success(self) -> Run {
        assert_eq!(
            self.code,
            Some(0),
            "{} exited {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.label,
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    /// The JSON a worker prints when it stops (its summary), if any.
    pub fn summary(&self) -> Option<serde_json::Value> {
        serde_json::from_str(self.stdout.trim()).ok()
    }

    /// The stderr's last line, for failure output.
    pub fn last_error_line(&self) -> String {
        self.stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_string()
    }
}

/// A payctl process running in the background.
pub struct Worker {
    pub label: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Worker {
    /// Its stderr so far.
    pub fn stderr_so_far(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// `kill -9`, then reaps it.
    pub fn kill_9(mut self, stack: &Stack) -> Run {
        let _ = self.child.kill();
        let status = self.child.wait().expect("reaping a killed worker");
        self.collect(stack, status)
    }

    /// Sends a signal by name (`TERM`, `INT`).
    pub fn signal(&self, name: &str) {
        send_signal(self.child.id(), name);
    }

    /// Its exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("polling a worker")
    }

    /// Waits up to `limit` for it to exit; `Err(self)` if it is still running.
    pub fn wait_for(mut self, stack: &Stack, limit: Duration) -> Result<Run, Worker> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Ok(self.collect(stack, status));
            }
            if Instant::now() >= deadline {
                return Err(self);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits up to `limit`; after that, `kill -9`.
    /// Returns the run and whether it stopped by itself within the limit.
    pub fn terminate(self, stack: &Stack, limit: Duration) -> (Run, bool) {
        self.signal("TERM");
        match self.wait_for(stack, limit) {
            Ok(run) => (run, true),
            Err(stuck) => (stuck.kill_9(stack), false),
        }
    }

    fn collect(self, stack: &Stack, status: ExitStatus) -> Run {
        let run = Run {
            label: self.label.clone(),
            code: status.code(),
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        };
        stack.note_panics(&run.label, &run.stderr);
        run
    }
}

impl Drop for Worker {
    /// A scenario that fails midway must not leave workers running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `scripts/stack.sh`, or the script `PAYCTL_STACK_SCRIPT` names (to try
/// the suite against another version of it).
fn stack_script() -> PathBuf {
    std::env::var_os("PAYCTL_STACK_SCRIPT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/stack.sh"))
}

/// Waits up to 10 s for a killed redis-server's port to close.
fn wait_closed(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "redis-server outlived kill -9");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn send_signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// A first port such that it, the next two, and their cluster bus ports
/// (+10000) are free.
fn free_cluster_ports() -> u16 {
    for _ in 0..200 {
        let base = 20000 + (uuid::Uuid::new_v4().as_u128() % 9000) as u16;
        let free = (0..3).all(|i| {
            TcpListener::bind(("127.0.0.1", base + i)).is_ok()
                && TcpListener::bind(("127.0.0.1", base + i + 10000)).is_ok()
        });
        if free {
            return base;
        }
    }
    panic!("no three free ports (and bus ports) for a Redis Cluster");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}
