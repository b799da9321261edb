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
    // keep the versioned transfer service's JSON number.
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

#[test]
fn payments_left_unanswered_exit_3_with_the_summary() {
    let redis = common::PrivateRedis::start();
    let p = Pipeline::new();
    let env = [("REDIS_URL", redis.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let user = unique("dora");
    p.payctl_env(
        &[
            "payments", "submit", "--user", &user, "--plan", "p", "--amount", "5.00",
        ],
        &env,
    )
    .expect(0);
    p.payctl_env(&["payments", "save", "--until-idle", "2"], &env)
        .expect(0);
    // Nothing listens on port 1: the processor is unreachable.
    let run = p
        .payctl_env(
            &[
                "payments",
                "process",
                "--processor-url",
                "http://127.0.0.1:1/execute_transaction",
                "--timeout",
                "0.5",
                "--retries",
                "0",
                "--output",
                "json",
            ],
            &env,
        )
        .expect(3);
    assert_eq!(run.json()["unanswered"], 1, "{}", run.stdout);
    assert!(run.stderr.contains("unanswered"), "{}", run.stderr);
}

#[test]
fn small_things_an_operator_trips_over() {
    let p = Pipeline::new();

    // A partition that does not exist is named as a number.
    let run = p
        .payctl(&["topics", "consume", &p.transfers, "--partition", "9"])
        .expect(2);
    assert!(run.stderr.contains("has no partition 9"), "{}", run.stderr);
    assert!(!run.stderr.contains("Some("), "{}", run.stderr);

    // A cause is not printed twice.
    let run = payctl(&[
        "--redis-url",
        "redis://127.0.0.1:1/0",
        "accounts",
        "show",
        "a",
    ])
    .expect(2);
    let causes: Vec<&str> = run.stderr.trim().split(": ").collect();
    for pair in causes.windows(2) {
        assert_ne!(pair[0], pair[1], "repeated: {}", run.stderr);
    }

    // A huge id is cut to a prefix and its length.
    let long = "a".repeat(100_000);
    for args in [
        &["accounts", "open", &long][..],
        &["accounts", "show", &long],
        &["transfer", "show", &long],
    ] {
        let run = p.payctl(args);
        assert_ne!(run.code, 0);
        assert!(
            run.stderr.len() < 300,
            "{} bytes: {:.300}",
            run.stderr.len(),
            run.stderr
        );
        assert!(run.stderr.contains("100000"), "{}", run.stderr);
    }

    // A closed or full stderr is no panic: the exit code still tells.
    for redirect in ["2>&-", "2>/dev/full"] {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec \"$0\" --redis-url {} accounts show {} {redirect}",
                common::redis_url(),
                unique("nobody")
            ))
            .arg(env!("CARGO_BIN_EXE_payctl"))
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(1), "{redirect}");
    }

    // Global options have their own heading in every command's help.
    let help = payctl(&["accounts", "show", "--help"]).expect(0).stdout;
    let (own, global) = help
        .split_once("Global options:")
        .unwrap_or_else(|| panic!("no global heading:\n{help}"));
    assert!(!own.contains("--brokers"), "{help}");
    assert!(global.contains("--brokers"), "{help}");
}

/// Runs `command` in a pseudo-terminal 80 columns wide; returns what it showed.
fn at_80_columns(command: &str) -> String {
    let out = std::process::Command::new("script")
        .args([
            "-qec",
            &format!("stty cols 80 rows 50; {command}"),
            "/dev/null",
        ])
        .output()
        .expect("script (util-linux) runs a command in a pseudo-terminal");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn tables_never_break_an_id() {
    let p = Pipeline::new();
    let alice = open_account(&p, "alice", "50.00");
    let bob = open_account(&p, "bob", "0");
    let id = p
        .payctl(&[
            "transfer", "initiate", "--from", &alice, "--to", &bob, "--amount", "1",
        ])
        .expect(0)
        .stdout
        .trim()
        .to_string();
    let shown = at_80_columns(&format!(
        "REDIS_URL={} {} transfer show {id}",
        common::redis_url(),
        env!("CARGO_BIN_EXE_payctl")
    ));
    assert!(shown.contains(&id), "{shown}");
    assert!(shown.contains(&alice), "{shown}");
}

#[test]
fn one_message_is_one_message() {
    let p = Pipeline::new();
    let mut child = p.spawn_with_stdin(&["topics", "produce", &p.transfers]);
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"{}\n").unwrap();
    }
    let run = common::finish(child).expect(0);
    assert_eq!(
        run.stdout.trim(),
        format!("1 message written to {}", p.transfers)
    );
}

/// Produces `values` to partition 0 of `topic` with broker timestamps `at` (ms).
fn produce_at(topic: &str, at: i64, values: &[String]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::brokers())
        .create()
        .unwrap();
    for value in values {
        producer
            .send(
                BaseRecord::to(topic)
                    .partition(0)
                    .key("k")
                    .payload(value)
                    .timestamp(at),
            )
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(std::time::Duration::from_secs(10)).unwrap();
}

#[test]
fn transactions_log_filters_then_limits_and_stops_reading_once_it_has_them() {
    let p = Pipeline::new();
    let user = unique("erin");
    let event = |n: usize, status: &str| {
        serde_json::json!({"transaction_id": format!("t{n}"), "user_id": user, "status": status, "amount": 1.5, "currency": "USD"})
            .to_string()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Two hours ago: 3 rejected, then 1000 completed; now: 2 rejected, 5 completed.
    let old: Vec<String> = (0..3)
        .map(|n| event(n, "rejected"))
        .chain((3..1003).map(|n| event(n, "completed")))
        .collect();
    produce_at(&p.transactions, now - 2 * 3600 * 1000, &old);
    let new: Vec<String> = (1003..1005)
        .map(|n| event(n, "rejected"))
        .chain((1005..1010).map(|n| event(n, "completed")))
        .collect();
    produce_at(&p.transactions, now, &new);

    let ids = |log: &Value| -> Vec<String> {
        log.as_array()
            .unwrap()
            .iter()
            .map(|e| e["transaction_id"].as_str().unwrap().to_string())
            .collect()
    };
    // The limit counts matches, not messages read: 4 rejected, newest first.
    let log = json(
        &p,
        &[
            "transactions",
            "log",
            "--status",
            "rejected",
            "--limit",
            "4",
        ],
    );
    assert_eq!(ids(&log), ["t1004", "t1003", "t2", "t1"], "{log}");
    let log = json(
        &p,
        &[
            "transactions",
            "log",
            "--status",
            "rejected",
            "--since",
            "1h",
        ],
    );
    assert_eq!(ids(&log), ["t1004", "t1003"], "{log}");

    // The newest 3 are at the end: reading stops long before the start.
    let run = p
        .payctl(&[
            "-v",
            "transactions",
            "log",
            "--limit",
            "3",
            "--output",
            "json",
        ])
        .expect(0);
    assert_eq!(ids(&run.json()), ["t1009", "t1008", "t1007"]);
    let read: u64 = run
        .stderr
        .split("read ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of messages read in:\n{}", run.stderr));
    assert!(read < 1000, "read {read} of 1010 messages for the newest 3");
}
