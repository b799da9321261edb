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
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = command.to_vec();
        args.extend([flag, listen.as_str()]);
        let child = p.spawn(&args, &[]);
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

#[test]
fn the_http_processing_simulator_answers_like_the_built_in_one_and_serves_payments_process() {
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
    // payctl's form and seed 003's.
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
    let server = Server::launch(&p, &["transfer", "process"], "--metrics-listen");
    let metrics = |server: &Server| {
        server.runtime.block_on(async {
            match server
                .client
                .get(format!("{}/metrics", server.base))
                .send()
                .await
            {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = metrics(&server);
        if text.contains("payctl_messages_total{outcome=\"completed\"} 3") {
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
        "payctl_produced_total 6",
        "payctl_assigned 1",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert_eq!(server.get("/healthz").0, 200);
    let (status, ready) = server.get("/readyz");
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["partitions_assigned"], true);

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
