//! What payctl prints: money in JSON as strings with the currency's digits,
//! one readable line when the broker is unreachable, exit codes a cron job
//! can rely on, and the small things an operator trips over.

mod common;

use common::{open_account, read_topic, unique, Pipeline, Run};
use serde_json::Value;

/// `value` is a JSON string equal to `want` (not a number, which jq and
/// JavaScript read as a float).
#[track_caller]
fn money(value: &Value, want: &str) {
    assert_eq!(
        value.as_str(),
        Some(want),
        "want the string {want:?}, got {value}"
    );
}

fn json(p: &Pipeline, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--output", "json"]);
    p.payctl(&all).expect(0).json()
}

#[test]
fn money_in_json_output_is_a_string_with_the_currencys_digits() {
    let p = Pipeline::new();

    // Accounts: open, deposit, show, list.
    let alice = unique("alice");
    let opened = json(&p, &["accounts", "open", &alice, "--balance", "125"]);
    money(&opened["balance"], "125.00");
    money(
        &json(&p, &["accounts", "deposit", &alice, "0.5"])["balance"],
        "125.50",
    );
    money(
        &json(&p, &["accounts", "show", &alice])["balance"],
        "125.50",
    );
    let listed = json(&p, &["accounts", "list"]);
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == alice.as_str())
        .unwrap();
    money(&row["balance"], "125.50");
    let yen = unique("yen");
    let opened = json(
        &p,
        &[
            "accounts",
            "open",
            &yen,
            "--currency",
            "JPY",
            "--balance",
            "1500",
        ],
    );
    money(&opened["balance"], "1500");

    // Transfers: initiate, show, list; the stored record and the message
    // keep seed 001's JSON number.
    let bob = open_account(&p, "bob", "1.00");
    let initiated = json(
        &p,
        &[
            "transfer", "initiate", "--from", &alice, "--to", &bob, "--amount", "12.5",
        ],
    );
    money(&initiated["amount"], "12.50");
    let id = initiated["transfer_id"].as_str().unwrap().to_string();
    money(&json(&p, &["transfer", "show", &id])["amount"], "12.50");
    let list = json(&p, &["transfer", "list", "--limit", "500"]);
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["transfer_id"] == id.as_str())
        .unwrap();
    money(&row["amount"], "12.50");
    let mut redis = common::redis();
    let stored: String = redis::cmd("GET")
        .arg(format!("transfer:{id}"))
        .query(&mut redis)
        .unwrap();
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert!(stored["amount"].is_number(), "stored: {stored}");
    let sent = read_topic(&p.transfers);
    let sent: Value = serde_json::from_str(&sent[0].1).unwrap();
    assert!(sent["amount"].is_number(), "on the topic: {sent}");

    // Transactions log, after the worker has processed the transfer.
    p.process(&[]);
    let log = json(&p, &["transactions", "log", "--user", &alice]);
    let event = &log.as_array().unwrap()[0];
    money(&event["amount"], "12.50");

    // Rates: set, list, convert, async convert and its result. One name,
    // `updated_at`, for when a rate changed.
    let set = json(&p, &["rates", "set", "USD", "EUR", "0.9215"]);
    money(&set[0]["rate"], "0.9215");
    assert!(set[0]["updated_at"].is_string(), "{set}");
    assert!(set[0].get("changed_at").is_none(), "{set}");
    let rates = json(&p, &["rates", "list"]);
    let usd_eur = rates
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["base"] == "USD" && r["quote"] == "EUR")
        .unwrap();
    assert!(usd_eur["rate"].is_string(), "{usd_eur}");
    assert!(usd_eur["updated_at"].is_string(), "{usd_eur}");
    let converted = json(&p, &["rates", "convert", "100", "EUR", "USD"]);
    money(&converted["amount"], "100.00");
    assert!(converted["result"].is_string(), "{converted}");
    assert!(converted["rate"].is_string(), "{converted}");
    assert!(converted["legs"][0]["rate"].is_string(), "{converted}");
    let request = p
        .payctl(&["rates", "convert", "7", "USD", "EUR", "--async"])
        .expect(0);
    let pending = json(&p, &["rates", "result", request.stdout.trim()]);
    money(&pending["amount"], "7.00");

    // Payments: show and list; the request on the topic keeps its number.
    let user = unique("carol");
    let submitted = json(
        &p,
        &[
            "payments", "submit", "--user", &user, "--plan", "premium", "--amount", "9.9",
        ],
    );
    money(&submitted["amount"], "9.90");
    let payment = submitted["payment_id"].as_str().unwrap().to_string();
    json(&p, &["payments", "save", "--until-idle", "2"]);
    money(&json(&p, &["payments", "show", &payment])["amount"], "9.90");
    let list = json(&p, &["payments", "list", "--user", &user]);
    money(&list[0]["amount"], "9.90");
    let request: Value = serde_json::from_str(&read_topic(&p.payments)[0].1).unwrap();
    assert!(request["amount"].is_number(), "on the topic: {request}");
}

/// Runs payctl against the shared stack without a pipeline's topics.
fn payctl(args: &[&str]) -> Run {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_payctl"))
        .args(args)
        .env("REDIS_URL", common::redis_url())
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env_remove("PAYCTL_KAFKA_OPTIONS")
        .env_remove("PAYCTL_OUTPUT")
        .env_remove("RUST_LOG")
        .output()
        .expect("running payctl");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A port nothing listens on.
const NO_BROKER: &str = "127.0.0.1:19999";

#[test]
fn an_unreachable_broker_is_one_line_naming_the_address() {
    let want = format!("error: cannot reach the Kafka brokers at {NO_BROKER} (");
    for args in [
        &["topics", "list"][..],
        &["-q", "topics", "list"],
        &["transfer", "process", "--until-idle", "1"],
        &["notify", "consume", "--max-messages", "1"],
        &["transactions", "log"],
    ] {
        let mut all = vec!["--brokers", NO_BROKER];
        all.extend_from_slice(args);
        let run = payctl(&all).expect(2);
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?} printed:\n{}", run.stderr);
        assert!(lines[0].starts_with(&want), "{args:?}: {}", lines[0]);
    }
    // librdkafka's own lines only at -vv.
    let run = payctl(&["--brokers", NO_BROKER, "-vv", "topics", "list"]).expect(2);
    assert!(run.stderr.contains("librdkafka"), "{}", run.stderr);
    assert!(
        run.stderr.lines().last().unwrap().starts_with(&want),
        "{}",
        run.stderr
    );
}
