//! payctl on a real Redis Cluster (`scripts/stack.sh up --redis-cluster`:
//! three masters on loopback), reached with a `redis+cluster://` URL.
//!
//! What works there (accounts, transfers across slots, rates, conversions,
//! notifications, subscription payments, reads) is checked to work, money
//! counted with `accounts audit`, crashes between the steps of one
//! operation crafted and finished.

mod common;

use common::{unique, Pipeline};
use serde_json::json;

/// The cluster's URL: `PAYCTL_TEST_REDIS_CLUSTER`, else the local stack's.
fn cluster_url() -> String {
    std::env::var("PAYCTL_TEST_REDIS_CLUSTER")
        .unwrap_or_else(|_| "redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003".into())
}

/// A connection to every master, to look at the cluster as another
/// client would (fails the test when the cluster is not up).
fn masters() -> Vec<redis::Connection> {
    let url = cluster_url();
    let nodes = url.strip_prefix("redis+cluster://").unwrap();
    nodes
        .split(',')
        .map(|node| {
            redis::Client::open(format!("redis://{node}"))
                .unwrap()
                .get_connection()
                .unwrap_or_else(|e| {
                    panic!("{node} is not reachable ({e}); start it: scripts/stack.sh up --redis-cluster")
                })
        })
        .collect()
}

fn on_cluster(p: &Pipeline, args: &[&str]) -> common::Run {
    p.payctl_env(args, &[("REDIS_URL", &cluster_url())])
}

#[test]
fn accounts_rates_and_conversions_work_on_a_cluster_and_spread_over_its_masters() {
    let p = Pipeline::new();
    let ids: Vec<String> = (0..12).map(|i| unique(&format!("cl{i}"))).collect();
    for id in &ids {
        on_cluster(&p, &["accounts", "open", id, "--balance", "10.00"]).expect(0);
    }
    on_cluster(&p, &["accounts", "deposit", &ids[0], "2.50"]).expect(0);
    let again = on_cluster(&p, &["accounts", "open", &ids[0]]).expect(1);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    let shown = on_cluster(&p, &["accounts", "show", &ids[0], "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(shown["balance"], "12.50");
    let listed = on_cluster(&p, &["accounts", "list", "--output", "json"])
        .expect(0)
        .json();
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    for id in &ids {
        assert!(listed.contains(&id.as_str()), "{id} not listed");
    }
    // The accounts live on more than one master: the cluster is used, not
    // one node of it.
    let mut holding = 0;
    for mut master in masters() {
        // A master answers MOVED for a key of a slot it does not serve.
        let here = ids.iter().any(|id| {
            redis::cmd("EXISTS")
                .arg(format!("account:{id}"))
                .query::<i64>(&mut master)
                .is_ok_and(|n| n == 1)
        });
        holding += usize::from(here);
    }
    assert!(holding >= 2, "12 accounts on {holding} master(s)");
    on_cluster(&p, &["accounts", "show", &unique("nobody")]).expect(1);

    on_cluster(&p, &["rates", "set", "NZD", "CHF", "0.5125"]).expect(0);
    let converted = on_cluster(
        &p,
        &["rates", "convert", "100", "NZD", "CHF", "--output", "json"],
    )
    .expect(0)
    .json();
    assert_eq!(converted["result"], "51.25", "{converted}");
    let id = on_cluster(&p, &["rates", "convert", "100", "NZD", "CHF", "--async"])
        .expect(0)
        .stdout
        .trim()
        .to_string();
    on_cluster(&p, &["rates", "serve", "--until-idle", "2"]).expect(0);
    let answered = on_cluster(&p, &["rates", "result", &id, "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(answered["answer"]["result"], "51.25", "{answered}");
    let status = on_cluster(&p, &["status", "--output", "json"])
        .expect(0)
        .json();
    let redis = status["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "redis")
        .unwrap()
        .clone();
    assert!(
        redis["detail"]
            .as_str()
            .unwrap()
            .contains("redis+cluster://"),
        "{redis}"
    );
}

/// An account's balance, as `accounts show` prints it.
fn balance(p: &Pipeline, id: &str) -> String {
    on_cluster(p, &["accounts", "show", id, "--output", "json"])
        .expect(0)
        .json()["balance"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `transfer process` on the cluster until idle; its summary.
fn process(p: &Pipeline) -> serde_json::Value {
    on_cluster(
        p,
        &[
            "transfer",
            "process",
            "--until-idle",
            "2",
            "--output",
            "json",
        ],
    )
    .expect(0)
    .json()
}

/// How many anomalies `accounts audit` finds on the cluster (it exits 1
/// exactly when there are some).
fn anomalies(p: &Pipeline) -> usize {
    let run = on_cluster(p, &["accounts", "audit", "--output", "json"]);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_default();
    let anomalies = report["anomalies"].as_array().map_or(usize::MAX, Vec::len);
    assert_eq!(run.code, i32::from(anomalies != 0), "{}", run.stderr);
    anomalies
}

#[test]
fn transfers_across_slots_move_money_once_and_every_outcome_is_kept() {
    let _alone = transfers_alone();
    let p = Pipeline::new();
    let alice = unique("alice");
    let bob = unique("bob");
    let euro = unique("euro");
    on_cluster(&p, &["accounts", "open", &alice, "--balance", "100.00"]).expect(0);
    on_cluster(&p, &["accounts", "open", &bob]).expect(0);
    on_cluster(&p, &["accounts", "open", &euro, "--currency", "EUR"]).expect(0);
    let key = unique("order");
    let initiate = |amount: &str, to: &str, key: Option<&str>| {
        let mut args = vec![
            "transfer", "initiate", "--from", &alice, "--to", to, "--amount", amount,
        ];
        if let Some(key) = key {
            args.extend(["--idempotency-key", key]);
        }
        on_cluster(&p, &args)
    };
    let first = initiate("12.50", &bob, Some(&key)).expect(0).stdout;
    let replay = initiate("12.50", &bob, Some(&key)).expect(0).stdout;
    assert_eq!(first, replay, "the key's transfer, not another");
    let different = initiate("13", &bob, Some(&key)).expect(1);
    assert!(
        different.stderr.contains("different transfer"),
        "{}",
        different.stderr
    );
    initiate("500", &bob, None).expect(0);
    initiate("1", &euro, None).expect(2);
    initiate("0.25", &bob, None).expect(0);
    assert_eq!(common::read_topic(&p.transfers).len(), 3);

    let summary = process(&p);
    assert_eq!(summary["outcomes"]["completed"], 2, "{summary}");
    assert_eq!(summary["outcomes"]["rejected"], 1, "{summary}");
    assert_eq!(
        (balance(&p, &alice), balance(&p, &bob)),
        ("87.25".into(), "12.75".into())
    );
    let shown = on_cluster(&p, &["transfer", "list", "--output", "json"])
        .expect(0)
        .json();
    let rejected = shown
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["sender_id"] == alice.as_str() && t["amount"] == "500.00")
        .unwrap()
        .clone();
    assert_eq!(rejected["reason"], "insufficient funds", "{rejected}");

    // Every message again (another group): nothing moves twice.
    let again = on_cluster(
        &p,
        &[
            "transfer",
            "process",
            "--group",
            &unique("again"),
            "--until-idle",
            "2",
            "--output",
            "json",
        ],
    )
    .expect(0)
    .json();
    assert_eq!(again["outcomes"]["duplicate"], 3, "{again}");
    assert_eq!(
        (balance(&p, &alice), balance(&p, &bob)),
        ("87.25".into(), "12.75".into())
    );
    // No marker disagrees with another. (Other tests move money on the
    // same cluster meanwhile: the audit's total is checked, in a currency of
    // its own, in a_worker_killed_between_the_debit_and_the_credit_finishes_the_transfer_once.)
    assert_eq!(anomalies(&p), 0);
}

/// A connection to the master that serves `key`'s slot.
fn node_for(key: &str) -> redis::Connection {
    for mut master in masters() {
        // Any other master answers MOVED.
        let probe: redis::RedisResult<i64> = redis::cmd("EXISTS").arg(key).query(&mut master);
        if probe.is_ok() {
            return master;
        }
    }
    panic!("no master serves {key}");
}

/// Initiates `amount` from `from` to `to` on the cluster; its id.
fn initiated(p: &Pipeline, from: &str, to: &str, amount: &str) -> String {
    on_cluster(
        p,
        &[
            "transfer", "initiate", "--from", from, "--to", to, "--amount", amount,
        ],
    )
    .expect(0)
    .stdout
    .trim()
    .to_string()
}

#[test]
fn a_worker_killed_between_the_debit_and_the_credit_finishes_the_transfer_once() {
    let _alone = transfers_alone();
    let p = Pipeline::new();
    let alice = unique("alice");
    let bob = unique("bob");
    // Its own currency, so that other tests' transfers on the same cluster
    // do not move the audit's total.
    on_cluster(
        &p,
        &[
            "accounts",
            "open",
            &alice,
            "--currency",
            "CHF",
            "--balance",
            "100.00",
        ],
    )
    .expect(0);
    on_cluster(&p, &["accounts", "open", &bob, "--currency", "CHF"]).expect(0);
    let chf = |p: &Pipeline| {
        let report = on_cluster(p, &["accounts", "audit", "--output", "json"])
            .expect(0)
            .json();
        let chf = report["currencies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["currency"] == "CHF")
            .unwrap()
            .clone();
        (
            chf["total"].as_str().unwrap().to_string(),
            chf["in_flight"].as_str().unwrap().to_string(),
        )
    };
    let (total, _) = chf(&p);
    let id = initiated(&p, &alice, &bob, "30.00");
    // The state a worker leaves when killed right after the debit step:
    // the claim, then the sender's balance and its debit marker in one
    // atomic step, as the scripts write them.
    let claim = format!("{{transfer:{id}}}:claim");
    let _: () = redis::cmd("SET")
        .arg(&claim)
        .arg("1")
        .query(&mut node_for(&claim))
        .unwrap();
    let sender = format!("account:{alice}");
    let _: () = redis::pipe()
        .atomic()
        .cmd("HINCRBY")
        .arg(&sender)
        .arg("balance")
        .arg(-3000)
        .ignore()
        .cmd("HSET")
        .arg(format!("{{{sender}}}:debits"))
        .arg(&id)
        .arg(format!("d|3000|{bob}"))
        .ignore()
        .query(&mut node_for(&sender))
        .unwrap();
    // In flight: gone from alice, not yet with bob, and counted.
    assert_eq!(balance(&p, &alice), "70.00");
    assert_eq!(balance(&p, &bob), "0.00");
    assert_eq!(chf(&p), (total.clone(), "30.00".into()));
    let run = process(&p);
    assert_eq!(run["outcomes"]["completed"], 1, "{run}");
    assert_eq!(
        (balance(&p, &alice), balance(&p, &bob)),
        ("70.00".into(), "30.00".into()),
        "debited once, credited once"
    );
    assert_eq!(chf(&p), (total, "0.00".into()));
}

#[test]
fn a_credit_the_receiver_refuses_is_refunded_once() {
    let _alone = transfers_alone();
    let p = Pipeline::new();
    let alice = unique("alice");
    let bob = unique("bob");
    on_cluster(&p, &["accounts", "open", &alice, "--balance", "10.00"]).expect(0);
    on_cluster(&p, &["accounts", "open", &bob]).expect(0);
    let id = initiated(&p, &alice, &bob, "4.00");
    // The receiver's account is removed by another service after the
    // initiate: the debit passes, the credit is refused, the sender is
    // paid back.
    let receiver = format!("account:{bob}");
    let _: () = redis::cmd("DEL")
        .arg(&receiver)
        .query(&mut node_for(&receiver))
        .unwrap();
    let run = process(&p);
    assert_eq!(run["outcomes"]["rejected"], 1, "{run}");
    assert_eq!(balance(&p, &alice), "10.00");
    let shown = on_cluster(&p, &["transfer", "show", &id, "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(shown["reason"], "unknown account", "{shown}");
    let sender = format!("account:{alice}");
    let markers: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{{{sender}}}:debits"))
        .query(&mut node_for(&sender))
        .unwrap();
    assert!(markers[&id].starts_with("f|400|"), "{markers:?}");

    // Replaced by a key of another type: refused and refunded too, never
    // an error that would leave the sender's money in flight.
    let carol = unique("carol");
    on_cluster(&p, &["accounts", "open", &carol]).expect(0);
    let id = initiated(&p, &alice, &carol, "3.00");
    let receiver = format!("account:{carol}");
    let _: () = redis::cmd("SET")
        .arg(&receiver)
        .arg("not a hash")
        .query(&mut node_for(&receiver))
        .unwrap();
    let run = process(&p);
    assert_eq!(run["outcomes"]["rejected"], 1, "{run}");
    assert_eq!(balance(&p, &alice), "10.00");
    let shown = json_on_cluster(&p, &["transfer", "show", &id]);
    assert_eq!(
        shown["reason"],
        format!("{carol} is not an account (a string)"),
        "{shown}"
    );
    assert_eq!(anomalies(&p), 0);
}

/// The notifications in `user`'s list, read from the master that has it.
fn notifications(user: &str) -> Vec<serde_json::Value> {
    let key = format!("notifications:{user}");
    let items: Vec<String> = redis::cmd("LRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .query(&mut node_for(&key))
        .unwrap();
    items
        .iter()
        .map(|item| serde_json::from_str(item).unwrap())
        .collect()
}

fn notify(p: &Pipeline, group: &str) -> serde_json::Value {
    on_cluster(
        p,
        &[
            "notify",
            "consume",
            "--group",
            group,
            "--until-idle",
            "3",
            "--output",
            "json",
        ],
    )
    .expect(0)
    .json()
}

#[test]
fn notifications_reach_users_in_every_slot_once_even_after_a_slot_lost_its_batch() {
    let p = Pipeline::new();
    // Outcome events for users whose lists live in many slots, and a rate
    // change for watchers in many slots: one batch, one script call per slot.
    let users: Vec<String> = (0..30).map(|_| unique("user")).collect();
    let watchers: Vec<String> = (0..12).map(|_| unique("watcher")).collect();
    for watcher in &watchers {
        on_cluster(
            &p,
            &["notify", "watch", "--user", watcher, "--pair", "SEK/NOK"],
        )
        .expect(0);
    }
    let events: Vec<String> = users
        .iter()
        .enumerate()
        .map(|(i, user)| {
            json!({"transaction_id": unique(&format!("t{i}")), "user_id": user, "status": "completed"})
                .to_string()
        })
        .collect();
    let events: Vec<&str> = events.iter().map(String::as_str).collect();
    common::produce_raw(&p.transactions, "k", &events);
    on_cluster(&p, &["rates", "set", "SEK", "NOK", "0.9731"]).expect(0);

    let first = notify(&p, &p.group);
    assert_eq!(first["outcomes"]["notified"], 31, "{first}");
    for user in &users {
        let items = notifications(user);
        assert_eq!(items.len(), 1, "{user}: {items:?}");
        assert_eq!(items[0]["user_id"], user.as_str());
    }
    for watcher in &watchers {
        let items = notifications(watcher);
        let rate_changes = items
            .iter()
            .filter(|n| n["message"].as_str().unwrap().starts_with("Rate SEK/NOK"))
            .count();
        assert_eq!(rate_changes, 1, "{watcher}: {items:?}");
    }
    let slots: std::collections::HashSet<u16> = users
        .iter()
        .map(|user| slot(&format!("notifications:{user}")))
        .collect();
    assert!(slots.len() > 20, "the users' lists share slots: {slots:?}");

    // A second group reads every message again: nothing is pushed twice.
    let again = notify(&p, &unique("again"));
    assert_eq!(again["outcomes"]["notified"], 0, "{again}");
    assert_eq!(again["outcomes"]["duplicate"], 31, "{again}");

    // A crash after some slots' calls and before others' leaves the others
    // as if never written: crafted by removing one user's list and its
    // slot's applied record. A redelivery writes that slot's notification
    // again, once, and no other slot's.
    let lost = &users[7];
    let list = format!("notifications:{lost}");
    let applied = format!("notify:applied:{}", tag_of(slot(&list)));
    let mut node = node_for(&list);
    let removed: i64 = redis::cmd("DEL")
        .arg(&list)
        .arg(&applied)
        .query(&mut node)
        .unwrap();
    assert_eq!(removed, 2, "{applied} is where the slot's offsets are kept");
    let redelivered = notify(&p, &unique("redelivered"));
    assert_eq!(redelivered["outcomes"]["notified"], 1, "{redelivered}");
    for user in &users {
        assert_eq!(notifications(user).len(), 1, "{user}");
    }
}

/// `CLUSTER KEYSLOT` of `key`, asked of the cluster itself.
fn slot(key: &str) -> u16 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(&mut masters()[0])
        .unwrap()
}

/// payctl's hash tag for `slot`, checked against the cluster's own hashing.
fn tag_of(wanted: u16) -> String {
    let tag = payctl::store::slot_tag(wanted).to_string();
    assert_eq!(slot(&format!("notify:applied:{tag}")), wanted);
    tag
}

fn json_on_cluster(p: &Pipeline, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--output", "json"]);
    on_cluster(p, &all).expect(0).json()
}

fn submit(p: &Pipeline, user: &str) -> String {
    on_cluster(
        p,
        &[
            "payments", "submit", "--user", user, "--plan", "premium", "--amount", "9.99",
        ],
    )
    .expect(0)
    .stdout
    .trim()
    .to_string()
}

/// (processing status, payment status) of a payment on the cluster.
fn statuses(p: &Pipeline, id: &str) -> (String, String) {
    let shown = json_on_cluster(p, &["payments", "show", id]);
    (
        shown["processing_status"].as_str().unwrap().to_string(),
        shown["payment_status"].as_str().unwrap().to_string(),
    )
}

/// Runs a command on the master that serves `key`.
fn on_node<T: redis::FromRedisValue>(key: &str, cmd: &mut redis::Cmd) -> T {
    cmd.query(&mut node_for(key)).unwrap()
}

fn subscription(user: &str) -> std::collections::HashMap<String, String> {
    let key = format!("subscription:{user}");
    on_node(&key, redis::cmd("HGETALL").arg(&key))
}

/// Asks for a refund of `user`'s subscription and saves the request; its id.
fn refund_saved(p: &Pipeline, user: &str) -> String {
    let refund = on_cluster(p, &["payments", "refund", "--user", user])
        .expect(0)
        .stdout
        .trim()
        .to_string();
    json_on_cluster(p, &["payments", "save", "--until-idle", "3"]);
    refund
}

#[test]
fn subscription_payments_keep_one_charge_per_subscription_across_slots_and_crashes() {
    let p = Pipeline::new();
    let users: Vec<String> = (0..10).map(|_| unique("payer")).collect();
    let mut ids: Vec<String> = users.iter().map(|user| submit(&p, user)).collect();
    // The first user asks three times before anything is processed: one
    // charge, the latest request; the others are duplicated.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let second = submit(&p, &users[0]);
    std::thread::sleep(std::time::Duration::from_millis(5));
    let latest = submit(&p, &users[0]);
    let saved = json_on_cluster(&p, &["payments", "save", "--until-idle", "3"]);
    assert_eq!(saved["outcomes"]["saved"], 12, "{saved}");
    // Saved again by another group: nothing is saved or listed twice.
    let again = json_on_cluster(
        &p,
        &[
            "payments",
            "save",
            "--group",
            &unique("again"),
            "--until-idle",
            "3",
        ],
    );
    assert_eq!(again["outcomes"]["duplicate"], 12, "{again}");

    json_on_cluster(
        &p,
        &[
            "payments",
            "process",
            "--accept-rate",
            "1",
            "--until-idle",
            "2",
        ],
    );
    assert_eq!(
        statuses(&p, &latest),
        ("processed".into(), "accepted".into())
    );
    for id in [&ids[0], &second] {
        assert_eq!(statuses(&p, id).0, "duplicated", "{id}");
    }
    for (user, id) in users.iter().zip(&ids).skip(1) {
        assert_eq!(
            statuses(&p, id),
            ("processed".into(), "accepted".into()),
            "{id}"
        );
        assert_eq!(subscription(user)["payment_id"], *id);
    }
    assert_eq!(subscription(&users[0])["payment_id"], latest);
    assert_eq!(subscription(&users[0])["status"], "active");
    ids[0] = latest.clone();

    // Each answer was announced once; `notify consume` completes them.
    let events = common::read_topic(&p.transactions);
    for id in &ids {
        let announced = events
            .iter()
            .filter(|(_, e)| e.contains(id.as_str()))
            .count();
        assert_eq!(announced, 1, "{id}");
    }
    json_on_cluster(&p, &["notify", "consume", "--until-idle", "3"]);
    for id in &ids {
        assert_eq!(statuses(&p, id).0, "completed", "{id}");
    }
    let completed: Vec<String> = {
        let key = "payments:status:completed";
        on_node(key, redis::cmd("SMEMBERS").arg(key))
    };
    assert!(
        ids.iter().all(|id| completed.contains(id)),
        "the completed set follows the records"
    );

    // A crash between a payment's record and its subscription: crafted as
    // a processed, accepted refund whose claim is still held and whose
    // subscription is still active. The next pass finishes it before
    // anything else: the subscription ends, once.
    let user = &users[3];
    let refund = refund_saved(&p, user);
    let record_key = format!("payment:{refund}");
    let stored: String = on_node(&record_key, redis::cmd("GET").arg(&record_key));
    let processed = stored
        .replace(
            "\"processing_status\":\"new\"",
            "\"processing_status\":\"processed\"",
        )
        .replace(
            "\"payment_status\":\"unknown\"",
            "\"payment_status\":\"accepted\"",
        );
    assert_ne!(processed, stored);
    let claim = payctl::payments::claim_key(payctl::payments::PaymentKind::Refund, user);
    let _: () = on_node(
        &record_key,
        redis::cmd("SET").arg(&record_key).arg(&processed),
    );
    let _: () = on_node(&claim, redis::cmd("SET").arg(&claim).arg(&refund));
    let _: i64 = on_node(
        "payments:unannounced",
        redis::cmd("SADD").arg("payments:unannounced").arg(&refund),
    );
    let _: i64 = on_node(
        "payments:status:new",
        redis::cmd("SREM").arg("payments:status:new").arg(&refund),
    );
    assert_eq!(subscription(user)["status"], "active");
    json_on_cluster(&p, &["payments", "process", "--accept-rate", "1"]);
    assert_eq!(subscription(user)["status"], "ended");
    let held: Option<String> = on_node(&claim, redis::cmd("GET").arg(&claim));
    assert_eq!(
        held, None,
        "the claim is given up with the subscription step"
    );

    // A payment answered before, read again as `new` (a stale read, a
    // record edited back): never claimed or charged a second time, and
    // its answer never applied twice.
    let user = &users[5];
    let answered_before = &ids[5];
    let record_key = format!("payment:{answered_before}");
    let stored: String = on_node(&record_key, redis::cmd("GET").arg(&record_key));
    let stale = stored
        .replace(
            "\"processing_status\":\"completed\"",
            "\"processing_status\":\"new\"",
        )
        .replace(
            "\"payment_status\":\"accepted\"",
            "\"payment_status\":\"unknown\"",
        );
    assert_ne!(stale, stored);
    let _: () = on_node(&record_key, redis::cmd("SET").arg(&record_key).arg(&stale));
    let _: i64 = on_node(
        "payments:status:new",
        redis::cmd("SADD")
            .arg("payments:status:new")
            .arg(answered_before),
    );
    let sub_key = format!("subscription:{user}");
    let _: i64 = on_node(
        &sub_key,
        redis::cmd("HSET").arg(&sub_key).arg("status").arg("ended"),
    );
    json_on_cluster(&p, &["payments", "process", "--accept-rate", "1"]);
    assert_eq!(
        statuses(&p, answered_before),
        ("new".into(), "unknown".into())
    );
    assert_eq!(subscription(user)["status"], "ended");

    // A crash after a user's claim and before the record: crafted as a
    // claim held by a payment still `new`. The next pass goes on with it.
    let user = &users[4];
    let refund = refund_saved(&p, user);
    let claim = payctl::payments::claim_key(payctl::payments::PaymentKind::Refund, user);
    let _: () = on_node(&claim, redis::cmd("SET").arg(&claim).arg(&refund));
    json_on_cluster(&p, &["payments", "process", "--accept-rate", "1"]);
    assert_eq!(
        statuses(&p, &refund),
        ("processed".into(), "accepted".into())
    );
    assert_eq!(subscription(user)["status"], "ended");
}

#[test]
fn a_transfer_id_holding_braces_does_not_split_its_steps_over_slots() {
    let _alone = transfers_alone();
    let p = Pipeline::new();
    // A brace in a key makes its hash tag: the claim of `transfer:t{x}y`
    // must still land in that record's slot, or a forged id stops the worker.
    let alice = common::open_account_with(|args| on_cluster(&p, args), "br-alice", "50.00");
    let bob = common::open_account_with(|args| on_cluster(&p, args), "br-bob", "0.00");
    // Another service stored and announced a transfer under such an id.
    let id = initiated(&p, &alice, &bob, "1.00");
    let record_key = format!("transfer:{id}");
    let stored: String = on_node(&record_key, redis::cmd("GET").arg(&record_key));
    let forged = format!("t{{{}}}y", unique("brace"));
    let record = stored
        .replace(&id, &forged)
        .replace("\"amount\":1.00", "\"amount\":12.34");
    assert!(
        record.contains(&forged) && record.contains("12.34"),
        "{record}"
    );
    let forged_key = format!("transfer:{forged}");
    let _: () = on_node(&forged_key, redis::cmd("SET").arg(&forged_key).arg(&record));
    common::produce_raw(&p.transfers, &alice, &[&record]);
    let summary = process(&p);
    for id in [&id, &forged] {
        let shown = json_on_cluster(&p, &["transfer", "show", id]);
        assert_eq!(shown["status"], "completed", "{shown} {summary}");
    }
    assert_eq!(
        (balance(&p, &alice), balance(&p, &bob)),
        ("36.66".into(), "13.34".into()),
        "{summary}"
    );
    assert_eq!(anomalies(&p), 0);
}

#[test]
fn the_audit_adds_up_at_every_instant_while_transfers_move_across_slots() {
    let _alone = transfers_alone();
    let p = Pipeline::new();
    // Its own currency: nothing else on the cluster moves SEK.
    let ids: Vec<String> = (0..16).map(|_| unique("sek")).collect();
    for id in &ids {
        on_cluster(
            &p,
            &[
                "accounts",
                "open",
                id,
                "--currency",
                "SEK",
                "--balance",
                "100.00",
            ],
        )
        .expect(0);
    }
    let sek = |p: &Pipeline| -> (i32, serde_json::Value) {
        let run = on_cluster(p, &["accounts", "audit", "--output", "json"]);
        let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_default();
        let sek = report["currencies"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["currency"] == "SEK"))
            .cloned()
            .unwrap_or_default();
        (
            run.code,
            json!({"total": sek["total"], "in_flight": sek["in_flight"], "anomalies": report["anomalies"]}),
        )
    };
    let (code, before) = sek(&p);
    assert_eq!(code, 0, "{before}");
    let dir = std::env::temp_dir().join(unique("audit-batch"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("batch.csv");
    let mut csv = String::from("from,to,amount,currency\n");
    for i in 0..3000 {
        let (from, to) = (&ids[i % 16], &ids[(i * 7 + 3) % 16]);
        if from != to {
            csv.push_str(&format!("{from},{to},{}.{:02},SEK\n", 1 + i % 9, i % 100));
        }
    }
    std::fs::write(&file, csv).unwrap();
    on_cluster(
        &p,
        &["transfer", "initiate", "--file", file.to_str().unwrap()],
    )
    .expect(0);

    // Audits while a worker applies them, a few transfers per batch.
    let worker = p.spawn(
        &[
            "transfer",
            "process",
            "--until-idle",
            "2",
            "--batch-size",
            "4",
        ],
        &[("REDIS_URL", &cluster_url())],
    );
    let mut worker = worker;
    let mut audits = Vec::new();
    while worker.try_wait().unwrap().is_none() {
        let (code, seen) = sek(&p);
        assert_eq!(code, 0, "an audit while transfers flow: {seen}");
        assert_eq!(
            seen["total"], before["total"],
            "an audit while transfers flow: {seen}"
        );
        audits.push(seen["in_flight"].as_str().unwrap_or("?").to_string());
    }
    let finished = common::finish(worker);
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    // Money is seen in flight now and then (a pair of accounts read on
    // either side of a step); the totals above are what must hold.
    eprintln!("in flight as each audit saw it: {audits:?}");
    assert!(
        audits.len() >= 3,
        "too few audits while the worker ran: {audits:?}"
    );
    let (code, after) = sek(&p);
    assert_eq!(
        (code, &after["total"], &after["in_flight"]),
        (0, &before["total"], &json!("0.00")),
        "{after}"
    );
}

#[test]
fn status_reports_the_durability_of_every_master() {
    let p = Pipeline::new();
    let detail = |p: &Pipeline| -> String {
        let report = on_cluster(p, &["status", "--output", "json"]).json();
        let redis = report["checks"]
            .as_array()
            .or(report.as_array())
            .unwrap()
            .iter()
            .find(|c| c["check"] == "redis")
            .cloned()
            .unwrap();
        redis["detail"].as_str().unwrap().to_string()
    };
    assert!(
        detail(&p).ends_with("every master (3): appendfsync always"),
        "{}",
        detail(&p)
    );
    // One master that keeps less is named, with what it keeps.
    struct Restore(redis::Connection);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _: redis::RedisResult<()> = redis::cmd("CONFIG")
                .arg(&["SET", "appendfsync", "always"])
                .query(&mut self.0);
        }
    }
    let mut weaker = Restore(masters().remove(1));
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "appendfsync", "everysec"])
        .query(&mut weaker.0)
        .unwrap();
    let port = cluster_url()
        .split(',')
        .nth(1)
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let seen = detail(&p);
    assert!(
        seen.contains(&format!(
            "{port}: appendfsync everysec: a crash of Redis can lose writes"
        )),
        "{seen}"
    );
    assert_eq!(seen.matches(": appendfsync always").count(), 2, "{seen}");
}

/// Held by every test that initiates transfers: `transfer resend` sends
/// every undecided transfer of the cluster's one database to its own test's
/// topic, and must not take another test's transfers while that test counts
/// its outcomes.
fn transfers_alone() -> std::sync::MutexGuard<'static, ()> {
    static TRANSFERS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TRANSFERS.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn resend_publishes_undecided_transfers_again_and_forgets_decided_ones() {
    let _alone = transfers_alone();
    let p = Pipeline::new();
    let alice = common::open_account_with(|args| on_cluster(&p, args), "rs-alice", "100.00");
    let bob = common::open_account_with(|args| on_cluster(&p, args), "rs-bob", "0.00");
    let published = initiated(&p, &alice, &bob, "10.00");
    // A transfer whose initiate crashed before the broker acknowledged it:
    // its message went to another topic (lost to this pipeline), and its
    // publishing mark and unpublished entry are as the crash left them.
    let elsewhere = Pipeline::new();
    let crashed = initiated(&elsewhere, &alice, &bob, "25.00");
    let publishing = format!("{{transfer:{crashed}}}:publishing");
    let _: () = on_node(&publishing, redis::cmd("SET").arg(&publishing).arg("1"));
    let _: i64 = on_node(
        "transfers:unpublished",
        redis::cmd("SADD")
            .arg("transfers:unpublished")
            .arg(&crashed),
    );

    let sent = json_on_cluster(&p, &["transfer", "resend", "--older-than", "0"]);
    assert_eq!(sent["failed"], 0, "{sent}");
    let on_topic: Vec<String> = common::read_topic(&p.transfers)
        .into_iter()
        .map(|(_, message)| message)
        .collect();
    for id in [&published, &crashed] {
        let copies = on_topic.iter().filter(|m| m.contains(id.as_str())).count();
        let expected = if id == &published { 2 } else { 1 };
        assert_eq!(copies, expected, "{id}: {on_topic:?}");
    }
    let marked: i64 = on_node(&publishing, redis::cmd("EXISTS").arg(&publishing));
    assert_eq!(
        marked, 0,
        "the publishing mark goes once the broker has the message"
    );
    let unpublished: bool = on_node(
        "transfers:unpublished",
        redis::cmd("SISMEMBER")
            .arg("transfers:unpublished")
            .arg(&crashed),
    );
    assert!(!unpublished);

    // Each applied once, whatever the copies.
    process(&p);
    assert_eq!(
        (balance(&p, &alice), balance(&p, &bob)),
        ("65.00".into(), "35.00".into())
    );
    for id in [&published, &crashed] {
        let shown = json_on_cluster(&p, &["transfer", "show", id]);
        assert_eq!(shown["status"], "completed", "{shown}");
    }
    // Decided now: not sent again, and gone from the undecided index.
    json_on_cluster(&p, &["transfer", "resend", "--older-than", "0"]);
    assert_eq!(common::read_topic(&p.transfers).len(), on_topic.len());
    for id in [&published, &crashed] {
        let pending: Option<f64> = on_node(
            "transfers:pending",
            redis::cmd("ZSCORE").arg("transfers:pending").arg(id),
        );
        assert_eq!(pending, None, "{id}");
    }
}

#[test]
fn cluster_urls_are_checked_before_connecting() {
    let p = Pipeline::new();
    for (url, says) in [
        ("redis+cluster://127.0.0.1:7001/3", "only database 0"),
        ("redis+cluster://127.0.0.1", "host:port"),
        ("rediss+cluster://127.0.0.1:7001#insecure", "refuses"),
        (
            "rediss+cluster://127.0.0.1:7001#insecure,127.0.0.1:7002",
            "refuses",
        ),
        ("redis+cluster://127.0.0.1:7001#x", "no #fragment"),
    ] {
        let run = p
            .payctl_env(&["accounts", "list"], &[("REDIS_URL", url)])
            .expect(2);
        assert!(run.stderr.contains(says), "{url}: {}", run.stderr);
    }
}
