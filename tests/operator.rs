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

/// Partition count of `topic` as `topics describe` shows it; `None` when
/// the broker does not have it.
fn partitions_of(p: &Pipeline, topic: &str) -> Option<usize> {
    let run = p.payctl(&["topics", "describe", topic, "--output", "json"]);
    (run.code == 0).then(|| run.json()["partitions"].as_array().unwrap().len())
}

/// Runs `payctl ARGS` in a pseudo-terminal, typing `answer`; returns its
/// exit code and everything it showed.
fn at_a_terminal(args: &str, answer: &str) -> (i32, String) {
    let mut child = Command::new("script")
        .args([
            "-qec",
            &format!("{} {args}", env!("CARGO_BIN_EXE_payctl")),
            "/dev/null",
        ])
        .env("KAFKA_BOOTSTRAP_SERVERS", common::brokers())
        .env("XDG_CONFIG_HOME", common::config_home())
        .env_remove("PAYCTL_PROFILE")
        .env_remove("PAYCTL_OUTPUT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs a command in a pseudo-terminal");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(answer.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn cluster_info_lists_the_brokers_the_controller_and_what_the_cluster_holds() {
    let p = Pipeline::new();
    let info = p
        .payctl(&["cluster", "info", "--output", "json"])
        .expect(0)
        .json();
    let brokers = info["brokers"].as_array().unwrap();
    assert!(!brokers.is_empty(), "{info}");
    for broker in brokers {
        assert!(!broker["host"].as_str().unwrap().is_empty(), "{info}");
        assert!(broker["port"].as_i64().unwrap() > 0, "{info}");
    }
    // Both Tansu and Apache Kafka (0.10.1 and later) name a controller and
    // the cluster's id.
    let controller = info["controller"].as_i64().expect("a controller");
    let flagged: Vec<&Value> = brokers.iter().filter(|b| b["controller"] == true).collect();
    assert_eq!(flagged.len(), 1, "{info}");
    assert_eq!(flagged[0]["id"], controller, "{info}");
    assert!(!info["cluster_id"].as_str().unwrap().is_empty(), "{info}");
    // This pipeline's own topics are among those counted.
    let topics = info["topics"].as_u64().unwrap();
    assert!(topics >= 5, "{info}");
    assert!(info["partitions"].as_u64().unwrap() >= topics, "{info}");

    let table = p.payctl(&["cluster", "info"]).expect(0).stdout;
    assert!(
        table.contains(&format!("broker {controller}")) && table.contains("(controller)"),
        "{table}"
    );
    for row in ["cluster id", "topics", "partitions"] {
        assert!(table.contains(row), "{table}");
    }
}

#[test]
fn topics_delete_asks_refuses_unknown_names_and_reads_the_broker_back() {
    let p = Pipeline::new();
    let (kept, gone) = (unique("delete-kept"), unique("delete-gone"));
    for topic in [&kept, &gone] {
        p.payctl(&["topics", "create", topic]).expect(0);
    }

    // Off a terminal, without --yes: refused, nothing deleted.
    let asked = p.payctl(&["topics", "delete", &kept, &gone]).expect(2);
    assert!(asked.stderr.contains("needs --yes"), "{}", asked.stderr);
    assert!(partitions_of(&p, &kept).is_some() && partitions_of(&p, &gone).is_some());

    // One name the broker does not have: that one named, none deleted.
    let missing = unique("delete-missing");
    let unknown = p
        .payctl(&["topics", "delete", &gone, &missing, "--yes"])
        .expect(2);
    assert!(
        unknown
            .stderr
            .contains(&format!("no topic {missing} on the broker")),
        "{}",
        unknown.stderr
    );
    assert!(partitions_of(&p, &gone).is_some());

    // At a terminal it asks; "n" keeps them (exit 1: the answer is no).
    let (code, shown) = at_a_terminal(&format!("topics delete {kept} {gone}"), "n\n");
    assert!(
        shown.contains(&format!(
            "delete 2 topics ({kept}, {gone}) and every message in them? [y/N]"
        )),
        "{shown}"
    );
    assert_eq!(code, 1, "{shown}");
    assert!(partitions_of(&p, &kept).is_some() && partitions_of(&p, &gone).is_some());

    // "y" deletes, and the broker no longer has it.
    let (code, shown) = at_a_terminal(&format!("topics delete {gone}"), "y\n");
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("deleted"), "{shown}");
    assert_eq!(partitions_of(&p, &gone), None);

    // --yes in a script, one row per topic in JSON.
    let deleted = p
        .payctl(&["topics", "delete", &kept, "--yes", "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(
        deleted,
        serde_json::json!([{"topic": kept, "deleted": true}]),
        "{deleted}"
    );
    assert_eq!(partitions_of(&p, &kept), None);
    let again = p.payctl(&["topics", "delete", &kept, "--yes"]).expect(2);
    assert!(again.stderr.contains("no topic"), "{}", again.stderr);
}

#[test]
fn topics_add_partitions_only_grows_and_says_when_the_broker_cannot() {
    let p = Pipeline::new();
    let topic = unique("grow");
    p.payctl(&["topics", "create", "--partitions", "2", &topic])
        .expect(0);

    for fewer in ["2", "1"] {
        let refused = p
            .payctl(&["topics", "add-partitions", &topic, "--to", fewer])
            .expect(2);
        assert!(
            refused
                .stderr
                .contains(&format!("{topic} has 2 partitions")),
            "{}",
            refused.stderr
        );
    }
    let missing = p
        .payctl(&[
            "topics",
            "add-partitions",
            &unique("grow-missing"),
            "--to",
            "3",
        ])
        .expect(2);
    assert!(missing.stderr.contains("no topic"), "{}", missing.stderr);

    // Apache Kafka grows the topic; Tansu does not offer CreatePartitions,
    // and payctl says so in one line and leaves the topic as it was.
    let more = p.payctl(&[
        "topics",
        "add-partitions",
        &topic,
        "--to",
        "4",
        "--output",
        "json",
    ]);
    match more.code {
        0 => {
            let grown = more.json();
            assert_eq!(
                (grown["before"].clone(), grown["after"].clone()),
                (2.into(), 4.into())
            );
            assert_eq!(partitions_of(&p, &topic), Some(4));
        }
        2 => {
            assert_eq!(
                more.stderr.trim(),
                format!(
                    "error: adding partitions: the broker at {} does not offer the CreatePartitions API",
                    common::brokers()
                )
            );
            assert_eq!(partitions_of(&p, &topic), Some(2));
        }
        other => panic!("exit {other}: {}", more.stderr),
    }
    p.payctl(&["topics", "delete", &topic, "--yes"]).expect(0);
}

#[test]
fn topics_config_changes_the_named_settings_only_and_reads_them_back() {
    let p = Pipeline::new();
    let topic = unique("settings");
    p.payctl(&["topics", "create", &topic]).expect(0);
    let value = |settings: &Value, name: &str| {
        settings["settings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["value"].clone())
    };

    let set = p
        .payctl(&[
            "topics",
            "config",
            "set",
            &topic,
            "retention.ms=3600000",
            "cleanup.policy=compact",
            "--output",
            "json",
        ])
        .expect(0)
        .json();
    assert_eq!(set["changes"][0]["name"], "retention.ms", "{set}");
    assert_eq!(set["changes"][0]["after"], "3600000", "{set}");
    assert_eq!(set["changes"][1]["name"], "cleanup.policy", "{set}");
    assert_eq!(set["changes"][1]["after"], "compact", "{set}");

    let one = p
        .payctl(&[
            "topics",
            "config",
            "get",
            &topic,
            "retention.ms",
            "--output",
            "json",
        ])
        .expect(0)
        .json();
    assert_eq!(one["settings"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(value(&one, "retention.ms"), Some("3600000".into()), "{one}");

    // A second change shows the value it replaced, and leaves the other
    // setting as it was.
    let changed = p
        .payctl(&[
            "topics",
            "config",
            "set",
            &topic,
            "retention.ms=7200000",
            "--output",
            "json",
        ])
        .expect(0)
        .json();
    assert_eq!(
        changed["changes"],
        serde_json::json!([{"name": "retention.ms", "before": "3600000", "after": "7200000"}]),
        "{changed}"
    );
    let all = p
        .payctl(&["topics", "config", "get", &topic, "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(value(&all, "retention.ms"), Some("7200000".into()), "{all}");
    assert_eq!(
        value(&all, "cleanup.policy"),
        Some("compact".into()),
        "{all}"
    );
    let table = p
        .payctl(&["topics", "config", "get", &topic, "cleanup.policy"])
        .expect(0)
        .stdout;
    assert!(
        table.contains("source") && table.contains("compact"),
        "{table}"
    );

    let unknown = p
        .payctl(&["topics", "config", "get", &topic, "no.such.setting"])
        .expect(2);
    assert!(
        unknown.stderr.contains("no setting no.such.setting"),
        "{}",
        unknown.stderr
    );
    for malformed in ["retention.ms", "=3600000"] {
        let refused = p
            .payctl(&["topics", "config", "set", &topic, malformed])
            .expect(2);
        assert!(refused.stderr.contains("KEY=VALUE"), "{}", refused.stderr);
    }
    let missing = p
        .payctl(&[
            "topics",
            "config",
            "set",
            &unique("settings-missing"),
            "a=b",
        ])
        .expect(2);
    assert!(missing.stderr.contains("no topic"), "{}", missing.stderr);
    p.payctl(&["topics", "delete", &topic, "--yes"]).expect(0);
}
