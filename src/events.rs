//! Events on `payment_transactions`, in the notification service's shape.
//!
//! The notification service reads `transaction_id`, `user_id` and
//! `status`; those three must keep their names and types. payctl adds the
//! rest, and an `event_id` that is the same every time the same outcome is
//! announced, so consumers can drop redeliveries.

use serde::{Deserialize, Serialize};

use crate::kafka::Outgoing;
use crate::money::Decimal;

/// One party's view of a transaction outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TransactionEvent {
    pub transaction_id: String,
    pub user_id: String,
    pub status: String,
    /// Stable across redeliveries: `{transaction_id}:{version}:{role}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// `debit` (payer) or `credit` (payee).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counterparty: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<String>,
    /// Set for subscription payments: `notify consume` marks the payment
    /// `completed` once the user's notification is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    /// `payment` or `refund`, for subscription payments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// True when this outcome may have been announced before (a redelivered
    /// transfer, an announcement retried): `notify consume` then checks the
    /// user's recent notifications for the same `event_id` before pushing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reannounced: bool,
}

impl TransactionEvent {
    /// The record to produce to `topic`, keyed by user so one user's events stay in order.
    pub fn to_outgoing(&self, topic: &str) -> Outgoing {
        Outgoing {
            topic: topic.to_string(),
            key: Some(self.user_id.clone()),
            payload: serde_json::to_vec(self).expect("a transaction event serializes"),
            headers: Vec::new(),
        }
    }
}

/// A rate change on `rate_changes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RateChangeEvent {
    pub event_id: String,
    /// `BASE/QUOTE`.
    pub pair: String,
    pub base: String,
    pub quote: String,
    pub rate: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_rate: Option<Decimal>,
    pub changed_at: String,
}

impl RateChangeEvent {
    /// The record to produce to `topic`, keyed by pair so one pair's changes stay in order.
    pub fn to_outgoing(&self, topic: &str) -> Outgoing {
        Outgoing {
            topic: topic.to_string(),
            key: Some(self.pair.clone()),
            payload: serde_json::to_vec(self).expect("a rate change serializes"),
            headers: Vec::new(),
        }
    }
}
