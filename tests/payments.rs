//! Subscription payments (the subscription pipeline) end to end against the real broker and Redis.
//!
//! `payments process` takes every `new` payment in its database, so each
//! test here has a Redis database of its own (emptied first).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::processor::{Serve, TestProcessor};
use common::{read_topic, unique, Pipeline, Run};
use hyper::StatusCode;
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

    /// Saves the next request only: the ones after it wait for a later save.
    fn save_one(&self) -> Value {
        let saved = self.json(&["payments", "save", "--max-messages", "1"]);
        assert_eq!(saved["outcomes"]["saved"], 1, "{saved}");
        saved
    }

    fn refund(&self, user: &str) -> String {
        let run = self.run(&["payments", "refund", "--user", user]);
        run.expect(0).stdout.trim().to_string()
    }

    /// (processing status, payment status) of a payment.
    fn statuses(&self, id: &str) -> (String, String) {
        let p = self.payment(id);
        (
            p["processing_status"].as_str().unwrap().to_string(),
            p["payment_status"].as_str().unwrap().to_string(),
        )
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
    assert_eq!(refunded["amount"].as_str().unwrap().to_string(), "9.99");
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

    // The outcome event carries the notification service's fields; notifying completes the payment.
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
fn processor(replies: Vec<Option<&'static str>>) -> TestProcessor {
    processor_with(replies, None, Duration::ZERO)
}

/// A processor that accepts every payment; it counts the requests it gets.
fn accepting_processor() -> TestProcessor {
    processor_with(Vec::new(), Some(ACCEPTED), Duration::ZERO)
}

const ACCEPTED: &str = r#"{"status": "accepted"}"#;

/// A processor on loopback: the n-th payment gets `replies[n]`, later ones
/// `rest`, each after `delay`. A reply is a JSON body (answered with 200)
/// or a status line ("503 Service Unavailable", answered with no body);
/// `None`: say nothing.
fn processor_with(
    replies: Vec<Option<&'static str>>,
    rest: Option<&'static str>,
    delay: Duration,
) -> TestProcessor {
    let reply = move |n: usize, _: &Value| {
        let reply = replies.get(n).copied().unwrap_or(rest)?;
        if reply.starts_with('{') {
            return Some((StatusCode::OK, reply.to_string()));
        }
        let code = reply.split_whitespace().next().unwrap().parse().unwrap();
        Some((StatusCode::from_u16(code).unwrap(), String::new()))
    };
    let serve = Serve {
        delay,
        ..Serve::default()
    };
    TestProcessor::start(serve, Arc::new(reply))
}

#[test]
fn a_failing_or_silent_processor_never_loses_a_payment() {
    let t = Payments::new(5);
    let dave = unique("dave");
    let id = t.submit(&dave, "30.00");
    t.save();

    // 503 twice, then silence: no answer, so the payment waits, status unknown.
    let silent = processor(vec![
        Some("503 Service Unavailable"),
        Some("503 Service Unavailable"),
        None,
    ]);
    // Exit 3: partly done, so a cron job notices.
    let summary = t
        .run(&[
            "payments",
            "process",
            "--processor-url",
            &silent.url,
            "--timeout",
            "0.5",
            "--retries",
            "2",
            "--output",
            "json",
        ])
        .expect(3)
        .json();
    assert_eq!(summary["unanswered"], 1, "{summary}");
    assert_eq!(silent.requests(), 3);
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
    let busy = processor(vec![
        Some("503 Service Unavailable"),
        Some(r#"{"status": "accepted"}"#),
    ]);
    let summary = t.process(&[
        "--processor-url",
        &busy.url,
        "--timeout",
        "2",
        "--retries",
        "3",
    ]);
    assert_eq!(summary["answered"]["accepted"], 1, "{summary}");
    assert_eq!(t.payment(&id)["payment_status"], "accepted");

    // A processor that refuses the request outright answers `error`.
    let erin = unique("erin");
    let refused = t.submit(&erin, "30.00");
    t.save();
    let refusing = processor(vec![Some("400 Bad Request")]);
    t.process(&["--processor-url", &refusing.url, "--retries", "0"]);
    assert_eq!(t.payment(&refused)["payment_status"], "error");
}

fn pair(processing: &str, payment: &str) -> (String, String) {
    (processing.to_string(), payment.to_string())
}

#[test]
fn one_charge_and_one_refund_per_subscription_whichever_pass_saved_the_request() {
    let t = Payments::new(6);
    let accepting = accepting_processor();
    let process = || t.process(&["--processor-url", &accepting.url, "--retries", "0"]);
    let frank = unique("frank");
    // Both requests are accepted by submit: no subscription is active yet.
    let p1 = t.submit(&frank, "9.99");
    let p2 = t.submit(&frank, "9.99");

    t.save_one();
    let first = process();
    assert_eq!(
        (first["claimed"].as_u64(), first["calls"].as_u64()),
        (Some(1), Some(1)),
        "{first}"
    );
    t.save_one();
    let second = process();
    assert_eq!(
        (
            second["claimed"].as_u64(),
            second["duplicated"].as_u64(),
            second["calls"].as_u64()
        ),
        (Some(0), Some(1), Some(0)),
        "{second}"
    );
    assert_eq!(accepting.requests(), 1, "the processor must be called once");
    assert_eq!(t.statuses(&p1), pair("processed", "accepted"));
    assert_eq!(t.statuses(&p2), pair("duplicated", "unknown"));
    let detail = t.payment(&p2)["detail"].as_str().unwrap().to_string();
    assert!(detail.contains(&p1), "{detail}");

    // Two refunds of the subscription: one is sent, the other duplicated.
    let r1 = t.refund(&frank);
    let r2 = t.refund(&frank);
    t.save_one();
    let third = process();
    assert_eq!(third["answered"]["accepted"], 1, "{third}");
    t.save_one();
    let fourth = process();
    assert_eq!(
        (fourth["duplicated"].as_u64(), fourth["calls"].as_u64()),
        (Some(1), Some(0)),
        "{fourth}"
    );
    assert_eq!(accepting.requests(), 2, "one charge and one refund");
    assert_eq!(t.statuses(&r1), pair("processed", "accepted"));
    assert_eq!(t.statuses(&r2), pair("duplicated", "unknown"));
    assert_eq!(t.payment(&r2)["detail"], "no active subscription to refund");

    // Exactly one accepted charge and one accepted refund were announced.
    let events: Vec<Value> = read_topic(&t.p.transactions)
        .iter()
        .map(|(_, v)| serde_json::from_str(v).unwrap())
        .collect();
    let announced: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["transaction_id"].as_str().unwrap(),
                e["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        announced,
        [(p1.as_str(), "accepted"), (r1.as_str(), "accepted")]
    );
}

#[test]
fn a_declined_payment_frees_the_user_for_the_next_request() {
    let t = Payments::new(7);
    let gina = unique("gina");
    let p1 = t.submit(&gina, "5.00");
    let p2 = t.submit(&gina, "5.00");
    t.save_one();
    let declined = t.process(&["--accept-rate", "0", "--decline-rate", "1"]);
    assert_eq!(
        (
            declined["answered"]["decline"].as_u64(),
            declined["calls"].as_u64()
        ),
        (Some(1), Some(1)),
        "{declined}"
    );
    t.save_one();
    let accepted = t.process(&["--accept-rate", "1"]);
    assert_eq!(
        (
            accepted["answered"]["accepted"].as_u64(),
            accepted["duplicated"].as_u64(),
            accepted["calls"].as_u64()
        ),
        (Some(1), Some(0), Some(1)),
        "{accepted}"
    );
    assert_eq!(t.statuses(&p1), pair("processed", "decline"));
    assert_eq!(t.statuses(&p2), pair("processed", "accepted"));
    // Now paid: a third request is refused at submit.
    t.run(&[
        "payments", "submit", "--user", &gina, "--plan", "premium", "--amount", "5.00",
    ])
    .expect(1);
}

/// The scripts on their own against a real Redis, edge cases included.
mod scripts {
    use super::*;

    const CLAIM: &str = include_str!("../src/payments/claim.lua");
    const ANSWER: &str = include_str!("../src/payments/answer.lua");
    /// Prepended to answer.lua, as payctl does.
    const SUBSCRIPTION: &str = include_str!("../src/payments/subscription.lua");
    const RENEW: &str = include_str!("../src/payments/lock_renew.lua");
    const RELEASE: &str = include_str!("../src/payments/lock_release.lua");

    fn record(id: &str, user: &str, kind: &str, status: &str) -> String {
        serde_json::json!({
            "payment_id": id, "user_id": user, "plan": "premium", "amount": 9.99,
            "currency": "USD", "kind": kind, "processing_status": status,
            "payment_status": "unknown", "created_at": "2025-01-01T00:00:00Z",
            "updated_at": "2025-01-01T00:00:00Z", "requested_ms": 1
        })
        .to_string()
    }

    struct Db(redis::Connection);

    impl Db {
        fn new(db: u8) -> Db {
            let t = Payments::new(db);
            Db(redis::Client::open(t.url)
                .unwrap()
                .get_connection()
                .unwrap())
        }

        /// Stores a `new` request.
        fn save(&mut self, id: &str, user: &str, kind: &str) {
            let _: () = redis::pipe()
                .set(format!("payment:{id}"), record(id, user, kind, "new"))
                .sadd("payments:status:new", id)
                .query(&mut self.0)
                .unwrap();
        }

        fn claim(&mut self, id: &str, user: &str, kind: &str, from: &str) -> (i64, String) {
            redis::Script::new(CLAIM)
                .key(format!("payment:{id}"))
                .key(format!("payments:claim:{kind}:{user}"))
                .key(format!("subscription:{user}"))
                .key(format!("payments:status:{from}"))
                .key("payments:status:in_processing")
                .key("payments:status:duplicated")
                .arg(id)
                .arg(from)
                .arg(kind)
                .arg(user)
                .arg(record(id, user, kind, "in_processing"))
                .arg(record(id, user, kind, "duplicated"))
                .invoke(&mut self.0)
                .unwrap()
        }

        fn answer(&mut self, id: &str, user: &str, kind: &str, action: &str) -> i64 {
            redis::Script::new(&[SUBSCRIPTION, ANSWER].concat())
                .key(format!("payment:{id}"))
                .key("payments:status:in_processing")
                .key("payments:status:processed")
                .key("payments:unannounced")
                .key(format!("subscription:{user}"))
                .key(format!("payments:claim:{kind}:{user}"))
                .arg(id)
                .arg(record(id, user, kind, "processed"))
                .arg(action)
                .arg("premium")
                .arg("9.99")
                .arg("USD")
                .arg("2025-01-01T00:00:01Z")
                .invoke(&mut self.0)
                .unwrap()
        }

        fn get(&mut self, key: &str) -> Option<String> {
            redis::cmd("GET").arg(key).query(&mut self.0).unwrap()
        }

        fn status(&mut self, id: &str) -> Value {
            let json = self.get(&format!("payment:{id}")).unwrap();
            let record: Value = serde_json::from_str(&json).unwrap();
            let mut member = |set: &str| -> bool {
                redis::cmd("SISMEMBER")
                    .arg(format!("payments:status:{set}"))
                    .arg(id)
                    .query(&mut self.0)
                    .unwrap()
            };
            let status = record["processing_status"].as_str().unwrap().to_string();
            assert!(member(&status), "{id} is not in the set of {status}");
            assert_eq!(
                ["new", "in_processing", "processed", "duplicated"]
                    .iter()
                    .filter(|s| member(s))
                    .count(),
                1,
                "{id} is in more than one status set"
            );
            record
        }
    }

    fn ok() -> (i64, String) {
        (1, String::new())
    }

    fn dup(reason: &str) -> (i64, String) {
        (2, reason.to_string())
    }

    #[test]
    fn claim_and_answer_keep_one_payment_per_user_with_the_processor() {
        let mut db = Db::new(8);
        db.save("p1", "u", "payment");
        db.save("p2", "u", "payment");
        assert_eq!(db.claim("p1", "u", "payment", "new"), ok());
        assert_eq!(db.get("payments:claim:payment:u").as_deref(), Some("p1"));
        assert_eq!(db.status("p1")["processing_status"], "in_processing");
        // A second payment while the first is with the processor.
        assert_eq!(
            db.claim("p2", "u", "payment", "new"),
            dup("payment p1 of this user is with the processor")
        );
        let p2 = db.status("p2");
        assert_eq!(
            (p2["processing_status"].as_str(), p2["detail"].as_str()),
            (
                Some("duplicated"),
                Some("payment p1 of this user is with the processor")
            )
        );
        // Claiming again changes nothing: p1 still holds it, p2 is no longer new.
        assert_eq!(db.claim("p1", "u", "payment", "in_processing"), ok());
        assert_eq!(db.claim("p2", "u", "payment", "new"), (0, String::new()));
        assert_eq!(db.claim("p1", "u", "payment", "new"), (0, String::new()));
        // A record that is not what the caller read (another user, another kind) is left alone.
        db.save("p9", "u", "payment");
        assert_eq!(
            db.claim("p9", "someone-else", "payment", "new"),
            (0, String::new())
        );
        assert_eq!(db.claim("p9", "u", "refund", "new"), (0, String::new()));
        assert_eq!(db.status("p9")["processing_status"], "new");

        // The answer releases the claim; accepted activates the subscription.
        assert_eq!(db.answer("p1", "u", "payment", "activate"), 1);
        assert_eq!(
            db.answer("p1", "u", "payment", "activate"),
            0,
            "stored twice"
        );
        assert_eq!(db.get("payments:claim:payment:u"), None);
        assert_eq!(db.status("p1")["processing_status"], "processed");
        let paid = "the subscription is already paid (payment p1)";
        assert_eq!(db.claim("p9", "u", "payment", "new"), dup(paid));

        // Refunds: one at a time, and none once the subscription has ended.
        db.save("r1", "u", "refund");
        db.save("r2", "u", "refund");
        assert_eq!(db.claim("r1", "u", "refund", "new"), ok());
        assert_eq!(
            db.claim("r2", "u", "refund", "new"),
            dup("refund r1 of this user is with the processor")
        );
        assert_eq!(db.answer("r1", "u", "refund", "end"), 1);
        db.save("r3", "u", "refund");
        assert_eq!(
            db.claim("r3", "u", "refund", "new"),
            dup("no active subscription to refund")
        );
        // Ended: paying again is allowed.
        db.save("p3", "u", "payment");
        assert_eq!(db.claim("p3", "u", "payment", "new"), ok());
        // A declined payment frees the user; the subscription stays ended.
        assert_eq!(db.answer("p3", "u", "payment", ""), 1);
        assert_eq!(db.get("payments:claim:payment:u"), None);
        db.save("p4", "u", "payment");
        assert_eq!(db.claim("p4", "u", "payment", "new"), ok());
    }

    #[test]
    fn a_stale_claim_is_taken_over_and_a_legacy_unanswered_payment_keeps_priority() {
        let mut db = Db::new(9);
        // A claim whose holder is not in_processing (edited by hand) holds nothing.
        let _: () = redis::cmd("SET")
            .arg("payments:claim:payment:v")
            .arg("ghost")
            .query(&mut db.0)
            .unwrap();
        db.save("q1", "v", "payment");
        assert_eq!(db.claim("q1", "v", "payment", "new"), ok());
        assert_eq!(db.get("payments:claim:payment:v").as_deref(), Some("q1"));

        // Payments left in_processing without a claim (written before claims
        // existed): the first to confirm takes the claim, the next is duplicated.
        for id in ["w1", "w2"] {
            let _: () = redis::pipe()
                .set(
                    format!("payment:{id}"),
                    record(id, "w", "payment", "in_processing"),
                )
                .sadd("payments:status:in_processing", id)
                .query(&mut db.0)
                .unwrap();
        }
        assert_eq!(db.claim("w1", "w", "payment", "in_processing"), ok());
        assert_eq!(
            db.claim("w2", "w", "payment", "in_processing"),
            dup("payment w1 of this user is with the processor")
        );
        assert_eq!(db.status("w2")["processing_status"], "duplicated");

        // A detail with quotes and non-ASCII stays valid JSON.
        let _: () = redis::cmd("HSET")
            .arg("subscription:x")
            .arg("status")
            .arg("active")
            .arg("payment_id")
            .arg("an \"odd\" id é")
            .query(&mut db.0)
            .unwrap();
        db.save("x1", "x", "payment");
        assert_eq!(
            db.claim("x1", "x", "payment", "new"),
            dup("the subscription is already paid (payment an \"odd\" id é)")
        );
        assert_eq!(
            db.status("x1")["detail"],
            "the subscription is already paid (payment an \"odd\" id é)"
        );
    }

    #[test]
    fn the_process_lock_is_renewed_and_released_only_by_its_holder() {
        let mut db = Db::new(10);
        let key = "payments:process-lock";
        let run = |db: &mut Db, script: &str, token: &str| -> i64 {
            redis::Script::new(script)
                .key(key)
                .arg(token)
                .arg(60_000)
                .invoke(&mut db.0)
                .unwrap()
        };
        assert_eq!(run(&mut db, RENEW, "mine"), 0, "no lock: nothing to renew");
        assert_eq!(db.get(key), None, "renewing must not take a free lock");
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg("mine")
            .arg("PX")
            .arg(1000)
            .query(&mut db.0)
            .unwrap();
        assert_eq!(run(&mut db, RENEW, "theirs"), 0);
        assert_eq!(run(&mut db, RENEW, "mine"), 1);
        let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut db.0).unwrap();
        assert!(ttl > 1000, "renewed to 60 s, got {ttl} ms");
        assert_eq!(run(&mut db, RELEASE, "theirs"), 0);
        assert_eq!(db.get(key).as_deref(), Some("mine"));
        assert_eq!(run(&mut db, RELEASE, "mine"), 1);
        assert_eq!(db.get(key), None);
    }
}

#[test]
fn a_run_that_loses_its_lock_stops_before_the_next_processor_call() {
    let t = Payments::new(11);
    let users: Vec<String> = (0..8).map(|i| unique(&format!("h{i}"))).collect();
    let ids: Vec<String> = users.iter().map(|u| t.submit(u, "1.00")).collect();
    assert_eq!(t.save()["outcomes"]["saved"], 8);

    // A processor that takes a second per answer, one call at a time.
    let slow = processor_with(Vec::new(), Some(ACCEPTED), Duration::from_secs(1));
    let run = t.p.spawn(
        &[
            "payments",
            "process",
            "--processor-url",
            &slow.url,
            "--timeout",
            "5",
            "--concurrency",
            "1",
            "--lock-ttl",
            "2",
            "--output",
            "json",
        ],
        &[("REDIS_URL", &t.url)],
    );
    let mut con = redis::Client::open(t.url.clone())
        .unwrap()
        .get_connection()
        .unwrap();
    while slow.requests() == 0 {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Another run takes the lock (as after an expiry).
    let _: () = redis::cmd("SET")
        .arg("payments:process-lock")
        .arg("another-run")
        .query(&mut con)
        .unwrap();
    let stopped = common::finish(run).expect(2);
    let sent = slow.requests();
    assert!(sent < 8, "{sent} processor calls after the lock was lost");
    let lines: Vec<&str> = stopped
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", stopped.stderr);
    assert!(
        lines[0].contains("lost the process lock"),
        "{}",
        stopped.stderr
    );
    assert!(!stopped.stderr.contains("panicked"), "{}", stopped.stderr);
    let answered = ids
        .iter()
        .filter(|id| t.statuses(id).0 == "processed")
        .count();
    let waiting = ids
        .iter()
        .filter(|id| t.statuses(id).0 == "in_processing")
        .count();
    assert_eq!(answered + waiting, 8);
    assert!(
        answered >= 1 && answered <= sent,
        "{answered} answered, {sent} sent"
    );
    assert_eq!(
        redis::cmd("GET")
            .arg("payments:process-lock")
            .query::<Option<String>>(&mut con)
            .unwrap()
            .as_deref(),
        Some("another-run"),
        "a run must not release a lock it lost"
    );

    // Once the other run is done, the next run sends the rest; nothing is duplicated.
    let _: () = redis::cmd("DEL")
        .arg("payments:process-lock")
        .query(&mut con)
        .unwrap();
    let accepting = accepting_processor();
    let rest = t.process(&["--processor-url", &accepting.url]);
    assert_eq!(
        (
            rest["answered"]["accepted"].as_u64(),
            rest["duplicated"].as_u64()
        ),
        (Some(waiting as u64), Some(0)),
        "{rest}"
    );
    for id in &ids {
        assert_eq!(t.statuses(id), pair("processed", "accepted"));
    }
}

#[test]
fn bad_ids_are_dead_lettered_and_their_neighbours_saved() {
    let t = Payments::new(12);
    let good = |id: &str, user: &str| {
        serde_json::json!({"payment_id": id, "user_id": user, "plan": "premium",
            "amount": 9.99, "currency": "USD", "kind": "payment"})
        .to_string()
    };
    let bad = |payment_id: &str, user_id: &str, plan: &str| {
        serde_json::json!({"payment_id": payment_id, "user_id": user_id, "plan": plan,
            "amount": 9.99, "currency": "USD", "kind": "payment"})
        .to_string()
    };
    let (g1, g2) = (unique("good"), unique("good"));
    let long = "u".repeat(129);
    let messages = [
        good(&g1, "ivan"),
        bad("p\r\nX-Injected: 1", "ivan", "premium"),
        bad("p-nul", "iv\0an", "premium"),
        bad("p-long", &long, "premium"),
        bad("p-space", "ivan", "   "),
        bad("", "ivan", "premium"),
        bad("p-ws", "iv an", "premium"),
        good(&g2, "judy"),
    ];
    let values: Vec<&str> = messages.iter().map(String::as_str).collect();
    common::produce_raw(&t.p.payments, "k", &values);
    let saved = t.save();
    assert_eq!(
        (
            saved["outcomes"]["saved"].as_u64(),
            saved["outcomes"]["dead-lettered"].as_u64()
        ),
        (Some(2), Some(6)),
        "{saved}"
    );
    for id in [&g1, &g2] {
        assert_eq!(t.statuses(id), pair("new", "unknown"));
    }
    let reasons: Vec<String> = read_topic(&format!("{}.dlq", t.p.payments))
        .iter()
        .map(|(_, v)| {
            serde_json::from_str::<Value>(v).unwrap()["reason"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "payment_id contains a control character (U+000D)",
            "user_id contains a control character (U+0000)",
            "user_id is 129 bytes long, at most 128",
            "plan is only whitespace",
            "payment_id is empty",
            "user_id contains whitespace",
        ]
    );

    // Flags: a clear error (exit 2), never a panic.
    for args in [
        &["payments", "process", "--until-idle", "1e20"][..],
        &["payments", "process", "--until-idle", "NaN"],
        &["payments", "process", "--until-idle=-1"],
        &["payments", "process", "--timeout", "1e20"],
        &["payments", "process", "--timeout", "0"],
        &["payments", "process", "--concurrency", "0"],
        &[
            "payments", "submit", "--user", "a\nb", "--plan", "p", "--amount", "1",
        ],
        &[
            "payments", "submit", "--user", "ok", "--plan", " ", "--amount", "1",
        ],
        &[
            "payments", "submit", "--user", &long, "--plan", "p", "--amount", "1",
        ],
    ] {
        let run = t.run(args).expect(2);
        assert!(
            run.stderr.starts_with("error: ") && run.stderr.lines().count() == 1,
            "{args:?}: {}",
            run.stderr
        );
    }
}
