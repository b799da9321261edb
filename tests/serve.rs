//! `payctl serve` against the real broker and Redis, through a real HTTP
//! client: the answers, their statuses and JSON errors, and a clean stop.

mod common;

use std::time::{Duration, Instant};

use common::{open_account, Pipeline};
use serde_json::{json, Value};

struct Server {
    child: std::process::Child,
    base: String,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Server {
    fn start(p: &Pipeline, extra: &[&str]) -> Server {
        let mut command = vec!["serve"];
        command.extend(extra);
        Server::launch(p, &command, "--listen")
    }

    /// Runs `command` with `flag` naming a free loopback port, and waits
    /// until its `/healthz` answers.
    fn launch(p: &Pipeline, command: &[&str], flag: &str) -> Server {
        Server::launch_env(p, command, flag, &[])
    }

    fn launch_env(p: &Pipeline, command: &[&str], flag: &str, env: &[(&str, &str)]) -> Server {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listen = free_address();
        let mut args = command.to_vec();
        args.extend([flag, listen.as_str()]);
        let child = p.spawn(&args, env);
        let server = Server {
            child,
            base: format!("http://{listen}"),
            client: reqwest::Client::new(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.get("/healthz").0 != 200 {
            assert!(
                Instant::now() < deadline,
                "{command:?} did not answer /healthz"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        self.runtime.block_on(async {
            match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body = response.bytes().await.unwrap_or_default();
                    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
                }
                Err(_) => (0, Value::Null),
            }
        })
    }

    fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.client.get(format!("{}{path}", self.base)))
    }

    fn post(&self, path: &str, body: impl Into<reqwest::Body>, key: Option<&str>) -> (u16, Value) {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        self.send(request)
    }
}

/// A loopback address with a port free a moment ago.
fn free_address() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// The Prometheus text at `base`/metrics ("" when it does not answer).
fn scrape(server: &Server, base: &str) -> String {
    server.runtime.block_on(async {
        match server.client.get(format!("{base}/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    })
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[test]
fn transactions_over_http_answer_with_the_right_status_and_stop_cleanly() {
    let p = Pipeline::new();
    let alice = open_account(&p, "alice", "100.00");
    let bob = open_account(&p, "bob", "0");
    let server = Server::start(&p, &[]);
    let key = common::unique("order");
    let transfer = json!({"sender": alice, "receiver": bob, "amount": "12.50"}).to_string();

    let (status, created) = server.post("/transactions", transfer.clone(), Some(&key));
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["created"], true, "{created}");
    assert_eq!(created["amount"], "12.50", "{created}");
    let id = created["transfer_id"].as_str().unwrap().to_string();

    let (status, again) = server.post("/transactions", transfer, Some(&key));
    assert_eq!(
        (status, again["transfer_id"].as_str()),
        (200, Some(id.as_str())),
        "{again}"
    );
    assert_eq!(again["created"], false);
    let other = json!({"sender": alice, "receiver": bob, "amount": 3}).to_string();
    let (status, conflict) = server.post("/transactions", other, Some(&key));
    assert_eq!(
        (status, code(&conflict)),
        (409, "idempotency_conflict"),
        "{conflict}"
    );

    let (status, shown) = server.get(&format!("/transactions/{id}"));
    assert_eq!(
        (status, shown["transfer_id"].as_str()),
        (200, Some(id.as_str())),
        "{shown}"
    );
    let (status, missing) = server.get("/transactions/no-such-transfer");
    assert_eq!((status, code(&missing)), (404, "not_found"), "{missing}");

    for (body, why) in [
        ("{not json".to_string(), "malformed JSON"),
        (
            json!({"sender": alice, "receiver": bob, "amount": true}).to_string(),
            "wrong type",
        ),
        (
            json!({"sender": alice, "receiver": bob, "amount": "1,000.00"}).to_string(),
            "a comma",
        ),
        (
            json!({"sender": alice, "receiver": bob, "amount": "-5"}).to_string(),
            "negative",
        ),
        (
            json!({"sender": alice, "receiver": bob, "amount": "1", "extra": 1}).to_string(),
            "unknown field",
        ),
    ] {
        let (status, error) = server.post("/transactions", body, None);
        assert_eq!((status, code(&error)), (400, "invalid"), "{why}: {error}");
    }
    let stranger = json!({"sender": alice, "receiver": "nobody-at-all", "amount": "1"}).to_string();
    let (status, refused) = server.post("/transactions", stranger, None);
    assert_eq!((status, code(&refused)), (400, "refused"), "{refused}");
    // Over the limit (64 KiB by default): 413, the body left unread.
    let (status, too_big) = server.post("/transactions", vec![b' '; 200 * 1024], None);
    assert_eq!((status, code(&too_big)), (413, "too_large"), "{too_big}");
    // 10 MB: the server answers 413 and closes before the client has sent
    // it all, so the client may see the reset instead; either way the
    // server goes on serving.
    let (status, _) = server.post("/transactions", vec![b' '; 10 * 1024 * 1024], None);
    assert!(status == 413 || status == 0, "10 MB body: {status}");
    assert_eq!(server.get("/healthz").0, 200);
    let (status, nowhere) = server.get("/nowhere");
    assert_eq!((status, code(&nowhere)), (404, "not_found"));

    let (status, ready) = server.get("/readyz");
    assert_eq!(
        (status, ready),
        (200, json!({"redis": true, "broker": true}))
    );

    // Nothing moved money: initiate only records and publishes.
    let shown = p
        .payctl(&["accounts", "show", &alice, "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(shown["balance"], "100.00");

    common::signal(&server.child, "TERM");
    let started = Instant::now();
    let run = common::finish(server.child);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Held by the tests that run `payments process`, which takes every new
/// payment of its database: on a cluster (one database) one test's pass
/// would take the other's payments.
fn payments_alone() -> std::sync::MutexGuard<'static, ()> {
    static PAYMENTS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    PAYMENTS.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn the_http_processing_simulator_answers_like_the_built_in_one_and_serves_payments_process() {
    let _alone = payments_alone();
    let p = Pipeline::new();
    let server = Server::launch(
        &p,
        &[
            "payments",
            "simulate-processor",
            "--seed",
            "7",
            "--accept-rate",
            "0.5",
        ],
        "--listen",
    );
    let listen = server.base.trim_start_matches("http://").to_string();

    // The same seed, rates and id give the same answer every time, in
    // payctl's form and the subscription pipeline's.
    let mut seen = std::collections::HashSet::new();
    for i in 0..40 {
        let id = format!("pay-{i}");
        let body = json!({"payment_id": id, "user_id": "u", "amount": "9.99"}).to_string();
        let (status, first) = server.post("/execute_transaction", body.clone(), None);
        let (_, second) = server.post("/execute_transaction", body, None);
        assert_eq!(status, 200, "{first}");
        assert_eq!(first, second);
        let answer = first["status"].as_str().unwrap().to_string();
        assert_eq!(first["success"], answer == "accepted", "{first}");
        seen.insert(answer);
    }
    assert!(seen.contains("accepted") && seen.len() >= 2, "{seen:?}");
    let (status, error) = server.post("/execute_transaction", "{}".to_string(), None);
    assert_eq!((status, code(&error)), (400, "invalid"), "{error}");
    let (status, keyed) = server.post("/execute_transaction", "{}".to_string(), Some("pay-0"));
    assert_eq!(status, 200, "{keyed}");

    // payments process through it, end to end.
    let user = common::unique("subscriber");
    let id = p
        .payctl(&[
            "payments", "submit", "--user", &user, "--plan", "premium", "--amount", "9.99",
        ])
        .expect(0)
        .stdout
        .trim()
        .to_string();
    p.payctl(&["payments", "save", "--until-idle", "2"])
        .expect(0);
    let url = format!("http://{listen}/execute_transaction");
    let processed = p
        .payctl(&[
            "payments",
            "process",
            "--processor-url",
            &url,
            "--output",
            "json",
        ])
        .expect(0)
        .json();
    let answered: u64 = processed["answered"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    // Other tests' payments in the same Redis database may be in the pass.
    assert!(answered >= 1, "{processed}");
    let (_, direct) = server.post(
        "/execute_transaction",
        json!({"payment_id": id}).to_string(),
        None,
    );
    let shown = p
        .payctl(&["payments", "show", &id, "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(shown["payment_status"], direct["status"], "{shown}");

    common::signal(&server.child, "TERM");
    assert_eq!(common::finish(server.child).code, 0);
}

#[test]
fn a_worker_serves_its_metrics_health_and_readiness() {
    let p = Pipeline::new();
    let alice = open_account(&p, "alice", "100.00");
    let bob = open_account(&p, "bob", "0");
    for _ in 0..3 {
        p.payctl(&[
            "transfer", "initiate", "--from", &alice, "--to", &bob, "--amount", "1.00",
        ])
        .expect(0);
    }
    // A forged message: dead-lettered, and counted by its kind of reason.
    common::produce_raw(&p.transfers, "forged", &["{\"amount\": 1e9}"]);
    let server = Server::launch(&p, &["transfer", "process"], "--metrics-listen");
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = scrape(&server, &server.base);
        if text.contains("payctl_messages_total{outcome=\"completed\"} 3")
            && text.contains("payctl_dead_letters_total{reason=\"not a transfer message\"} 1")
            && text.contains(&format!(
                "payctl_consumer_lag{{partition=\"0\",topic=\"{}\"}} 0",
                p.transfers
            ))
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no 3 completed in the metrics:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for name in [
        "payctl_batch_size_bucket",
        "payctl_batch_seconds_count",
        // 6 outcome events and the dead letter.
        "payctl_produced_total 7",
        "payctl_assigned 1",
        "payctl_redis_errors_total 0",
        "payctl_producer_errors_total 0",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert_eq!(server.get("/healthz").0, 200);
    let (status, ready) = server.get("/readyz");
    assert_eq!(
        (status, ready),
        (
            200,
            json!({"partitions_assigned": true, "retrying": false, "redis": true, "broker": true})
        )
    );

    common::signal(&server.child, "TERM");
    let run = common::finish(server.child);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn accounts_over_http_open_deposit_and_show_with_exact_amounts() {
    let p = Pipeline::new();
    let server = Server::start(&p, &[]);
    let id = common::unique("http-acct");
    let open = json!({"id": id, "currency": "JPY", "balance": 1500}).to_string();
    let (status, opened) = server.post("/accounts", open.clone(), None);
    assert_eq!(status, 201, "{opened}");
    assert_eq!(
        (opened["currency"].as_str(), opened["balance"].as_str()),
        (Some("JPY"), Some("1500"))
    );
    let (status, again) = server.post("/accounts", open, None);
    assert_eq!((status, code(&again)), (409, "exists"), "{again}");

    let (status, deposited) = server.post(
        &format!("/accounts/{id}/deposit"),
        json!({"amount": "250"}).to_string(),
        None,
    );
    assert_eq!(
        (status, deposited["balance"].as_str()),
        (200, Some("1750")),
        "{deposited}"
    );
    let (status, fraction) = server.post(
        &format!("/accounts/{id}/deposit"),
        json!({"amount": "0.5"}).to_string(),
        None,
    );
    assert_eq!(status, 400, "JPY has no minor unit: {fraction}");
    let (status, shown) = server.get(&format!("/accounts/{id}"));
    assert_eq!(
        (status, shown["balance"].as_str()),
        (200, Some("1750")),
        "{shown}"
    );

    let (status, missing) = server.get("/accounts/nobody-here");
    assert_eq!((status, code(&missing)), (404, "not_found"), "{missing}");
    let (status, deposit_missing) = server.post(
        "/accounts/nobody-here/deposit",
        json!({"amount": "1"}).to_string(),
        None,
    );
    assert_eq!(status, 404, "{deposit_missing}");
    let (status, bad_currency) = server.post(
        "/accounts",
        json!({"id": common::unique("x"), "currency": "USX"}).to_string(),
        None,
    );
    assert_eq!(status, 400, "{bad_currency}");
    assert!(
        bad_currency["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did you mean USD"),
        "{bad_currency}"
    );

    common::signal(&server.child, "TERM");
    assert_eq!(common::finish(server.child).code, 0);
}

#[test]
fn the_log_and_conversions_over_http_answer_from_the_topic_and_the_stored_rates() {
    let p = Pipeline::new();
    let user = common::unique("logged");
    let events: Vec<String> = (1..=3)
        .map(|i| {
            json!({"transaction_id": format!("t{i}"), "user_id": user, "status": "completed"})
                .to_string()
        })
        .collect();
    let events: Vec<&str> = events.iter().map(String::as_str).collect();
    common::produce_raw(&p.transactions, &user, &events);
    p.payctl(&["rates", "set", "ISK", "JPY", "1.0735"])
        .expect(0);
    let server = Server::start(&p, &[]);

    let (status, log) = server.get(&format!("/transactions/log?user={user}&limit=2"));
    assert_eq!(status, 200, "{log}");
    let ids: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["transaction_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["t3", "t2"], "newest first, at most the limit: {log}");
    let (status, bad) = server.get("/transactions/log?limit=0");
    assert_eq!((status, code(&bad)), (400, "invalid"), "{bad}");

    let convert = json!({"amount": "100", "from": "ISK", "to": "JPY"}).to_string();
    let (status, converted) = server.post("/convert", convert, None);
    assert_eq!(status, 200, "{converted}");
    // 107.35 rounded once, half to even, to JPY's 0 decimals.
    assert_eq!(converted["result"], "107", "{converted}");
    let unknown = json!({"amount": "1", "from": "ISK", "to": "XOF"}).to_string();
    let (status, no_rate) = server.post("/convert", unknown, None);
    assert_eq!((status, code(&no_rate)), (404, "no_rate"), "{no_rate}");
    let bad = json!({"amount": "1.001", "from": "ISK", "to": "JPY"}).to_string();
    let (status, over_precise) = server.post("/convert", bad, None);
    assert_eq!(status, 400, "ISK has no decimals: {over_precise}");

    common::signal(&server.child, "TERM");
    assert_eq!(common::finish(server.child).code, 0);
}

#[test]
fn conversions_over_http_answer_now_or_through_rates_serve_and_rates_are_set_and_listed() {
    let p = Pipeline::new();
    let server = Server::start(&p, &[]);
    let (status, changed) = server.send(
        server
            .client
            .put(format!("{}/rates/isk/jpy", server.base))
            .body(json!({"rate": "1.0735"}).to_string()),
    );
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        (changed["pair"].as_str(), changed["rate"].as_str()),
        (Some("ISK/JPY"), Some("1.0735")),
        "{changed}"
    );
    let announced = common::read_topic(&p.rate_changes);
    assert_eq!(announced.len(), 1, "the change is announced: {announced:?}");
    let (status, rates) = server.get("/rates");
    assert_eq!(status, 200, "{rates}");
    assert!(
        rates
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["base"] == "ISK" && r["quote"] == "JPY" && r["rate"] == "1.0735"),
        "{rates}"
    );
    for (path, body, why) in [
        ("/rates/ISK/JPY", json!({"rate": "0"}), "zero"),
        ("/rates/ISK/JPY", json!({"rate": "1e3"}), "an exponent"),
        (
            "/rates/ISK/USX",
            json!({"rate": "1"}),
            "an unknown currency",
        ),
        ("/rates/ISK/ISK", json!({"rate": "1"}), "the same currency"),
    ] {
        let (status, error) = server.send(
            server
                .client
                .put(format!("{}{path}", server.base))
                .body(body.to_string()),
        );
        assert_eq!((status, code(&error)), (400, "invalid"), "{why}: {error}");
    }
    assert_eq!(common::read_topic(&p.rate_changes).len(), 1);

    // Async: stored pending, published, answered by `rates serve`.
    let id = common::unique("conv");
    let ask = json!({"id": id, "amount": "100", "from": "ISK", "to": "JPY"}).to_string();
    let response = server.runtime.block_on(
        server
            .client
            .post(format!("{}/convert?async=true", server.base))
            .body(ask.clone())
            .send(),
    );
    let response = response.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(
        response.headers()["location"].to_str().unwrap(),
        format!("/convert/{id}")
    );
    let (status, pending) = server.get(&format!("/convert/{id}"));
    assert_eq!(
        (status, pending["status"].as_str()),
        (200, Some("pending")),
        "{pending}"
    );
    let (status, taken) = server.post("/convert?async=true", ask, None);
    assert_eq!((status, code(&taken)), (409, "exists"), "{taken}");
    assert_eq!(
        common::read_topic(&p.conversions).len(),
        1,
        "one request sent"
    );
    let (status, no_id) = server.post(
        "/convert",
        json!({"id": "x", "amount": "1", "from": "ISK", "to": "JPY"}).to_string(),
        None,
    );
    assert_eq!(status, 400, "an id without async: {no_id}");
    let (status, bad) = server.post(
        "/convert?async=true",
        json!({"amount": "1.5", "from": "ISK", "to": "JPY"}).to_string(),
        None,
    );
    assert_eq!(status, 400, "ISK has no decimals: {bad}");
    let (status, bad_query) = server.post(
        "/convert?async=maybe",
        json!({"amount": "1", "from": "ISK", "to": "JPY"}).to_string(),
        None,
    );
    assert_eq!(status, 400, "{bad_query}");

    p.payctl(&["rates", "serve", "--until-idle", "2"]).expect(0);
    let (status, done) = server.get(&format!("/convert/{id}"));
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["answer"]["result"], "107", "{done}");
    let (status, missing) = server.get("/convert/no-such-request");
    assert_eq!((status, code(&missing)), (404, "not_found"), "{missing}");

    common::signal(&server.child, "TERM");
    assert_eq!(common::finish(server.child).code, 0);
}

#[test]
fn subscriptions_over_http_follow_the_subscription_rules_and_report_the_payment() {
    let _alone = payments_alone();
    let p = Pipeline::new();
    // `payments process` takes every new payment of its database: its own
    // (a cluster has one database: there it shares it, and checks only
    // its own payments).
    let base = common::redis_url();
    let url = if common::on_cluster() {
        base
    } else {
        let url = format!("{}/9", base.rsplit_once('/').unwrap().0);
        let mut redis = redis::Client::open(url.clone())
            .unwrap()
            .get_connection()
            .unwrap();
        let _: () = redis::cmd("FLUSHDB").query(&mut redis).unwrap();
        url
    };
    let env = [("REDIS_URL", url.as_str())];
    let server = Server::launch_env(&p, &["serve"], "--listen", &env);
    let user = common::unique("subscriber");

    let pay = json!({"user_id": user, "plan": "premium", "amount": "9.99"}).to_string();
    let response = server
        .runtime
        .block_on(
            server
                .client
                .post(format!("{}/subscriptions/pay", server.base))
                .body(pay.clone())
                .send(),
        )
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let requested: Value = server.runtime.block_on(response.json()).unwrap();
    let id = requested["payment_id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/payments/{id}"));
    assert_eq!(requested["amount"], "9.99", "{requested}");
    let (status, unsaved) = server.get(&location);
    assert_eq!(status, 404, "not saved yet: {unsaved}");

    p.payctl_env(&["payments", "save", "--until-idle", "2"], &env)
        .expect(0);
    let (status, saved) = server.get(&location);
    assert_eq!(status, 200, "{saved}");
    assert_eq!(
        (
            saved["processing_status"].as_str(),
            saved["payment_status"].as_str()
        ),
        (Some("new"), Some("unknown")),
        "{saved}"
    );
    p.payctl_env(&["payments", "process", "--accept-rate", "1"], &env)
        .expect(0);
    let (_, processed) = server.get(&location);
    assert_eq!(processed["payment_status"], "accepted", "{processed}");

    // Active now: a second payment is refused and reaches no topic.
    let (status, refused) = server.post("/subscriptions/pay", pay, None);
    assert_eq!(
        (status, code(&refused)),
        (409, "subscription_active"),
        "{refused}"
    );
    assert_eq!(common::read_topic(&p.payments).len(), 1);
    let (status, none) = server.post(
        "/subscriptions/refund",
        json!({"user_id": common::unique("nobody")}).to_string(),
        None,
    );
    assert_eq!((status, code(&none)), (409, "no_subscription"), "{none}");
    let (status, refund) = server.post(
        "/subscriptions/refund",
        json!({"user_id": user}).to_string(),
        None,
    );
    assert_eq!(status, 202, "{refund}");
    assert_eq!(
        (refund["kind"].as_str(), refund["amount"].as_str()),
        (Some("refund"), Some("9.99")),
        "the refund is of the subscription's amount: {refund}"
    );
    for (body, why) in [
        (
            json!({"user_id": user, "plan": "premium", "amount": "9.999"}),
            "3 places in USD",
        ),
        (
            json!({"user_id": user, "plan": "premium", "amount": "-1"}),
            "negative",
        ),
        (
            json!({"user_id": "", "plan": "premium", "amount": "1"}),
            "no user",
        ),
        (json!({"user_id": user, "plan": "premium"}), "no amount"),
        (
            json!({"user_id": user, "plan": "premium", "amount": "1", "currency": "USX"}),
            "USX",
        ),
    ] {
        let (status, error) = server.post("/subscriptions/pay", body.to_string(), None);
        assert_eq!((status, code(&error)), (400, "invalid"), "{why}: {error}");
    }
    assert_eq!(
        common::read_topic(&p.payments).len(),
        2,
        "the payment and the refund"
    );
    let (status, bad_id) = server.get("/payments/a%20b");
    assert_eq!(status, 400, "{bad_id}");

    common::signal(&server.child, "TERM");
    assert_eq!(common::finish(server.child).code, 0);
}

/// Fills a documented path's parameters with something of the right shape.
fn concrete(path: &str) -> String {
    path.replace("{base}", "USD")
        .replace("{quote}", "EUR")
        .replace("{id}", "no-such-id")
}

#[test]
fn every_route_is_in_the_openapi_document_and_every_documented_route_answers() {
    let p = Pipeline::new();
    let metrics = free_address();
    let server = Server::start(&p, &["--metrics-listen", &metrics]);
    let (status, document) = server.get("/api/openapi");
    assert_eq!(status, 200);
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3."),
        "{document}"
    );
    let paths = document["paths"].as_object().unwrap();
    let mut documented = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    // Every route this server has, in the document with its method.
    let routes = [
        "GET /accounts/{id}",
        "GET /convert/{id}",
        "GET /healthz",
        "GET /payments/{id}",
        "GET /rates",
        "GET /readyz",
        "GET /transactions/log",
        "GET /transactions/{id}",
        "POST /accounts",
        "POST /accounts/{id}/deposit",
        "POST /convert",
        "POST /subscriptions/pay",
        "POST /subscriptions/refund",
        "POST /transactions",
        "PUT /rates/{base}/{quote}",
    ];
    assert_eq!(documented, routes, "the document and the routes differ");
    // Every documented operation is answered by a handler (not the
    // fallback), and with one of the statuses documented for it.
    for route in routes {
        let (method, path) = route.split_once(' ').unwrap();
        let operation = &paths[path][method.to_lowercase()];
        let url = format!("{}{}", server.base, concrete(path));
        let request = match method {
            "GET" => server.client.get(url),
            "POST" => server.client.post(url).body("{}"),
            _ => server.client.put(url).body("{}"),
        };
        let (status, body) = server.send(request);
        assert!(
            body["error"]["message"] != "no such endpoint",
            "{route} is documented but not served"
        );
        assert!(
            operation["responses"].get(status.to_string()).is_some(),
            "{route} answered {status}, not documented: {body}"
        );
    }
    // Bodies are described with their schemas; errors share one.
    let schemas = document["components"]["schemas"].as_object().unwrap();
    for name in [
        "NewTransaction",
        "Transfer",
        "ErrorBody",
        "Decimal",
        "Payment",
        "Conversion",
    ] {
        assert!(schemas.contains_key(name), "no schema {name}");
    }
    assert_eq!(
        paths["/transactions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
            ["$ref"],
        "#/components/schemas/NewTransaction"
    );
    // The docs page carries the same document.
    let page = server
        .runtime
        .block_on(async {
            server
                .client
                .get(format!("{}/api/docs", server.base))
                .send()
                .await
                .unwrap()
                .text()
                .await
        })
        .unwrap();
    assert!(page.contains("<html") && page.contains("\"/transactions/log\""));

    // The requests above, counted by route template and status.
    let text = scrape(&server, &format!("http://{metrics}"));
    for line in [
        "payctl_http_requests_total{method=\"GET\",route=\"/transactions/{id}\",status=\"404\"} 1",
        "payctl_http_requests_total{method=\"POST\",route=\"/transactions\",status=\"400\"} 1",
        "payctl_http_request_seconds_count{method=\"GET\",route=\"/rates\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }

    common::signal(&server.child, "TERM");
    assert_eq!(common::finish(server.child).code, 0);
}
