//! Topic tooling and operator views against the real broker and Redis.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{finish, unique, Pipeline};
use serde_json::Value;

fn produce_lines(p: &Pipeline, topic: &str, lines: &str, extra: &[&str]) -> String {
    let mut args = vec!["topics", "produce", topic];
    args.extend_from_slice(extra);
    let mut child = p.spawn_with_stdin(&args);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    finish(child).expect(0).stdout
}

#[test]
fn produce_then_consume_with_keys_and_headers() {
    let p = Pipeline::new();
    let topic = &p.payments;
    let lines =
        "{\"user\":\"ann\",\"n\":1}\n{\"user\":\"ben\",\"n\":2}\n\n{\"user\":\"ann\",\"n\":3}\n";
    let said = produce_lines(
        &p,
        topic,
        lines,
        &["--key-field", "user", "-H", "source=test", "-H", "run=1"],
    );
    assert_eq!(said.trim(), format!("3 messages written to {topic}"));

    let run = p
        .payctl(&["topics", "consume", topic, "--from-beginning", "-n", "3"])
        .expect(0);
    let mut records: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3, "{}", run.stdout);
    let n = |r: &Value| {
        serde_json::from_str::<Value>(r["value"].as_str().unwrap()).unwrap()["n"].as_i64()
    };
    records.sort_by_key(n);
    for (record, (key, n)) in records.iter().zip([("ann", 1), ("ben", 2), ("ann", 3)]) {
        assert_eq!(record["key"], key);
        let value: Value = serde_json::from_str(record["value"].as_str().unwrap()).unwrap();
        assert_eq!(value["n"], n);
        assert_eq!(record["headers"]["source"], "test");
        assert_eq!(record["headers"]["run"], "1");
        assert_eq!(record["topic"], topic.as_str());
        assert!(
            record["offset"].as_i64().unwrap() >= 0 && record["partition"].as_i64().unwrap() >= 0
        );
        assert!(record["timestamp"].as_i64().unwrap() > 0);
    }
    // Both of ann's messages share a key, so a partition, in order.
    let ann: Vec<&Value> = records.iter().filter(|r| r["key"] == "ann").collect();
    assert_eq!(ann[0]["partition"], ann[1]["partition"]);
    assert!(ann[0]["offset"].as_i64() < ann[1]["offset"].as_i64());

    let raw = p
        .payctl(&["topics", "consume", topic, "--from-beginning", "--raw"])
        .expect(0);
    assert_eq!(raw.stdout.lines().count(), 3);
    assert!(raw.stdout.lines().all(|l| l.starts_with("{\"user\"")));

    // A missing key field is refused before anything is sent.
    let mut child = p.spawn_with_stdin(&["topics", "produce", topic, "--key-field", "nope"]);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"user\":\"x\"}\n")
        .unwrap();
    let refused = finish(child).expect(2);
    assert!(
        refused.stderr.contains("line 1: no field \"nope\""),
        "{}",
        refused.stderr
    );
    assert_eq!(
        p.payctl(&["topics", "consume", topic, "--from-beginning", "--raw"])
            .expect(0)
            .stdout
            .lines()
            .count(),
        3
    );
}

#[test]
fn consume_into_a_closed_pipe_ends_cleanly() {
    let p = Pipeline::new();
    let topic = &p.payments;
    produce_lines(&p, topic, "a\nb\nc\n", &[]);
    // `payctl topics consume … --follow | head -1`
    let mut child = p.spawn(
        &[
            "topics",
            "consume",
            topic,
            "--from-beginning",
            "--follow",
            "--raw",
        ],
        &[],
    );
    let mut first = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(!first.is_empty());
    drop(child.stdout.take());
    produce_lines(&p, topic, "d\ne\n", &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "consume kept running after its reader left"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
}

fn initiate(p: &Pipeline, from: &str, to: &str) {
    p.payctl(&[
        "transfer", "initiate", "--from", from, "--to", to, "--amount", "1.00",
    ])
    .expect(0);
}

#[test]
fn describe_list_groups_lag_and_the_transaction_log() {
    let p = Pipeline::new();
    let (alice, bob) = (unique("alice"), unique("bob"));
    p.payctl(&["accounts", "open", &alice, "--balance", "100"])
        .expect(0);
    p.payctl(&["accounts", "open", &bob]).expect(0);
    // One message per produce call: Tansu counts a partition's high
    // watermark by batches, so several records in one batch would undercount.
    for _ in 0..4 {
        initiate(&p, &alice, &bob);
    }
    let described = p
        .payctl(&["topics", "describe", &p.transfers, "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(described["partitions"].as_array().unwrap().len(), 3);
    let listed = p
        .payctl(&["topics", "list", "--output", "json"])
        .expect(0)
        .json();
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == p.transfers.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (row["partitions"].as_u64(), row["messages"].as_u64()),
        (Some(3), Some(4)),
        "{row}"
    );
    p.payctl(&["topics", "describe", &unique("missing")])
        .expect(2);

    let lag = |p: &Pipeline| {
        p.payctl(&[
            "groups",
            "lag",
            &p.group,
            "--topic",
            &p.transfers,
            "--output",
            "json",
        ])
        .expect(0)
        .json()
    };
    assert_eq!(
        lag(&p)["total"],
        4,
        "before any worker: everything is waiting"
    );
    let partial = p.process(&["--max-messages", "1", "--batch-size", "1"]);
    assert_eq!(partial["processed"], 1);
    assert_eq!(lag(&p)["total"], 3);
    p.process(&[]);
    let after = lag(&p);
    assert_eq!(after["total"], 0, "{after}");
    assert!(after["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["lag"] == 0));

    let groups = p
        .payctl(&["groups", "list", "--output", "json"])
        .expect(0)
        .json();
    assert!(
        groups
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["group"] == p.group.as_str()),
        "{groups}"
    );

    let log = p
        .payctl(&["transactions", "log", "--user", &alice, "--output", "json"])
        .expect(0)
        .json();
    let entries = log.as_array().unwrap();
    assert_eq!(entries.len(), 4, "{log}");
    assert!(entries
        .iter()
        .all(|e| e["user_id"] == alice.as_str() && e["status"] == "completed"));
    let limited = p
        .payctl(&["transactions", "log", "--limit", "3", "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(limited.as_array().unwrap().len(), 3);
}

#[test]
fn status_is_healthy_and_fails_when_redis_is_down() {
    let p = Pipeline::new();
    let healthy = p.payctl(&["status", "--output", "json"]).expect(0).json();
    assert_eq!(healthy["healthy"], true, "{healthy}");
    let checks = healthy["checks"].as_array().unwrap();
    assert!(checks
        .iter()
        .any(|c| c["check"] == format!("dlq {}.dlq", p.transfers) && c["detail"] == "0 waiting"));

    let down = p
        .payctl(&[
            "status",
            "--redis-url",
            "redis://127.0.0.1:1/0",
            "--output",
            "json",
        ])
        .expect(1);
    let report = down.json();
    assert_eq!(report["healthy"], false);
    let redis = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "redis")
        .unwrap()
        .clone();
    assert_eq!(redis["ok"], false, "{redis}");
    assert!(down.stderr.contains("unhealthy: redis"), "{}", down.stderr);

    let missing = p
        .payctl(&["status", "--topic-payments", &unique("absent")])
        .expect(1);
    assert!(missing.stdout.contains("FAIL"), "{}", missing.stdout);
}

/// `status` says what a crash of Redis keeps: the workers move past an
/// effect once Redis answers, so only `appendfsync always` keeps them all.
#[test]
fn status_says_what_a_crash_of_redis_keeps() {
    let p = Pipeline::new();
    let redis = common::PrivateRedis::start();
    let detail = |expect: &str| {
        let report = p
            .payctl(&["status", "--redis-url", &redis.url(), "--output", "json"])
            .json();
        let check = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == "redis")
            .unwrap()
            .clone();
        assert_eq!(check["ok"], true, "{check}");
        let detail = check["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(expect), "expected {expect:?} in {detail:?}");
    };
    let config = |name: &str, value: &str| {
        let mut con = redis::Client::open(redis.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query(&mut con)
            .unwrap();
    };
    detail("no append-only file: a restart of Redis loses its data");
    config("appendfsync", "everysec");
    config("appendonly", "yes");
    detail("appendfsync everysec: a crash of Redis can lose writes it acknowledged");
    config("appendfsync", "always");
    detail("appendfsync always");
}

#[test]
fn completions_for_every_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_payctl"))
            .args(["completions", shell])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success());
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(
            script.contains("payctl") && script.contains("transfer"),
            "{shell}"
        );
    }
}
