//! Worker behaviour an operator relies on: clean stops and riding out a
//! Redis outage, against the real broker and Redis.

mod common;

use std::time::Duration;

use common::{finish, produce_raw, signal, unique, Pipeline, PrivateRedis};
use redis::Commands;

#[test]
fn sigterm_and_sigint_stop_a_worker_cleanly() {
    for name in ["TERM", "INT"] {
        let p = Pipeline::new();
        let alice = unique("alice");
        let bob = unique("bob");
        p.payctl(&["accounts", "open", &alice, "--balance", "10"])
            .expect(0);
        p.payctl(&["accounts", "open", &bob]).expect(0);
        p.payctl(&[
            "transfer", "initiate", "--from", &alice, "--to", &bob, "--amount", "1",
        ])
        .expect(0);
        let worker = p.spawn(&["transfer", "process", "--output", "json"], &[]);
        // Wait until the transfer is applied, then ask the worker to stop.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let shown = p
                .payctl(&["accounts", "show", &bob, "--output", "json"])
                .expect(0)
                .json();
            if shown["balance"] == "1.00" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "worker never applied the transfer"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        signal(&worker, name);
        let run = finish(worker).expect(0);
        let summary = run.json();
        assert_eq!(summary["stopped"], "signal", "{summary}");
        assert_eq!(summary["processed"], 1);
        // Its offset was committed: the same group finds nothing left.
        assert_eq!(p.process(&[])["processed"], 0);
    }
}

#[test]
fn a_redis_outage_is_retried_and_nothing_is_lost_or_doubled() {
    let p = Pipeline::new();
    let redis = PrivateRedis::start();
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str())];
    let alice = unique("alice");
    let bob = unique("bob");
    p.payctl_env(&["accounts", "open", &alice, "--balance", "10"], &env)
        .expect(0);
    p.payctl_env(&["accounts", "open", &bob], &env).expect(0);
    // The record as the versioned transfer service writes it; its message comes while Redis is down.
    let id = uuid::Uuid::new_v4().to_string();
    let message = format!(
        r#"{{"transfer_id":"{id}","sender_id":"{alice}","receiver_id":"{bob}","amount":4.25,"status":"initiated","version":1}}"#
    );
    let mut con = redis::Client::open(url.clone())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = con.set(format!("transfer:{id}"), &message).unwrap();

    let worker = p.spawn(
        &[
            "transfer",
            "process",
            "--max-messages",
            "1",
            "--output",
            "json",
        ],
        &env,
    );
    std::thread::sleep(Duration::from_secs(3));
    redis.stop();
    produce_raw(&p.transfers, &alice, &[&message]);
    std::thread::sleep(Duration::from_secs(3));
    redis.resume();
    let run = finish(worker).expect(0);
    assert!(run.stderr.contains("retrying"), "{}", run.stderr);
    assert_eq!(run.json()["outcomes"]["completed"], 1, "{}", run.stdout);

    let balance = |id: &str| {
        let account = p
            .payctl_env(&["accounts", "show", id, "--output", "json"], &env)
            .expect(0)
            .json();
        account["balance"].as_str().unwrap().to_string()
    };
    assert_eq!(
        (balance(&alice), balance(&bob)),
        ("5.75".into(), "4.25".into())
    );
    // Nothing is left uncommitted, and a replay by another group changes nothing.
    let again = p
        .payctl_env(
            &[
                "transfer",
                "process",
                "--until-idle",
                "2",
                "--output",
                "json",
            ],
            &env,
        )
        .expect(0)
        .json();
    assert_eq!(again["processed"], 0);
    let replay_group = unique("replay");
    let replay = p
        .payctl_env(
            &[
                "transfer",
                "process",
                "--until-idle",
                "2",
                "--group",
                &replay_group,
                "--output",
                "json",
            ],
            &env,
        )
        .expect(0)
        .json();
    assert_eq!(replay["outcomes"]["duplicate"], 1, "{replay}");
    assert_eq!(
        (balance(&alice), balance(&bob)),
        ("5.75".into(), "4.25".into())
    );
}

/// The worker reads the next batch while applying one: a stop at
/// `--max-messages` applies exactly that many, and what was read ahead but
/// not applied is read again by the next run, neither lost nor doubled.
#[test]
fn a_batch_read_ahead_is_neither_lost_nor_applied_twice() {
    let p = Pipeline::new();
    let user = unique("reader");
    let events: Vec<String> = (0..60)
        .map(|i| {
            format!(
                r#"{{"transaction_id":"t{i}","user_id":"{user}","status":"completed","event_id":"{user}-e{i}"}}"#
            )
        })
        .collect();
    let events: Vec<&str> = events.iter().map(String::as_str).collect();
    // One key: one partition, so the order of the 60 is known.
    produce_raw(&p.transactions, &user, &events);

    let consume = |extra: &[&str]| {
        let mut args = vec![
            "notify",
            "consume",
            "--group",
            &p.group,
            "--batch-size",
            "10",
            "--until-idle",
            "2",
            "--output",
            "json",
        ];
        args.extend_from_slice(extra);
        p.payctl(&args).expect(0).json()
    };
    let first = consume(&["--max-messages", "25"]);
    assert_eq!(first["processed"], 25, "{first}");
    assert_eq!(first["uncommitted"], 0, "{first}");
    let rest = consume(&[]);
    assert_eq!(rest["processed"], 35, "{rest}");
    assert_eq!(rest["outcomes"]["notified"], 35, "{rest}");

    let stored: Vec<String> = common::redis()
        .lrange(format!("notifications:{user}"), 0, -1)
        .unwrap();
    let messages: Vec<String> = stored
        .iter()
        .map(|n| serde_json::from_str::<serde_json::Value>(n).unwrap()["message"].to_string())
        .collect();
    let expected: Vec<String> = (0..60)
        .map(|i| format!("\"Transaction t{i} is completed\""))
        .collect();
    assert_eq!(messages, expected, "every event notified once, in order");
}
