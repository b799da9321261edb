//! Transfers end to end against the real broker and Redis.

mod common;

use common::{produce_raw, read_topic, redis, unique, Pipeline};
use redis::Commands;
use serde_json::{json, Value};

fn open(p: &Pipeline, prefix: &str, balance: &str) -> String {
    common::open_account(p, prefix, balance)
}

fn balance(p: &Pipeline, id: &str) -> String {
    let account = p
        .payctl(&["accounts", "show", id, "--output", "json"])
        .expect(0)
        .json();
    account["balance"].as_str().unwrap().to_string()
}

fn initiate(p: &Pipeline, from: &str, to: &str, amount: &str) -> String {
    let run = p
        .payctl(&[
            "transfer", "initiate", "--from", from, "--to", to, "--amount", amount,
        ])
        .expect(0);
    run.stdout.trim().to_string()
}

fn stored(id: &str) -> Value {
    let json: String = redis()
        .get(format!("transfer:{id}"))
        .expect("transfer record");
    serde_json::from_str(&json).unwrap()
}

fn count(summary: &Value, outcome: &str) -> u64 {
    summary["outcomes"][outcome]
        .as_u64()
        .unwrap_or_else(|| panic!("no {outcome} in {summary}"))
}

#[test]
fn initiate_process_and_balances() {
    let p = Pipeline::new();
    let alice = open(&p, "alice", "100.00");
    let bob = open(&p, "bob", "0");
    let ids: Vec<String> = ["12.50", "0.1", "0.2"]
        .iter()
        .map(|a| initiate(&p, &alice, &bob, a))
        .collect();
    let first = stored(&ids[0]);
    assert_eq!(first["status"], "initiated");
    assert_eq!(first["version"], 1);
    assert_eq!(first["amount"].to_string(), "12.50");

    let summary = p.process(&[]);
    assert_eq!(summary["processed"], 3);
    assert_eq!(count(&summary, "completed"), 3);
    assert_eq!(balance(&p, &alice), "87.20");
    assert_eq!(balance(&p, &bob), "12.80");
    for id in &ids {
        let record = stored(id);
        assert_eq!(
            (record["status"].as_str(), record["version"].as_u64()),
            (Some("completed"), Some(2))
        );
    }
    let shown = p
        .payctl(&["transfer", "show", &ids[1], "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(shown["amount"].as_str().unwrap().to_string(), "0.10");

    // One outcome event per party, in the notification service's shape.
    let events = read_topic(&p.transactions);
    assert_eq!(events.len(), 6, "{events:?}");
    for (key, value) in &events {
        let event: Value = serde_json::from_str(value).unwrap();
        assert!(ids.contains(&event["transaction_id"].as_str().unwrap().to_string()));
        assert_eq!(event["status"], "completed");
        assert_eq!(key.as_deref(), event["user_id"].as_str());
    }
    let payers = events
        .iter()
        .filter(|(k, _)| k.as_deref() == Some(alice.as_str()))
        .count();
    assert_eq!(payers, 3);
}

#[test]
fn insufficient_funds_is_rejected_and_moves_nothing() {
    let p = Pipeline::new();
    let alice = open(&p, "alice", "5.00");
    let bob = open(&p, "bob", "1.00");
    let id = initiate(&p, &alice, &bob, "10.00");
    let summary = p.process(&[]);
    assert_eq!(count(&summary, "rejected"), 1);
    assert_eq!(count(&summary, "completed"), 0);
    let record = stored(&id);
    assert_eq!(record["status"], "rejected");
    assert_eq!(record["reason"], "insufficient funds");
    assert_eq!(record["version"], 2);
    assert_eq!(
        (balance(&p, &alice), balance(&p, &bob)),
        ("5.00".into(), "1.00".into())
    );
    let events = read_topic(&p.transactions);
    assert_eq!(events.len(), 2);
    assert!(events
        .iter()
        .all(|(_, v)| v.contains("\"status\":\"rejected\"")));
    let rejected = p.payctl(&[
        "transfer", "list", "--status", "rejected", "--limit", "1000", "--output", "json",
    ]);
    let rejected = rejected.expect(0).json();
    assert!(rejected
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["transfer_id"] == id.as_str()));
    assert!(rejected
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["status"] == "rejected"));
}

#[test]
fn deposits_are_exact_and_checked() {
    let p = Pipeline::new();
    let carol = open(&p, "carol", "0.10");
    p.payctl(&["accounts", "deposit", &carol, "0.20"]).expect(0);
    assert_eq!(balance(&p, &carol), "0.30");
    let over = p
        .payctl(&["accounts", "deposit", &carol, "1.001"])
        .expect(2);
    assert!(
        over.stderr.contains("more decimal places than USD allows"),
        "{}",
        over.stderr
    );
    let negative = p.payctl(&["accounts", "deposit", &carol, "-5"]).expect(2);
    assert!(
        negative.stderr.contains("greater than zero"),
        "{}",
        negative.stderr
    );
    p.payctl(&["accounts", "deposit", &unique("nobody"), "5"])
        .expect(1);
    p.payctl(&["accounts", "open", &carol, "--currency", "USD"])
        .expect(1);
    p.payctl(&["accounts", "open", &unique("dave"), "--currency", "XYZ"])
        .expect(2);
    assert_eq!(balance(&p, &carol), "0.30");
    let listed = p
        .payctl(&["accounts", "list", "--output", "json"])
        .expect(0)
        .json();
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["id"] == carol.as_str() && a["currency"] == "USD"));
}

fn open_in(p: &Pipeline, prefix: &str, currency: &str, balance: &str) -> String {
    let id = unique(prefix);
    p.payctl(&[
        "accounts",
        "open",
        &id,
        "--currency",
        currency,
        "--balance",
        balance,
    ])
    .expect(0);
    id
}

#[test]
fn yen_and_dinars_keep_their_minor_units_and_unknown_codes_get_near_ones() {
    let p = Pipeline::new();
    // JPY has no decimals: 1,500 yen, and half a yen is refused.
    let yuki = open_in(&p, "yuki", "JPY", "1500");
    let kenji = open_in(&p, "kenji", "jpy", "0");
    assert_eq!(balance(&p, &yuki), "1500");
    let half = p
        .payctl(&[
            "accounts",
            "open",
            &unique("half"),
            "--currency",
            "JPY",
            "--balance",
            "1.5",
        ])
        .expect(2);
    assert!(
        half.stderr
            .contains("1.5 has more decimal places than JPY allows (0)"),
        "{}",
        half.stderr
    );
    let half_a_yen = p
        .payctl(&[
            "transfer", "initiate", "--from", &yuki, "--to", &kenji, "--amount", "0.5",
        ])
        .expect(2);
    assert!(
        half_a_yen.stderr.contains("than JPY allows (0)"),
        "{}",
        half_a_yen.stderr
    );
    initiate(&p, &yuki, &kenji, "500");
    let summary = p.process(&[]);
    assert_eq!(count(&summary, "completed"), 1);
    assert_eq!(
        (balance(&p, &yuki), balance(&p, &kenji)),
        ("1000".into(), "500".into())
    );

    // KWD has three: a fils is 0.001 dinar, a tenth of one is refused.
    let amal = open_in(&p, "amal", "KWD", "12.345");
    assert_eq!(balance(&p, &amal), "12.345");
    p.payctl(&["accounts", "deposit", &amal, "0.005"]).expect(0);
    assert_eq!(balance(&p, &amal), "12.350");
    let tenth = p
        .payctl(&["accounts", "deposit", &amal, "0.0001"])
        .expect(2);
    assert!(
        tenth
            .stderr
            .contains("more decimal places than KWD allows (3)"),
        "{}",
        tenth.stderr
    );

    // Not a currency: the nearest codes, not the whole list.
    let typo = p
        .payctl(&["accounts", "open", &unique("typo"), "--currency", "JPX"])
        .expect(2);
    assert!(
        typo.stderr
            .contains("unknown currency \"JPX\": not an ISO 4217 code; did you mean JPY?"),
        "{}",
        typo.stderr
    );
    let gold = p
        .payctl(&["accounts", "open", &unique("gold"), "--currency", "XAU"])
        .expect(2);
    assert!(gold.stderr.contains("no minor unit"), "{}", gold.stderr);
}

#[test]
fn a_version_conflict_is_reported_and_not_applied() {
    let p = Pipeline::new();
    let alice = open(&p, "alice", "50.00");
    let bob = open(&p, "bob", "0");
    let id = initiate(&p, &alice, &bob, "20.00");
    let mut stale = stored(&id);
    stale["version"] = json!(7);
    produce_raw(&p.transfers, &alice, &[&stale.to_string()]);
    let summary = p.process(&[]);
    assert_eq!(count(&summary, "completed"), 1, "{summary}");
    assert_eq!(count(&summary, "conflict"), 1, "{summary}");
    assert_eq!(balance(&p, &alice), "30.00");
    assert_eq!(stored(&id)["version"], 2);
}

#[test]
fn the_same_message_twice_applies_once() {
    let p = Pipeline::new();
    let alice = open(&p, "alice", "50.00");
    let bob = open(&p, "bob", "0");
    let id = initiate(&p, &alice, &bob, "20.00");
    let message = stored(&id).to_string();
    produce_raw(&p.transfers, &alice, &[&message]);

    let summary = p.process(&[]);
    assert_eq!(count(&summary, "completed"), 1, "{summary}");
    assert_eq!(count(&summary, "duplicate"), 1, "{summary}");
    assert_eq!(
        (balance(&p, &alice), balance(&p, &bob)),
        ("30.00".into(), "20.00".into())
    );

    // A duplicate whose outcome may not have reached the broker yet (in
    // the same batch, or the next one) announces it again with the same
    // event ids; one that came after the acks announces nothing.
    let events: Vec<Value> = read_topic(&p.transactions)
        .iter()
        .map(|(_, v)| serde_json::from_str(v).unwrap())
        .collect();
    assert!(events.len() == 2 || events.len() == 4, "{events:?}");
    let mut ids: Vec<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2);

    // A second group re-reading the whole topic changes nothing either, and
    // announces nothing again: those events were acknowledged.
    let again = p.process(&["--group", &unique("replay")]);
    assert_eq!(count(&again, "duplicate"), 2, "{again}");
    assert_eq!(read_topic(&p.transactions).len(), events.len());
    assert_eq!(
        (balance(&p, &alice), balance(&p, &bob)),
        ("30.00".into(), "20.00".into())
    );
    // And the first group has nothing left to read.
    assert_eq!(p.process(&[])["processed"], 0);
}

#[test]
fn an_idempotency_key_returns_the_first_transfer() {
    let p = Pipeline::new();
    let alice = open(&p, "alice", "50.00");
    let bob = open(&p, "bob", "0");
    let key = unique("order");
    let args = [
        "transfer",
        "initiate",
        "--from",
        &alice,
        "--to",
        &bob,
        "--amount",
        "5",
        "--idempotency-key",
        &key,
        "--output",
        "json",
    ];
    let first = p.payctl(&args).expect(0).json();
    let second = p.payctl(&args).expect(0).json();
    assert_eq!(first["created"], true);
    assert_eq!(second["created"], false);
    assert_eq!(first["transfer_id"], second["transfer_id"]);
    assert_eq!(read_topic(&p.transfers).len(), 1);
}

#[test]
fn a_seed_001_message_from_another_client_is_processed() {
    let p = Pipeline::new();
    let alice = open(&p, "alice", "100.00");
    let bob = open(&p, "bob", "0");
    // What the versioned transfer service's initiate_transfer writes: Python json.dumps, a float amount, no currency.
    let id = uuid::Uuid::new_v4().to_string();
    let message = format!(
        r#"{{"transfer_id": "{id}", "sender_id": "{alice}", "receiver_id": "{bob}", "amount": 25.5, "status": "initiated", "version": 1}}"#
    );
    let _: () = redis().set(format!("transfer:{id}"), &message).unwrap();
    produce_raw(&p.transfers, &id, &[&message]);
    let summary = p.process(&[]);
    assert_eq!(count(&summary, "completed"), 1, "{summary}");
    assert_eq!(
        (balance(&p, &alice), balance(&p, &bob)),
        ("74.50".into(), "25.50".into())
    );
    let record = stored(&id);
    assert_eq!(record["status"], "completed");
    assert_eq!(record["version"], 2);
    assert_eq!(record["amount"].as_f64(), Some(25.5));
}

#[test]
fn no_ledger_does_what_seed_001_does() {
    let p = Pipeline::new();
    let alice = open(&p, "alice", "1.00");
    let bob = open(&p, "bob", "0");
    let id = initiate(&p, &alice, &bob, "500.00");
    let summary = p.process(&["--no-ledger"]);
    assert_eq!(count(&summary, "completed"), 1, "{summary}");
    assert_eq!(stored(&id)["status"], "completed");
    assert_eq!(stored(&id)["version"], 2);
    assert_eq!(balance(&p, &alice), "1.00");
}

#[test]
fn a_message_that_can_never_be_processed_goes_to_the_dlq() {
    let p = Pipeline::new();
    let alice = open(&p, "alice", "10.00");
    let bob = open(&p, "bob", "0");
    produce_raw(&p.transfers, &alice, &["{not json"]);
    // A batch of nothing but dead letters is fine too.
    let only_bad = p.process(&[]);
    assert_eq!(count(&only_bad, "dead-lettered"), 1, "{only_bad}");
    let id = initiate(&p, &alice, &bob, "1.00");
    produce_raw(
        &p.transfers,
        &alice,
        &[&format!(
            r#"{{"transfer_id":"x","sender_id":"{alice}","receiver_id":"{bob}","amount":1.001,"status":"initiated","version":1,"currency":"USD"}}"#
        )],
    );
    let summary = p.process(&[]);
    assert_eq!(count(&summary, "dead-lettered"), 1, "{summary}");
    assert_eq!(count(&summary, "completed"), 1, "{summary}");
    assert_eq!(stored(&id)["status"], "completed");
    let letters: Vec<Value> = read_topic(&format!("{}.dlq", p.transfers))
        .iter()
        .map(|(_, v)| serde_json::from_str(v).unwrap())
        .collect();
    assert_eq!(letters.len(), 2);
    let reasons: Vec<&str> = letters
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("not a transfer message")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("no stored transfer")),
        "{reasons:?}"
    );
    assert!(letters
        .iter()
        .all(|l| l["origin"]["topic"] == p.transfers.as_str()));
    assert!(letters.iter().any(|l| l["payload"] == "{not json"));
}

/// Every transfer record whose sender is `account`.
fn transfers_from(account: &str) -> Vec<Value> {
    let mut con = redis();
    let ids: Vec<String> = con.zrange("transfers", 0, -1).unwrap();
    ids.iter()
        .filter_map(|id| {
            con.get::<_, Option<String>>(format!("transfer:{id}"))
                .unwrap()
        })
        .map(|json| serde_json::from_str::<Value>(&json).unwrap())
        .filter(|t| t["sender_id"] == account)
        .collect()
}

#[test]
fn bad_input_is_refused_clearly_and_changes_nothing() {
    let p = Pipeline::new();
    let alice = open(&p, "alice", "10.00");
    let bob = open(&p, "bob", "0");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--to", &bob, "--amount", "-5"], "greater than zero"),
        (vec!["--to", &bob, "--amount", "0"], "greater than zero"),
        (
            vec!["--to", &bob, "--amount", "1.005"],
            "more decimal places than USD allows",
        ),
        (vec!["--to", &bob, "--amount", "abc"], "invalid amount"),
        (
            vec!["--to", &bob, "--amount", "99999999999999"],
            "too large",
        ),
        (vec!["--to", &alice, "--amount", "1"], "same account"),
        (
            vec!["--to", &bob, "--amount", "1", "--currency", "XYZ"],
            "unknown currency \"XYZ\"",
        ),
        (
            vec!["--to", &bob, "--amount", "1", "--currency", "EUR"],
            "currency mismatch",
        ),
    ];
    for (extra, message) in cases {
        let mut args = vec!["transfer", "initiate", "--from", &alice];
        args.extend(extra);
        let run = p.payctl(&args).expect(2);
        assert!(
            run.stderr.contains(message),
            "{args:?}: wanted {message:?} in {}",
            run.stderr
        );
        assert!(run.stdout.is_empty());
    }
    // An unknown account is a "no" (1), as in `accounts deposit`.
    let run = p
        .payctl(&[
            "transfer",
            "initiate",
            "--from",
            &alice,
            "--to",
            "nobody-here",
            "--amount",
            "1",
        ])
        .expect(1);
    assert!(
        run.stderr.contains("unknown account \"nobody-here\""),
        "{}",
        run.stderr
    );
    // A broker that is down: a clear error, and nothing left in Redis.
    let run = p.payctl(&[
        "transfer",
        "initiate",
        "--from",
        &alice,
        "--to",
        &bob,
        "--amount",
        "1",
        "--brokers",
        "127.0.0.1:1",
        "-X",
        "message.timeout.ms=1500",
        "--idempotency-key",
        &unique("down"),
    ]);
    let run = run.expect(2);
    assert!(
        run.stderr
            .contains("was not published; nothing was initiated"),
        "{}",
        run.stderr
    );

    assert!(read_topic(&p.transfers).is_empty());
    assert!(transfers_from(&alice).is_empty());
    assert_eq!(balance(&p, &alice), "10.00");
    // A lookup that finds nothing is a "no" (1), not an error.
    p.payctl(&["transfer", "show", "no-such-transfer"])
        .expect(1);
}

#[test]
fn a_file_of_transfers_is_checked_whole_then_initiated() {
    let p = Pipeline::new();
    let alice = open(&p, "alice", "1000.00");
    let bob = open(&p, "bob", "0");
    let dir = std::env::temp_dir().join(unique("batch"));
    std::fs::create_dir_all(&dir).unwrap();

    let bad = dir.join("bad.csv");
    std::fs::write(
        &bad,
        format!("from,to,amount\n{alice},{bob},1.00\n{alice},{bob},-2\n"),
    )
    .unwrap();
    let run = p
        .payctl(&["transfer", "initiate", "--file", bad.to_str().unwrap()])
        .expect(2);
    assert!(
        run.stderr.contains("row 2: invalid amount"),
        "{}",
        run.stderr
    );
    assert!(transfers_from(&alice).is_empty());

    let good = dir.join("good.jsonl");
    let lines: Vec<String> = (0..200)
        .map(|i| {
            let cents = i % 100 + 1;
            format!(
                r#"{{"from":"{alice}","to":"{bob}","amount":"{}.{:02}"}}"#,
                cents / 100,
                cents % 100
            )
        })
        .collect();
    std::fs::write(&good, lines.join("\n")).unwrap();
    let summary = p
        .payctl(&[
            "transfer",
            "initiate",
            "--file",
            good.to_str().unwrap(),
            "--output",
            "json",
        ])
        .expect(0)
        .json();
    assert_eq!(summary["created"], 200);
    let processed = p.process(&[]);
    assert_eq!(count(&processed, "completed"), 200, "{processed}");
    // 2 × (0.01 + … + 1.00) = 2 × 50.50
    assert_eq!(balance(&p, &bob), "101.00");
    assert_eq!(balance(&p, &alice), "899.00");
}

#[test]
fn replays_return_earlier_transfers_and_finish_an_interrupted_publish() {
    let p = Pipeline::new();
    let alice = open(&p, "alice", "100.00");
    let bob = open(&p, "bob", "0");
    let dir = std::env::temp_dir().join(unique("replay"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keyed.csv");
    let run_id = unique("k");
    let rows: Vec<String> = (0..20)
        .map(|i| format!("{alice},{bob},1.00,USD,{run_id}-{i}"))
        .collect();
    std::fs::write(
        &file,
        format!(
            "from,to,amount,currency,idempotency_key\n{}\n",
            rows.join("\n")
        ),
    )
    .unwrap();
    let args = [
        "transfer",
        "initiate",
        "--file",
        file.to_str().unwrap(),
        "--output",
        "json",
    ];
    assert_eq!(p.payctl(&args).expect(0).json()["created"], 20);
    // The batch job runs again: every row returns its earlier transfer.
    let again = p.payctl(&args).expect(0).json();
    assert_eq!(
        (again["created"].as_u64(), again["existing"].as_u64()),
        (Some(0), Some(20)),
        "{again}"
    );
    assert_eq!(read_topic(&p.transfers).len(), 20);

    // A crash between storing a transfer and its broker ack leaves it
    // stored and unpublished; the replay of its key publishes it.
    let key = unique("crashed");
    let id = if common::on_cluster() {
        payctl::transfer::saga::id_for_key(&key)
    } else {
        uuid::Uuid::new_v4().to_string()
    };
    let record = format!(
        r#"{{"transfer_id":"{id}","sender_id":"{alice}","receiver_id":"{bob}","amount":2.00,"status":"initiated","version":1,"currency":"USD","idempotency_key":"{key}"}}"#
    );
    let mut con = redis();
    let _: () = con.set(format!("transfer:{id}"), &record).unwrap();
    if common::on_cluster() {
        // The cluster's layout: the id is the key's, and the record is
        // marked as being published beside it.
        let publishing = payctl::store::beside(&format!("transfer:{id}"), "publishing");
        let _: () = con.set(publishing, "1").unwrap();
    } else {
        let _: () = con.set(format!("idempotency:transfer:{key}"), &id).unwrap();
    }
    let _: () = con.sadd("transfers:unpublished", &id).unwrap();
    let replay = p.payctl(&[
        "transfer",
        "initiate",
        "--from",
        &alice,
        "--to",
        &bob,
        "--amount",
        "2.00",
        "--idempotency-key",
        &key,
    ]);
    assert_eq!(replay.expect(0).stdout.trim(), id);
    assert!(!con
        .sismember::<_, _, bool>("transfers:unpublished", &id)
        .unwrap());
    assert_eq!(read_topic(&p.transfers).len(), 21);
    let summary = p.process(&[]);
    assert_eq!(count(&summary, "completed"), 21, "{summary}");
    assert_eq!(balance(&p, &alice), "78.00");
}

/// Runs `payctl transfer initiate` with an idempotency key, as JSON.
fn initiate_keyed(p: &Pipeline, from: &str, to: &str, amount: &str, key: &str) -> common::Run {
    p.payctl(&[
        "transfer",
        "initiate",
        "--from",
        from,
        "--to",
        to,
        "--amount",
        amount,
        "--idempotency-key",
        key,
        "--output",
        "json",
    ])
}

#[test]
fn a_reused_idempotency_key_with_other_parameters_is_refused_and_changes_nothing() {
    let p = Pipeline::new();
    let alice = open(&p, "alice", "50.00");
    let bob = open(&p, "bob", "0");
    let carol = open(&p, "carol", "0");
    let key = unique("order");
    let first = initiate_keyed(&p, &alice, &bob, "12.5", &key)
        .expect(0)
        .json();
    assert_eq!(first["created"], true);
    let id = first["transfer_id"].as_str().unwrap().to_string();
    let record = stored(&id);

    // The same parameters, the amount written otherwise: the first transfer.
    let same = initiate_keyed(&p, &alice, &bob, "12.50", &key)
        .expect(0)
        .json();
    assert_eq!(
        (same["created"].as_bool(), same["transfer_id"].as_str()),
        (Some(false), Some(id.as_str()))
    );

    let refusal = format!("idempotency key {key} was used for a different transfer");
    for (to, amount) in [(&bob, "12.51"), (&carol, "12.5"), (&bob, "125")] {
        let run = initiate_keyed(&p, &alice, to, amount, &key).expect(1);
        assert!(
            run.stderr.contains(&refusal),
            "{to} {amount}: {}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{}", run.stdout);
    }
    // Nothing written: one transfer, one message, the key and record as they were.
    assert_eq!(transfers_from(&alice).len(), 1);
    assert_eq!(stored(&id), record);
    let mut con = redis();
    if !common::on_cluster() {
        // (On a cluster the key names its transfer by the id it gives.)
        let named: String = con.get(format!("idempotency:transfer:{key}")).unwrap();
        assert_eq!(named, id);
    }
    assert_eq!(read_topic(&p.transfers).len(), 1);

    // The currency counts too; an amount stored as a string compares by value.
    let other_key = unique("euro");
    let other_id = if common::on_cluster() {
        payctl::transfer::saga::id_for_key(&other_key)
    } else {
        uuid::Uuid::new_v4().to_string()
    };
    let euro = format!(
        r#"{{"transfer_id":"{other_id}","sender_id":"{alice}","receiver_id":"{bob}","amount":"3.10","status":"completed","version":2,"currency":"EUR","idempotency_key":"{other_key}"}}"#
    );
    let _: () = con.set(format!("transfer:{other_id}"), &euro).unwrap();
    if !common::on_cluster() {
        let _: () = con
            .set(format!("idempotency:transfer:{other_key}"), &other_id)
            .unwrap();
    }
    let run = initiate_keyed(&p, &alice, &bob, "3.1", &other_key).expect(1);
    assert!(
        run.stderr.contains(&format!(
            "idempotency key {other_key} was used for a different transfer"
        )),
        "{}",
        run.stderr
    );
    let dollars = euro.replace("\"EUR\"", "\"USD\"");
    let _: () = con.set(format!("transfer:{other_id}"), &dollars).unwrap();
    let replay = initiate_keyed(&p, &alice, &bob, "3.1", &other_key)
        .expect(0)
        .json();
    assert_eq!(replay["transfer_id"], other_id.as_str());
    assert_eq!(replay["status"], "completed");

    // Keys are checked before they go into a key name.
    let long = "k".repeat(201);
    for bad in ["", "tab\there", "new\nline", long.as_str()] {
        let run = initiate_keyed(&p, &alice, &bob, "1", bad).expect(2);
        assert!(
            run.stderr.contains("invalid idempotency key"),
            "{bad:?}: {}",
            run.stderr
        );
    }
    let longest = format!("{}{}", unique("k"), "k".repeat(186));
    assert_eq!(longest.len(), 200);
    initiate_keyed(&p, &alice, &bob, "1", &longest).expect(0);

    // In a file, the refused row fails with the same message; the others go on.
    let dir = std::env::temp_dir().join(unique("refused"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rows.csv");
    std::fs::write(
        &file,
        format!("from,to,amount,idempotency_key\n{alice},{bob},2.00,{key}\n{alice},{bob},1.00,\n"),
    )
    .unwrap();
    let run = p
        .payctl(&[
            "transfer",
            "initiate",
            "--file",
            file.to_str().unwrap(),
            "--output",
            "json",
        ])
        .expect(1);
    let summary = run.json();
    assert_eq!(
        (summary["created"].as_u64(), summary["failed"].as_u64()),
        (Some(1), Some(1)),
        "{summary}"
    );
    assert_eq!(summary["stopped_at_row"], Value::Null, "{summary}");
    assert_eq!(
        summary["errors"][0],
        format!("row 1: {refusal}"),
        "{summary}"
    );
    assert_eq!(stored(&id), record);
}

#[test]
fn a_rollback_keeps_a_transfer_that_a_replay_of_its_key_took_over() {
    let p = Pipeline::new();
    let alice = open(&p, "alice", "50.00");
    let bob = open(&p, "bob", "0");
    let key = unique("race");
    // Run A stores the transfer, then waits for an ack that never comes.
    let a = p.spawn(
        &[
            "transfer",
            "initiate",
            "--from",
            &alice,
            "--to",
            &bob,
            "--amount",
            "7.00",
            "--idempotency-key",
            &key,
            "--brokers",
            "127.0.0.1:1",
            "-X",
            "message.timeout.ms=10000",
        ],
        &[],
    );
    let mut con = redis();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let id: String = loop {
        let named: Option<String> = if common::on_cluster() {
            let id = payctl::transfer::saga::id_for_key(&key);
            let stored: bool = con.exists(format!("transfer:{id}")).unwrap();
            stored.then_some(id)
        } else {
            con.get(format!("idempotency:transfer:{key}")).unwrap()
        };
        if let Some(id) = named {
            break id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "run A never stored its transfer"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // Run B replays the key meanwhile: it publishes the transfer and reports it.
    let b = initiate_keyed(&p, &alice, &bob, "7", &key).expect(0).json();
    assert_eq!(
        (b["transfer_id"].as_str(), b["created"].as_bool()),
        (Some(id.as_str()), Some(false))
    );
    // A's rollback keeps it, and A says so.
    let a = common::finish(a).expect(2);
    assert!(
        a.stderr.contains(&format!("transfer {id} was stored")),
        "{}",
        a.stderr
    );
    assert!(a.stderr.contains("took it over"), "{}", a.stderr);
    assert_eq!(stored(&id)["status"], "initiated");
    for set in ["transfers:unpublished", "transfers:adopted"] {
        assert!(
            !con.sismember::<_, _, bool>(set, &id).unwrap(),
            "{id} still in {set}"
        );
    }
    for mark in ["publishing", "adopted"] {
        let mark = payctl::store::beside(&format!("transfer:{id}"), mark);
        assert!(!con.exists::<_, bool>(&mark).unwrap(), "{mark} left behind");
    }
    let summary = p.process(&[]);
    assert_eq!(count(&summary, "completed"), 1, "{summary}");
    assert_eq!(
        (balance(&p, &alice), balance(&p, &bob)),
        ("43.00".into(), "7.00".into())
    );
}

/// Transfer ids of the messages on a topic.
fn message_ids(topic: &str) -> Vec<String> {
    read_topic(topic)
        .iter()
        .map(|(_, v)| {
            let message: Value = serde_json::from_str(v).unwrap();
            message["transfer_id"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn a_file_can_always_be_run_again() {
    let p = Pipeline::new();
    let alice = open(&p, "alice", "1000.00");
    let bob = open(&p, "bob", "0");
    let dir = std::env::temp_dir().join(unique("rerun"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("batch.jsonl");
    let rows: Vec<String> = (0..30)
        .map(|_| format!(r#"{{"from":"{alice}","to":"{bob}","amount":"1.00"}}"#))
        .collect();
    std::fs::write(&file, rows.join("\n")).unwrap();
    let path = file.to_str().unwrap();
    let args = ["transfer", "initiate", "--file", path, "--output", "json"];

    // The broker is gone before the run starts: one line naming it, exit 2,
    // and nothing is stored. (A broker lost midway is the Redis test below
    // and tests/input.rs: the run stops at a chunk and says where.)
    let mut down = args.to_vec();
    down.extend(["--brokers", "127.0.0.1:1", "-X", "message.timeout.ms=1500"]);
    let run = p.payctl(&down).expect(2);
    assert!(
        run.stderr
            .starts_with("error: cannot reach the Kafka brokers at 127.0.0.1:1"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(transfers_from(&alice).is_empty());

    // Identical rows without keys: each row is its own transfer, once.
    let first = p.payctl(&args).expect(0).json();
    assert_eq!(
        (first["created"].as_u64(), first["initiated"].as_u64()),
        (Some(30), Some(30))
    );
    assert_eq!(first["stopped_at_row"], Value::Null);
    let again = p.payctl(&args).expect(0).json();
    assert_eq!(
        (again["created"].as_u64(), again["existing"].as_u64()),
        (Some(0), Some(30)),
        "{again}"
    );
    assert_eq!(transfers_from(&alice).len(), 30);
    assert_eq!(message_ids(&p.transfers).len(), 30);

    // --fresh: a file meant to repeat creates new transfers.
    let mut fresh = args.to_vec();
    fresh.push("--fresh");
    assert_eq!(p.payctl(&fresh).expect(0).json()["created"], 30);
    assert_eq!(transfers_from(&alice).len(), 60);
    let processed = p.process(&[]);
    assert_eq!(count(&processed, "completed"), 60, "{processed}");
    assert_eq!(balance(&p, &alice), "940.00");
}

/// `payctl` against a private Redis (the broker is the shared one).
fn payctl_on(p: &Pipeline, private: &common::PrivateRedis, args: &[&str]) -> common::Run {
    p.payctl_env(args, &[("REDIS_URL", &private.url())])
}

fn private_redis(private: &common::PrivateRedis) -> redis::Connection {
    redis::Client::open(private.url())
        .unwrap()
        .get_connection()
        .unwrap()
}

#[test]
fn a_redis_failure_midway_stops_with_a_summary_and_a_rerun_finishes_the_file() {
    let p = Pipeline::new();
    let private = common::PrivateRedis::start();
    let open_here = |prefix: &str, balance: &str| {
        common::open_account_with(|args| payctl_on(&p, &private, args), prefix, balance)
    };
    let alice = open_here("alice", "100000.00");
    let bob = open_here("bob", "0");
    let dir = std::env::temp_dir().join(unique("midway"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("batch.csv");
    let rows = 30_000;
    let mut text = String::from("from,to,amount\n");
    for _ in 0..rows {
        text.push_str(&format!("{alice},{bob},1.00\n"));
    }
    std::fs::write(&file, text).unwrap();
    let args = [
        "transfer",
        "initiate",
        "--file",
        file.to_str().unwrap(),
        "--output",
        "json",
    ];

    // Redis starts refusing writes once 8 MB more are used: a transfer costs
    // about 1 KB, so the first 2,000-row chunk fits and a later one does not.
    let mut con = private_redis(&private);
    let info: String = redis::cmd("INFO").arg("memory").query(&mut con).unwrap();
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used + 8 * 1024 * 1024)
        .query(&mut con)
        .unwrap();
    let run = payctl_on(&p, &private, &args).expect(2);
    let summary = run.json();
    let stopped = summary["stopped_at_row"]
        .as_u64()
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(
        stopped > 1 && stopped < rows && (stopped - 1).is_multiple_of(2000),
        "{summary}"
    );
    assert_eq!(
        summary["initiated"].as_u64(),
        Some(stopped - 1),
        "{summary}"
    );
    assert!(
        summary["error"].as_str().unwrap().contains("maxmemory"),
        "{summary}"
    );
    assert!(
        run.stderr
            .contains(&format!("stopped at row {stopped} of {rows}")),
        "{}",
        run.stderr
    );

    // Redis has room again: the same command finishes, creating nothing twice.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query(&mut con)
        .unwrap();
    let again = payctl_on(&p, &private, &args).expect(0).json();
    assert_eq!(again["initiated"].as_u64(), Some(rows), "{again}");
    assert!(
        again["existing"].as_u64().unwrap() >= stopped - 1,
        "{again}"
    );
    assert_eq!(con.zcard::<_, u64>("transfers").unwrap(), rows);
    assert_eq!(con.scard::<_, u64>("transfers:unpublished").unwrap(), 0);
    let mut ids = message_ids(&p.transfers);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len() as u64, rows);
}

#[test]
fn resend_publishes_lost_transfers_and_skips_decided_ones() {
    let p = Pipeline::new();
    let private = common::PrivateRedis::start();
    let run = |args: &[&str]| payctl_on(&p, &private, args);
    let open_here = |prefix: &str, balance: &str| common::open_account_with(run, prefix, balance);
    let alice = open_here("alice", "100.00");
    let bob = open_here("bob", "0");
    let transfer = [
        "transfer", "initiate", "--from", &alice, "--to", &bob, "--amount",
    ];
    let initiate_here = |amount: &str, extra: &[(&str, &str)]| {
        let mut args = transfer.to_vec();
        args.push(amount);
        let mut env = vec![("REDIS_URL", private.url())];
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        p.payctl_env(&args, &env)
            .expect(0)
            .stdout
            .trim()
            .to_string()
    };
    let process_here = || {
        run(&[
            "transfer",
            "process",
            "--until-idle",
            "2",
            "--output",
            "json",
        ])
        .expect(0)
        .json()
    };

    // Lost: its message went to a log the broker then lost (here: a topic
    // nobody processes).
    let lost_topic = unique("lost");
    p.payctl(&["topics", "create", &lost_topic]).expect(0);
    let lost = initiate_here("10.00", &[("PAYCTL_TOPIC_TRANSFERS", &lost_topic)]);
    // Decided: published and processed.
    let done = initiate_here("5.00", &[]);
    assert_eq!(count(&process_here(), "completed"), 1);
    // Crashed: stored, then its initiate was killed before the broker's ack.
    let mut args = transfer.to_vec();
    args.extend([
        "20.00",
        "--brokers",
        "127.0.0.1:1",
        "-X",
        "message.timeout.ms=60000",
    ]);
    let mut crashing = p.spawn(&args, &[("REDIS_URL", &private.url())]);
    let mut con = private_redis(&private);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let crashed: String = loop {
        let unpublished: Vec<String> = con.smembers("transfers:unpublished").unwrap();
        if let Some(id) = unpublished.into_iter().next() {
            break id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the initiate never stored its transfer"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    crashing.kill().unwrap();
    crashing.wait().unwrap();

    let listed = |older_than: &str| -> Vec<(String, bool)> {
        let list = run(&[
            "transfer",
            "resend",
            "--dry-run",
            "--older-than",
            older_than,
            "--output",
            "json",
        ])
        .expect(0)
        .json();
        let mut ids: Vec<(String, bool)> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                assert_eq!(t["status"], "initiated", "{t}");
                (
                    t["transfer_id"].as_str().unwrap().to_string(),
                    t["unpublished"].as_bool().unwrap(),
                )
            })
            .collect();
        ids.sort();
        ids
    };
    // Within the default minute only the unpublished one is due; with no
    // age limit, both undecided ones. The processed one never.
    assert_eq!(listed("60"), vec![(crashed.clone(), true)]);
    let mut due = vec![(crashed.clone(), true), (lost.clone(), false)];
    due.sort();
    assert_eq!(listed("0"), due);
    // A dry run changes nothing.
    assert!(con
        .sismember::<_, _, bool>("transfers:unpublished", &crashed)
        .unwrap());
    assert!(read_topic(&p.transfers).len() == 1);

    let summary = run(&[
        "transfer",
        "resend",
        "--older-than",
        "0",
        "--output",
        "json",
    ])
    .expect(0)
    .json();
    assert_eq!(
        (summary["sent"].as_u64(), summary["failed"].as_u64()),
        (Some(2), Some(0)),
        "{summary}"
    );
    assert_eq!(
        summary["found"].as_u64().unwrap() - summary["skipped"].as_u64().unwrap(),
        2,
        "{summary}"
    );
    assert!(!con
        .sismember::<_, _, bool>("transfers:unpublished", &crashed)
        .unwrap());
    let mut sent = message_ids(&p.transfers);
    sent.sort();
    let mut expected = vec![lost.clone(), done.clone(), crashed.clone()];
    expected.sort();
    assert_eq!(sent, expected);

    let processed = process_here();
    assert_eq!(count(&processed, "completed"), 2, "{processed}");
    let balance_here = |id: &str| {
        run(&["accounts", "show", id, "--output", "json"])
            .expect(0)
            .json()["balance"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        (balance_here(&alice), balance_here(&bob)),
        ("65.00".into(), "35.00".into())
    );

    // Everything is decided now: nothing is sent again, and the index is empty.
    let again = run(&[
        "transfer",
        "resend",
        "--older-than",
        "0",
        "--output",
        "json",
    ])
    .expect(0)
    .json();
    assert_eq!(again["sent"], 0, "{again}");
    assert_eq!(again["found"], again["skipped"], "{again}");
    assert_eq!(con.zcard::<_, u64>("transfers:pending").unwrap(), 0);
    assert_eq!(message_ids(&p.transfers).len(), 3);
}
