//! `payments process` against real HTTP processors the tests start on
//! loopback: HTTPS with a private CA (hyper over tokio-rustls), plain HTTP,
//! and a forwarding proxy, with payments submitted and saved through the
//! real broker and a private Redis.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::processor::{acceptor, Reply, Seen, Serve, TestProcessor};
use common::tls::TestCerts;
use common::{unique, Pipeline, PrivateRedis, Run};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

/// One test's pipeline with a Redis of its own: `payments process` takes
/// every `new` payment it finds.
struct Payments {
    p: Pipeline,
    redis: PrivateRedis,
}

impl Payments {
    fn new() -> Payments {
        Payments {
            p: Pipeline::new(),
            redis: PrivateRedis::start(),
        }
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let url = self.redis.url();
        let mut all = vec![("REDIS_URL", url.as_str())];
        all.extend_from_slice(env);
        self.p.payctl_env(args, &all)
    }

    /// Submits and saves a payment for each user; returns their ids.
    fn submit_and_save(&self, users: &[String]) -> Vec<String> {
        let ids: Vec<String> = users
            .iter()
            .map(|user| {
                let args = [
                    "payments", "submit", "--user", user, "--plan", "premium", "--amount", "9.99",
                ];
                self.run(&args, &[]).expect(0).stdout.trim().to_string()
            })
            .collect();
        let saved = self
            .run(
                &["payments", "save", "--until-idle", "2", "--output", "json"],
                &[],
            )
            .expect(0)
            .json();
        assert_eq!(saved["outcomes"]["saved"], users.len(), "{saved}");
        ids
    }

    /// `payments process` with these flags, the summary's output as run.
    fn process(&self, flags: &[&str], env: &[(&str, &str)]) -> Run {
        let mut args = vec!["payments", "process", "--output", "json"];
        args.extend_from_slice(flags);
        self.run(&args, env)
    }

    /// (processing status, payment status).
    fn statuses(&self, id: &str) -> (String, String) {
        let p = self
            .run(&["payments", "show", id, "--output", "json"], &[])
            .expect(0)
            .json();
        (
            p["processing_status"].as_str().unwrap().to_string(),
            p["payment_status"].as_str().unwrap().to_string(),
        )
    }
}

fn pair(processing: &str, payment: &str) -> (String, String) {
    (processing.to_string(), payment.to_string())
}

/// Answers by the user's name: `dec-…` declined, `err-…` error, the rest accepted.
fn by_user() -> Reply {
    Arc::new(|_, payment: &Value| {
        let user = payment["user_id"].as_str().unwrap_or_default();
        let status = match user.split('-').next() {
            Some("dec") => "decline",
            Some("err") => "error",
            _ => "accepted",
        };
        let body =
            serde_json::json!({"status": status, "message": format!("{status} by the test")});
        Some((StatusCode::OK, body.to_string()))
    })
}

/// The `error:` lines of a run's stderr.
fn error_lines(run: &Run) -> Vec<String> {
    run.stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .map(String::from)
        .collect()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn https_with_a_private_ca_reuses_connections_and_stores_each_answer() {
    let t = Payments::new();
    let certs = TestCerts::new("processor");
    let processor = TestProcessor::https(&certs, by_user());
    let users: Vec<String> = ["acc", "dec", "err", "acc", "dec", "acc", "err", "acc"]
        .iter()
        .map(|kind| unique(kind))
        .collect();
    let ids = t.submit_and_save(&users);

    let summary = t
        .process(
            &[
                "--processor-url",
                &processor.url,
                "--processor-ca-file",
                path(&certs.ca),
                "--concurrency",
                "2",
            ],
            &[],
        )
        .expect(0)
        .json();
    assert_eq!(
        (
            summary["answered"]["accepted"].as_u64(),
            summary["answered"]["decline"].as_u64(),
            summary["answered"]["error"].as_u64(),
            summary["calls"].as_u64(),
        ),
        (Some(4), Some(2), Some(2), Some(8)),
        "{summary}"
    );

    // The processor saw each payment once, keyed by its id, as JSON.
    let posts = processor.posts();
    assert_eq!(posts.len(), 8, "{posts:?}");
    for (id, user) in ids.iter().zip(&users) {
        let seen: Vec<&Seen> = posts
            .iter()
            .filter(|s| s.idempotency_key.as_deref() == Some(id.as_str()))
            .collect();
        assert_eq!(seen.len(), 1, "{id}: {posts:?}");
        let body = &seen[0].body;
        assert_eq!(seen[0].content_type.as_deref(), Some("application/json"));
        assert_eq!(
            (
                body["payment_id"].as_str(),
                body["user_id"].as_str(),
                body["currency"].as_str(),
                body["kind"].as_str()
            ),
            (
                Some(id.as_str()),
                Some(user.as_str()),
                Some("USD"),
                Some("payment")
            ),
            "{body}"
        );
        let amount = &body["amount"];
        assert_eq!(
            amount
                .as_str()
                .map_or_else(|| amount.to_string(), String::from),
            "9.99"
        );
    }
    // Eight payments (and the check before them), two at a time: the
    // connections are kept alive and reused (a new one may still be opened
    // while a used one is on its way back to the pool).
    let connections = processor.connections();
    eprintln!("8 payments over {connections} connections");
    assert!(
        (1..8).contains(&connections),
        "{connections} connections for 8 payments"
    );

    for (id, user) in ids.iter().zip(&users) {
        let expected = match &user[..3] {
            "dec" => "decline",
            "err" => "error",
            _ => "accepted",
        };
        assert_eq!(t.statuses(id), pair("processed", expected), "{user}");
    }
}

#[test]
fn an_untrusted_certificate_stops_the_run_before_any_payment_changes() {
    let t = Payments::new();
    let certs = TestCerts::new("untrusted");
    let processor = TestProcessor::https(&certs, by_user());
    let ids = t.submit_and_save(&[unique("acc"), unique("acc")]);

    // Neither a CA that did not sign the server's certificate, nor the
    // system's roots alone, trust it.
    for extra in [&["--processor-ca-file", path(&certs.other_ca)][..], &[]] {
        let mut flags = vec!["--processor-url", processor.url.as_str()];
        flags.extend_from_slice(extra);
        let run = t.process(&flags, &[]).expect(2);
        let errors = error_lines(&run);
        assert_eq!(errors.len(), 1, "{}", run.stderr);
        assert!(
            errors[0].contains("does not trust") && errors[0].contains("--processor-ca-file"),
            "{}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{}", run.stdout);
    }
    assert!(processor.posts().is_empty());
    // One handshake per run: refused once, never retried.
    assert_eq!(processor.connections(), 2);
    for id in &ids {
        assert_eq!(t.statuses(id), pair("new", "unknown"));
    }

    // A CA file that is not one is a clear error too, before anything.
    let bogus = certs.dir().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate\n").unwrap();
    let run = t
        .process(
            &[
                "--processor-url",
                &processor.url,
                "--processor-ca-file",
                path(&bogus),
            ],
            &[],
        )
        .expect(2);
    assert_eq!(error_lines(&run).len(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("holds no PEM certificate"),
        "{}",
        run.stderr
    );
    assert_eq!(processor.connections(), 2);

    // With the right CA the same payments go through.
    let summary = t
        .process(
            &[
                "--processor-url",
                &processor.url,
                "--processor-ca-file",
                path(&certs.ca),
            ],
            &[],
        )
        .expect(0)
        .json();
    assert_eq!(summary["answered"]["accepted"], 2, "{summary}");
    for id in &ids {
        assert_eq!(t.statuses(id), pair("processed", "accepted"));
    }
}

#[test]
fn a_certificate_that_changes_midway_stops_at_the_first_attempt_without_retrying() {
    let t = Payments::new();
    let trusted = TestCerts::new("first");
    let other = TestCerts::new("second");
    // The check before claiming meets the trusted certificate; every later
    // connection (one per answer, as keep-alive is off) another one.
    let serve = Serve {
        tls: vec![acceptor(&trusted), acceptor(&other)],
        keep_alive: false,
        ..Serve::default()
    };
    let processor = TestProcessor::start(serve, by_user());
    let ids = t.submit_and_save(&[unique("acc"), unique("acc")]);
    let run = t
        .process(
            &[
                "--processor-url",
                &processor.url,
                "--processor-ca-file",
                path(&trusted.ca),
                "--concurrency",
                "1",
                "--retries",
                "3",
            ],
            &[],
        )
        .expect(2);
    let errors = error_lines(&run);
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(errors[0].contains("does not trust"), "{}", run.stderr);
    // The check's connection, then one refused handshake: no retry, and no
    // call for the other payment.
    assert_eq!(processor.connections(), 2);
    assert!(processor.posts().is_empty());
    // Claimed, never charged: the next run sends them.
    for id in &ids {
        assert_eq!(t.statuses(id), pair("in_processing", "unknown"));
    }
    let fixed = TestProcessor::https(&trusted, by_user());
    let summary = t
        .process(
            &[
                "--processor-url",
                &fixed.url,
                "--processor-ca-file",
                path(&trusted.ca),
            ],
            &[],
        )
        .expect(0)
        .json();
    assert_eq!(summary["answered"]["accepted"], 2, "{summary}");
    assert_eq!(fixed.posts().len(), 2);
}

#[test]
fn a_busy_https_processor_leaves_payments_unknown_and_exits_3() {
    let t = Payments::new();
    let certs = TestCerts::new("busy");
    let processor = TestProcessor::https(
        &certs,
        Arc::new(|_, _: &Value| Some((StatusCode::SERVICE_UNAVAILABLE, "busy".to_string()))),
    );
    let ids = t.submit_and_save(&[unique("acc"), unique("acc")]);
    let summary = t
        .process(
            &[
                "--processor-url",
                &processor.url,
                "--processor-ca-file",
                path(&certs.ca),
                "--retries",
                "1",
            ],
            &[],
        )
        .expect(3)
        .json();
    assert_eq!(
        (summary["unanswered"].as_u64(), summary["calls"].as_u64()),
        (Some(2), Some(4)),
        "{summary}"
    );
    assert_eq!(processor.posts().len(), 4);
    for id in &ids {
        assert_eq!(t.statuses(id), pair("in_processing", "unknown"));
    }
}

/// The subscription pipeline's processor answers `{"success": true}`.
fn seed_003() -> Reply {
    Arc::new(|_, _: &Value| Some((StatusCode::OK, r#"{"success": true}"#.to_string())))
}

#[test]
fn plain_http_still_works_with_seed_003s_answer() {
    let t = Payments::new();
    let processor = TestProcessor::http(seed_003());
    let ids = t.submit_and_save(&[unique("acc"), unique("acc"), unique("acc")]);
    let summary = t
        .process(
            &["--processor-url", &processor.url, "--concurrency", "1"],
            &[],
        )
        .expect(0)
        .json();
    assert_eq!(summary["answered"]["accepted"], 3, "{summary}");
    assert_eq!(processor.posts().len(), 3);
    // The check and three payments, one at a time: fewer connections
    // than payments (usually one).
    let connections = processor.connections();
    eprintln!("3 payments over {connections} connections");
    assert!((1..3).contains(&connections), "{connections} connections");
    for id in &ids {
        assert_eq!(t.statuses(id), pair("processed", "accepted"));
    }
}

/// A forwarding proxy on loopback: absolute-form HTTP requests are sent on
/// with hyper's client, CONNECT opens a tunnel. It counts both.
struct TestProxy {
    url: String,
    forwarded: Arc<AtomicUsize>,
    tunnels: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

impl TestProxy {
    fn start() -> TestProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let forwarded = Arc::new(AtomicUsize::new(0));
        let tunnels = Arc::new(AtomicUsize::new(0));
        let (f, c) = (forwarded.clone(), tunnels.clone());
        runtime.spawn(async move {
            let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .build_http::<Incoming>();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (client, f, c) = (client.clone(), f.clone(), c.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (client, f, c) = (client.clone(), f.clone(), c.clone());
                        async move {
                            if request.method() == Method::CONNECT {
                                c.fetch_add(1, Ordering::SeqCst);
                                tunnel(request)
                            } else {
                                f.fetch_add(1, Ordering::SeqCst);
                                match client.request(request).await {
                                    Ok(response) => Ok(response.map(|b| b.boxed())),
                                    Err(_) => {
                                        let mut bad = Response::new(empty());
                                        *bad.status_mut() = StatusCode::BAD_GATEWAY;
                                        Ok(bad)
                                    }
                                }
                            }
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        TestProxy {
            url,
            forwarded,
            tunnels,
            _runtime: runtime,
        }
    }
}

fn empty() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// Answers a CONNECT and, once the client has the answer, copies bytes
/// both ways between it and the target.
fn tunnel(request: Request<Incoming>) -> Result<Response<ProxyBody>, hyper::Error> {
    let target = request.uri().authority().unwrap().to_string();
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(request).await else {
            return;
        };
        let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
            return;
        };
        let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(upgraded), &mut server).await;
    });
    Ok(Response::new(empty()))
}

#[test]
fn proxies_from_the_environment_are_used_and_no_proxy_is_honoured() {
    let t = Payments::new();
    let proxy = TestProxy::start();
    let processor = TestProcessor::http(seed_003());
    let first = t.submit_and_save(&[unique("acc"), unique("acc")]);
    let summary = t
        .process(
            &["--processor-url", &processor.url],
            &[("HTTP_PROXY", &proxy.url)],
        )
        .expect(0)
        .json();
    assert_eq!(summary["answered"]["accepted"], 2, "{summary}");
    // Two payments and the check before them, all through the proxy.
    assert_eq!(proxy.forwarded.load(Ordering::SeqCst), 3);
    assert_eq!(processor.posts().len(), 2);

    // NO_PROXY: straight to the processor.
    let second = t.submit_and_save(&[unique("acc")]);
    t.process(
        &["--processor-url", &processor.url],
        &[("HTTP_PROXY", &proxy.url), ("NO_PROXY", "127.0.0.1")],
    )
    .expect(0);
    assert_eq!(proxy.forwarded.load(Ordering::SeqCst), 3);
    assert_eq!(processor.posts().len(), 3);

    // HTTPS through the proxy: a CONNECT tunnel, TLS end to end with the processor.
    let certs = TestCerts::new("proxied");
    let secure = TestProcessor::https(&certs, by_user());
    let third = t.submit_and_save(&[unique("acc"), unique("acc")]);
    let summary = t
        .process(
            &[
                "--processor-url",
                &secure.url,
                "--processor-ca-file",
                path(&certs.ca),
                "--concurrency",
                "1",
            ],
            &[("HTTPS_PROXY", &proxy.url)],
        )
        .expect(0)
        .json();
    assert_eq!(summary["answered"]["accepted"], 2, "{summary}");
    let tunnels = proxy.tunnels.load(Ordering::SeqCst);
    eprintln!("2 payments and the check over {tunnels} tunnels");
    assert!((1..3).contains(&tunnels), "{tunnels} tunnels: not reused");
    assert_eq!(secure.posts().len(), 2);
    for id in first.iter().chain(&second).chain(&third) {
        assert_eq!(t.statuses(id), pair("processed", "accepted"));
    }
}
