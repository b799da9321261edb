//! Secured Redis: TLS (`rediss://`) with a private CA, ACL users, and
//! passwords that stay secret, against real TLS-only redis-servers this
//! test starts, and the shared Kafka for the transfer pipeline.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::tls::TestCerts;
use common::{finish, unique, Pipeline, PrivateRedis, Run};
use serde_json::Value;

/// The admin's password; the test's own connections use it, payctl never.
const ADMIN_PASSWORD: &str = "admin-5b1f0e9c";
/// The payctl user's password: distinctive, so a leak is found by search.
const PASSWORD: &str = "pw-Zq81xKv03T";

/// What the transfer pipeline touches: accounts, transfer records and their
/// indexes, idempotency keys (src/store.rs `keys`, the transfer scripts).
const PAYCTL_KEYS: [&str; 6] = [
    "~account:*",
    "~accounts",
    "~transfer:*",
    "~transfers",
    "~transfers:*",
    "~idempotency:transfer:*",
];
/// Reads, writes, scripts (EVALSHA, SCRIPT LOAD), AUTH/PING/SELECT,
/// MULTI/EXEC; nothing dangerous (FLUSHALL, CONFIG, KEYS, DEBUG...).
const PAYCTL_COMMANDS: [&str; 7] = [
    "-@all",
    "+@read",
    "+@write",
    "+@scripting",
    "+@connection",
    "+@transaction",
    "-@dangerous",
];

/// A TLS-only redis-server (no plaintext port) with the default user off,
/// an `admin` for the test and a `payctl` user limited to payctl's keys.
struct TlsRedis {
    port: u16,
    certs: TestCerts,
    server: Child,
    dir: PathBuf,
    /// The server refuses clients without a certificate its CA signed.
    asks_for_client_certificates: bool,
}

impl TlsRedis {
    fn start() -> TlsRedis {
        TlsRedis::start_with(false)
    }

    fn start_with(asks_for_client_certificates: bool) -> TlsRedis {
        let certs = TestCerts::new("redis");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = certs.dir().join("data");
        std::fs::create_dir_all(&dir).unwrap();
        let path = |p: &PathBuf| p.to_str().unwrap().to_string();
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &path(&certs.server_cert),
            "--tls-key-file",
            &path(&certs.server_key),
            "--tls-ca-cert-file",
            &path(&certs.ca),
            "--tls-auth-clients",
            if asks_for_client_certificates {
                "yes"
            } else {
                "no"
            },
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &path(&dir),
            "--user",
            "default",
            "off",
            "--user",
            "admin",
            "on",
            &format!(">{ADMIN_PASSWORD}"),
            "~*",
            "&*",
            "+@all",
            "--user",
            "payctl",
            "on",
            &format!(">{PASSWORD}"),
            "resetchannels",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(PAYCTL_KEYS.iter().map(|s| s.to_string()));
        args.extend(PAYCTL_COMMANDS.iter().map(|s| s.to_string()));
        let server = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/stack.sh up installs it)");
        let redis = TlsRedis {
            port,
            certs,
            server,
            dir,
            asks_for_client_certificates,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if redis.connect("admin", ADMIN_PASSWORD).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "TLS redis did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        redis
    }

    /// The URL payctl gets, user in it, password not.
    fn url(&self) -> String {
        format!("rediss://payctl@127.0.0.1:{}/0", self.port)
    }

    fn ca(&self) -> &str {
        self.certs.ca.to_str().unwrap()
    }

    /// A direct TLS connection as `user`, as another client would make.
    fn connect(&self, user: &str, password: &str) -> redis::RedisResult<redis::Connection> {
        let client = redis::Client::build_with_tls(
            format!("rediss://{user}:{password}@127.0.0.1:{}/0", self.port).as_str(),
            redis::TlsCertificates {
                client_tls: self
                    .asks_for_client_certificates
                    .then(|| self.client_certificate()),
                root_cert: Some(std::fs::read(&self.certs.ca).unwrap()),
            },
        )?;
        client.get_connection()
    }

    /// A certificate the server's CA signed: the server's own pair, since
    /// the server trusts what its CA signed, whatever the name.
    fn client_certificate(&self) -> redis::ClientTlsConfig {
        redis::ClientTlsConfig {
            client_cert: std::fs::read(&self.certs.server_cert).unwrap(),
            client_key: std::fs::read(&self.certs.server_key).unwrap(),
        }
    }

    fn admin(&self) -> redis::Connection {
        self.connect("admin", ADMIN_PASSWORD)
            .expect("admin connection")
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        // Our own child, by its handle.
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs payctl, failing the test if it has not ended within `limit`: a
/// hang is a failure, never a stuck test.
fn run_within(p: &Pipeline, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Run {
    let mut child = p.spawn(args, env);
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("waiting for payctl").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let run = finish(child);
            panic!(
                "payctl {args:?} still ran after {limit:?}\n--- stderr\n{}",
                run.stderr
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    finish(child)
}

/// A failure's stderr is one line, `error: ` first, naming what it says.
fn one_error_line(run: &Run, needles: &[&str]) {
    assert_eq!(run.code, 2, "exit {}; stderr:\n{}", run.code, run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr:\n{}", run.stderr);
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    for needle in needles {
        assert!(lines[0].contains(needle), "no {needle:?} in {}", lines[0]);
    }
    assert!(
        !run.stderr.contains(PASSWORD),
        "password shown: {}",
        run.stderr
    );
    assert!(
        !run.stdout.contains(PASSWORD),
        "password shown: {}",
        run.stdout
    );
}

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn accounts_over_tls_with_a_private_ca() {
    let redis = TlsRedis::start();
    let p = Pipeline::new();
    let url = format!("rediss://payctl:{PASSWORD}@127.0.0.1:{}/0", redis.port);
    let env = [("REDIS_URL", url.as_str())];
    let account = unique("tls");
    let ca = redis.ca();

    let open = [
        "accounts",
        "open",
        &account,
        "--currency",
        "USD",
        "--balance",
        "10.00",
    ];
    p.payctl_env(&[&open[..], &["--redis-ca-file", ca]].concat(), &env)
        .expect(0);
    p.payctl_env(
        &[
            "accounts",
            "deposit",
            &account,
            "2.50",
            "--redis-ca-file",
            ca,
        ],
        &env,
    )
    .expect(0);
    let show = ["accounts", "show", &account, "-o", "json"];
    let shown = p
        .payctl_env(&[&show[..], &["--redis-ca-file", ca]].concat(), &env)
        .expect(0)
        .json();
    assert_eq!(shown["balance"], "12.50");
    // It is really in the TLS server, under payctl's key.
    let balance: String = redis::cmd("HGET")
        .arg(format!("account:{account}"))
        .arg("balance")
        .query(&mut redis.admin())
        .unwrap();
    assert_eq!(balance, "1250");

    // A CA that did not sign the server's certificate, or none (the
    // system's roots): one line, exit 2, the URL with its password masked.
    let other = redis.certs.other_ca.to_str().unwrap();
    for extra in [&["--redis-ca-file", other][..], &[]] {
        let run = run_within(&p, &[&show[..], extra].concat(), &env, LIMIT);
        one_error_line(
            &run,
            &[
                "connecting to Redis at rediss://",
                &format!("@127.0.0.1:{}/0", redis.port),
                "certificate is not trusted",
            ],
        );
    }

    // `#insecure` would skip the check: refused before connecting.
    let insecure = format!("{url}#insecure");
    let run = run_within(&p, &show, &[("REDIS_URL", insecure.as_str())], LIMIT);
    one_error_line(&run, &["#insecure", "refuses"]);
}

#[test]
fn transfer_pipeline_over_tls_as_a_restricted_acl_user() {
    let redis = TlsRedis::start();
    let p = Pipeline::new();
    let url = redis.url();
    let env = [
        ("REDIS_URL", url.as_str()),
        ("REDIS_PASSWORD", PASSWORD),
        ("REDIS_CA_FILE", redis.ca()),
    ];
    let run = |args: &[&str]| p.payctl_env(args, &env);
    let alice = common::open_account_with(run, "alice", "100.00");
    let bob = common::open_account_with(run, "bob", "0");
    let id = run(&[
        "transfer", "initiate", "--from", &alice, "--to", &bob, "--amount", "12.50",
    ])
    .expect(0)
    .stdout
    .trim()
    .to_string();
    let summary = run(&["transfer", "process", "--until-idle", "2", "-o", "json"])
        .expect(0)
        .json();
    assert_eq!(summary["processed"], 1, "{summary}");
    assert_eq!(summary["outcomes"]["completed"], 1, "{summary}");
    let balance = |id: &str| {
        run(&["accounts", "show", id, "-o", "json"])
            .expect(0)
            .json()["balance"]
            .clone()
    };
    assert_eq!(balance(&alice), "87.50");
    assert_eq!(balance(&bob), "12.50");
    let shown = run(&["transfer", "show", &id, "-o", "json"])
        .expect(0)
        .json();
    assert_eq!(shown["status"], "completed");
    assert_eq!(shown["version"], 2);
    let events = common::read_topic(&p.transactions);
    assert_eq!(events.len(), 2, "{events:?}");
    for (_, value) in &events {
        let event: Value = serde_json::from_str(value).unwrap();
        assert_eq!(event["transaction_id"], id.as_str());
        assert_eq!(event["status"], "completed");
    }

    // The ACL is real: the same user may not touch a key outside payctl's,
    // nor run a dangerous command.
    let mut as_payctl = redis.connect("payctl", PASSWORD).unwrap();
    let outside: redis::RedisResult<()> = redis::cmd("SET")
        .arg(unique("elsewhere"))
        .arg("1")
        .query(&mut as_payctl);
    let refused = outside.unwrap_err();
    assert_eq!(refused.code(), Some("NOPERM"), "{refused}");
    let flush: redis::RedisResult<()> = redis::cmd("FLUSHALL").query(&mut as_payctl);
    assert_eq!(flush.unwrap_err().code(), Some("NOPERM"));
}

#[test]
fn bad_credentials_and_wrong_schemes_are_one_line() {
    let redis = TlsRedis::start();
    let p = Pipeline::new();
    let url = redis.url();
    let ca = redis.ca();
    let show = ["accounts", "show", "nobody"];

    // A wrong password.
    let wrong = "wrong-Pw-55ac";
    let run = run_within(
        &p,
        &show,
        &[
            ("REDIS_URL", url.as_str()),
            ("REDIS_PASSWORD", wrong),
            ("REDIS_CA_FILE", ca),
        ],
        LIMIT,
    );
    one_error_line(
        &run,
        &[
            "Redis authentication failed at rediss://",
            "refused this user and password",
        ],
    );
    assert!(!run.stderr.contains(wrong), "{}", run.stderr);

    // The same wrong password in the URL is masked too.
    let in_url = format!("rediss://payctl:{wrong}@127.0.0.1:{}/0", redis.port);
    let run = run_within(
        &p,
        &show,
        &[("REDIS_URL", in_url.as_str()), ("REDIS_CA_FILE", ca)],
        LIMIT,
    );
    one_error_line(&run, &["Redis authentication failed at rediss://"]);
    assert!(!run.stderr.contains(wrong), "{}", run.stderr);

    // No password at all: the server says NOAUTH, at connect.
    let anonymous = format!("rediss://127.0.0.1:{}/0", redis.port);
    let run = run_within(
        &p,
        &show,
        &[("REDIS_URL", anonymous.as_str()), ("REDIS_CA_FILE", ca)],
        LIMIT,
    );
    one_error_line(
        &run,
        &["Redis authentication failed at rediss://", "NOAUTH"],
    );

    // A plaintext URL against the TLS-only port.
    let plain = format!("redis://payctl@127.0.0.1:{}/0", redis.port);
    let run = run_within(
        &p,
        &show,
        &[("REDIS_URL", plain.as_str()), ("REDIS_PASSWORD", PASSWORD)],
        LIMIT,
    );
    one_error_line(&run, &["connecting to Redis at redis://", "rediss://"]);

    // A TLS URL against a plaintext server.
    let plaintext = PrivateRedis::start();
    let tls_to_plain = format!("rediss://127.0.0.1:{}/0", plaintext.port);
    let run = run_within(
        &p,
        &show,
        &[("REDIS_URL", tls_to_plain.as_str()), ("REDIS_CA_FILE", ca)],
        LIMIT,
    );
    one_error_line(&run, &["connecting to Redis at rediss://", "redis://"]);

    // Two passwords: refused, not one silently chosen.
    let twice = format!("rediss://payctl:{PASSWORD}@127.0.0.1:{}/0", redis.port);
    let run = run_within(
        &p,
        &show,
        &[
            ("REDIS_URL", twice.as_str()),
            ("REDIS_PASSWORD", wrong),
            ("REDIS_CA_FILE", ca),
        ],
        LIMIT,
    );
    one_error_line(&run, &["password is given twice"]);
    assert!(!run.stderr.contains(wrong), "{}", run.stderr);
}

#[test]
fn a_password_file_works_and_stays_secret() {
    let redis = TlsRedis::start();
    let p = Pipeline::new();
    let file = redis.certs.dir().join("redis-password");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let url = redis.url();
    let env = [
        ("REDIS_URL", url.as_str()),
        ("REDIS_PASSWORD_FILE", file.to_str().unwrap()),
        ("REDIS_CA_FILE", redis.ca()),
    ];
    let account = unique("secret");
    let open = p
        .payctl_env(
            &[
                "-vv",
                "accounts",
                "open",
                &account,
                "--currency",
                "EUR",
                "--balance",
                "1",
            ],
            &env,
        )
        .expect(0);
    assert!(!open.stderr.contains(PASSWORD), "{}", open.stderr);
    assert!(!open.stdout.contains(PASSWORD), "{}", open.stdout);

    // `status` reaches Redis with it and shows it nowhere; it may be
    // unhealthy for other reasons (this pipeline's groups have no members).
    let status = p.payctl_env(&["-vv", "status", "--output", "json"], &env);
    assert!(!status.stderr.contains(PASSWORD), "{}", status.stderr);
    assert!(!status.stdout.contains(PASSWORD), "{}", status.stdout);
    let report = status.json();
    let checks = report["checks"].as_array().unwrap();
    let redis_check = checks.iter().find(|c| c["check"] == "redis").unwrap();
    assert_eq!(redis_check["ok"], true, "{report}");

    // Nor does --help, with every secret set in the environment.
    let url_with_password = format!("rediss://payctl:{PASSWORD}@127.0.0.1:{}/0", redis.port);
    let help = p.payctl_env(
        &["--help"],
        &[
            ("REDIS_URL", url_with_password.as_str()),
            ("REDIS_PASSWORD", PASSWORD),
        ],
    );
    assert_eq!(help.code, 0, "{}", help.stderr);
    assert!(help.stdout.contains("--redis-password-file"));
    assert!(!help.stdout.contains(PASSWORD), "{}", help.stdout);
}

#[test]
fn a_permission_revoked_mid_run_stops_the_worker() {
    let redis = TlsRedis::start();
    let p = Pipeline::new();
    let url = redis.url();
    let as_payctl = [
        ("REDIS_URL", url.as_str()),
        ("REDIS_PASSWORD", PASSWORD),
        ("REDIS_CA_FILE", redis.ca()),
    ];
    let admin_url = format!("rediss://admin@127.0.0.1:{}/0", redis.port);
    let as_admin = [
        ("REDIS_URL", admin_url.as_str()),
        ("REDIS_PASSWORD", ADMIN_PASSWORD),
        ("REDIS_CA_FILE", redis.ca()),
    ];
    let run = |args: &[&str]| p.payctl_env(args, &as_payctl);
    let alice = common::open_account_with(run, "alice", "100.00");
    let bob = common::open_account_with(run, "bob", "0");
    let initiate = |env: &[(&str, &str)]| {
        p.payctl_env(
            &[
                "transfer", "initiate", "--from", &alice, "--to", &bob, "--amount", "10",
            ],
            env,
        )
        .expect(0)
        .stdout
        .trim()
        .to_string()
    };
    let first = initiate(&as_payctl);
    let worker = p.spawn(&["transfer", "process", "--until-idle", "60"], &as_payctl);

    let status = |id: &str| {
        p.payctl_env(&["transfer", "show", id, "-o", "json"], &as_admin)
            .expect(0)
            .json()["status"]
            .clone()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(&first) != "completed" {
        assert!(
            Instant::now() < deadline,
            "the first transfer was never completed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The operator takes scripts away from payctl while the worker runs.
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "payctl", "-evalsha", "-eval"][..])
        .query(&mut redis.admin())
        .unwrap();
    let second = initiate(&as_admin);

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut worker = worker;
    while worker.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = worker.kill();
            panic!("the worker did not stop on a refused permission");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let stopped = finish(worker);
    assert_eq!(stopped.code, 2, "stderr:\n{}", stopped.stderr);
    let errors: Vec<&str> = stopped
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "stderr:\n{}", stopped.stderr);
    assert!(errors[0].contains("permission"), "{}", errors[0]);
    assert!(!stopped.stderr.contains(PASSWORD));

    // The first stays done, the second is left for a worker that may.
    assert_eq!(status(&first), "completed");
    assert_eq!(status(&second), "initiated");
    let balance = |id: &str| {
        p.payctl_env(&["accounts", "show", id, "-o", "json"], &as_admin)
            .expect(0)
            .json()["balance"]
            .clone()
    };
    assert_eq!(balance(&alice), "90.00");
    assert_eq!(balance(&bob), "10.00");
}

#[test]
fn client_certificates_for_servers_that_ask() {
    let redis = TlsRedis::start_with(true);
    let p = Pipeline::new();
    let url = format!("rediss://payctl:{PASSWORD}@127.0.0.1:{}/0", redis.port);
    let env = [("REDIS_URL", url.as_str()), ("REDIS_CA_FILE", redis.ca())];
    let list = ["accounts", "list", "-o", "json"];

    let run = run_within(&p, &list, &env, LIMIT);
    one_error_line(
        &run,
        &["connecting to Redis at rediss://", "--redis-cert-file"],
    );

    let (cert, key) = (&redis.certs.server_cert, &redis.certs.server_key);
    let with_certificate = [
        &list[..],
        &[
            "--redis-cert-file",
            cert.to_str().unwrap(),
            "--redis-key-file",
            key.to_str().unwrap(),
        ],
    ]
    .concat();
    let listed = p.payctl_env(&with_certificate, &env).expect(0).json();
    assert_eq!(listed, serde_json::json!([]));

    // A key that is not the certificate's: named before connecting.
    let other_key = redis.certs.dir().join("other.key");
    std::fs::write(
        &other_key,
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let mismatched = [
        &list[..],
        &[
            "--redis-cert-file",
            cert.to_str().unwrap(),
            "--redis-key-file",
            other_key.to_str().unwrap(),
        ],
    ]
    .concat();
    let run = run_within(&p, &mismatched, &env, LIMIT);
    one_error_line(&run, &["is not a usable client certificate"]);
}

#[test]
fn a_profile_carries_the_tls_redis_settings() {
    let redis = TlsRedis::start();
    let p = Pipeline::new();
    let config = redis.certs.dir().join("config");
    let config = config.to_str().unwrap();
    let file = redis.certs.dir().join("redis-password");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    // Everything comes from the profile: the test helper clears the other
    // REDIS_* variables, and an empty REDIS_URL counts as unset.
    let bare = [("XDG_CONFIG_HOME", config), ("REDIS_URL", "")];
    let url = format!("rediss://127.0.0.1:{}/0", redis.port);
    p.payctl_env(
        &[
            "profile",
            "create",
            "tls",
            "--redis-url",
            &url,
            "--redis-username",
            "payctl",
            "--redis-password-file",
            file.to_str().unwrap(),
            "--redis-ca-file",
            redis.ca(),
        ],
        &bare,
    )
    .expect(0);
    let shown = p
        .payctl_env(&["profile", "show", "--output", "json"], &bare)
        .expect(0)
        .json();
    assert_eq!(shown["redis"]["redis-username"], "payctl", "{shown}");
    assert_eq!(shown["redis"]["redis-ca-file"], redis.ca(), "{shown}");
    let account = unique("profiled");
    p.payctl_env(
        &[
            "accounts",
            "open",
            &account,
            "--currency",
            "EUR",
            "--balance",
            "2",
        ],
        &bare,
    )
    .expect(0);
    let balance: String = redis::cmd("HGET")
        .arg(format!("account:{account}"))
        .arg("balance")
        .query(&mut redis.admin())
        .unwrap();
    assert_eq!(balance, "200");
    // A flag still beats the profile: the wrong CA fails, in one line.
    let other_ca = redis.certs.other_ca.to_str().unwrap();
    let wrong = p.payctl_env(
        &["accounts", "show", &account, "--redis-ca-file", other_ca],
        &bare,
    );
    one_error_line(&wrong, &["not trusted"]);
}

/// A private 3-master Redis Cluster that speaks only TLS, between its
/// nodes too (`tls-cluster yes`), with certificates signed by a test CA.
struct TlsCluster {
    ports: Vec<u16>,
    certs: TestCerts,
    servers: Vec<Child>,
}

impl TlsCluster {
    fn start() -> TlsCluster {
        let certs = TestCerts::new("tls-cluster");
        let path = |p: &PathBuf| p.to_str().unwrap().to_string();
        let ports: Vec<u16> = (0..3)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            })
            .collect();
        let mut servers = Vec::new();
        for port in &ports {
            let dir = certs.dir().join(format!("node-{port}"));
            std::fs::create_dir_all(&dir).unwrap();
            let server = Command::new("redis-server")
                .args([
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--tls-port",
                    &port.to_string(),
                    "--tls-cluster",
                    "yes",
                    "--tls-replication",
                    "yes",
                    "--tls-cert-file",
                    &path(&certs.server_cert),
                    "--tls-key-file",
                    &path(&certs.server_key),
                    "--tls-ca-cert-file",
                    &path(&certs.ca),
                    "--tls-auth-clients",
                    "no",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    &path(&dir),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server (scripts/stack.sh up installs it)");
            servers.push(server);
        }
        let cluster = TlsCluster {
            ports,
            certs,
            servers,
        };
        let cli = |args: &[&str]| {
            Command::new("redis-cli")
                .args(["--tls", "--cacert", cluster.ca(), "-h", "127.0.0.1"])
                .args(args)
                .output()
                .expect("redis-cli (scripts/stack.sh up installs it)")
        };
        let first = cluster.ports[0].to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster.ports.iter().all(|p| {
            let pong = cli(&["-p", &p.to_string(), "PING"]);
            String::from_utf8_lossy(&pong.stdout).trim() == "PONG"
        }) {
            assert!(
                Instant::now() < deadline,
                "the TLS cluster's nodes did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let mut create = vec!["-p", first.as_str(), "--cluster", "create"];
        create.extend(nodes.iter().map(String::as_str));
        create.push("--cluster-yes");
        let created = cli(&create);
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = cluster.ports.iter().all(|p| {
                let info = cli(&["-p", &p.to_string(), "CLUSTER", "INFO"]);
                String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok")
            });
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the TLS cluster never served every slot"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        cluster
    }

    fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("rediss+cluster://{}", nodes.join(","))
    }

    fn ca(&self) -> &str {
        self.certs.ca.to_str().unwrap()
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

#[test]
fn a_tls_cluster_carries_transfers_across_slots_and_an_untrusted_one_is_refused() {
    let cluster = TlsCluster::start();
    let p = Pipeline::new();
    let env = [
        ("REDIS_URL", cluster.url()),
        ("REDIS_CA_FILE", cluster.ca().to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = |args: &[&str]| p.payctl_env(args, &env);
    let alice = common::open_account_with(run, "tls-alice", "100.00");
    let bob = common::open_account_with(run, "tls-bob", "0");
    run(&[
        "transfer", "initiate", "--from", &alice, "--to", &bob, "--amount", "12.50",
    ])
    .expect(0);
    let processed = run(&[
        "transfer",
        "process",
        "--until-idle",
        "2",
        "--output",
        "json",
    ])
    .expect(0)
    .json();
    assert_eq!(processed["outcomes"]["completed"], 1, "{processed}");
    let balance = |id: &str| {
        run(&["accounts", "show", id, "--output", "json"])
            .expect(0)
            .json()["balance"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        (balance(&alice), balance(&bob)),
        ("87.50".into(), "12.50".into())
    );
    let audit = run(&["accounts", "audit", "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(audit["anomalies"], serde_json::json!([]), "{audit}");

    // Without the CA that signed the nodes' certificates: refused, saying why.
    let untrusted = p
        .payctl_env(
            &["accounts", "list"],
            &[("REDIS_URL", cluster.url().as_str())],
        )
        .expect(2);
    assert!(
        untrusted.stderr.to_lowercase().contains("certificate"),
        "{}",
        untrusted.stderr
    );
    // A TLS flag with a plaintext cluster URL is a mistake, named as one.
    let plain = cluster.url().replacen("rediss+", "redis+", 1);
    let mixed = p
        .payctl_env(
            &["accounts", "list", "--redis-ca-file", cluster.ca()],
            &[("REDIS_URL", plain.as_str())],
        )
        .expect(2);
    assert!(
        mixed.stderr.contains("rediss+cluster://"),
        "{}",
        mixed.stderr
    );
}
