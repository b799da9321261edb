//! payctl on a real Redis Cluster (`scripts/stack.sh up --redis-cluster`:
//! three masters on loopback), reached with a `redis+cluster://` URL.
//!
//! What works there today (accounts, rates, conversions, reads) is checked
//! to work; what does not yet (scripts whose keys span hash slots) is
//! checked to refuse whole, writing nothing and dead-lettering nothing.

mod common;

use common::{unique, Pipeline};
use serde_json::json;

/// The cluster's URL: `PAYCTL_TEST_REDIS_CLUSTER`, else the local stack's.
fn cluster_url() -> String {
    std::env::var("PAYCTL_TEST_REDIS_CLUSTER")
        .unwrap_or_else(|_| "redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003".into())
}

/// A connection to every master, to look at the cluster as another
/// client would (fails the test when the cluster is not up).
fn masters() -> Vec<redis::Connection> {
    let url = cluster_url();
    let nodes = url.strip_prefix("redis+cluster://").unwrap();
    nodes
        .split(',')
        .map(|node| {
            redis::Client::open(format!("redis://{node}"))
                .unwrap()
                .get_connection()
                .unwrap_or_else(|e| {
                    panic!("{node} is not reachable ({e}); start it: scripts/stack.sh up --redis-cluster")
                })
        })
        .collect()
}

/// Keys on all masters together.
fn key_count() -> i64 {
    masters()
        .iter_mut()
        .map(|m| redis::cmd("DBSIZE").query::<i64>(m).unwrap())
        .sum()
}

fn on_cluster(p: &Pipeline, args: &[&str]) -> common::Run {
    p.payctl_env(args, &[("REDIS_URL", &cluster_url())])
}

#[test]
fn accounts_rates_and_conversions_work_on_a_cluster_and_spread_over_its_masters() {
    let p = Pipeline::new();
    let ids: Vec<String> = (0..12).map(|i| unique(&format!("cl{i}"))).collect();
    for id in &ids {
        on_cluster(&p, &["accounts", "open", id, "--balance", "10.00"]).expect(0);
    }
    on_cluster(&p, &["accounts", "deposit", &ids[0], "2.50"]).expect(0);
    let again = on_cluster(&p, &["accounts", "open", &ids[0]]).expect(1);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    let shown = on_cluster(&p, &["accounts", "show", &ids[0], "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(shown["balance"], "12.50");
    let listed = on_cluster(&p, &["accounts", "list", "--output", "json"])
        .expect(0)
        .json();
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    for id in &ids {
        assert!(listed.contains(&id.as_str()), "{id} not listed");
    }
    // The accounts live on more than one master: the cluster is used, not
    // one node of it.
    let mut holding = 0;
    for mut master in masters() {
        // A master answers MOVED for a key of a slot it does not serve.
        let here = ids.iter().any(|id| {
            redis::cmd("EXISTS")
                .arg(format!("account:{id}"))
                .query::<i64>(&mut master)
                .is_ok_and(|n| n == 1)
        });
        holding += usize::from(here);
    }
    assert!(holding >= 2, "12 accounts on {holding} master(s)");
    on_cluster(&p, &["accounts", "show", &unique("nobody")]).expect(1);

    on_cluster(&p, &["rates", "set", "NZD", "CHF", "0.5125"]).expect(0);
    let converted = on_cluster(
        &p,
        &["rates", "convert", "100", "NZD", "CHF", "--output", "json"],
    )
    .expect(0)
    .json();
    assert_eq!(converted["result"], "51.25", "{converted}");
    let id = on_cluster(&p, &["rates", "convert", "100", "NZD", "CHF", "--async"])
        .expect(0)
        .stdout
        .trim()
        .to_string();
    on_cluster(&p, &["rates", "serve", "--until-idle", "2"]).expect(0);
    let answered = on_cluster(&p, &["rates", "result", &id, "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(answered["answer"]["result"], "51.25", "{answered}");
    let status = on_cluster(&p, &["status", "--output", "json"])
        .expect(0)
        .json();
    let redis = status["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "redis")
        .unwrap()
        .clone();
    assert!(
        redis["detail"]
            .as_str()
            .unwrap()
            .contains("redis+cluster://"),
        "{redis}"
    );
}

#[test]
fn what_spans_hash_slots_is_refused_whole_with_nothing_written() {
    let p = Pipeline::new();
    let alice = unique("alice");
    let bob = unique("bob");
    on_cluster(&p, &["accounts", "open", &alice, "--balance", "10.00"]).expect(0);
    on_cluster(&p, &["accounts", "open", &bob]).expect(0);
    let before = key_count();
    let refused = on_cluster(
        &p,
        &[
            "transfer", "initiate", "--from", &alice, "--to", &bob, "--amount", "1.00",
        ],
    )
    .expect(2);
    assert!(
        refused.stderr.contains("nothing was written")
            && refused.stderr.contains("different hash slots"),
        "{}",
        refused.stderr
    );
    assert_eq!(key_count(), before, "a refused initiate wrote keys");
    assert!(common::read_topic(&p.transfers).is_empty());
}

#[test]
fn a_worker_meeting_keys_across_slots_stops_without_committing_or_dead_lettering() {
    let p = Pipeline::new();
    // Transfer messages whose records live in different slots.
    let messages: Vec<String> = (0..6)
        .map(|i| {
            json!({"transfer_id": unique(&format!("t{i}")), "sender_id": "a", "receiver_id": "b",
                   "amount": 1, "status": "initiated", "version": 1})
            .to_string()
        })
        .collect();
    let messages: Vec<&str> = messages.iter().map(String::as_str).collect();
    common::produce_raw(&p.transfers, "a", &messages);
    let stopped = on_cluster(&p, &["transfer", "process", "--until-idle", "3"]).expect(2);
    assert!(
        stopped.stderr.contains("different hash slots"),
        "{}",
        stopped.stderr
    );
    assert!(
        common::read_topic(&format!("{}.dlq", p.transfers)).is_empty(),
        "nothing is the messages' fault: nothing dead-lettered"
    );
    // Nothing committed: the group has no offsets, so a worker on a
    // single Redis would read all six again.
    let lag = p.payctl(&["groups", "lag", &p.group]);
    assert!(
        lag.stderr.contains("committed no offsets"),
        "{} {}",
        lag.stdout,
        lag.stderr
    );
}

#[test]
fn cluster_urls_are_checked_before_connecting() {
    let p = Pipeline::new();
    for (url, says) in [
        ("redis+cluster://127.0.0.1:7001/3", "only database 0"),
        ("redis+cluster://127.0.0.1", "host:port"),
        ("rediss+cluster://127.0.0.1:7001", "not supported yet"),
    ] {
        let run = p
            .payctl_env(&["accounts", "list"], &[("REDIS_URL", url)])
            .expect(2);
        assert!(run.stderr.contains(says), "{url}: {}", run.stderr);
    }
}
