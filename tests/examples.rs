//! The examples under `examples/`, each run as a user would run it
//! (`cargo run --example NAME`) against the real broker and Redis, with
//! what it prints checked figure by figure.
//!
//! The examples run are the ones `cargo build --examples` writes to
//! `target/<profile>/examples/NAME` (`cargo test` builds examples only to
//! check that they compile, under other names, and `--all-targets` builds
//! them as test harnesses): `scripts/test.sh` builds them before the tests.
//! By hand: `cargo build --examples && cargo test --test examples`. An
//! example whose source is newer than its build is refused.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Mutex;

use common::{brokers, redis, redis_url, Run};
use redis::Commands;
use serde_json::Value;

/// One example at a time, as a user runs them: each one's worker joins a
/// new consumer group, and joins wait for each other on the local broker.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Example `name` as `cargo build --examples` wrote it:
/// `target/<profile>/examples/NAME`, beside the `deps/` directory this
/// test binary runs from.
fn example_path(name: &str) -> PathBuf {
    let test_binary = std::env::current_exe().expect("the test binary's path");
    let path = test_binary
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary is in target/<profile>/deps")
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let modified = |path: &std::path::Path| std::fs::metadata(path).and_then(|m| m.modified());
    let Ok(built) = modified(&path) else {
        panic!(
            "example {name} is not built ({} is missing): run `cargo build --examples` \
             first, with --release if the tests run with it",
            path.display()
        )
    };
    let sources = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for source in [
        sources.join(format!("{name}.rs")),
        sources.join("common/mod.rs"),
    ] {
        let edited = modified(&source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        assert!(
            edited <= built,
            "{} is older than {}: run `cargo build --examples` again",
            path.display(),
            source.display()
        );
    }
    path
}

/// Runs example `name` against the stack and collects what it printed.
fn example(name: &str) -> Run {
    let path = example_path(name);
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(&path)
        .env("KAFKA_BOOTSTRAP_SERVERS", brokers())
        .env("REDIS_URL", redis_url())
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// The words of the line that starts with `prefix`.
fn line<'a>(run: &'a Run, prefix: &str) -> Vec<&'a str> {
    run.stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{}", run.stdout))
        .split_whitespace()
        .collect()
}

/// The stored record of transfer `id`.
fn transfer(id: &str) -> Value {
    let json: String = redis()
        .get(format!("transfer:{id}"))
        .unwrap_or_else(|e| panic!("transfer {id} is not in Redis: {e}"));
    serde_json::from_str(&json).unwrap()
}

#[test]
fn transfer_one_moves_the_money_once() {
    let run = example("transfer_one").expect(0);
    let id = line(&run, "initiated ")[1];
    // `<account>: <balance> <currency>`, after 7.25 moved from 20.00.
    let payer = line(&run, "ex-payer-");
    let payee = line(&run, "ex-payee-");
    assert_eq!(payer[1..], ["12.75", "USD"], "{}", run.stdout);
    assert_eq!(payee[1..], ["7.25", "USD"], "{}", run.stdout);
    let (payer, payee) = (
        payer[0].trim_end_matches(':'),
        payee[0].trim_end_matches(':'),
    );
    let stored = transfer(id);
    assert_eq!(
        (
            stored["status"].as_str(),
            stored["version"].as_u64(),
            stored["sender_id"].as_str(),
            stored["receiver_id"].as_str(),
        ),
        (Some("completed"), Some(2), Some(payer), Some(payee)),
        "{stored}"
    );
}

#[test]
fn initiate_transfer_returns_the_same_transfer_for_the_same_key() {
    let run = example("initiate_transfer").expect(0);
    let first = line(&run, "initiated ");
    let again = line(&run, "again ");
    assert_eq!(first[2], "created=true", "{}", run.stdout);
    assert_eq!(again[2], "created=false", "{}", run.stdout);
    assert_eq!(first[1], again[1], "one key, one transfer:\n{}", run.stdout);
    assert_eq!(run.stdout.lines().count(), 2, "{}", run.stdout);

    let stored = transfer(first[1]);
    assert_eq!(stored["amount"].to_string(), "7.25", "{stored}");
    let key = stored["idempotency_key"].as_str().unwrap_or_default();
    assert!(key.starts_with("example-"), "{stored}");
}

#[test]
fn own_worker_counts_each_completed_event_once() {
    let run = example("own_worker").expect(0);
    let users = line(&run, "users ");
    let (alice, bob) = (users[1], users[2]);
    let expected = format!(
        "users {alice} {bob}
first read: processed 6, counted 3, already-counted 1, not-completed 1, dead-lettered 1
  {alice} completed 2
  {bob} completed 1
read again: processed 6, counted 0, already-counted 4, not-completed 1, dead-lettered 1
  {alice} completed 2
  {bob} completed 1
"
    );
    assert_eq!(run.stdout, expected, "stderr:\n{}", run.stderr);
}

#[test]
fn convert_exact_converts_direct_inverse_and_cross() {
    let run = example("convert_exact").expect(0);
    assert_eq!(
        run.stdout,
        "rate USD/MXN 17.0525
rate USD/ZAR 18.321
100.00 USD = 1705.25 MXN (direct: USD/MXN 17.0525)
1000.00 MXN = 58.64 USD (inverse: USD/MXN 17.0525 inverted)
250.00 ZAR = 232.69 MXN (cross via USD: USD/ZAR 18.321 inverted, USD/MXN 17.0525)
",
        "stderr:\n{}",
        run.stderr
    );
}

/// One partition's row of `group_lag`'s report.
#[derive(Debug, PartialEq)]
struct Row {
    partition: String,
    committed: Option<i64>,
    end: i64,
    lag: i64,
}

/// The total and the rows printed under the line that starts with `label`.
fn lag_report(run: &Run, label: &str) -> (i64, Vec<Row>) {
    let mut lines = run.stdout.lines().skip_while(|l| !l.starts_with(label));
    let heading = lines
        .next()
        .unwrap_or_else(|| panic!("no {label:?} in:\n{}", run.stdout));
    let total = heading
        .rsplit(' ')
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no total in {heading:?}"));
    let rows = lines
        .take_while(|l| l.starts_with("  "))
        .map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [partition, "committed", committed, "end", end, "lag", lag] => Row {
                partition: partition.to_string(),
                committed: committed.parse().ok(),
                end: end.parse().unwrap(),
                lag: lag.parse().unwrap(),
            },
            _ => panic!("not a partition row: {l:?}"),
        })
        .collect();
    (total, rows)
}

#[test]
fn group_lag_counts_everything_before_a_commit_and_the_rest_after() {
    let run = example("group_lag").expect(0);
    let topic = line(&run, "topic ")[1].trim_end_matches(':').to_string();
    assert_eq!(
        run.stdout.lines().next(),
        Some(format!("topic {topic}: 10 messages in 3 partitions").as_str())
    );

    let (total, before) = lag_report(&run, "before reading:");
    assert_eq!(total, 10, "{}", run.stdout);
    let partitions: Vec<String> = (0..3).map(|p| format!("{topic}/{p}")).collect();
    assert_eq!(
        before.iter().map(|r| &r.partition).collect::<Vec<_>>(),
        partitions.iter().collect::<Vec<_>>()
    );
    assert_eq!(before.iter().map(|r| r.end).sum::<i64>(), 10);
    for row in &before {
        // No commit yet: every message of the partition waits.
        assert_eq!((row.committed, row.lag), (None, row.end), "{row:?}");
    }

    let (total, after) = lag_report(&run, "after reading 4:");
    assert_eq!(total, 6, "{}", run.stdout);
    assert_eq!(after.iter().map(|r| r.lag).sum::<i64>(), 6);
    for (row, earlier) in after.iter().zip(&before) {
        assert_eq!((&row.partition, row.end), (&earlier.partition, earlier.end));
        assert_eq!(row.lag, row.end - row.committed.unwrap_or(0), "{row:?}");
    }
}

/// `examples/count_completed.lua` on its own: an event id raises its
/// user's count once, whether given twice in one call or again in a later
/// call (a redelivered batch); a call without events changes nothing.
#[test]
fn count_completed_lua_counts_an_event_id_once() {
    let script = redis::Script::new(include_str!("../examples/count_completed.lua"));
    let tag = common::unique("example-count");
    let (counted, counts) = (format!("{{{tag}}}:counted"), format!("{{{tag}}}:completed"));
    let mut con = redis();
    let mut call = |pairs: &[&str]| -> Vec<i64> {
        let mut invocation = script.prepare_invoke();
        invocation.key(&counted).key(&counts);
        for arg in pairs {
            invocation.arg(*arg);
        }
        invocation.invoke(&mut con).expect("count_completed.lua")
    };
    assert_eq!(
        call(&["t1:2:debit", "alice", "t1:2:debit", "alice", "t3", "bob"]),
        [1, 0, 1]
    );
    // The same batch again, and a new event among old ones.
    assert_eq!(
        call(&["t1:2:debit", "alice", "t2:2:debit", "alice", "t3", "bob"]),
        [0, 1, 0]
    );
    // An id already counted is not counted again for another user.
    assert_eq!(call(&["t3", "carol"]), [0]);
    assert_eq!(call(&[]), Vec::<i64>::new());

    let mut con = redis();
    let totals: std::collections::BTreeMap<String, i64> = con.hgetall(&counts).unwrap();
    assert_eq!(
        totals,
        [("alice".to_string(), 2), ("bob".to_string(), 1)].into()
    );
    let ids: i64 = con.scard(&counted).unwrap();
    assert_eq!(ids, 3);
    let _: () = con.del(&[&counted, &counts]).unwrap();
}
