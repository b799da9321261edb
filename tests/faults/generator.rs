//! Traffic as another client writes it: accounts opened with payctl, and
//! transfers in the versioned transfer service's shape (the record in Redis, then the same JSON on
//! the transfers topic, keyed by sender).
//!
//! The generator keeps the truth: what each transfer was initiated as and
//! each account's opening balance. The invariant checks compare what payctl
//! did against it. Everything random comes from one seeded [`Rng`], printed
//! with the figures, so a failing run can be repeated.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message as _};
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::stack::Stack;

/// A small deterministic generator (splitmix64): no dependency, same
/// sequence for the same seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Uniform in `[low, high)`.
    pub fn between(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// An account as opened: id and opening balance in cents.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: String,
    pub opening: i64,
}

/// A transfer as the other client initiated it.
#[derive(Debug, Clone)]
pub struct Transfer {
    pub id: String,
    pub sender: String,
    pub receiver: String,
    /// Cents (USD).
    pub amount: i64,
}

impl Transfer {
    /// The versioned transfer service's JSON: the record in Redis and the message on the topic.
    pub fn seed_json(&self) -> String {
        self.seed_json_with(&self.receiver, &amount_json(self.amount))
    }

    /// The same shape with another receiver or amount (a forgery).
    pub fn seed_json_with(&self, receiver: &str, amount: &str) -> String {
        format!(
            r#"{{"transfer_id":"{}","sender_id":"{}","receiver_id":"{receiver}","amount":{amount},"status":"initiated","version":1}}"#,
            self.id, self.sender
        )
    }
}

/// Cents as the versioned transfer service's Python writes a float amount: `12.5`, `12.0`, `12.34`.
pub fn amount_json(cents: i64) -> String {
    let (units, rest) = (cents / 100, cents % 100);
    if rest % 10 == 0 {
        format!("{units}.{}", rest / 10)
    } else {
        format!("{units}.{rest:02}")
    }
}

/// Cents as a decimal with two places: `12.50`.
pub fn cents(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", minor.abs() / 100, minor.abs() % 100)
}

/// Everything a scenario initiated: the truth the checks compare against.
#[derive(Debug, Clone, Default)]
pub struct Truth {
    pub accounts: Vec<Account>,
    pub transfers: Vec<Transfer>,
}

impl Truth {
    pub fn opening_total(&self) -> i64 {
        self.accounts.iter().map(|a| a.opening).sum()
    }
}

/// Opens `count` USD accounts with `payctl accounts open`, two at a time.
pub fn open_accounts(stack: &Stack, prefix: &str, count: usize, opening: i64) -> Vec<Account> {
    let accounts: Vec<Account> = (0..count)
        .map(|i| Account {
            id: format!("{prefix}-{i:04}"),
            opening,
        })
        .collect();
    let balance = cents(opening);
    std::thread::scope(|scope| {
        for half in accounts.chunks(count.div_ceil(2).max(1)) {
            let balance = &balance;
            scope.spawn(move || {
                for account in half {
                    stack
                        .payctl(
                            &[
                                "accounts",
                                "open",
                                &account.id,
                                "--currency",
                                "USD",
                                "--balance",
                                balance,
                            ],
                            &[],
                        )
                        .expect_success();
                }
            });
        }
    });
    accounts
}

/// `n` transfers between random distinct accounts, 0.01 to 60.00 each.
pub fn plan_transfers(rng: &mut Rng, accounts: &[Account], n: usize) -> Vec<Transfer> {
    (0..n)
        .map(|_| {
            let sender = rng.below(accounts.len());
            let receiver = (sender + 1 + rng.below(accounts.len() - 1)) % accounts.len();
            Transfer {
                id: uuid::Uuid::new_v4().to_string(),
                sender: accounts[sender].id.clone(),
                receiver: accounts[receiver].id.clone(),
                amount: 1 + rng.below(6000) as i64,
            }
        })
        .collect()
}

/// Writes records as another service would: `SET key value`, pipelined.
pub fn store_raw(stack: &Stack, records: &[(String, Vec<u8>)]) {
    let mut con = stack.redis();
    for chunk in records.chunks(1000) {
        let sets = chunk.iter().map(|(key, value)| {
            let mut set = redis::cmd("SET");
            set.arg(key).arg(value.as_slice());
            set
        });
        con.pipeline::<()>(sets).expect("storing records");
    }
}

/// Stores each transfer's record, as the versioned transfer service does before publishing.
pub fn store_transfers(stack: &Stack, transfers: &[Transfer]) {
    let records: Vec<(String, Vec<u8>)> = transfers
        .iter()
        .map(|t| (format!("transfer:{}", t.id), t.seed_json().into_bytes()))
        .collect();
    store_raw(stack, &records);
}

/// One message to produce.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

impl Outgoing {
    /// A transfer's message as the versioned transfer service writes it, keyed by its sender.
    pub fn transfer(topic: &str, transfer: &Transfer) -> Outgoing {
        Outgoing {
            topic: topic.to_string(),
            key: Some(transfer.sender.clone().into_bytes()),
            payload: transfer.seed_json().into_bytes(),
        }
    }
}

/// Where the broker put a message: (partition, offset), or why it did not.
pub type Delivered = Result<(i32, i64), String>;

/// Collects delivery reports by message index.
struct Deliveries(Mutex<HashMap<usize, Delivered>>);

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        let delivered = match result {
            Ok(message) => Ok((message.partition(), message.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        self.0.lock().unwrap().insert(index, delivered);
    }
}

/// Produces messages as another client (the versioned transfer service in Python, an
/// attacker) would: plain producer, `acks=all`.
pub fn produce(brokers: &str, messages: &[Outgoing]) -> Vec<Delivered> {
    produce_paced(brokers, messages, Duration::ZERO)
}

/// Like [`produce`], spread evenly over `over` (a steady load while faults
/// happen). Returns one delivery report per message, in order.
pub fn produce_paced(brokers: &str, messages: &[Outgoing], over: Duration) -> Vec<Delivered> {
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "300000")
        .set("message.max.bytes", "2000000")
        .create_with_context(Deliveries(Mutex::new(HashMap::new())))
        .expect("generator producer");
    let started = Instant::now();
    for (index, message) in messages.iter().enumerate() {
        if !over.is_zero() {
            let due = over.mul_f64(index as f64 / messages.len() as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let mut record =
            BaseRecord::with_opaque_to(&message.topic, index).payload(message.payload.as_slice());
        if let Some(key) = &message.key {
            record = record.key(key.as_slice());
        }
        let mut record = Some(record);
        while let Some(pending) = record.take() {
            match producer.send(pending) {
                Ok(()) => {}
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    std::thread::sleep(Duration::from_millis(5));
                    record = Some(back);
                }
                Err((e, _)) => panic!("the generator could not enqueue a message: {e}"),
            }
        }
    }
    producer
        .flush(Duration::from_secs(330))
        .expect("the generator's messages were not all delivered");
    let mut reports = producer.context().0.lock().unwrap();
    (0..messages.len())
        .map(|i| {
            reports
                .remove(&i)
                .unwrap_or_else(|| Err("no delivery report".into()))
        })
        .collect()
}

/// Fails the scenario's setup if the generator could not deliver.
pub fn expect_delivered(reports: &[Delivered]) {
    let failed: Vec<&String> = reports.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "the generator could not deliver {} messages, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
}
