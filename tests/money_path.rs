//! The money path against forged messages, odd stored values and
//! permanent errors, on the real broker and Redis.

mod common;

use common::{produce_raw, read_topic, redis, unique, Pipeline};
use redis::Commands;
use serde_json::Value;

fn open(p: &Pipeline, prefix: &str, balance: &str) -> String {
    common::open_account(p, prefix, balance)
}

/// Accounts a test broke on purpose, removed when it ends (even by a panic)
/// so other tests listing accounts never meet them.
struct Broken(Vec<String>);

impl Drop for Broken {
    fn drop(&mut self) {
        let mut con = redis();
        for id in &self.0 {
            let _: Result<(), _> = con.del(format!("account:{id}"));
            let _: Result<(), _> = con.zrem("accounts", id);
        }
    }
}

/// The raw balance field, as stored.
fn raw_balance(id: &str) -> String {
    redis().hget(format!("account:{id}"), "balance").unwrap()
}

/// Stores a transfer the way the versioned transfer service does (another client), returning its message.
fn store_seed_transfer(id: &str, from: &str, to: &str, amount: &str) -> String {
    let json = format!(
        r#"{{"transfer_id": "{id}", "sender_id": "{from}", "receiver_id": "{to}", "amount": {amount}, "status": "initiated", "version": 1}}"#
    );
    let _: () = redis().set(format!("transfer:{id}"), &json).unwrap();
    json
}

fn stored(id: &str) -> Value {
    let json: String = redis().get(format!("transfer:{id}")).unwrap();
    serde_json::from_str(&json).unwrap()
}

fn dead_letters(topic: &str) -> Vec<Value> {
    read_topic(&format!("{topic}.dlq"))
        .iter()
        .map(|(_, v)| serde_json::from_str(v).unwrap())
        .collect()
}

fn events(topic: &str) -> Vec<Value> {
    read_topic(topic)
        .iter()
        .map(|(_, v)| serde_json::from_str(v).unwrap())
        .collect()
}

#[test]
fn a_forged_message_moves_nothing_and_events_tell_the_stored_outcome() {
    let p = Pipeline::new();
    let alice = open(&p, "alice", "100.00");
    let bob = open(&p, "bob", "0");
    let mallory = open(&p, "mallory", "0");
    let id = unique("t");
    let genuine = store_seed_transfer(&id, &alice, &bob, "10");
    // The forgery arrives first: same id and version, another receiver and amount.
    let forged = format!(
        r#"{{"transfer_id":"{id}","sender_id":"{alice}","receiver_id":"{mallory}","amount":90,"version":1,"status":"initiated"}}"#
    );
    // A genuine copy with the amount written another way still matches.
    let same_by_value = genuine.replace("\"amount\": 10", "\"amount\": \"10.00\"");
    produce_raw(&p.transfers, &alice, &[&forged, &genuine, &same_by_value]);
    let summary = p.process(&[]);
    assert_eq!(summary["outcomes"]["dead-lettered"], 1, "{summary}");
    assert_eq!(summary["outcomes"]["completed"], 1, "{summary}");
    assert_eq!(summary["outcomes"]["duplicate"], 1, "{summary}");

    assert_eq!(raw_balance(&alice), "9000");
    assert_eq!(raw_balance(&bob), "1000");
    assert_eq!(raw_balance(&mallory), "0");
    let record = stored(&id);
    assert_eq!(record["receiver_id"], bob.as_str());
    assert_eq!(record["version"], 2);
    assert_eq!(record["status"], "completed");

    let letters = dead_letters(&p.transfers);
    assert_eq!(letters.len(), 1);
    let reason = letters[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("does not match the stored transfer (receiver_id"),
        "{reason}"
    );
    assert!(
        reason.contains(&bob),
        "the stored version is in the reason: {reason}"
    );
    assert!(letters[0]["payload"].as_str().unwrap().contains(&mallory));

    // Every event, first or announced again, names the stored parties.
    let events = events(&p.transactions);
    assert_eq!(events.len(), 4, "{events:?}");
    for event in &events {
        assert_ne!(event["user_id"], mallory.as_str(), "{event}");
        assert_eq!(event["amount"].to_string(), "10", "{event}");
    }
    assert_eq!(
        events.iter().filter(|e| e["reannounced"] == true).count(),
        2
    );
}

#[test]
fn a_balance_that_is_not_a_canonical_integer_rejects_the_transfer_whole() {
    let p = Pipeline::new();
    let mut broken = Broken(Vec::new());
    for odd in ["100.0", "+5", " 5", "1e3", "05", "", "-0", "12abc"] {
        let alice = open(&p, "alice", "50.00");
        let bob = open(&p, "bob", "0");
        broken.0.push(bob.clone());
        let _: () = redis()
            .hset(format!("account:{bob}"), "balance", odd)
            .unwrap();
        let id = unique("t");
        let message = store_seed_transfer(&id, &alice, &bob, "10");
        // Delivered three times: a retry must not debit again either.
        produce_raw(&p.transfers, &alice, &[&message, &message, &message]);
        let summary = p.process(&[]);
        assert_eq!(summary["outcomes"]["rejected"], 1, "{odd:?}: {summary}");
        assert_eq!(raw_balance(&alice), "5000", "{odd:?}");
        assert_eq!(raw_balance(&bob), odd, "{odd:?}");
        let record = stored(&id);
        assert_eq!(record["status"], "rejected");
        assert_eq!(record["reason"], format!("invalid balance on {bob}"));
    }
}

#[test]
fn permanent_errors_are_dead_lettered_and_the_worker_moves_on() {
    let p = Pipeline::new();
    let alice = open(&p, "alice", "100.00");
    let bob = open(&p, "bob", "0");
    // An account key of the wrong type: HMGET fails inside the script.
    let broken = unique("broken");
    let _cleanup = Broken(vec![broken.clone()]);
    let _: () = redis()
        .set(format!("account:{broken}"), "not a hash")
        .unwrap();
    let to_broken = unique("t");
    let wrongtype = store_seed_transfer(&to_broken, &alice, &broken, "1");
    let before = unique("t");
    let first = store_seed_transfer(&before, &alice, &bob, "2");
    let after = unique("t");
    let last = store_seed_transfer(&after, &alice, &bob, "3");
    // 900 KB of control bytes: its dead letter must be cut to fit the broker.
    let huge = "\u{1}".repeat(900 * 1024);
    let out_of_range = format!(
        r#"{{"transfer_id":"{before}","sender_id":"{alice}","receiver_id":"{bob}","amount":2,"status":"initiated","version":18446744073709551615}}"#
    );
    produce_raw(
        &p.transfers,
        &alice,
        &[&first, &wrongtype, &huge, &out_of_range, &last],
    );
    let summary = p.process(&[]);
    assert_eq!(summary["outcomes"]["completed"], 2, "{summary}");
    assert_eq!(raw_balance(&alice), "9500");
    assert_eq!(raw_balance(&bob), "500");
    // One server fails the transfer's one step whole: nothing moved, and
    // the message is dead-lettered. A cluster has debited the sender by
    // the time it meets the receiver: the credit is refused and the
    // sender refunded, a final rejection.
    let letters = dead_letters(&p.transfers);
    let reason = |letter: &serde_json::Value| letter["reason"].as_str().unwrap().to_string();
    let others = if common::on_cluster() {
        assert_eq!(summary["outcomes"]["rejected"], 1, "{summary}");
        assert_eq!(summary["outcomes"]["dead-lettered"], 2, "{summary}");
        let record = stored(&to_broken);
        assert_eq!(record["status"], "rejected");
        assert_eq!(
            record["reason"],
            format!("{broken} is not an account (a string)")
        );
        &letters[..]
    } else {
        assert_eq!(summary["outcomes"]["dead-lettered"], 3, "{summary}");
        assert_eq!(stored(&to_broken)["status"], "initiated");
        assert!(
            reason(&letters[0]).contains("WRONGTYPE"),
            "{}",
            reason(&letters[0])
        );
        &letters[1..]
    };
    assert_eq!(others.len(), 2, "{letters:?}");
    assert!(
        reason(&others[0]).starts_with("not a transfer message"),
        "{}",
        reason(&others[0])
    );
    assert_eq!(others[0]["payload_truncated"], true);
    assert_eq!(others[0]["payload_bytes"], 900 * 1024);
    assert!(serde_json::to_string(&others[0]).unwrap().len() <= 512 * 1024);
    assert!(
        reason(&others[1]).contains("out of range"),
        "{}",
        reason(&others[1])
    );

    // Nothing left behind: the group's lag is 0.
    let lag = p
        .payctl(&["groups", "lag", &p.group, "--output", "json"])
        .expect(0)
        .json();
    assert!(!lag["partitions"].as_array().unwrap().is_empty(), "{lag}");
    assert_eq!(lag["total"], 0, "{lag}");
}

#[test]
fn a_wrongtype_notification_list_is_dead_lettered_alone() {
    let p = Pipeline::new();
    let (ok_user, bad_user) = (unique("user"), unique("user"));
    let _: () = redis()
        .set(format!("notifications:{bad_user}"), "not a list")
        .unwrap();
    let event = |user: &str, n: u32| {
        format!(
            r#"{{"transaction_id":"t{n}","user_id":"{user}","status":"completed","event_id":"e-{user}-{n}"}}"#
        )
    };
    produce_raw(
        &p.transactions,
        "k",
        &[
            &event(&ok_user, 1),
            &event(&bad_user, 2),
            &event(&ok_user, 3),
        ],
    );
    let summary = p
        .payctl(&["notify", "consume", "--until-idle", "2", "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(summary["outcomes"]["notified"], 2, "{summary}");
    assert_eq!(summary["outcomes"]["dead-lettered"], 1, "{summary}");
    let items: Vec<String> = redis()
        .lrange(format!("notifications:{ok_user}"), 0, -1)
        .unwrap();
    assert_eq!(items.len(), 2);
    let letters = dead_letters(&p.transactions);
    assert_eq!(letters.len(), 1);
    assert!(letters[0]["reason"].as_str().unwrap().contains("WRONGTYPE"));

    // Read again by another group: applied offsets make it push nothing.
    let again = p
        .payctl(&[
            "notify",
            "consume",
            "--until-idle",
            "2",
            "--output",
            "json",
            "--group",
            &unique("again"),
        ])
        .expect(0)
        .json();
    assert_eq!(again["outcomes"]["notified"], 0, "{again}");
    let items: Vec<String> = redis()
        .lrange(format!("notifications:{ok_user}"), 0, -1)
        .unwrap();
    assert_eq!(items.len(), 2);
    // No key per event is left behind.
    let markers: Vec<String> = redis().keys(format!("notified:*{ok_user}*")).unwrap();
    assert!(markers.is_empty(), "{markers:?}");
}

#[test]
fn a_reannounced_event_notifies_once_and_a_replay_is_possible_on_purpose() {
    let p = Pipeline::new();
    let user = unique("user");
    let first = format!(
        r#"{{"transaction_id":"t1","user_id":"{user}","status":"completed","event_id":"t1:1:debit"}}"#
    );
    let again = first.replace("\"event_id\"", "\"reannounced\":true,\"event_id\"");
    produce_raw(&p.transactions, &user, &[&first, &again]);
    let summary = p
        .payctl(&["notify", "consume", "--until-idle", "2", "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(summary["outcomes"]["notified"], 1, "{summary}");
    assert_eq!(summary["outcomes"]["duplicate"], 1, "{summary}");
    let list = format!("notifications:{user}");
    let items: Vec<String> = redis().lrange(&list, 0, -1).unwrap();
    assert_eq!(items.len(), 1);
    let n: Value = serde_json::from_str(&items[0]).unwrap();
    assert_eq!(n["event_id"], "t1:1:debit");

    // The other order: a worker that lost its partitions mid-batch
    // publishes its first announcement after the new owner announced the
    // outcome again. Still one notification.
    let late = unique("user");
    let first_late = first.replace(&user, &late);
    let again_late = again.replace(&user, &late);
    produce_raw(&p.transactions, &late, &[&again_late]);
    produce_raw(&p.transactions, &late, &[&first_late]);
    let summary = p
        .payctl(&["notify", "consume", "--until-idle", "2", "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(summary["outcomes"]["notified"], 1, "{summary}");
    assert_eq!(summary["outcomes"]["duplicate"], 1, "{summary}");
    let late_items: Vec<String> = redis()
        .lrange(format!("notifications:{late}"), 0, -1)
        .unwrap();
    assert_eq!(late_items.len(), 1, "{late_items:?}");

    let replay = p
        .payctl(&[
            "notify",
            "consume",
            "--until-idle",
            "2",
            "--output",
            "json",
            "--replay",
            "--group",
            &unique("replay"),
        ])
        .expect(0)
        .json();
    // Each user's first announcement once more; the repeats stay repeats.
    assert_eq!(replay["outcomes"]["notified"], 2, "{replay}");
    let items: Vec<String> = redis().lrange(&list, 0, -1).unwrap();
    assert_eq!(items.len(), 2);
}

#[test]
fn edge_numbers_get_a_clear_error_not_a_panic() {
    let p = Pipeline::new();
    for args in [
        &["transfer", "process", "--until-idle", "1e20"][..],
        &["notify", "consume", "--until-idle", "NaN"],
        &["transfer", "process", "--batch-size", "0"],
    ] {
        let run = p.payctl(args).expect(2);
        assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    }
}

#[test]
fn a_fatal_error_stops_the_worker_with_one_line_and_commits_nothing_unfinished() {
    let p = Pipeline::new();
    let alice = open(&p, "alice", "10.00");
    let bob = open(&p, "bob", "0");
    let id = unique("t");
    let message = store_seed_transfer(&id, &alice, &bob, "1");
    produce_raw(&p.transfers, &alice, &[&message]);
    // A Redis user that may run scripts but not read accounts: NOPERM is
    // not the message's fault, and retrying will not cure it.
    let user = unique("payctl-test");
    common::on_every_server(redis::cmd("ACL").arg(&[
        "SETUSER", &user, "on", ">secret", "~*", "&*", "+@all", "-hmget",
    ]));
    let url = common::redis_url_as(&user, "secret");
    let run = p
        .payctl_env(
            &["transfer", "process", "--until-idle", "5"],
            &[("REDIS_URL", &url)],
        )
        .expect(2);
    common::on_every_server(redis::cmd("ACL").arg(&["DELUSER", &user]));
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].contains("no permissions") || errors[0].contains("can't run this command"),
        "{}",
        run.stderr
    );
    assert!(errors[0].contains("worker stopped"), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert_eq!(stored(&id)["status"], "initiated");
    // Uncommitted: the worker with proper rights picks the transfer up.
    let summary = p.process(&[]);
    assert_eq!(summary["outcomes"]["completed"], 1, "{summary}");
    assert!(dead_letters(&p.transfers).is_empty());
}
