//! Hostile messages: what an attacker, a buggy upstream or a bad day puts
//! on a worker's topic. Each carries a category, so a failure says which
//! kind of message got through.
//!
//! Every message here must end in `<topic>.dlq` with a reason: none of them
//! is something a worker may apply, announce or notify.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Map, Value};

use crate::generator::{amount_json, Rng, Transfer};

/// How many hostile messages each worker topic gets.
pub const PER_TOPIC: usize = 1000;

/// One hostile message.
#[derive(Debug, Clone)]
pub struct Hostile {
    pub category: &'static str,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
}

/// The fields of a topic's message, and which of them are amounts or end
/// up in Redis keys.
pub struct Shape {
    /// A good message of the topic, with fresh ids.
    pub good: fn(&mut Rng, &[String]) -> Map<String, Value>,
    /// Fields a worker needs: each is dropped in turn.
    pub required: &'static [&'static str],
    /// String fields: each gets an object, an array, a boolean, null.
    pub strings: &'static [&'static str],
    /// String fields where a number is wrong too (the notification service takes numeric user ids).
    pub not_numbers: &'static [&'static str],
    /// Decimal fields (amounts, rates): each gets other types and `bad_numbers`.
    pub decimals: &'static [&'static str],
    /// Values no decimal field of this topic may hold (raw JSON).
    pub bad_numbers: &'static [&'static str],
    /// Fields that become part of a Redis key (ids).
    pub key_fields: &'static [&'static str],
}

/// Absurd values for an amount: negative, zero, huge, over-precise, not a number.
const BAD_AMOUNTS: [&str; 12] = [
    "-10.00",
    "-0.01",
    "0",
    "0.00",
    "1e30",
    "100000000000000000000000",
    "10.001",
    "0.001",
    "1e400",
    "-1e400",
    "\"NaN\"",
    "\"12,50\"",
];

/// Absurd values for a rate: zero, negative, more than 12 places, not a number.
const BAD_RATES: [&str; 8] = [
    "0",
    "0.00",
    "-0.9",
    "-1e3",
    "0.0000000000001",
    "1e400",
    "\"NaN\"",
    "\"0,9\"",
];

/// Ids that must never reach a key: control characters, 10 KB.
fn bad_ids() -> Vec<String> {
    vec![
        "id\u{0}with-nul".into(),
        "line\nbreak".into(),
        "\u{1b}[31mred".into(),
        "tab\there".into(),
        "x".repeat(10 * 1024),
        "\u{7f}".repeat(200),
    ]
}

/// 900 KB of control bytes: its dead letter, escaped as JSON, is six times
/// larger than the broker's limit unless it is cut.
fn control_bytes() -> Vec<u8> {
    (0..900 * 1024).map(|i| (i % 32) as u8).collect()
}

const NOT_JSON: [&str; 14] = [
    "",
    "{",
    "}",
    "null",
    "[]",
    "[1,2,3]",
    "42",
    "true",
    "\"a string\"",
    "{\"a\":",
    "{'single': 'quotes'}",
    "please apply this",
    "{\"trailing\": 1,}",
    "{}",
];

/// The generic hostile messages for a topic of `shape`: not JSON, invalid
/// UTF-8, wrong types, missing fields, bad amounts, bad ids, deep nesting,
/// truncated JSON, 900 KB of control bytes. Topic-specific ones (`extra`)
/// go first; the total is [`PER_TOPIC`].
pub fn for_topic(
    rng: &mut Rng,
    shape: &Shape,
    users: &[String],
    extra: Vec<Hostile>,
) -> Vec<Hostile> {
    let mut out = extra;
    let key = |n: usize| format!("hostile-{n}").into_bytes();
    let encode = |m: &Map<String, Value>| serde_json::to_vec(m).expect("json");
    let mut n = out.len();
    let mut push = |out: &mut Vec<Hostile>, category: &'static str, payload: Vec<u8>| {
        n += 1;
        out.push(Hostile {
            category,
            key: key(n),
            payload,
        });
    };

    for _ in 0..3 {
        push(&mut out, "control-bytes-900KB", control_bytes());
    }
    for depth in [200usize, 10_000, 100_000] {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        push(&mut out, "deeply-nested", nested.into_bytes());
        let objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        push(&mut out, "deeply-nested", objects.into_bytes());
    }
    for field in shape.required {
        for _ in 0..8 {
            let mut m = (shape.good)(rng, users);
            m.remove(*field);
            push(&mut out, "missing-field", encode(&m));
        }
    }
    for field in shape.strings {
        let mut wrong = vec![json!({}), json!([]), json!(true), Value::Null];
        if shape.not_numbers.contains(field) {
            wrong.push(json!(123));
        }
        for value in wrong.into_iter().cycle().take(12) {
            let mut m = (shape.good)(rng, users);
            m.insert(field.to_string(), value);
            push(&mut out, "wrong-type", encode(&m));
        }
        for _ in 0..2 {
            let mut m = (shape.good)(rng, users);
            m.insert(field.to_string(), json!(""));
            push(&mut out, "empty-field", encode(&m));
        }
    }
    for field in shape.decimals {
        for value in [json!({}), json!([1]), json!(true), Value::Null] {
            let mut m = (shape.good)(rng, users);
            m.insert(field.to_string(), value);
            push(&mut out, "wrong-type", encode(&m));
        }
        for bad in shape.bad_numbers {
            for _ in 0..3 {
                let m = (shape.good)(rng, users);
                push(&mut out, "bad-number", with_raw(&m, field, bad));
            }
        }
    }
    for field in shape.key_fields {
        for id in bad_ids().into_iter().cycle().take(18) {
            let mut m = (shape.good)(rng, users);
            m.insert(field.to_string(), json!(id));
            push(&mut out, "bad-id", encode(&m));
        }
    }
    for _ in 0..100 {
        let good = encode(&(shape.good)(rng, users));
        let cut = 1 + rng.below(good.len() - 1);
        push(&mut out, "truncated", good[..cut].to_vec());
    }
    for i in 0..120 {
        let mut payload = encode(&(shape.good)(rng, users));
        match i % 3 {
            // A lone continuation byte inside a string value.
            0 => {
                let at = payload.iter().position(|&b| b == b':').unwrap() + 2;
                payload.insert(at, 0x80);
            }
            // Bytes no UTF-8 text has.
            1 => payload.splice(1..1, [0xff, 0xfe]).for_each(drop),
            // A truncated multi-byte sequence.
            _ => payload = [b"\xe2\x82".as_slice(), &payload].concat(),
        }
        push(&mut out, "invalid-utf8", payload);
    }
    let mut i = 0;
    while out.len() < PER_TOPIC {
        push(
            &mut out,
            "not-json",
            NOT_JSON[i % NOT_JSON.len()].as_bytes().to_vec(),
        );
        i += 1;
    }
    out.truncate(PER_TOPIC);
    out
}

/// `m` as JSON with `field` set to raw JSON text (numbers serde would round).
fn with_raw(m: &Map<String, Value>, field: &str, raw: &str) -> Vec<u8> {
    let mut m = m.clone();
    m.insert(field.to_string(), json!("__RAW__"));
    serde_json::to_string(&m)
        .expect("json")
        .replace("\"__RAW__\"", raw)
        .into_bytes()
}

/// Transfers' topic: the generic hostile messages, plus forgeries of stored
/// transfers, out-of-range versions on stored transfers, absurd amounts
/// with a stored record that agrees, and transfers nobody stored.
///
/// Forgeries are returned apart, each with the index of the genuine
/// transfer it imitates and whether it must be produced before it.
pub struct TransferHostiles {
    pub forged: Vec<(usize, bool, Hostile)>,
    /// Records another service wrote for the absurd-amount messages.
    pub records: Vec<(String, Vec<u8>)>,
    pub others: Vec<Hostile>,
}

pub fn transfers(rng: &mut Rng, genuine: &[Transfer], accounts: &[String]) -> TransferHostiles {
    assert!(genuine.len() >= 150, "forgeries need 150 genuine transfers");
    let mut forged = Vec::new();
    for (i, t) in genuine.iter().take(150).enumerate() {
        let other = loop {
            let a = rng.pick(accounts);
            if *a != t.sender && *a != t.receiver {
                break a.clone();
            }
        };
        let (category, payload) = match i % 3 {
            0 => (
                "forged-receiver",
                t.seed_json_with(&other, &amount_json(t.amount)),
            ),
            1 => (
                "forged-amount",
                t.seed_json_with(&t.receiver, &amount_json(t.amount + 8000)),
            ),
            _ => (
                "forged-both",
                t.seed_json_with(&other, &amount_json(t.amount * 9)),
            ),
        };
        forged.push((
            i,
            i % 2 == 0,
            Hostile {
                category,
                key: t.sender.clone().into_bytes(),
                payload: payload.into_bytes(),
            },
        ));
    }

    let mut extra = Vec::new();
    // Versions no transfer can have, on stored transfers, after the genuine message.
    let versions = [
        ("version-2^64-1", "18446744073709551615"),
        ("version-2^63", "9223372036854775808"),
        ("version-overflow", "18446744073709551616"),
        ("version-negative", "-1"),
        ("version-fraction", "1.5"),
        ("version-1e400", "1e400"),
    ];
    for (j, t) in genuine.iter().skip(150).take(60).enumerate() {
        let (category, version) = versions[j % versions.len()];
        let json = t
            .seed_json()
            .replace("\"version\":1", &format!("\"version\":{version}"));
        extra.push(Hostile {
            category,
            key: t.sender.clone().into_bytes(),
            payload: json.into_bytes(),
        });
    }
    // Absurd amounts with a stored record that says the same (a buggy
    // upstream wrote both); the generic ones below have no record.
    let mut records = Vec::new();
    for bad in BAD_AMOUNTS.iter().cycle().take(60) {
        let t = fresh_transfer(rng, accounts);
        let json = t.seed_json_with(&t.receiver, bad);
        records.push((format!("transfer:{}", t.id), json.clone().into_bytes()));
        extra.push(Hostile {
            category: "bad-amount-stored",
            key: t.sender.into_bytes(),
            payload: json.into_bytes(),
        });
    }
    for _ in 0..30 {
        let t = fresh_transfer(rng, accounts);
        let json = t.seed_json_with(&t.sender, &amount_json(t.amount));
        extra.push(Hostile {
            category: "same-account",
            key: t.sender.into_bytes(),
            payload: json.into_bytes(),
        });
    }
    for _ in 0..60 {
        let t = fresh_transfer(rng, accounts);
        extra.push(Hostile {
            category: "unknown-transfer",
            key: t.sender.clone().into_bytes(),
            payload: t.seed_json().into_bytes(),
        });
    }
    let shape = Shape {
        good: |rng, users| {
            let t = fresh_transfer(rng, users);
            serde_json::from_str(&t.seed_json()).expect("json")
        },
        required: &[
            "transfer_id",
            "sender_id",
            "receiver_id",
            "amount",
            "version",
        ],
        strings: &["transfer_id", "sender_id", "receiver_id", "status"],
        not_numbers: &["transfer_id", "sender_id", "receiver_id", "status"],
        decimals: &["amount"],
        bad_numbers: &BAD_AMOUNTS,
        key_fields: &["transfer_id", "sender_id", "receiver_id"],
    };
    // The forgeries count towards the topic's thousand.
    let mut others = for_topic(rng, &shape, accounts, extra);
    others.truncate(PER_TOPIC - forged.len());
    TransferHostiles {
        forged,
        records,
        others,
    }
}

fn fresh_transfer(rng: &mut Rng, accounts: &[String]) -> Transfer {
    let sender = rng.below(accounts.len());
    let receiver = (sender + 1 + rng.below(accounts.len() - 1)) % accounts.len();
    Transfer {
        id: uuid::Uuid::new_v4().to_string(),
        sender: accounts[sender].clone(),
        receiver: accounts[receiver].clone(),
        amount: 1 + rng.below(5000) as i64,
    }
}

/// A good outcome event (the notification service's fields and an `event_id`).
pub fn good_event(rng: &mut Rng, users: &[String]) -> Map<String, Value> {
    let id = format!("ev-{}", uuid::Uuid::new_v4());
    let user = rng.pick(users);
    json!({"transaction_id": id, "user_id": user, "status": "completed", "event_id": format!("{id}:1:credit")})
        .as_object()
        .cloned()
        .expect("object")
}

pub const EVENT_SHAPE: Shape = Shape {
    good: good_event,
    required: &["transaction_id", "user_id", "status"],
    strings: &["transaction_id", "user_id", "status"],
    not_numbers: &["status"],
    decimals: &[],
    bad_numbers: &[],
    key_fields: &["user_id"],
};

/// The pair the scenario's watchers watch.
pub const WATCHED_PAIR: (&str, &str) = ("USD", "GBP");

/// A good rate change of the watched pair with a rate no other change has
/// (so each notification's text names the one change it came from).
pub fn good_rate_change(_: &mut Rng, _: &[String]) -> Map<String, Value> {
    static NEXT: AtomicU64 = AtomicU64::new(100_000);
    let (base, quote) = WATCHED_PAIR;
    let rate = format!("0.{}1", NEXT.fetch_add(1, Ordering::Relaxed));
    json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "pair": format!("{base}/{quote}"),
        "base": base,
        "quote": quote,
        "rate": serde_json::Number::from_string_unchecked(rate),
        "changed_at": "2026-01-01T00:00:00.000Z",
    })
    .as_object()
    .cloned()
    .expect("object")
}

pub const RATE_SHAPE: Shape = Shape {
    good: good_rate_change,
    required: &["event_id", "pair", "base", "quote", "rate", "changed_at"],
    strings: &["event_id", "pair", "base", "quote"],
    not_numbers: &["event_id", "pair", "base", "quote"],
    decimals: &["rate"],
    bad_numbers: &BAD_RATES,
    key_fields: &["pair"],
};

/// A good subscription payment request.
pub fn good_payment(rng: &mut Rng, _: &[String]) -> Map<String, Value> {
    json!({
        "payment_id": uuid::Uuid::new_v4().to_string(),
        "user_id": format!("payer-{}", rng.below(1_000_000)),
        "plan": "premium",
        "amount": serde_json::Number::from_string_unchecked("9.99".into()),
        "currency": "USD",
        "kind": "payment",
    })
    .as_object()
    .cloned()
    .expect("object")
}

pub const PAYMENT_SHAPE: Shape = Shape {
    good: good_payment,
    required: &[
        "payment_id",
        "user_id",
        "plan",
        "amount",
        "currency",
        "kind",
    ],
    strings: &["payment_id", "user_id", "plan", "currency", "kind"],
    not_numbers: &["payment_id", "user_id", "plan", "currency", "kind"],
    decimals: &["amount"],
    bad_numbers: &BAD_AMOUNTS,
    key_fields: &["payment_id", "user_id"],
};

/// Payments' topic: the generic ones plus unknown currencies and kinds.
pub fn payments(rng: &mut Rng) -> Vec<Hostile> {
    let mut extra = Vec::new();
    for (i, (field, value)) in [
        ("currency", json!("XXX")),
        ("currency", json!("US")),
        ("kind", json!("steal")),
        ("kind", json!("PAYMENT")),
        ("user_id", json!("two words")),
        ("plan", json!("   ")),
    ]
    .into_iter()
    .cycle()
    .take(60)
    .enumerate()
    {
        let mut m = good_payment(rng, &[]);
        m.insert(field.into(), value);
        extra.push(Hostile {
            category: "bad-value",
            key: format!("bad-value-{i}").into_bytes(),
            payload: serde_json::to_vec(&m).expect("json"),
        });
    }
    for_topic(rng, &PAYMENT_SHAPE, &[], extra)
}

/// A good conversion request (USD to EUR; the scenario sets that rate).
pub fn good_conversion(rng: &mut Rng, _: &[String]) -> Map<String, Value> {
    json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "amount": serde_json::Number::from_string_unchecked(format!("{}.25", 1 + rng.below(999))),
        "from": "USD",
        "to": "EUR",
    })
    .as_object()
    .cloned()
    .expect("object")
}

pub const CONVERSION_SHAPE: Shape = Shape {
    good: good_conversion,
    required: &["id", "amount", "from", "to"],
    strings: &["id", "from", "to"],
    not_numbers: &["id", "from", "to"],
    decimals: &["amount"],
    bad_numbers: &BAD_AMOUNTS,
    key_fields: &["id"],
};

/// Conversion requests' topic: the generic ones plus unknown currencies.
pub fn conversions(rng: &mut Rng) -> Vec<Hostile> {
    let mut extra = Vec::new();
    for (i, (field, code)) in [("from", "XXX"), ("to", "ZZZ"), ("from", ""), ("to", "EURO")]
        .into_iter()
        .cycle()
        .take(40)
        .enumerate()
    {
        let mut m = good_conversion(rng, &[]);
        m.insert(field.into(), json!(code));
        extra.push(Hostile {
            category: "bad-currency",
            key: format!("bad-currency-{i}").into_bytes(),
            payload: serde_json::to_vec(&m).expect("json"),
        });
    }
    for_topic(rng, &CONVERSION_SHAPE, &[], extra)
}

/// Rate changes' topic: the generic ones (zero, negative and over-precise
/// rates among them).
pub fn rate_changes(rng: &mut Rng) -> Vec<Hostile> {
    for_topic(rng, &RATE_SHAPE, &[], Vec::new())
}
