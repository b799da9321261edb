//! Commands that tell the truth (issue 9, points 4, 5, 6, 8 and 11):
//! against the real broker and Redis.

mod common;

use std::time::{Duration, Instant};

use common::{brokers, finish, produce_raw, signal, unique, Pipeline};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// The transfer worker in batch mode, as an operator runs it after another
/// run of the same group: it must get its partitions and go idle.
fn process_until_idle(p: &Pipeline) -> serde_json::Value {
    let summary = p
        .payctl(&[
            "transfer",
            "process",
            "--until-idle",
            "2",
            "--output",
            "json",
        ])
        .expect(0)
        .json();
    assert_eq!(summary["stopped"], "idle", "{summary}");
    summary
}

#[test]
fn a_worker_stopped_before_its_first_assignment_leaves_the_group_usable() {
    let p = Pipeline::new();
    p.payctl(&["transfer", "process", "--max-messages", "0"])
        .expect(0);
    // Today's main: `no partitions assigned to group … after 60s`, exit 2.
    process_until_idle(&p);
}

#[test]
fn a_worker_interrupted_while_joining_leaves_the_group_usable() {
    let p = Pipeline::new();
    let worker = p.spawn(&["transfer", "process"], &[]);
    std::thread::sleep(Duration::from_millis(500));
    signal(&worker, "INT");
    finish(worker).expect(0);
    process_until_idle(&p);
}

/// Leaves `group` the way a consumer dropped mid-join does (rdkafka closes
/// it, sending LeaveGroup before the broker has answered the JoinGroup):
/// the broker may keep the gone member as the group's leader.
fn abandon_join(group: &str, topic: &str) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("session.timeout.ms", "1000")
        .set("heartbeat.interval.ms", "250")
        .create()
        .expect("test consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        let _ = consumer.poll(Duration::from_millis(20));
    }
}

#[test]
fn groups_delete_asks_for_yes_off_a_terminal_and_frees_an_abandoned_group() {
    let p = Pipeline::new();
    abandon_join(&p.group, &p.transfers);
    let run = p.payctl(&["groups", "delete", &p.group]).expect(2);
    assert!(run.stderr.contains("--yes"), "{}", run.stderr);
    let run = p.payctl(&["groups", "delete", &p.group, "--yes"]).expect(0);
    assert!(run.stdout.contains(&p.group), "{}", run.stdout);
    process_until_idle(&p);
}

#[test]
fn groups_delete_is_refused_while_the_group_has_members() {
    let p = Pipeline::new();
    let worker = p.spawn(&["transfer", "process", "--until-idle", "8"], &[]);
    // Wait until the broker calls the group stable (its member joined).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let groups = p
            .payctl(&["groups", "list", &p.group, "--output", "json"])
            .expect(0)
            .json();
        let state = groups
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["group"] == p.group.as_str())
            .map(|g| g["state"].as_str().unwrap().to_string());
        if state.as_deref() == Some("Stable") {
            break;
        }
        assert!(Instant::now() < deadline, "group never stable: {groups}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let run = p.payctl(&["groups", "delete", &p.group, "--yes"]).expect(1);
    assert!(run.stderr.contains("stop its consumers"), "{}", run.stderr);
    finish(worker).expect(0);
}

#[test]
fn groups_lag_of_a_group_that_does_not_exist_is_a_no() {
    let p = Pipeline::new();
    let run = p
        .payctl(&["groups", "lag", &unique("no-such-group")])
        .expect(1);
    assert!(run.stderr.contains("no consumer group"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}

#[test]
fn groups_lag_shows_partitions_the_group_never_committed() {
    let p = Pipeline::new();
    let values: Vec<String> = (0..5).map(|i| format!("{{\"n\":{i}}}")).collect();
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    // One key: every message lands on one partition of the three.
    produce_raw(&p.payments, "k", &values);
    p.payctl(&[
        "topics",
        "consume",
        &p.payments,
        "--group",
        &p.group,
        "--from-beginning",
        "--wait",
        "1",
    ])
    .expect(0);
    let lag = p
        .payctl(&["groups", "lag", &p.group, "--output", "json"])
        .expect(0)
        .json();
    let partitions = lag["partitions"].as_array().unwrap();
    let ours: Vec<_> = partitions
        .iter()
        .filter(|row| row["topic"] == p.payments.as_str())
        .collect();
    assert_eq!(ours.len(), 3, "every partition of the topic: {lag}");
}
