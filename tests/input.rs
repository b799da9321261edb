//! Input parsed as the formats define it (issue 9, points 1, 2, 3), checks
//! before anything is written (points 6 and 8 for `transfer initiate`), and
//! a bulk initiate cut short by Ctrl-C or by Redis (point 7), against the
//! real broker and Redis.

mod common;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{open_account, read_topic, redis, unique, Pipeline, PrivateRedis, Run};
use payctl::transfer::initiate::{derived_key, file_digest};
use redis::Commands;
use serde_json::Value;

/// A fresh directory for a test's files.
fn scratch(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

/// The stored record of the transfer an idempotency key names, if any.
fn transfer_by_key(con: &mut common::TestRedis, key: &str) -> Option<Value> {
    // A cluster derives the id from the key (one record in one slot); one
    // server keeps the key's id under a key of its own.
    let cluster = matches!(con, common::TestRedis::Cluster(_));
    let id: Option<String> = if cluster {
        Some(payctl::transfer::saga::id_for_key(key))
    } else {
        con.get(format!("idempotency:transfer:{key}")).unwrap()
    };
    let json: Option<String> = con.get(format!("transfer:{}", id?)).unwrap();
    if cluster {
        json.as_ref()?;
    }
    Some(serde_json::from_str(&json.expect("the key's transfer is stored")).unwrap())
}

/// The transfer row `row` of a file with these bytes created, if any.
fn transfer_of_row(bytes: &[u8], row: usize) -> Option<Value> {
    transfer_by_key(&mut redis(), &derived_key(&file_digest(bytes), row))
}

/// An amount as text, whether JSON holds it as a number or a string.
fn amount(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn balance(p: &Pipeline, id: &str) -> String {
    amount(
        &p.payctl(&["accounts", "show", id, "-o", "json"])
            .expect(0)
            .json()["balance"],
    )
}

fn initiate_file(p: &Pipeline, path: &str) -> Run {
    p.payctl(&["transfer", "initiate", "--file", path, "-o", "json"])
}

fn assert_mentions(run: &Run, needles: &[&str]) {
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "wanted {needle:?} in stderr:\n{}",
            run.stderr
        );
    }
}

// Point 1 -----------------------------------------------------------------

#[test]
fn csv_is_read_as_the_format_defines_it() {
    let p = Pipeline::new();
    let alice = open_account(&p, "alice", "5000.00");
    let bob = open_account(&p, "bob", "0");
    let dir = scratch("csv");
    let key = unique("order,1");
    // A byte-order mark, CRLF line ends, quoted fields, a comma inside one.
    let text = format!(
        "\u{feff}from,to,amount,idempotency_key\r\n\"{alice}\",\"{bob}\",\"1000.00\",\"{key}\"\r\n{alice},{bob},2.50,\r\n"
    );
    let path = write(&dir, "good.csv", text.as_bytes());
    let summary = initiate_file(&p, &path).expect(0).json();
    assert_eq!(summary["created"], 2, "{summary}");
    let first = transfer_by_key(&mut redis(), &key).expect("row 1 has its own key");
    assert_eq!(amount(&first["amount"]), "1000.00");
    assert_eq!(first["sender_id"], alice.as_str());
    let second = transfer_of_row(text.as_bytes(), 2).expect("row 2 gets a derived key");
    assert_eq!(amount(&second["amount"]), "2.50");
    // The summary names what it created.
    let mut ids: Vec<&str> = summary["created_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no created_ids in {summary}"))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    ids.sort();
    let mut stored = vec![
        first["transfer_id"].as_str().unwrap(),
        second["transfer_id"].as_str().unwrap(),
    ];
    stored.sort();
    assert_eq!(ids, stored);
}

#[test]
fn every_bad_csv_row_is_listed_and_nothing_is_initiated() {
    let p = Pipeline::new();
    let alice = open_account(&p, "alice", "5000.00");
    let bob = open_account(&p, "bob", "0");
    let dir = scratch("csv-bad");
    // Row 1: a thousands separator inside quotes is not an amount (it was
    // read as 1.00). Row 2: a field too many. Row 3: one too few. Row 4 spans
    // two lines inside its quotes and is fine. Row 5: an embedded newline in
    // the amount. Row 6 is fine.
    let text = format!(
        "from,to,amount\n\
         {alice},{bob},\"1,000.00\"\n\
         {alice},{bob},1,extra\n\
         {alice},{bob}\n\
         \"{alice}\",{bob},\"3.00\"\n\
         {alice},{bob},\"12\n.50\"\n\
         {alice},{bob},4.00\n"
    );
    let path = write(&dir, "bad.csv", text.as_bytes());
    let run = initiate_file(&p, &path).expect(2);
    assert_mentions(
        &run,
        &[
            "row 1",
            "\"1,000.00\" is not a decimal number",
            "row 2",
            "4 fields, the header has 3",
            "row 3",
            "2 fields, the header has 3",
            "row 5",
            "nothing was initiated",
        ],
    );
    assert!(!run.stderr.contains("row 4"), "{}", run.stderr);
    assert!(!run.stderr.contains("row 6"), "{}", run.stderr);
    for row in 1..=6 {
        assert!(transfer_of_row(text.as_bytes(), row).is_none(), "row {row}");
    }
    assert_eq!(balance(&p, &alice), "5000.00");
}

#[test]
fn jsonl_with_an_unknown_field_is_refused_with_its_name() {
    let p = Pipeline::new();
    let alice = open_account(&p, "alice", "100.00");
    let bob = open_account(&p, "bob", "0");
    let dir = scratch("jsonl");
    let key = unique("typo");
    let text = format!(
        "{{\"from\":\"{alice}\",\"to\":\"{bob}\",\"amount\":\"1.00\"}}\n\
         {{\"from\":\"{alice}\",\"to\":\"{bob}\",\"amount\":\"1.00\",\"idempotency_kye\":\"{key}\"}}\n"
    );
    let path = write(&dir, "typo.jsonl", text.as_bytes());
    let run = initiate_file(&p, &path).expect(2);
    assert_mentions(&run, &["row 2", "unknown field `idempotency_kye`"]);
    assert!(transfer_of_row(text.as_bytes(), 1).is_none());

    // the versioned transfer service's names for the parties still work.
    let text = format!(
        "{{\"sender_id\":\"{alice}\",\"receiver_id\":\"{bob}\",\"amount\":0.30,\"idempotency_key\":\"{key}\"}}\n"
    );
    let path = write(&dir, "seed.jsonl", text.as_bytes());
    assert_eq!(initiate_file(&p, &path).expect(0).json()["created"], 1);
    assert_eq!(
        amount(&transfer_by_key(&mut redis(), &key).unwrap()["amount"]),
        "0.30"
    );
}

#[test]
fn file_dash_reads_standard_input_and_runs_again_without_duplicates() {
    let p = Pipeline::new();
    let alice = open_account(&p, "alice", "100.00");
    let bob = open_account(&p, "bob", "0");
    let text = format!(
        "{{\"from\":\"{alice}\",\"to\":\"{bob}\",\"amount\":\"1.25\"}}\n\
         {{\"from\":\"{alice}\",\"to\":\"{bob}\",\"amount\":\"2.00\"}}\n"
    );
    let pipe_in = |text: &str| {
        let mut child = p.spawn_with_stdin(&["transfer", "initiate", "--file", "-", "-o", "json"]);
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        common::finish(child)
    };
    let first = pipe_in(&text).expect(0).json();
    assert_eq!(first["created"], 2, "{first}");
    let second = pipe_in(&text).expect(0).json();
    assert_eq!(
        (second["created"].as_u64(), second["existing"].as_u64()),
        (Some(0), Some(2)),
        "{second}"
    );
    let row2 = transfer_of_row(text.as_bytes(), 2).expect("derived key of stdin's row 2");
    assert_eq!(amount(&row2["amount"]), "2.00");
    assert_eq!(balance(&p, &alice), "100.00");
}

// Point 2 -----------------------------------------------------------------

#[test]
fn a_byte_order_mark_is_accepted_in_every_file() {
    let p = Pipeline::new();
    let alice = open_account(&p, "alice", "100.00");
    let bob = open_account(&p, "bob", "0");
    let dir = scratch("bom");
    let jsonl = format!("\u{feff}{{\"from\":\"{alice}\",\"to\":\"{bob}\",\"amount\":\"1.00\"}}\n");
    let path = write(&dir, "bom.jsonl", jsonl.as_bytes());
    assert_eq!(initiate_file(&p, &path).expect(0).json()["created"], 1);
    assert!(transfer_of_row(jsonl.as_bytes(), 1).is_some());

    let csv = format!("\u{feff}from,to,amount\n{alice},{bob},2.00\n");
    let path = write(&dir, "bom.csv", csv.as_bytes());
    assert_eq!(initiate_file(&p, &path).expect(0).json()["created"], 1);

    // rates import, on a private Redis so no other test's rates are touched.
    let private = PrivateRedis::start();
    let path = write(
        &dir,
        "rates.csv",
        "\u{feff}base,quote,rate\r\nKZT,UAH,0.0812\r\n".as_bytes(),
    );
    let on_private = [("REDIS_URL", private.url())];
    let env: Vec<(&str, &str)> = on_private.iter().map(|(k, v)| (*k, v.as_str())).collect();
    p.payctl_env(&["rates", "import", &path, "-o", "json"], &env)
        .expect(0);
    let rates = p
        .payctl_env(&["rates", "list", "-o", "json"], &env)
        .expect(0)
        .json();
    let rates = rates.as_array().unwrap();
    assert_eq!(rates.len(), 1, "{rates:?}");
    assert_eq!(amount(&rates[0]["rate"]), "0.0812");
}

// Point 3 -----------------------------------------------------------------

#[test]
fn exponents_are_refused_in_amounts_and_rates_users_type() {
    let p = Pipeline::new();
    let alice = open_account(&p, "alice", "100.00");
    let bob = open_account(&p, "bob", "0");
    let private = PrivateRedis::start();
    let url = private.url();
    let on_private = [("REDIS_URL", url.as_str())];
    let sci = "scientific notation";
    let key = unique("sci");
    for args in [
        vec![
            "transfer",
            "initiate",
            "--from",
            &alice,
            "--to",
            &bob,
            "--amount",
            "1e3",
            "--idempotency-key",
            &key,
        ],
        vec![
            "transfer", "initiate", "--from", &alice, "--to", &bob, "--amount", "1E-2",
        ],
        vec!["accounts", "deposit", &bob, "1e1"],
        vec![
            "accounts",
            "open",
            &unique("carol"),
            "--currency",
            "USD",
            "--balance",
            "1e3",
        ],
        vec![
            "payments", "submit", "--user", &alice, "--plan", "basic", "--amount", "1e1",
        ],
    ] {
        let run = p.payctl(&args).expect(2);
        assert_mentions(&run, &[sci]);
    }
    for args in [
        vec!["rates", "set", "KZT", "UAH", "1e2"],
        vec!["rates", "convert", "1e3", "KZT", "UAH"],
    ] {
        let run = p.payctl_env(&args, &on_private).expect(2);
        assert_mentions(&run, &[sci]);
    }
    assert!(transfer_by_key(&mut redis(), &key).is_none());
    assert_eq!(balance(&p, &bob), "0.00");

    let dir = scratch("sci");
    let jsonl = format!("{{\"from\":\"{alice}\",\"to\":\"{bob}\",\"amount\":1e3}}\n");
    let run = initiate_file(&p, &write(&dir, "sci.jsonl", jsonl.as_bytes())).expect(2);
    assert_mentions(&run, &["row 1", sci]);
    let csv = format!("from,to,amount\n{alice},{bob},1E-2\n");
    let run = initiate_file(&p, &write(&dir, "sci.csv", csv.as_bytes())).expect(2);
    assert_mentions(&run, &["row 1", sci]);
    let rates = write(&dir, "rates.csv", b"base,quote,rate\nKZT,UAH,1e2\n");
    let run = p
        .payctl_env(&["rates", "import", &rates], &on_private)
        .expect(2);
    assert_mentions(&run, &["line 2", sci]);
    let listed = p
        .payctl_env(&["rates", "list", "-o", "json"], &on_private)
        .expect(0)
        .json();
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");

    // 1e-400 is tiny, not "too large".
    let run = p
        .payctl(&[
            "transfer", "initiate", "--from", &alice, "--to", &bob, "--amount", "1e-400",
        ])
        .expect(2);
    assert!(!run.stderr.contains("too large"), "{}", run.stderr);
    assert_eq!(balance(&p, &alice), "100.00");
}

#[test]
fn a_seed_001_message_with_an_exponent_is_still_processed() {
    let p = Pipeline::new();
    let alice = open_account(&p, "alice", "2000.00");
    let bob = open_account(&p, "bob", "0");
    let id = p
        .payctl(&[
            "transfer", "initiate", "--from", &alice, "--to", &bob, "--amount", "1000",
        ])
        .expect(0)
        .stdout
        .trim()
        .to_string();
    // Another service re-sends the same transfer with the amount as a JSON
    // number in exponent form: equal by value, so it is the same transfer.
    let message = format!(
        r#"{{"transfer_id":"{id}","sender_id":"{alice}","receiver_id":"{bob}","amount":1e3,"status":"initiated","version":1}}"#
    );
    // On a topic of its own: only the exponent copy is processed.
    let transfers = unique("transfers");
    p.payctl(&["topics", "create", &transfers, &format!("{transfers}.dlq")])
        .expect(0);
    common::produce_raw(&transfers, &alice, &[&message]);
    let summary = p
        .payctl_env(
            &["transfer", "process", "--until-idle", "2", "-o", "json"],
            &[("PAYCTL_TOPIC_TRANSFERS", &transfers)],
        )
        .expect(0)
        .json();
    assert_eq!(summary["outcomes"]["completed"], 1, "{summary}");
    assert_eq!(balance(&p, &bob), "1000.00");
}

// Point 6 and 8 -------------------------------------------------------------

#[test]
fn initiate_checks_the_topic_exists_before_writing_anything() {
    let p = Pipeline::new();
    let alice = open_account(&p, "alice", "100.00");
    let bob = open_account(&p, "bob", "0");
    let missing = unique("money_transferx");
    let key = unique("no-topic");
    let run = p
        .payctl_env(
            &[
                "transfer",
                "initiate",
                "--from",
                &alice,
                "--to",
                &bob,
                "--amount",
                "1",
                "--idempotency-key",
                &key,
            ],
            &[("PAYCTL_TOPIC_TRANSFERS", &missing)],
        )
        .expect(2);
    assert_mentions(&run, &[&format!("payctl topics create {missing}")]);
    assert!(transfer_by_key(&mut redis(), &key).is_none());

    let dir = scratch("no-topic");
    let text = format!("from,to,amount\n{alice},{bob},1.00\n");
    let path = write(&dir, "batch.csv", text.as_bytes());
    let run = p
        .payctl_env(
            &["transfer", "initiate", "--file", &path],
            &[("PAYCTL_TOPIC_TRANSFERS", &missing)],
        )
        .expect(2);
    assert_mentions(&run, &[&format!("payctl topics create {missing}")]);
    assert!(transfer_of_row(text.as_bytes(), 1).is_none());
    // Nothing created the topic by accident.
    let topics = p.payctl(&["topics", "list", "-o", "json"]).expect(0).stdout;
    assert!(!topics.contains(&missing), "{missing} exists now");
}

#[test]
fn an_unknown_account_is_a_refusal() {
    let p = Pipeline::new();
    let alice = open_account(&p, "alice", "100.00");
    let nobody = unique("nobody");
    let run = p
        .payctl(&[
            "transfer", "initiate", "--from", &alice, "--to", &nobody, "--amount", "1",
        ])
        .expect(1);
    assert_mentions(&run, &[&format!("unknown account \"{nobody}\"")]);
    let run = p
        .payctl(&[
            "transfer", "initiate", "--from", &nobody, "--to", &alice, "--amount", "1",
        ])
        .expect(1);
    assert_mentions(&run, &["unknown account"]);
    // As `accounts deposit` does.
    p.payctl(&["accounts", "deposit", &nobody, "1"]).expect(1);
}

// Point 7 -----------------------------------------------------------------

/// A CSV file of `rows` transfers of 0.01 from `from` to `to`.
fn big_file(dir: &std::path::Path, from: &str, to: &str, rows: usize) -> (String, Vec<u8>) {
    let mut text = String::from("from,to,amount\n");
    for _ in 0..rows {
        text.push_str(&format!("{from},{to},0.01\n"));
    }
    let path = write(dir, "big.csv", text.as_bytes());
    (path, text.into_bytes())
}

/// Waits until row `row` of the file is stored in Redis (`con`).
fn wait_for_row(
    con: &mut common::TestRedis,
    bytes: &[u8],
    row: usize,
    child: &mut std::process::Child,
) {
    let key = derived_key(&file_digest(bytes), row);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if transfer_by_key(con, &key).is_some() {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "payctl ended before row {row} was stored"
        );
        assert!(Instant::now() < deadline, "row {row} never stored");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_first_ctrl_c_stops_after_the_chunk_in_hand_with_a_summary() {
    let p = Pipeline::new();
    let alice = open_account(&p, "alice", "100000.00");
    let bob = open_account(&p, "bob", "0");
    let dir = scratch("ctrl-c");
    let rows = 60_000;
    let (path, bytes) = big_file(&dir, &alice, &bob, rows);
    let mut child = p.spawn(
        &["transfer", "initiate", "--file", &path, "-o", "json"],
        &[],
    );
    wait_for_row(&mut redis(), &bytes, 1, &mut child);
    common::signal(&child, "INT");
    let run = common::finish(child).expect(130);
    let summary = run.json();
    let created = summary["created"].as_u64().unwrap();
    assert!(
        // Whole chunks only: `--file` writes 2,000 rows at a time.
        created > 0 && created < rows as u64 && created.is_multiple_of(2000),
        "{summary}"
    );
    assert_eq!(summary["stopped_at_row"].as_u64(), Some(created + 1));
    assert_mentions(&run, &["interrupted", "run the same command again"]);
    // Every created transfer is named, stored and published.
    let ids: Vec<&str> = summary["created_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ids.len() as u64, created);
    let mut con = redis();
    let stored: Vec<Option<String>> = redis::cmd("MGET")
        .arg(
            ids.iter()
                .map(|id| format!("transfer:{id}"))
                .collect::<Vec<_>>(),
        )
        .query(&mut con)
        .unwrap();
    assert!(stored.iter().all(Option::is_some));
    let unpublished: Vec<bool> = ids
        .iter()
        .take(50)
        .map(|id| con.sismember("transfers:unpublished", id).unwrap())
        .collect();
    assert!(unpublished.iter().all(|u| !u));
    assert!(transfer_of_row(&bytes, created as usize + 1).is_none());
    assert_eq!(read_topic(&p.transfers).len() as u64, created);
}

#[test]
fn a_second_ctrl_c_abandons_and_says_what_may_be_unpublished() {
    let p = Pipeline::new();
    let alice = open_account(&p, "alice", "100000.00");
    let bob = open_account(&p, "bob", "0");
    let dir = scratch("ctrl-c-twice");
    let (path, bytes) = big_file(&dir, &alice, &bob, 60_000);
    let mut child = p.spawn(
        &["transfer", "initiate", "--file", &path, "-o", "json"],
        &[],
    );
    wait_for_row(&mut redis(), &bytes, 1, &mut child);
    common::signal(&child, "INT");
    std::thread::sleep(Duration::from_millis(20));
    common::signal(&child, "INT");
    let run = common::finish(child).expect(130);
    assert_mentions(
        &run,
        &["abandoning", "unpublished", "payctl transfer resend"],
    );
}

#[test]
fn redis_stopping_midway_prints_the_summary_with_counts() {
    let p = Pipeline::new();
    let private = PrivateRedis::start();
    let url = private.url();
    let env = [("REDIS_URL", url.as_str())];
    let open_here = |prefix: &str, balance: &str| {
        common::open_account_with(|args| p.payctl_env(args, &env), prefix, balance)
    };
    let alice = open_here("alice", "100000.00");
    let bob = open_here("bob", "0");
    let dir = scratch("redis-stops");
    let rows = 60_000;
    let (path, bytes) = big_file(&dir, &alice, &bob, rows);
    let mut child = p.spawn(
        &["transfer", "initiate", "--file", &path, "-o", "json"],
        &env,
    );
    let mut con = common::TestRedis::Single(
        redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap(),
    );
    wait_for_row(&mut con, &bytes, 5001, &mut child);
    let _: Result<(), _> = redis::cmd("SHUTDOWN").arg("NOSAVE").query(&mut con);
    let run = common::finish(child).expect(2);
    let summary = run.json();
    let stopped = summary["stopped_at_row"]
        .as_u64()
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(stopped > 1 && stopped < rows as u64, "{summary}");
    assert_eq!(
        summary["initiated"].as_u64(),
        Some(stopped - 1),
        "{summary}"
    );
    assert_eq!(
        summary["created_ids"].as_array().map(Vec::len),
        Some(stopped as usize - 1),
        "{summary}"
    );
    assert_mentions(
        &run,
        &[
            &format!("stopped at row {stopped} of {rows}"),
            "rows initiated",
        ],
    );
}

/// `--rate` paces a file's rows; every row is still initiated once. (How
/// steady the pace is, the bench measures: tests never time anything.)
#[test]
fn a_paced_file_initiates_every_row_and_bad_rates_are_refused() {
    let p = Pipeline::new();
    let alice = open_account(&p, "alice", "100.00");
    let bob = open_account(&p, "bob", "0");
    let dir = scratch("rate");
    let rows: String = (0..40)
        .map(|i| {
            format!(
                "{{\"from\":\"{alice}\",\"to\":\"{bob}\",\"amount\":\"0.{:02}\"}}\n",
                i + 1
            )
        })
        .collect();
    let path = write(&dir, "paced.jsonl", rows.as_bytes());
    let summary = p
        .payctl(&[
            "transfer", "initiate", "--file", &path, "--rate", "20", "-o", "json",
        ])
        .expect(0)
        .json();
    assert_eq!(summary["created"], 40, "{summary}");
    assert_eq!(summary["created_ids"].as_array().map(Vec::len), Some(40));

    let zero = p.payctl(&["transfer", "initiate", "--file", &path, "--rate", "0"]);
    assert_eq!(zero.code, 2, "{}", zero.stderr);
    assert_mentions(&zero, &["--rate"]);
    let single = p.payctl(&[
        "transfer", "initiate", "--from", &alice, "--to", &bob, "--amount", "1", "--rate", "5",
    ]);
    assert_eq!(single.code, 2, "{}", single.stderr);
    assert_mentions(&single, &["--rate", "--from"]);
}
