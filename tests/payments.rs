//! Subscription payments (seed 003) end to end against the real broker and Redis.
//!
//! `payments process` takes every `new` payment in its database, so each
//! test here has a Redis database of its own (emptied first).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{read_topic, unique, Pipeline, Run};
use serde_json::Value;

/// A pipeline whose Redis is database `db`, emptied.
struct Payments {
    p: Pipeline,
    url: String,
}

impl Payments {
    fn new(db: u8) -> Payments {
        let base = common::redis_url();
        let url = format!("{}/{db}", base.rsplit_once('/').unwrap().0);
        let mut con = redis::Client::open(url.clone())
            .unwrap()
            .get_connection()
            .unwrap();
        let _: () = redis::cmd("FLUSHDB").query(&mut con).unwrap();
        Payments {
            p: Pipeline::new(),
            url,
        }
    }

    fn run(&self, args: &[&str]) -> Run {
        self.p.payctl_env(args, &[("REDIS_URL", &self.url)])
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--output", "json"]);
        self.run(&all).expect(0).json()
    }

    fn submit(&self, user: &str, amount: &str) -> String {
        let run = self.run(&[
            "payments", "submit", "--user", user, "--plan", "premium", "--amount", amount,
        ]);
        run.expect(0).stdout.trim().to_string()
    }

    fn save(&self) -> Value {
        self.json(&["payments", "save", "--until-idle", "2"])
    }

    fn process(&self, extra: &[&str]) -> Value {
        let mut args = vec!["payments", "process"];
        args.extend_from_slice(extra);
        self.json(&args)
    }

    fn payment(&self, id: &str) -> Value {
        self.json(&["payments", "show", id])
    }
}

#[test]
fn an_active_subscription_refuses_a_second_payment_and_a_refund_ends_it() {
    let t = Payments::new(2);
    let alice = unique("alice");
    let id = t.submit(&alice, "9.99");
    assert_eq!(t.save()["outcomes"]["saved"], 1);
    let first = t.payment(&id);
    assert_eq!(
        (
            first["processing_status"].as_str(),
            first["payment_status"].as_str()
        ),
        (Some("new"), Some("unknown"))
    );
    let processed = t.process(&["--accept-rate", "1"]);
    assert_eq!(processed["answered"]["accepted"], 1, "{processed}");

    let refused = t
        .run(&[
            "payments", "submit", "--user", &alice, "--plan", "premium", "--amount", "9.99",
        ])
        .expect(1);
    assert!(
        refused
            .stderr
            .contains("already has an active subscription"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        read_topic(&t.p.payments).len(),
        1,
        "a refused payment must not reach the topic"
    );
    let nobody = t
        .run(&["payments", "refund", "--user", &unique("bob")])
        .expect(1);
    assert!(
        nobody.stderr.contains("no active subscription"),
        "{}",
        nobody.stderr
    );

    let refund = t
        .run(&["payments", "refund", "--user", &alice])
        .expect(0)
        .stdout
        .trim()
        .to_string();
    t.save();
    t.process(&["--accept-rate", "1"]);
    let refunded = t.payment(&refund);
    assert_eq!(
        (
            refunded["kind"].as_str(),
            refunded["payment_status"].as_str()
        ),
        (Some("refund"), Some("accepted"))
    );
    assert_eq!(refunded["amount"].to_string(), "9.99");
    // The subscription ended, so paying again is allowed.
    t.submit(&alice, "9.99");
}

#[test]
fn several_requests_of_one_user_one_is_processed_the_rest_duplicated() {
    let t = Payments::new(3);
    let carol = unique("carol");
    let ids: Vec<String> = (0..3).map(|_| t.submit(&carol, "4.50")).collect();
    assert_eq!(t.save()["outcomes"]["saved"], 3);
    let summary = t.process(&["--accept-rate", "1"]);
    assert_eq!(
        (summary["claimed"].as_u64(), summary["duplicated"].as_u64()),
        (Some(1), Some(2)),
        "{summary}"
    );
    let statuses: Vec<String> = ids
        .iter()
        .map(|id| t.payment(id)["processing_status"].as_str().unwrap().into())
        .collect();
    assert_eq!(statuses, ["duplicated", "duplicated", "processed"]);
    assert_eq!(t.payment(&ids[2])["payment_status"], "accepted");

    // The outcome event carries seed 000's fields; notifying completes the payment.
    let events: Vec<Value> = read_topic(&t.p.transactions)
        .iter()
        .map(|(_, v)| serde_json::from_str(v).unwrap())
        .collect();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0]["transaction_id"].as_str(),
            events[0]["status"].as_str()
        ),
        (Some(ids[2].as_str()), Some("accepted"))
    );
    let notified = t.json(&["notify", "consume", "--until-idle", "2"]);
    assert_eq!(notified["outcomes"]["notified"], 1, "{notified}");
    assert_eq!(t.payment(&ids[2])["processing_status"], "completed");

    // Running save (from the start, another group) and process again changes nothing.
    let stats_before = t.json(&["payments", "stats"]);
    let resaved = t.json(&[
        "payments",
        "save",
        "--until-idle",
        "2",
        "--group",
        &unique("again"),
    ]);
    assert_eq!(resaved["outcomes"]["duplicate"], 3, "{resaved}");
    let again = t.process(&["--accept-rate", "1"]);
    assert_eq!(
        (
            again["claimed"].as_u64(),
            again["duplicated"].as_u64(),
            again["announced"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );
    assert_eq!(t.json(&["payments", "stats"]), stats_before);
    assert_eq!(stats_before["counts"]["duplicated"]["unknown"], 2);
    assert_eq!(stats_before["counts"]["completed"]["accepted"], 1);
    let listed = t.json(&[
        "payments",
        "list",
        "--user",
        &carol,
        "--status",
        "duplicated",
    ]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
}

#[test]
fn accept_decline_and_error_outcomes() {
    let t = Payments::new(4);
    let cases = [
        ("1", "0", "accepted"),
        ("0", "1", "decline"),
        ("0", "0", "error"),
    ];
    let mut users = Vec::new();
    for (accept, decline, expected) in cases {
        let user = unique(expected);
        let id = t.submit(&user, "12.00");
        t.save();
        let summary = t.process(&[
            "--accept-rate",
            accept,
            "--decline-rate",
            decline,
            "--seed",
            "42",
        ]);
        assert_eq!(summary["answered"][expected], 1, "{summary}");
        let payment = t.payment(&id);
        assert_eq!(
            (
                payment["processing_status"].as_str(),
                payment["payment_status"].as_str()
            ),
            (Some("processed"), Some(expected))
        );
        users.push((user, expected));
    }
    // Only an accepted payment activates the subscription.
    for (user, expected) in users {
        let again = t.run(&[
            "payments", "submit", "--user", &user, "--plan", "premium", "--amount", "12.00",
        ]);
        again.expect(if expected == "accepted" { 1 } else { 0 });
    }
    let statuses: Vec<String> = read_topic(&t.p.transactions)
        .iter()
        .map(|(_, v)| {
            serde_json::from_str::<Value>(v).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(statuses.len(), 3);
    for expected in ["accepted", "decline", "error"] {
        assert!(statuses.iter().any(|s| s == expected), "{statuses:?}");
    }
}

/// A processor on loopback that answers each request with the next of `replies`
/// (`None`: accept the connection and say nothing).
fn processor(replies: Vec<Option<&'static str>>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/execute_transaction",
        listener.local_addr().unwrap()
    );
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for (stream, reply) in listener
            .incoming()
            .zip(replies.into_iter().chain(std::iter::repeat(None)))
        {
            let mut stream = stream.unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            // Read the whole request (its JSON body ends the message).
            let mut request = Vec::new();
            let mut chunk = [0u8; 4096];
            while !request.ends_with(b"}") {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&chunk[..n]),
                }
            }
            counter.fetch_add(1, Ordering::SeqCst);
            match reply {
                Some(body) => {
                    let code = if body.starts_with('{') {
                        "200 OK"
                    } else {
                        body
                    };
                    let body = if body.starts_with('{') { body } else { "" };
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {code}\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
                None => std::thread::sleep(Duration::from_secs(3)),
            }
        }
    });
    (url, seen)
}

#[test]
fn a_failing_or_silent_processor_never_loses_a_payment() {
    let t = Payments::new(5);
    let dave = unique("dave");
    let id = t.submit(&dave, "30.00");
    t.save();

    // 503 twice, then silence: no answer, so the payment waits, status unknown.
    let (url, seen) = processor(vec![
        Some("503 Service Unavailable"),
        Some("503 Service Unavailable"),
        None,
    ]);
    let summary = t.process(&[
        "--processor-url",
        &url,
        "--timeout",
        "0.5",
        "--retries",
        "2",
    ]);
    assert_eq!(summary["unanswered"], 1, "{summary}");
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    let waiting = t.payment(&id);
    assert_eq!(
        (
            waiting["processing_status"].as_str(),
            waiting["payment_status"].as_str()
        ),
        (Some("in_processing"), Some("unknown"))
    );
    assert!(read_topic(&t.p.transactions).is_empty());

    // Next run: the processor answers (after one more 503) and the payment goes through.
    let (url, _) = processor(vec![
        Some("503 Service Unavailable"),
        Some(r#"{"status": "accepted"}"#),
    ]);
    let summary = t.process(&["--processor-url", &url, "--timeout", "2", "--retries", "3"]);
    assert_eq!(summary["answered"]["accepted"], 1, "{summary}");
    assert_eq!(t.payment(&id)["payment_status"], "accepted");

    // A processor that refuses the request outright answers `error`.
    let erin = unique("erin");
    let refused = t.submit(&erin, "30.00");
    t.save();
    let (url, _) = processor(vec![Some("400 Bad Request")]);
    t.process(&["--processor-url", &url, "--retries", "0"]);
    assert_eq!(t.payment(&refused)["payment_status"], "error");
}
