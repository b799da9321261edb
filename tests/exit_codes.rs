//! The exit codes a script can rely on (README "Exit codes"), one test per
//! code, each from the real binary against the local stack.

mod common;

use std::time::{Duration, Instant};

use common::{open_account, unique, Pipeline};

#[test]
fn exit_0_when_done() {
    let p = Pipeline::new();
    let id = unique("done");
    p.payctl(&["accounts", "open", &id, "--balance", "10.00"])
        .expect(0);
    p.payctl(&["accounts", "show", &id]).expect(0);
}

#[test]
fn exit_1_when_the_answer_is_no() {
    let p = Pipeline::new();
    let missing = p.payctl(&["accounts", "show", &unique("nobody")]).expect(1);
    assert!(
        missing.stderr.contains("unknown account"),
        "{}",
        missing.stderr
    );
    // A check that fails: status with a topic that is not there.
    p.payctl(&["status", "--topic-payments", &unique("absent")])
        .expect(1);
}

#[test]
fn exit_2_on_bad_input_or_configuration() {
    let p = Pipeline::new();
    let alice = open_account(&p, "alice", "10.00");
    let bob = open_account(&p, "bob", "0");
    let bad_amount = p
        .payctl(&[
            "transfer", "initiate", "--from", &alice, "--to", &bob, "--amount", "1,000.00",
        ])
        .expect(2);
    assert!(
        bad_amount.stderr.contains("1,000.00"),
        "{}",
        bad_amount.stderr
    );
    let bad_currency = p
        .payctl(&["accounts", "open", &unique("c"), "--currency", "USX"])
        .expect(2);
    assert!(
        bad_currency.stderr.contains("did you mean USD"),
        "{}",
        bad_currency.stderr
    );
    let usage = p
        .payctl(&["transfer", "initiate", "--from", &alice])
        .expect(2);
    assert!(usage.stderr.contains("--to"), "{}", usage.stderr);
    let unreachable = p
        .payctl(&[
            "accounts",
            "show",
            &alice,
            "--redis-url",
            "redis://127.0.0.1:1/0",
        ])
        .expect(2);
    assert!(
        unreachable.stderr.contains("127.0.0.1:1"),
        "{}",
        unreachable.stderr
    );
    // Nothing listens there: a refused connection ends the run in seconds.
    let started = Instant::now();
    let no_broker = p
        .payctl(&["topics", "list", "--brokers", "127.0.0.1:19999"])
        .expect(2);
    assert!(
        no_broker
            .stderr
            .contains("cannot reach the Kafka brokers at 127.0.0.1:19999"),
        "{}",
        no_broker.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn exit_3_when_a_threshold_is_crossed() {
    let p = Pipeline::new();
    let topic = unique("lagging");
    p.payctl(&["topics", "create", "--partitions", "1", &topic])
        .expect(0);
    common::produce_raw(&topic, "k", &["1", "2", "3"]);
    let group = unique("behind");
    p.payctl(&[
        "topics",
        "consume",
        &topic,
        "--group",
        &group,
        "--from-beginning",
        "-n",
        "1",
    ])
    .expect(0);
    p.payctl(&["groups", "lag", &group, "--max-lag", "1"])
        .expect(3);
    p.payctl(&["groups", "lag", &group, "--max-lag", "2"])
        .expect(0);
}

#[test]
fn exit_3_when_work_is_left_for_the_next_run() {
    // A Redis of its own, so the run sees only this test's payment.
    let redis = common::PrivateRedis::start();
    let p = Pipeline::new();
    let env = [("REDIS_URL", redis.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    p.payctl_env(
        &[
            "payments",
            "submit",
            "--user",
            &unique("dora"),
            "--plan",
            "p",
            "--amount",
            "5.00",
        ],
        &env,
    )
    .expect(0);
    p.payctl_env(&["payments", "save", "--until-idle", "2"], &env)
        .expect(0);
    // Nothing listens on port 1: the processor never answers.
    let processor = [
        "payments",
        "process",
        "--processor-url",
        "http://127.0.0.1:1/execute_transaction",
        "--timeout",
        "0.5",
        "--retries",
        "0",
    ];
    let run = p.payctl_env(&processor, &env).expect(3);
    assert!(run.stderr.contains("unanswered"), "{}", run.stderr);
}

#[test]
fn exit_130_when_interrupted_before_the_work_is_done() {
    let p = Pipeline::new();
    let alice = open_account(&p, "alice", "100000.00");
    let bob = open_account(&p, "bob", "0");
    let dir = std::env::temp_dir().join(unique("exit-130"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rows.csv");
    let mut rows = String::from("from,to,amount\n");
    for _ in 0..200_000 {
        rows.push_str(&format!("{alice},{bob},0.01\n"));
    }
    std::fs::write(&path, rows).unwrap();
    let child = p.spawn(
        &[
            "transfer",
            "initiate",
            "--file",
            path.to_str().unwrap(),
            "--rate",
            "2000",
        ],
        &[],
    );
    // Paced at 2,000 rows/s, it is still working when interrupted.
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    common::signal(&child, "INT");
    let run = common::finish(child).expect(130);
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(run.stderr.contains("interrupted"), "{}", run.stderr);
}
