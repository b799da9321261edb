//! Money transfers (the versioned transfer service and the banking app): the record, its statuses, and reads.
//!
//! `transfer:{id}` holds the versioned transfer service's JSON (`transfer_id, sender_id,
//! receiver_id, amount, status, version`) plus payctl's extra fields; the
//! sorted set `transfers` lists ids by creation time.

pub mod initiate;
pub mod list;
pub mod process;
pub mod resend;
pub mod rows;
pub mod saga;
pub mod show;

use anyhow::Context as _;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::money::Decimal;
use crate::output::{self, Rendered, Report};
use crate::store::{keys, Redis};

/// Where a transfer is in its life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TransferStatus {
    /// Stored and published, waiting for `transfer process`.
    Initiated,
    /// Applied: balances moved (or, with `--no-ledger`, marked done as the versioned transfer service does).
    Completed,
    /// Processed and refused; `reason` says why. No money moved.
    Rejected,
}

impl TransferStatus {
    /// The lowercase name used in JSON and Redis.
    pub fn as_str(self) -> &'static str {
        match self {
            TransferStatus::Initiated => "initiated",
            TransferStatus::Completed => "completed",
            TransferStatus::Rejected => "rejected",
        }
    }
}

/// A transfer as stored in `transfer:{id}` and carried on `money_transfers`.
///
/// `transfer process` writes a rejected record by appending `reason` to the
/// completed one's JSON, so `reason` stays the last field.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Transfer {
    pub transfer_id: String,
    pub sender_id: String,
    pub receiver_id: String,
    /// A JSON number with exact digits (the versioned transfer service writes a number).
    pub amount: Decimal,
    pub status: TransferStatus,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Transfer {
    fn row(&self) -> Vec<String> {
        vec![
            self.transfer_id.clone(),
            self.sender_id.clone(),
            self.receiver_id.clone(),
            self.amount.to_string(),
            self.currency.clone().unwrap_or_default(),
            self.status.as_str().to_string(),
            self.version.to_string(),
            self.reason.clone().unwrap_or_default(),
            self.created_at.clone().unwrap_or_default(),
        ]
    }
}

/// A transfer as `--output json` prints it: the stored fields, the amount a
/// string with the currency's digits (`"12.50"`). The record in Redis and
/// the message on the topic keep the versioned transfer service's JSON number.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Transfer)]
pub struct TransferView<'a> {
    pub transfer_id: &'a str,
    pub sender_id: &'a str,
    pub receiver_id: &'a str,
    pub amount: String,
    pub status: TransferStatus,
    pub version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

impl<'a> From<&'a Transfer> for TransferView<'a> {
    fn from(t: &'a Transfer) -> Self {
        TransferView {
            transfer_id: &t.transfer_id,
            sender_id: &t.sender_id,
            receiver_id: &t.receiver_id,
            amount: output::amount_text(t.amount, t.currency.as_deref()),
            status: t.status,
            version: t.version,
            currency: t.currency.as_deref(),
            created_at: t.created_at.as_deref(),
            updated_at: t.updated_at.as_deref(),
            idempotency_key: t.idempotency_key.as_deref(),
            reason: t.reason.as_deref(),
        }
    }
}

/// Serializes a transfer for output, as [`TransferView`]: for
/// `#[serde(serialize_with)]` on output structs that hold a [`Transfer`].
pub fn serialize_for_output<S: serde::Serializer>(
    transfer: &Transfer,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    TransferView::from(transfer).serialize(serializer)
}

/// One transfer, printed (`transfer show`).
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct ShownTransfer(#[serde(serialize_with = "serialize_for_output")] pub Transfer);

impl Report for ShownTransfer {
    fn render(&self) -> Rendered {
        TransferList(vec![self.0.clone()]).render()
    }
}

/// A table of transfers.
#[derive(Debug)]
pub struct TransferList(pub Vec<Transfer>);

impl Serialize for TransferList {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(TransferView::from))
    }
}

impl Report for TransferList {
    fn render(&self) -> Rendered {
        let mut table = output::table([
            "transfer",
            "from",
            "to",
            "amount",
            "currency",
            "status",
            "version",
            "reason",
            "created_at",
        ]);
        for transfer in &self.0 {
            table.add_row(transfer.row());
        }
        Rendered::Table(table)
    }
}

/// Reads one transfer record.
pub async fn get(redis: &mut Redis, id: &str) -> anyhow::Result<Option<Transfer>> {
    let json: Option<String> = redis
        .get(keys::transfer(id))
        .await
        .with_context(|| format!("reading transfer {}", output::id_for_message(id)))?;
    json.map(|json| parse_stored(id, &json)).transpose()
}

fn parse_stored(id: &str, json: &str) -> anyhow::Result<Transfer> {
    serde_json::from_str(json)
        .with_context(|| format!("transfer:{id} holds JSON payctl cannot read"))
}

/// The newest transfers, optionally only those in `status`, at most `limit`.
pub async fn list(
    redis: &mut Redis,
    status: Option<TransferStatus>,
    limit: usize,
) -> anyhow::Result<Vec<Transfer>> {
    const PAGE: isize = 500;
    let mut found = Vec::new();
    let mut start = 0isize;
    while found.len() < limit {
        let ids: Vec<String> = redis
            .zrevrange(keys::TRANSFERS, start, start + PAGE - 1)
            .await
            .context("listing transfers")?;
        if ids.is_empty() {
            break;
        }
        start += PAGE;
        let keys: Vec<String> = ids.iter().map(|id| keys::transfer(id)).collect();
        let records: Vec<Option<String>> = redis.mget(&keys).await.context("reading transfers")?;
        for (id, json) in ids.iter().zip(records) {
            let Some(json) = json else { continue };
            let transfer = parse_stored(id, &json)?;
            if status.is_none_or(|s| s == transfer.status) && found.len() < limit {
                found.push(transfer);
            }
        }
    }
    Ok(found)
}
