//! Notifications and rates end to end against the real broker and Redis.
//!
//! Rates live in one Redis hash, so each test here uses currency pairs no
//! other test touches.

mod common;

use common::{produce_raw, read_topic, redis, unique, Pipeline};
use redis::Commands;
use serde_json::Value;

fn notifications(user: &str) -> Vec<Value> {
    let items: Vec<String> = redis()
        .lrange(format!("notifications:{user}"), 0, -1)
        .unwrap();
    items
        .iter()
        .map(|i| serde_json::from_str(i).unwrap())
        .collect()
}

fn consume(p: &Pipeline, extra: &[&str]) -> Value {
    let mut args = vec!["notify", "consume", "--until-idle", "2", "--output", "json"];
    args.extend_from_slice(extra);
    p.payctl(&args).expect(0).json()
}

#[test]
fn a_seed_000_message_notifies_exactly_once() {
    let p = Pipeline::new();
    let user = unique("user");
    let tx = unique("tx");
    let message =
        format!(r#"{{"transaction_id": "{tx}", "user_id": "{user}", "status": "completed"}}"#);
    produce_raw(&p.transactions, &user, &[&message]);
    let summary = consume(&p, &[]);
    assert_eq!(summary["outcomes"]["notified"], 1, "{summary}");

    let items = notifications(&user);
    assert_eq!(items.len(), 1);
    let n = &items[0];
    assert_eq!(n["user_id"], user.as_str());
    assert_eq!(n["message"], format!("Transaction {tx} is completed"));
    assert_eq!(n["status"], "sent");
    let id = uuid::Uuid::parse_str(n["notification_id"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 4);

    // Delivered again, and read again by a fresh group: no second notification.
    produce_raw(&p.transactions, &user, &[&message]);
    assert_eq!(consume(&p, &[])["outcomes"]["duplicate"], 1);
    let replay = consume(&p, &["--group", &unique("replay")]);
    assert_eq!(replay["outcomes"]["duplicate"], 2, "{replay}");
    assert_eq!(notifications(&user).len(), 1);

    let listed = p
        .payctl(&["notify", "list", "--user", &user, "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["notification_id"], n["notification_id"]);
}

#[test]
fn a_malformed_message_goes_to_the_dlq_and_its_neighbours_are_notified() {
    let p = Pipeline::new();
    let (before, after) = (unique("before"), unique("after"));
    let event = |user: &str| {
        format!(r#"{{"transaction_id":"t-{user}","user_id":"{user}","status":"completed"}}"#)
    };
    produce_raw(
        &p.transactions,
        "k",
        &[
            &event(&before),
            "{this is not json",
            r#"{"transaction_id":"t9","status":"x"}"#,
            &event(&after),
        ],
    );
    let summary = consume(&p, &[]);
    assert_eq!(summary["outcomes"]["notified"], 2, "{summary}");
    assert_eq!(summary["outcomes"]["dead-lettered"], 2, "{summary}");
    assert_eq!(notifications(&before).len(), 1);
    assert_eq!(notifications(&after).len(), 1);
    let letters: Vec<Value> = read_topic(&format!("{}.dlq", p.transactions))
        .iter()
        .map(|(_, v)| serde_json::from_str(v).unwrap())
        .collect();
    assert_eq!(letters.len(), 2);
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("not JSON"),
        "{}",
        letters[0]
    );
    assert_eq!(letters[1]["reason"], "missing field \"user_id\"");
    assert_eq!(letters[0]["origin"]["topic"], p.transactions.as_str());
}

#[test]
fn a_rate_change_reaches_each_watcher_once() {
    let p = Pipeline::new();
    let (watcher, other) = (unique("watcher"), unique("other"));
    // This test owns GBP/DKK; start it from "never set".
    let _: i64 = redis().hdel("rates", "GBP/DKK").unwrap();
    p.payctl(&["notify", "watch", "--user", &watcher, "--pair", "GBP/DKK"])
        .expect(0);
    p.payctl(&["notify", "watch", "--user", &other, "--pair", "GBP/DKK"])
        .expect(0);
    p.payctl(&["notify", "unwatch", "--user", &other, "--pair", "GBP/DKK"])
        .expect(0);
    p.payctl(&["rates", "set", "GBP", "DKK", "8.5"]).expect(0);
    let change = p
        .payctl(&["rates", "set", "GBP", "DKK", "8.61", "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(
        change[0]["previous_rate"].as_str().unwrap().to_string(),
        "8.5"
    );

    let summary = consume(&p, &[]);
    assert_eq!(summary["outcomes"]["notified"], 2, "{summary}");
    let items = notifications(&watcher);
    let messages: Vec<&str> = items
        .iter()
        .map(|n| n["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        [
            "Rate GBP/DKK set to 8.5",
            "Rate GBP/DKK changed from 8.5 to 8.61"
        ]
    );
    assert!(notifications(&other).is_empty());
    consume(&p, &["--group", &unique("replay")]);
    assert_eq!(notifications(&watcher).len(), 2);
}

fn convert(p: &Pipeline, args: &[&str]) -> Value {
    let mut all = vec!["rates", "convert"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--output", "json"]);
    p.payctl(&all).expect(0).json()
}

#[test]
fn conversions_are_exact_direct_inverse_and_cross() {
    let p = Pipeline::new();
    p.payctl(&["rates", "set", "CHF", "SEK", "11.75"]).expect(0);
    p.payctl(&["rates", "set", "NOK", "USD", "0.0937"])
        .expect(0);
    p.payctl(&["rates", "set", "USD", "PLN", "3.9815"])
        .expect(0);

    let direct = convert(&p, &["10", "CHF", "SEK"]);
    assert_eq!(
        (
            direct["result"].as_str().unwrap().to_string(),
            direct["route"].as_str()
        ),
        ("117.50".into(), Some("direct"))
    );
    let inverse = convert(&p, &["117.50", "SEK", "CHF"]);
    assert_eq!(
        (
            inverse["result"].as_str().unwrap().to_string(),
            inverse["route"].as_str()
        ),
        ("10.00".into(), Some("inverse"))
    );
    // 100 × 0.0937 × 3.9815 = 37.306655 → 37.31, rounded once.
    let cross = convert(&p, &["100", "NOK", "PLN"]);
    assert_eq!(cross["result"].as_str().unwrap().to_string(), "37.31");
    assert_eq!(cross["route"], "cross via USD");
    assert_eq!(cross["rate"].as_str().unwrap().to_string(), "0.37306655");
    // Inverse legs in a cross: 37.31 PLN → NOK = 37.31 / 3.9815 / 0.0937 = 100.0088… → 100.01.
    let back = convert(&p, &["37.31", "PLN", "NOK"]);
    assert_eq!(back["result"].as_str().unwrap().to_string(), "100.01");

    let run = p.payctl(&["rates", "convert", "1", "CZK", "KRW"]).expect(1);
    assert!(run.stderr.contains("no rate for CZK/KRW"), "{}", run.stderr);
    let bad = p.payctl(&["rates", "set", "CHF", "SEK", "-2"]).expect(2);
    assert!(bad.stderr.contains("greater than zero"), "{}", bad.stderr);
    assert_eq!(
        convert(&p, &["10", "CHF", "SEK"])["result"]
            .as_str()
            .unwrap()
            .to_string(),
        "117.50"
    );
}

#[test]
fn an_async_conversion_round_trip() {
    let p = Pipeline::new();
    p.payctl(&["rates", "set", "HKD", "SGD", "0.1718"])
        .expect(0);
    let id = p
        .payctl(&["rates", "convert", "250", "HKD", "SGD", "--async"])
        .expect(0)
        .stdout
        .trim()
        .to_string();
    let pending = p
        .payctl(&["rates", "result", &id, "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(pending["status"], "pending");
    let unknown = p
        .payctl(&["rates", "convert", "5", "HKD", "KWD", "--async"])
        .expect(0)
        .stdout
        .trim()
        .to_string();

    let served = p
        .payctl(&["rates", "serve", "--until-idle", "2", "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(served["outcomes"]["answered"], 1, "{served}");
    assert_eq!(served["outcomes"]["failed"], 1, "{served}");
    let done = p
        .payctl(&["rates", "result", &id, "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(done["status"], "done");
    assert_eq!(
        done["answer"]["result"].as_str().unwrap().to_string(),
        "42.95"
    );
    let failed = p.payctl(&["rates", "result", &unknown]).expect(1);
    assert!(
        failed.stderr.contains("no rate for HKD/KWD"),
        "{}",
        failed.stderr
    );
    p.payctl(&["rates", "result", "no-such-request"]).expect(1);

    // Served again by another group: the first answer stays.
    let again = p
        .payctl(&[
            "rates",
            "serve",
            "--until-idle",
            "2",
            "--group",
            &unique("g"),
            "--output",
            "json",
        ])
        .expect(0)
        .json();
    assert_eq!(again["outcomes"]["duplicate"], 2, "{again}");
}
