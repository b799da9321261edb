//! What payctl did, read back from Redis and the broker as another client
//! would, and the promises checked against the generator's truth.
//!
//! "The invariants" of the fault suite:
//! - every transfer decided exactly once: its record at version 2, status
//!   `completed` or `rejected`, parties and amount as initiated;
//! - money: the scenario's total balance unchanged, and each account's
//!   balance equal to its opening plus the completed transfers' credits
//!   minus their debits (so nothing was debited twice or moved by a forgery);
//! - events: per transfer exactly two distinct outcome events (by
//!   `event_id`), a debit to the sender and a credit to the receiver, every
//!   copy announcing the stored outcome;
//! - notifications: one per distinct event, no duplicates (by `event_id`
//!   when the notification carries one, else by user and message).
//!
//! A broken promise is reported with how many and a few example ids.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::Value;

use crate::generator::{cents, Truth};
use crate::stack::Stack;

/// How many example ids a broken promise shows.
const EXAMPLES: usize = 5;

/// One broken promise.
#[derive(Debug)]
pub struct Broken {
    pub invariant: String,
    pub count: usize,
    pub examples: Vec<String>,
}

/// The promises a scenario checked, and those that broke.
#[derive(Debug, Default)]
pub struct Checks {
    pub broken: Vec<Broken>,
}

impl Checks {
    /// Records `failures` (one line each) against `invariant`, if any.
    pub fn expect(&mut self, invariant: &str, failures: Vec<String>) {
        if !failures.is_empty() {
            self.broken.push(Broken {
                invariant: invariant.to_string(),
                count: failures.len(),
                examples: failures.into_iter().take(EXAMPLES).collect(),
            });
        }
    }

    /// One failure, when `ok` is false.
    pub fn ensure(&mut self, invariant: &str, ok: bool, failure: impl FnOnce() -> String) {
        if !ok {
            self.expect(invariant, vec![failure()]);
        }
    }

    pub fn is_ok(&self) -> bool {
        self.broken.is_empty()
    }

    /// `decided-once (12), money (3)`.
    pub fn names(&self) -> String {
        self.broken
            .iter()
            .map(|b| format!("{} ({})", b.invariant, b.count))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// One line per broken promise, with its examples.
    pub fn details(&self) -> Vec<String> {
        self.broken
            .iter()
            .map(|b| {
                let examples: Vec<String> = b.examples.iter().map(|e| shorten(e, 300)).collect();
                format!(
                    "{}: {} broken, e.g. {}",
                    b.invariant,
                    b.count,
                    examples.join(" | ")
                )
            })
            .collect()
    }
}

/// Text cut to `max` characters, for one-line output.
pub fn shorten(text: &str, max: usize) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    if clean.chars().count() <= max {
        clean
    } else {
        format!("{}…", clean.chars().take(max).collect::<String>())
    }
}

/// One record read from a topic.
#[derive(Debug, Clone)]
pub struct TopicRecord {
    pub partition: i32,
    pub offset: i64,
    pub payload: Vec<u8>,
}

impl TopicRecord {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.payload).ok()
    }
}

/// Every record on `topic`, in (partition, offset) order, read from the
/// beginning until nothing more arrives for two seconds (Tansu's
/// watermarks undercount batched records, so idle time says when to stop).
pub fn read_topic(brokers: &str, topic: &str) -> Vec<TopicRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("faults-reader-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("max.partition.fetch.bytes", "10485760")
        .set("fetch.max.bytes", "52428800")
        .create()
        .expect("reader consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assigning partitions");
    let mut records = Vec::new();
    let started = Instant::now();
    let mut last = Instant::now();
    loop {
        let quiet = if records.is_empty() { 5 } else { 2 };
        if last.elapsed() > Duration::from_secs(quiet) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "{topic} never went quiet"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.unwrap_or_else(|e| panic!("reading {topic}: {e}"));
            records.push(TopicRecord {
                partition: message.partition(),
                offset: message.offset(),
                payload: message.payload().unwrap_or_default().to_vec(),
            });
            last = Instant::now();
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// The next offset of each partition, from records read with [`read_topic`].
pub fn ends(records: &[TopicRecord]) -> HashMap<i32, i64> {
    let mut ends = HashMap::new();
    for r in records {
        let end = ends.entry(r.partition).or_insert(0);
        *end = (*end).max(r.offset + 1);
    }
    ends
}

/// A group's committed offsets on `topic`, by partition.
pub fn committed(brokers: &str, group: &str, topic: &str) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("offsets consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
    let mut partitions = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        partitions.add_partition(topic, partition.id());
    }
    let committed = consumer
        .committed_offsets(partitions, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("committed offsets of {group}: {e}"));
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Messages on `topic` a group has not committed: the exact lag, from the
/// records actually there.
pub fn exact_lag(brokers: &str, group: &str, topic: &str, records: &[TopicRecord]) -> i64 {
    let committed = committed(brokers, group, topic);
    ends(records)
        .into_iter()
        .map(|(p, end)| (end - committed.get(&p).copied().unwrap_or(0)).max(0))
        .sum()
}

/// An amount as exact cents: `12.5`, `12.50`, `12` → 1250. `None` for
/// anything else (more places, exponents, not a number).
pub fn parse_cents(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (units, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let fraction = fraction.trim_end_matches('0');
    if units.is_empty()
        || !units.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > 2
        || units.len() > 15
    {
        return None;
    }
    let value = units.parse::<i64>().ok()? * 100 + format!("{fraction:0<2}").parse::<i64>().ok()?;
    Some(if negative { -value } else { value })
}

/// A JSON amount (number or string) as cents.
fn json_cents(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => parse_cents(&n.to_string()),
        Value::String(s) => parse_cents(s),
        _ => None,
    }
}

/// An outcome event on the transactions topic.
#[derive(Debug, Clone)]
pub struct Event {
    pub partition: i32,
    pub transaction_id: String,
    pub user_id: String,
    pub status: String,
    pub event_id: Option<String>,
    pub role: Option<String>,
    pub amount: Option<i64>,
}

impl Event {
    fn parse(record: &TopicRecord) -> Option<Event> {
        let v = record.json()?;
        let text = |name: &str| match v.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        Some(Event {
            partition: record.partition,
            transaction_id: text("transaction_id")?,
            user_id: text("user_id")?,
            status: text("status")?,
            event_id: text("event_id"),
            role: text("role"),
            amount: v.get("amount").and_then(json_cents),
        })
    }

    /// What makes two copies the same event.
    fn identity(&self) -> String {
        self.event_id.clone().unwrap_or_else(|| {
            format!(
                "{}|{}|{}|{}",
                self.transaction_id,
                self.user_id,
                self.status,
                self.role.as_deref().unwrap_or("")
            )
        })
    }
}

/// Every outcome event on `topic`.
pub fn read_events(brokers: &str, topic: &str) -> Vec<Event> {
    read_topic(brokers, topic)
        .iter()
        .filter_map(Event::parse)
        .collect()
}

/// One item of a `notifications:{user}` list.
#[derive(Debug, Clone)]
pub struct Notification {
    pub user: String,
    pub message: String,
    pub event_id: Option<String>,
}

/// Every notification in the lists of `users`.
pub fn read_notifications(stack: &Stack, users: &[String]) -> Vec<Notification> {
    let mut con = stack.redis();
    let mut found = Vec::new();
    for chunk in users.chunks(500) {
        let lists: Vec<Vec<String>> = con
            .pipeline(chunk.iter().map(|user| {
                let mut lrange = redis::cmd("LRANGE");
                lrange.arg(format!("notifications:{user}")).arg(0).arg(-1);
                lrange
            }))
            .expect("reading notifications");
        for (user, items) in chunk.iter().zip(lists) {
            for item in items {
                let v: Value = serde_json::from_str(&item).unwrap_or(Value::Null);
                found.push(Notification {
                    user: user.clone(),
                    message: v["message"].as_str().unwrap_or(&item).to_string(),
                    event_id: v["event_id"].as_str().map(String::from),
                });
            }
        }
    }
    found
}

/// How many notifications the lists of `users` hold (a progress gauge).
pub fn count_notifications(stack: &Stack, users: &[String]) -> usize {
    let mut con = stack.redis();
    let lengths: Vec<usize> = con
        .pipeline(users.iter().map(|user| {
            let mut llen = redis::cmd("LLEN");
            llen.arg(format!("notifications:{user}"));
            llen
        }))
        .expect("counting notifications");
    lengths.into_iter().sum()
}

/// Raw values of `keys` (`None` where absent), read in chunks.
pub fn read_values(stack: &Stack, keys: &[String]) -> Vec<Option<Vec<u8>>> {
    let mut con = stack.redis();
    let mut values = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(1000) {
        let got: Vec<Option<Vec<u8>>> = con
            .query(redis::cmd("MGET").arg(chunk))
            .expect("reading records");
        values.extend(got);
    }
    values
}

/// A transfer record as stored, the fields the checks look at.
#[derive(Debug, Clone)]
pub struct Record {
    pub version: Option<u64>,
    pub status: String,
    pub sender: String,
    pub receiver: String,
    pub amount: Option<i64>,
}

impl Record {
    fn parse(raw: &[u8]) -> Option<Record> {
        let v: Value = serde_json::from_slice(raw).ok()?;
        Some(Record {
            version: v["version"].as_u64(),
            status: v["status"].as_str().unwrap_or("").to_string(),
            sender: v["sender_id"].as_str().unwrap_or("").to_string(),
            receiver: v["receiver_id"].as_str().unwrap_or("").to_string(),
            amount: json_cents(&v["amount"]),
        })
    }

    fn decided(&self) -> bool {
        self.version == Some(2) && (self.status == "completed" || self.status == "rejected")
    }
}

/// The stored records of `ids` (`None`: missing or unreadable).
pub fn read_records(stack: &Stack, ids: &[String]) -> Vec<Option<Record>> {
    let keys: Vec<String> = ids.iter().map(|id| format!("transfer:{id}")).collect();
    read_values(stack, &keys)
        .into_iter()
        .map(|raw| raw.and_then(|raw| Record::parse(&raw)))
        .collect()
}

/// The share of `ids` whose record is decided (a progress gauge).
pub fn decided_share(stack: &Stack, ids: &[String]) -> f64 {
    let records = read_records(stack, ids);
    let decided = records.iter().flatten().filter(|r| r.decided()).count();
    decided as f64 / ids.len().max(1) as f64
}

/// Account balances as stored: the raw text of each `balance` field.
pub fn read_balances(stack: &Stack, accounts: &[String]) -> Vec<Option<String>> {
    let mut con = stack.redis();
    con.pipeline(accounts.iter().map(|id| {
        let mut hget = redis::cmd("HGET");
        hget.arg(format!("account:{id}")).arg("balance");
        hget
    }))
    .expect("reading balances")
}

/// What a scenario left behind, read after its workers stopped.
pub struct Observed {
    pub records: Vec<Option<Record>>,
    pub balances: Vec<Option<String>>,
    pub events: Vec<Event>,
    pub notifications: Vec<Notification>,
}

/// Reads everything the invariants look at.
pub fn observe(stack: &Stack, truth: &Truth, events_topic: &str) -> Observed {
    let ids: Vec<String> = truth.transfers.iter().map(|t| t.id.clone()).collect();
    let users: Vec<String> = truth.accounts.iter().map(|a| a.id.clone()).collect();
    Observed {
        records: read_records(stack, &ids),
        balances: read_balances(stack, &users),
        events: read_events(&stack.brokers(), events_topic),
        notifications: read_notifications(stack, &users),
    }
}

/// The figures the invariants produce, for the scenario's line.
#[derive(Debug, Default)]
pub struct Figures {
    /// Transfers decided as initiated (a rewritten record counts in neither).
    pub completed: usize,
    pub rejected: usize,
    /// Distinct outcome events of the scenario's transfers.
    pub events: usize,
    /// Copies of them on the topic (redeliveries announce again).
    pub events_on_topic: usize,
    pub notifications: usize,
    pub balance_before: i64,
    pub balance_after: i64,
    /// Cents on the wrong accounts: half the sum of |balance − what the
    /// completed transfers make it|.
    pub misplaced: i64,
}

impl Figures {
    /// `balance 50000.00 unchanged` or `balance 49990.00, was 50000.00`.
    pub fn balance(&self) -> String {
        if self.balance_before == self.balance_after {
            format!("balance {} unchanged", cents(self.balance_after))
        } else {
            format!(
                "balance {}, was {}",
                cents(self.balance_after),
                cents(self.balance_before)
            )
        }
    }

    /// `2000 events (2120 on the topic), 2000 notifications, balance … unchanged`.
    pub fn outcomes(&self) -> String {
        format!(
            "{} events ({} on the topic), {} notifications, {}",
            self.events,
            self.events_on_topic,
            self.notifications,
            self.balance()
        )
    }
}

/// Checks the invariants for the truth's transfers.
pub fn check_pipeline(truth: &Truth, seen: &Observed, checks: &mut Checks) -> Figures {
    let mut figures = Figures::default();
    check_decided(truth, seen, checks, &mut figures);
    check_money(truth, seen, checks, &mut figures);
    let events = check_events(truth, seen, checks, &mut figures);
    check_notifications(&events, seen, checks, &mut figures);
    figures
}

fn check_decided(truth: &Truth, seen: &Observed, checks: &mut Checks, figures: &mut Figures) {
    let mut failures = Vec::new();
    for (t, record) in truth.transfers.iter().zip(&seen.records) {
        let Some(r) = record else {
            failures.push(format!("{}: no readable record", t.id));
            continue;
        };
        if !r.decided() {
            failures.push(format!(
                "{}: version {:?}, status {:?}",
                t.id, r.version, r.status
            ));
            continue;
        }
        if r.sender != t.sender || r.receiver != t.receiver || r.amount != Some(t.amount) {
            failures.push(format!(
                "{}: record says {}→{} {:?} cents, initiated as {}→{} {}",
                t.id, r.sender, r.receiver, r.amount, t.sender, t.receiver, t.amount
            ));
            continue;
        }
        match r.status.as_str() {
            "completed" => figures.completed += 1,
            _ => figures.rejected += 1,
        }
    }
    checks.expect("decided once", failures);
}

fn check_money(truth: &Truth, seen: &Observed, checks: &mut Checks, figures: &mut Figures) {
    let mut expected: HashMap<&str, i64> = truth
        .accounts
        .iter()
        .map(|a| (a.id.as_str(), a.opening))
        .collect();
    for (t, record) in truth.transfers.iter().zip(&seen.records) {
        if record.as_ref().is_some_and(|r| r.status == "completed") {
            *expected.get_mut(t.sender.as_str()).expect("sender account") -= t.amount;
            *expected
                .get_mut(t.receiver.as_str())
                .expect("receiver account") += t.amount;
        }
    }
    figures.balance_before = truth.opening_total();
    let mut total = 0i64;
    let mut failures = Vec::new();
    for (account, balance) in truth.accounts.iter().zip(&seen.balances) {
        let want = expected[account.id.as_str()];
        match balance.as_deref().map(|b| (b, b.parse::<i64>())) {
            Some((raw, Ok(have))) if have.to_string() == raw => {
                total += have;
                figures.misplaced += (have - want).abs();
                if have != want {
                    failures.push(format!(
                        "{}: balance {}, its completed transfers make it {}",
                        account.id,
                        cents(have),
                        cents(want)
                    ));
                }
            }
            Some((raw, _)) => {
                failures.push(format!("{}: balance {raw:?} is not cents", account.id))
            }
            None => failures.push(format!("{}: no balance (account gone)", account.id)),
        }
    }
    figures.balance_after = total;
    figures.misplaced /= 2;
    if total != figures.balance_before {
        failures.insert(
            0,
            format!(
                "total {} ≠ opening total {}",
                cents(total),
                cents(figures.balance_before)
            ),
        );
    }
    checks.expect("money", failures);
}

/// Distinct events per transfer, checked; returns them (first copy each).
fn check_events<'a>(
    truth: &Truth,
    seen: &'a Observed,
    checks: &mut Checks,
    figures: &mut Figures,
) -> Vec<&'a Event> {
    let mut by_transfer: HashMap<&str, Vec<&Event>> = HashMap::new();
    for event in &seen.events {
        by_transfer
            .entry(event.transaction_id.as_str())
            .or_default()
            .push(event);
    }
    let mut distinct_events = Vec::new();
    let mut failures = Vec::new();
    for (t, record) in truth.transfers.iter().zip(&seen.records) {
        let copies = by_transfer.remove(t.id.as_str()).unwrap_or_default();
        figures.events_on_topic += copies.len();
        let mut distinct: BTreeMap<String, &Event> = BTreeMap::new();
        for event in &copies {
            distinct.entry(event.identity()).or_insert(event);
        }
        let stored = record
            .as_ref()
            .map(|r| r.status.as_str())
            .unwrap_or("(no record)");
        let problem = if distinct.len() != 2 {
            Some(format!(
                "{}: {} distinct events ({})",
                t.id,
                distinct.len(),
                distinct.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        } else {
            copies.iter().find_map(|e| {
                let (party, role) = match e.role.as_deref() {
                    Some("debit") => (&t.sender, "debit"),
                    Some("credit") => (&t.receiver, "credit"),
                    other => return Some(format!("{}: event with role {other:?}", t.id)),
                };
                if e.user_id != *party {
                    Some(format!(
                        "{}: {role} event to {}, the transfer's {role} party is {party}",
                        t.id, e.user_id
                    ))
                } else if e.status != stored {
                    Some(format!(
                        "{}: event {} announces {}, the record says {stored}",
                        t.id,
                        e.identity(),
                        e.status
                    ))
                } else if e.amount.is_some_and(|a| a != t.amount) {
                    Some(format!(
                        "{}: event announces {:?} cents, initiated {}",
                        t.id, e.amount, t.amount
                    ))
                } else {
                    None
                }
            })
        };
        failures.extend(problem);
        distinct_events.extend(distinct.into_values());
    }
    figures.events = distinct_events.len();
    checks.expect("two events per transfer, as stored", failures);
    distinct_events
}

fn check_notifications(
    events: &[&Event],
    seen: &Observed,
    checks: &mut Checks,
    figures: &mut Figures,
) {
    // What each event must have produced: one notification in its user's list.
    let message = |e: &Event| format!("Transaction {} is {}", e.transaction_id, e.status);
    let mut by_text: HashMap<(&str, String), &Event> = HashMap::new();
    let ids: HashSet<&str> = events.iter().map(|e| e.transaction_id.as_str()).collect();
    for e in events {
        by_text.insert((e.user_id.as_str(), message(e)), e);
    }
    let mut seen_keys: HashMap<String, usize> = HashMap::new();
    let mut notified: HashSet<String> = HashSet::new();
    let mut failures = Vec::new();
    for n in &seen.notifications {
        let Some(id) = n
            .message
            .strip_prefix("Transaction ")
            .and_then(|rest| rest.rsplit_once(" is "))
            .map(|(id, _)| id)
        else {
            continue;
        };
        if !ids.contains(id) {
            continue;
        }
        figures.notifications += 1;
        let key = match &n.event_id {
            Some(event_id) => format!("event {event_id}"),
            None => format!("{}: {}", n.user, n.message),
        };
        *seen_keys.entry(key).or_default() += 1;
        match by_text.get(&(n.user.as_str(), n.message.clone())) {
            Some(e) => {
                notified.insert(e.identity());
            }
            None => failures.push(format!(
                "{}: {:?} matches no event of the transfer",
                n.user, n.message
            )),
        }
    }
    for (key, count) in &seen_keys {
        if *count > 1 {
            failures.push(format!("{key}: notified {count} times"));
        }
    }
    for e in events {
        if !notified.contains(&e.identity()) {
            failures.push(format!(
                "{}: no notification for {}",
                e.user_id,
                e.identity()
            ));
        }
    }
    failures.sort_by_key(|f| !f.contains("times"));
    checks.expect("one notification per event", failures);
}

/// Each account's debit events appear (first copies) in the order of its
/// transfers on the transfers topic (keyed by sender, so one partition).
pub fn check_debit_order(
    transfers: &[TopicRecord],
    events: &[Event],
    checks: &mut Checks,
) -> usize {
    let mut sent: HashMap<String, Vec<String>> = HashMap::new();
    for record in transfers {
        let Some(v) = record.json() else { continue };
        if let (Some(id), Some(sender)) = (v["transfer_id"].as_str(), v["sender_id"].as_str()) {
            sent.entry(sender.to_string())
                .or_default()
                .push(id.to_string());
        }
    }
    let mut debits: HashMap<&str, Vec<&Event>> = HashMap::new();
    for e in events.iter().filter(|e| e.role.as_deref() == Some("debit")) {
        debits.entry(e.user_id.as_str()).or_default().push(e);
    }
    let mut failures = Vec::new();
    let mut accounts = 0;
    for (sender, order) in &sent {
        let Some(copies) = debits.get(sender.as_str()) else {
            continue;
        };
        accounts += 1;
        let partitions: HashSet<i32> = copies.iter().map(|e| e.partition).collect();
        if partitions.len() > 1 {
            failures.push(format!(
                "{sender}: debit events spread over partitions {partitions:?}, so unordered"
            ));
            continue;
        }
        let mut first_seen = HashSet::new();
        let announced: Vec<&str> = copies
            .iter()
            .map(|e| e.transaction_id.as_str())
            .filter(|id| first_seen.insert(*id))
            .collect();
        let announced_set: HashSet<&str> = announced.iter().copied().collect();
        let expected: Vec<&str> = order
            .iter()
            .map(String::as_str)
            .filter(|id| announced_set.contains(id))
            .collect();
        if let Some(at) = expected.iter().zip(&announced).position(|(a, b)| a != b) {
            failures.push(format!(
                "{sender}: debit of {} announced before {} (transfers topic has them the other way)",
                announced[at], expected[at]
            ));
        }
    }
    checks.expect("debit events in transfer order", failures);
    accounts
}

/// A dead letter as read from `<topic>.dlq`.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub origin: Option<(i32, i64)>,
    pub reason: Option<String>,
}

/// Every letter on `<topic>.dlq`.
pub fn read_dead_letters(brokers: &str, topic: &str) -> Vec<DeadLetter> {
    read_topic(brokers, &format!("{topic}.dlq"))
        .iter()
        .map(|record| {
            let v = record.json().unwrap_or(Value::Null);
            let origin = &v["origin"];
            DeadLetter {
                origin: origin["partition"]
                    .as_i64()
                    .zip(origin["offset"].as_i64())
                    .map(|(p, o)| (p as i32, o)),
                reason: v["reason"]
                    .as_str()
                    .filter(|r| !r.trim().is_empty())
                    .map(String::from),
            }
        })
        .collect()
}

/// Every hostile message of a topic has a dead letter with a reason, and no
/// good one has. `hostile` and `good` map (partition, offset) to a
/// category or label; `committed` is the worker group's committed offsets,
/// which tell a message the worker passed from one it never got past.
/// Returns how many hostile ones were dead-lettered, and how many lie
/// behind where the worker stopped.
pub fn check_dead_letters(
    topic: &str,
    letters: &[DeadLetter],
    hostile: &HashMap<(i32, i64), &'static str>,
    good: &HashSet<(i32, i64)>,
    committed: &HashMap<i32, i64>,
    checks: &mut Checks,
) -> (usize, usize) {
    let mut reasons: HashMap<(i32, i64), Option<&str>> = HashMap::new();
    let mut unreadable = 0;
    for letter in letters {
        match letter.origin {
            Some(origin) => {
                reasons.insert(origin, letter.reason.as_deref());
            }
            None => unreadable += 1,
        }
    }
    let reached = |(p, o): (i32, i64)| committed.get(&p).is_some_and(|&c| o < c);
    let mut missing: BTreeMap<&str, (Vec<String>, usize)> = BTreeMap::new();
    let mut without_reason = Vec::new();
    let (mut lettered, mut unreached) = (0, 0);
    let mut sorted: Vec<_> = hostile.iter().collect();
    sorted.sort();
    for (&(p, o), category) in sorted {
        match reasons.get(&(p, o)) {
            Some(Some(_)) => lettered += 1,
            Some(None) => without_reason.push(format!("{category} at {topic}/{p}@{o}")),
            None => {
                let entry = missing.entry(category).or_default();
                if reached((p, o)) {
                    entry.0.push(format!("{p}@{o}"));
                } else {
                    entry.1 += 1;
                    unreached += 1;
                }
            }
        }
    }
    let count = missing
        .values()
        .map(|(at, behind)| at.len() + behind)
        .sum::<usize>()
        + without_reason.len()
        + unreadable;
    // Passed over without a letter first: that is hostile input accepted.
    let mut by_kind: Vec<(&&str, &(Vec<String>, usize))> = missing.iter().collect();
    by_kind.sort_by_key(|(_, (at, _))| std::cmp::Reverse(at.len()));
    let mut examples: Vec<String> = by_kind
        .into_iter()
        .map(|(category, (at, behind))| {
            let mut line = format!("{} {category} not dead-lettered", at.len() + behind);
            if *behind > 0 {
                line.push_str(&format!(" ({behind} behind where the worker stopped)"));
            }
            if !at.is_empty() {
                line.push_str(&format!(
                    " (passed without a letter: {topic}/{})",
                    at[..at.len().min(3)].join(", ")
                ));
            }
            line
        })
        .collect();
    if !without_reason.is_empty() {
        examples.push(format!(
            "{} letters without a reason (e.g. {})",
            without_reason.len(),
            without_reason[0]
        ));
    }
    if unreadable > 0 {
        examples.push(format!(
            "{unreadable} letters on {topic}.dlq without an origin"
        ));
    }
    // Every category is worth seeing: they say what kind of input got through.
    if count > 0 {
        checks.broken.push(Broken {
            invariant: format!("{topic}: every hostile message dead-lettered"),
            count,
            examples,
        });
    }
    let wrongly: Vec<String> = reasons
        .iter()
        .filter(|(origin, _)| good.contains(origin))
        .map(|((p, o), reason)| format!("good message {topic}/{p}@{o}: {reason:?}"))
        .collect();
    checks.expect(
        &format!("{topic}: good messages not dead-lettered"),
        wrongly,
    );
    (lettered, unreached)
}
