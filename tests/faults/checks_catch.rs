//! The checks themselves, on made-up observations: a clean run passes, and
//! each kind of damage the suite looks for is caught. No broker needed.

use std::collections::{HashMap, HashSet};

use crate::generator::{Account, Transfer, Truth};
use crate::invariants::{
    self, Checks, DeadLetter, Event, Notification, Observed, Record, TopicRecord,
};

fn truth() -> Truth {
    Truth {
        accounts: vec![
            Account {
                id: "a".into(),
                opening: 10_000,
            },
            Account {
                id: "b".into(),
                opening: 10_000,
            },
        ],
        transfers: vec![
            Transfer {
                id: "t1".into(),
                sender: "a".into(),
                receiver: "b".into(),
                amount: 3_000,
            },
            Transfer {
                id: "t2".into(),
                sender: "b".into(),
                receiver: "a".into(),
                amount: 500,
            },
        ],
    }
}

fn record(sender: &str, receiver: &str, amount: i64, status: &str) -> Option<Record> {
    Some(Record {
        version: Some(2),
        status: status.into(),
        sender: sender.into(),
        receiver: receiver.into(),
        amount: Some(amount),
    })
}

fn event(id: &str, user: &str, role: &str, status: &str, amount: i64) -> Event {
    Event {
        partition: 0,
        transaction_id: id.into(),
        user_id: user.into(),
        status: status.into(),
        event_id: Some(format!("{id}:1:{role}")),
        role: Some(role.into()),
        amount: Some(amount),
    }
}

fn note(user: &str, message: &str) -> Notification {
    Notification {
        user: user.into(),
        message: message.into(),
        event_id: None,
    }
}

/// t1 completed, t2 rejected, t1's debit announced twice (a redelivery).
fn clean() -> Observed {
    Observed {
        records: vec![
            record("a", "b", 3_000, "completed"),
            record("b", "a", 500, "rejected"),
        ],
        balances: vec![Some("7000".into()), Some("13000".into())],
        events: vec![
            event("t1", "a", "debit", "completed", 3_000),
            event("t1", "b", "credit", "completed", 3_000),
            event("t2", "b", "debit", "rejected", 500),
            event("t1", "a", "debit", "completed", 3_000),
            event("t2", "a", "credit", "rejected", 500),
        ],
        notifications: vec![
            note("a", "Transaction t1 is completed"),
            note("a", "Transaction t2 is rejected"),
            note("b", "Transaction t1 is completed"),
            note("b", "Transaction t2 is rejected"),
        ],
    }
}

fn broken(seen: &Observed) -> Vec<String> {
    let mut checks = Checks::default();
    invariants::check_pipeline(&truth(), seen, &mut checks);
    checks.details()
}

fn assert_caught(details: &[String], invariant: &str, example: &str) {
    assert!(
        details
            .iter()
            .any(|d| d.starts_with(invariant) && d.contains(example)),
        "wanted {invariant:?} with {example:?}, got {details:#?}"
    );
}

#[test]
fn a_clean_run_passes_with_its_figures() {
    let mut checks = Checks::default();
    let figures = invariants::check_pipeline(&truth(), &clean(), &mut checks);
    assert!(checks.is_ok(), "{:#?}", checks.details());
    assert_eq!((figures.completed, figures.rejected), (1, 1));
    assert_eq!((figures.events, figures.events_on_topic), (4, 5));
    assert_eq!(figures.notifications, 4);
    assert_eq!(figures.balance(), "balance 200.00 unchanged");
}

#[test]
fn a_second_debit_is_caught() {
    let mut seen = clean();
    seen.balances[0] = Some("4000".into());
    let details = broken(&seen);
    assert_caught(&details, "money", "total 170.00");
    assert_caught(
        &details,
        "money",
        "a: balance 40.00, its completed transfers make it 70.00",
    );
}

#[test]
fn money_that_moved_between_accounts_is_caught_even_when_the_total_holds() {
    let mut seen = clean();
    seen.balances = vec![Some("6000".into()), Some("14000".into())];
    assert_caught(&broken(&seen), "money", "b: balance 140.00");
}

#[test]
fn a_balance_that_is_not_cents_is_caught() {
    let mut seen = clean();
    seen.balances[1] = Some("13000.0".into());
    assert_caught(&broken(&seen), "money", "is not cents");
}

#[test]
fn an_undecided_or_rewritten_transfer_is_caught() {
    let mut seen = clean();
    seen.records[0] = record("a", "mallory", 9_000, "completed");
    seen.records[1] = None;
    let details = broken(&seen);
    assert_caught(&details, "decided once", "t1: record says a→mallory");
    assert_caught(&details, "decided once", "t2: no readable record");
}

#[test]
fn events_that_disagree_with_the_record_are_caught() {
    let mut seen = clean();
    seen.events
        .push(event("t2", "b", "debit", "completed", 500));
    assert_caught(
        &broken(&seen),
        "two events per transfer",
        "announces completed, the record says rejected",
    );

    let mut seen = clean();
    seen.events[1] = event("t1", "mallory", "credit", "completed", 3_000);
    assert_caught(
        &broken(&seen),
        "two events per transfer",
        "credit event to mallory",
    );

    let mut seen = clean();
    seen.events
        .retain(|e| e.transaction_id != "t2" || e.role.as_deref() != Some("credit"));
    assert_caught(
        &broken(&seen),
        "two events per transfer",
        "t2: 1 distinct events",
    );
}

#[test]
fn duplicate_missing_and_stray_notifications_are_caught() {
    let mut seen = clean();
    seen.notifications
        .push(note("b", "Transaction t1 is completed"));
    assert_caught(
        &broken(&seen),
        "one notification per event",
        "notified 2 times",
    );

    let mut seen = clean();
    seen.notifications.remove(0);
    assert_caught(
        &broken(&seen),
        "one notification per event",
        "no notification for t1:1:debit",
    );

    let mut seen = clean();
    seen.notifications
        .push(note("a", "Transaction t1 is rejected"));
    assert_caught(
        &broken(&seen),
        "one notification per event",
        "matches no event",
    );
}

#[test]
fn notifications_with_an_event_id_are_told_apart_by_it() {
    let mut seen = clean();
    for (n, role) in seen
        .notifications
        .iter_mut()
        .zip(["debit", "credit", "credit", "debit"])
    {
        let id = n.message.split(' ').nth(1).unwrap().to_string();
        n.event_id = Some(format!("{id}:1:{role}"));
    }
    assert!(broken(&seen).is_empty(), "{:#?}", broken(&seen));
    let again = seen.notifications[0].clone();
    seen.notifications.push(again);
    assert_caught(
        &broken(&seen),
        "one notification per event",
        "event t1:1:debit: notified 2 times",
    );
}

fn transfer_message(offset: i64, id: &str, sender: &str) -> TopicRecord {
    TopicRecord {
        partition: 0,
        offset,
        payload: format!(r#"{{"transfer_id":"{id}","sender_id":"{sender}"}}"#).into_bytes(),
    }
}

#[test]
fn debit_events_out_of_transfer_order_are_caught() {
    let sent = vec![
        transfer_message(0, "t1", "a"),
        transfer_message(1, "t3", "a"),
        transfer_message(2, "t2", "b"),
    ];
    let in_order = vec![
        event("t1", "a", "debit", "completed", 1),
        event("t3", "a", "debit", "completed", 1),
        event("t1", "a", "debit", "completed", 1),
    ];
    let mut checks = Checks::default();
    assert_eq!(
        invariants::check_debit_order(&sent, &in_order, &mut checks),
        1
    );
    assert!(checks.is_ok(), "{:#?}", checks.details());

    let swapped = vec![
        event("t3", "a", "debit", "completed", 1),
        event("t1", "a", "debit", "completed", 1),
    ];
    invariants::check_debit_order(&sent, &swapped, &mut checks);
    assert_caught(
        &checks.details(),
        "debit events in transfer order",
        "debit of t3 announced before t1",
    );
}

#[test]
fn hostile_messages_without_a_dead_letter_are_caught_by_category() {
    let hostile: HashMap<(i32, i64), &'static str> = [
        ((0, 1), "not-json"),
        ((0, 2), "forged-receiver"),
        ((1, 0), "forged-receiver"),
    ]
    .into();
    let good: HashSet<(i32, i64)> = [(0, 0), (0, 3)].into();
    let letters = vec![
        DeadLetter {
            origin: Some((0, 1)),
            reason: Some("not JSON".into()),
        },
        DeadLetter {
            origin: Some((0, 3)),
            reason: Some("oops".into()),
        },
    ];
    // The worker passed partition 0 and never got to partition 1.
    let committed: HashMap<i32, i64> = [(0, 4)].into();
    let mut checks = Checks::default();
    let counts = invariants::check_dead_letters(
        "money_transfers",
        &letters,
        &hostile,
        &good,
        &committed,
        &mut checks,
    );
    assert_eq!(counts, (1, 1));
    let details = checks.details();
    assert_caught(
        &details,
        "money_transfers: every hostile message dead-lettered: 2 broken",
        "2 forged-receiver not dead-lettered (1 behind where the worker stopped) (passed without a letter: money_transfers/0@2)",
    );
    assert_caught(
        &details,
        "money_transfers: good messages not dead-lettered",
        "money_transfers/0@3",
    );
}

#[test]
fn amounts_are_read_exactly() {
    assert_eq!(invariants::parse_cents("12.5"), Some(1250));
    assert_eq!(invariants::parse_cents("12.50"), Some(1250));
    assert_eq!(invariants::parse_cents("12"), Some(1200));
    assert_eq!(invariants::parse_cents("-0.07"), Some(-7));
    assert_eq!(invariants::parse_cents("12.345"), None);
    assert_eq!(invariants::parse_cents("1e3"), None);
    assert_eq!(crate::generator::amount_json(1250), "12.5");
    assert_eq!(crate::generator::amount_json(1200), "12.0");
    assert_eq!(crate::generator::amount_json(5), "0.05");
}
