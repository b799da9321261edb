//! The operator tools kcat, kafkactl and rpk lack: true end offsets, lag
//! checks and live lag, field filters and offset specs, dead-letter
//! re-drive. Against the real local broker and Redis.

mod common;

use common::{produce_raw, unique, Pipeline};
use serde_json::Value;
use std::io::{BufRead, BufReader};

/// A topic of one partition holding `values`, produced as one batch.
fn topic_with(p: &Pipeline, values: &[&str]) -> String {
    let topic = unique("tools");
    p.payctl(&["topics", "create", "--partitions", "1", &topic])
        .expect(0);
    produce_raw(&topic, "k", values);
    topic
}

/// Reads `n` messages of `topic` as `group`, committing them.
fn consume_as(p: &Pipeline, topic: &str, group: &str, n: usize) {
    let read = p
        .payctl(&[
            "topics",
            "consume",
            topic,
            "--group",
            group,
            "--from-beginning",
            "-n",
            &n.to_string(),
        ])
        .expect(0);
    assert_eq!(read.stdout.lines().count(), n, "{}", read.stdout);
}

#[test]
fn a_batch_of_ten_records_counts_ten_and_max_lag_exits_3_above_it() {
    let p = Pipeline::new();
    let values: Vec<String> = (0..10).map(|i| format!("{{\"n\":{i}}}")).collect();
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    let topic = topic_with(&p, &values);

    let described = p
        .payctl(&["topics", "describe", &topic, "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(described["partitions"][0]["high"], 10, "{described}");

    let group = unique("lag");
    consume_as(&p, &topic, &group, 4);
    let lag = p
        .payctl(&["groups", "lag", &group, "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(lag["total"], 6, "{lag}");
    assert_eq!(lag["partitions"][0]["end"], 10, "{lag}");

    let above = p
        .payctl(&["groups", "lag", &group, "--max-lag", "5"])
        .expect(3);
    assert!(
        above.stderr.contains(&format!("{topic}/0 (6)")),
        "{}",
        above.stderr
    );
    p.payctl(&["groups", "lag", &group, "--max-lag", "6"])
        .expect(0);
}

#[test]
fn lag_watch_reports_rates_and_time_to_drain() {
    let p = Pipeline::new();
    let values: Vec<String> = (0..40).map(|i| format!("{{\"n\":{i}}}")).collect();
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    let topic = topic_with(&p, &values);
    let group = unique("watch");
    consume_as(&p, &topic, &group, 10);

    // Reports 8 s apart; between them the group moves on by 20.
    let mut watcher = p.spawn(
        &[
            "groups",
            "lag",
            &group,
            "--watch",
            "--interval",
            "8",
            "--count",
            "2",
            "--output",
            "json",
        ],
        &[],
    );
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    consume_as(&p, &topic, &group, 20);
    let second: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let run = common::finish(watcher);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(lines.next().is_none(), "--count 2 printed more");
    let (first, second) = (&first["partitions"][0], &second["partitions"][0]);
    assert_eq!(first["lag"], 30, "{first}");
    assert!(first["consumed_per_s"].is_null(), "{first}");
    assert_eq!(second["lag"], 10, "{second}");
    let consumed = second["consumed_per_s"].as_f64().unwrap();
    assert!(consumed > 0.0, "{second}");
    let drain = second["drain_s"].as_f64().unwrap();
    assert!(
        drain > 0.0 && (drain - 10.0 / consumed).abs() < 1e-6,
        "{second}"
    );
}

fn lines(run: &common::Run) -> Vec<&str> {
    run.stdout.lines().collect()
}

#[test]
fn where_filters_offset_specs_and_templates_pick_and_shape_messages() {
    let p = Pipeline::new();
    let topic = topic_with(
        &p,
        &[
            r#"{"user_id":"u0","status":"completed","amount":10.50,"meta":{"src":"api-0"}}"#,
            r#"{"user_id":"u1","status":"completed","amount":11.50,"meta":{"src":"api-1"}}"#,
            r#"{"user_id":"u0","status":"rejected","amount":12.50,"meta":{"src":"api-2"}}"#,
            r#"{"user_id":"u1","status":"rejected","amount":13.50,"meta":{"src":"web-3"}}"#,
            r#"{"user_id":"u1","status":"rejected","amount":14.50,"meta":{"src":"api-4"}}"#,
            "not json",
        ],
    );
    let consume = |extra: &[&str]| {
        let mut args = vec!["topics", "consume", topic.as_str(), "--wait", "1"];
        args.extend(extra);
        p.payctl(&args).expect(0)
    };

    let picked = consume(&[
        "--offset",
        "start",
        "--where",
        "status=rejected",
        "--where",
        "user_id=u1",
        "--format",
        "%t %p/%o %k %s",
    ]);
    assert_eq!(
        lines(&picked),
        [
            format!(
                r#"{topic} 0/3 k {{"user_id":"u1","status":"rejected","amount":13.50,"meta":{{"src":"web-3"}}}}"#
            ),
            format!(
                r#"{topic} 0/4 k {{"user_id":"u1","status":"rejected","amount":14.50,"meta":{{"src":"api-4"}}}}"#
            ),
        ]
    );
    let by = |extra: &[&str]| {
        let mut args = vec!["--offset", "start", "--format", "%o"];
        args.extend(extra);
        lines(&consume(&args)).join(",")
    };
    assert_eq!(
        by(&[
            "--where",
            "meta.src~^api-[0-9]$",
            "--where",
            "status=rejected"
        ]),
        "2,4"
    );
    assert_eq!(by(&["--where", "amount=12.50"]), "2");
    // A value that is not JSON passes only != filters.
    assert_eq!(by(&["--where", "status!=rejected"]), "0,1,5");

    let from = |spec: &str| lines(&consume(&["--offset", spec, "--format", "%o"])).join(",");
    assert_eq!(
        from("-2"),
        "4,5",
        "the last 2, from the true end of a batch"
    );
    assert_eq!(from("3"), "3,4,5");
    assert_eq!(from("@-1h"), "0,1,2,3,4,5");
    assert_eq!(from("@2100-01-01T00:00:00Z"), "");

    let bad = p
        .payctl(&["topics", "consume", &topic, "--where", "status"])
        .expect(2);
    assert!(bad.stderr.contains("FIELD=VALUE"), "{}", bad.stderr);
    let grouped = p
        .payctl(&[
            "topics",
            "consume",
            &topic,
            "--offset",
            "-2",
            "--group",
            &unique("g"),
        ])
        .expect(2);
    assert!(
        grouped.stderr.contains("groups reset"),
        "{}",
        grouped.stderr
    );
}

#[test]
fn transactions_log_takes_the_same_filters() {
    let p = Pipeline::new();
    let event = |id: &str, role: &str, reason: &str| {
        format!(
            r#"{{"transaction_id":"{id}","user_id":"alice","status":"rejected","role":"{role}","reason":"{reason}"}}"#
        )
    };
    let events = [
        event("t1", "debit", "insufficient balance"),
        event("t2", "credit", "insufficient balance"),
        event("t3", "debit", "unknown account"),
    ];
    let events: Vec<&str> = events.iter().map(String::as_str).collect();
    produce_raw(&p.transactions, "alice", &events);
    let log = p
        .payctl(&[
            "transactions",
            "log",
            "--where",
            "role=debit",
            "--where",
            "reason~balance$",
            "--output",
            "json",
        ])
        .expect(0)
        .json();
    let ids: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["transaction_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["t1"], "{log}");
}

#[test]
fn dead_letters_are_counted_shown_and_sent_back_once_with_their_headers() {
    let p = Pipeline::new();
    let process = || {
        p.payctl(&[
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
    let redrive = |extra: &[&str]| {
        let mut args = vec!["dlq", "redrive", p.transfers.as_str(), "--output", "json"];
        args.extend(extra);
        p.payctl(&args).expect(0).json()
    };
    common::produce_with_headers(
        &p.transfers,
        "k1",
        &[("trace", "abc")],
        &[r#"{"bad": 1}"#, "not json", r#"{"bad": 2}"#],
    );
    assert_eq!(process()["outcomes"]["dead-lettered"], 3);

    let list = p
        .payctl(&["dlq", "list", &p.transfers, "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(list[0]["topic"], format!("{}.dlq", p.transfers), "{list}");
    assert_eq!(list[0]["total"], 3, "{list}");
    let counted: u64 = list[0]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 3, "{list}");
    let shown = p
        .payctl(&[
            "dlq",
            "show",
            &p.transfers,
            "--where",
            "bad=2",
            "--output",
            "json",
        ])
        .expect(0)
        .json();
    assert_eq!(shown.as_array().unwrap().len(), 1, "{shown}");
    assert_eq!(shown[0]["payload"], r#"{"bad": 2}"#, "{shown}");
    assert_eq!(shown[0]["origin"]["topic"], p.transfers.as_str(), "{shown}");

    // A dry run sends nothing and remembers nothing.
    let dry = redrive(&["--dry-run"]);
    assert_eq!(
        (dry["sent"].as_u64(), dry["dry_run"].as_bool()),
        (Some(3), Some(true)),
        "{dry}"
    );
    assert_eq!(common::read_topic(&p.transfers).len(), 3);

    let first = redrive(&["--where", "bad~^[12]$"]);
    assert_eq!(first["sent"], 2, "{first}");
    assert_eq!(first["skipped"]["filtered out"], 1, "{first}");
    let second = redrive(&[]);
    assert_eq!(second["sent"], 1, "{second}");
    assert_eq!(second["skipped"]["already re-driven"], 2, "{second}");
    assert_eq!(redrive(&[])["sent"], 0, "a third run sends nothing again");

    // Back on the origin topic: payload, key and headers, counted once.
    let back = p
        .payctl(&[
            "topics",
            "consume",
            &p.transfers,
            "--offset",
            "start",
            "--value-json",
            "--wait",
            "1",
        ])
        .expect(0);
    let records: Vec<Value> = back
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 6, "{}", back.stdout);
    for copy in &records[3..] {
        assert_eq!(copy["key"], "k1", "{copy}");
        assert_eq!(copy["headers"]["trace"], "abc", "{copy}");
        assert_eq!(copy["headers"]["payctl-redrive-count"], "1", "{copy}");
    }

    // They fail again; with --max-redrives 1 they stay where they are.
    assert_eq!(process()["outcomes"]["dead-lettered"], 3);
    let stays = redrive(&["--max-redrives", "1"]);
    assert_eq!(stays["sent"], 0, "{stays}");
    assert_eq!(stays["read"], 6, "{stays}");
    assert_eq!(
        stays["skipped"]["re-driven --max-redrives times already"], 3,
        "{stays}"
    );
}

#[test]
fn groups_reset_plans_first_executes_on_demand_and_waits_for_members_to_leave() {
    let p = Pipeline::new();
    let early: Vec<String> = (0..10).map(|i| format!("{{\"n\":{i}}}")).collect();
    let early: Vec<&str> = early.iter().map(String::as_str).collect();
    let topic = topic_with(&p, &early);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let middle = common_time_text(std::time::Duration::from_millis(700));
    produce_raw(
        &topic,
        "k",
        &[
            "{\"n\":10}",
            "{\"n\":11}",
            "{\"n\":12}",
            "{\"n\":13}",
            "{\"n\":14}",
        ],
    );
    let group = unique("reset");
    consume_as(&p, &topic, &group, 12);
    let committed = || {
        p.payctl(&["groups", "lag", &group, "--output", "json"])
            .expect(0)
            .json()["partitions"][0]["committed"]
            .as_i64()
    };
    let reset = |extra: &[&str]| {
        let mut args = vec!["groups", "reset", group.as_str(), "--output", "json"];
        args.extend(extra);
        p.payctl(&args)
    };

    let dry = reset(&["--topic", &topic, "--shift-by", "-2"]).expect(0);
    let row = &dry.json()["partitions"][0];
    assert_eq!(
        (row["current"].as_i64(), row["new"].as_i64()),
        (Some(12), Some(10)),
        "{row}"
    );
    assert_eq!(row["reread"], 2, "{row}");
    assert!(dry.stderr.contains("add --execute"), "{}", dry.stderr);
    assert_eq!(committed(), Some(12), "a dry run changes nothing");

    reset(&["--topic", &topic, "--to-time", &middle, "--execute"]).expect(0);
    assert_eq!(
        committed(),
        Some(10),
        "the first message at or after {middle}"
    );

    let clamped = reset(&["--topic", &topic, "--to-offset", "100"])
        .expect(0)
        .json();
    assert_eq!(clamped["partitions"][0]["new"], 15, "{clamped}");
    assert!(clamped["partitions"][0]["note"]
        .as_str()
        .unwrap()
        .contains("clamped"));

    // The printed plan is a file --from-file takes back.
    let dir = std::env::temp_dir().join(unique("plans"));
    std::fs::create_dir_all(&dir).unwrap();
    let json_plan = dir.join("plan.json");
    let planned = reset(&["--topic", &topic, "--to-earliest"]).expect(0);
    std::fs::write(&json_plan, &planned.stdout).unwrap();
    reset(&["--from-file", json_plan.to_str().unwrap(), "--execute"]).expect(0);
    assert_eq!(committed(), Some(0));
    let csv_plan = dir.join("plan.csv");
    std::fs::write(
        &csv_plan,
        format!("topic,partition,offset\n\"{topic}\",0,7\n"),
    )
    .unwrap();
    reset(&["--from-file", csv_plan.to_str().unwrap(), "--execute"]).expect(0);
    assert_eq!(committed(), Some(7));
    std::fs::write(
        &csv_plan,
        format!("topic,partition,offset\n{topic},0,7\n{topic},3,1\n"),
    )
    .unwrap();
    let bad = reset(&["--from-file", csv_plan.to_str().unwrap(), "--execute"]).expect(2);
    assert!(
        bad.stderr.contains("line 3") && bad.stderr.contains("no partition 3"),
        "{}",
        bad.stderr
    );
    assert_eq!(committed(), Some(7), "a bad plan applies nothing");

    let mut member = p.spawn(
        &["topics", "consume", &topic, "--group", &group, "--follow"],
        &[],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let refused = loop {
        let run = reset(&["--topic", &topic, "--to-earliest", "--execute"]);
        if run.code == 1 || std::time::Instant::now() > deadline {
            break run;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    member.kill().ok();
    member.wait().ok();
    let refused = refused.expect(1);
    assert!(
        refused.stderr.contains("stop its consumers first"),
        "{}",
        refused.stderr
    );
}

/// RFC 3339 text of `ago` before now.
fn common_time_text(ago: std::time::Duration) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let ms = (now - ago).as_millis() as u64;
    payctl::clock::rfc3339(ms)
}
