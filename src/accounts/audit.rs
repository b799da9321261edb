//! `payctl accounts audit`: does the money add up?

use serde::Serialize;

use crate::exit::refuse;
use crate::money::{Currency, Money};
use crate::output::{self, Output, Rendered, Report};
use crate::store::Redis;
use crate::transfer::saga;

/// Sum every balance, per currency, with the money in flight between the
/// slots of a Redis Cluster (debited, not yet credited), and check the
/// transfer markers against each other. Exit 1 when something does not add
/// up. Exact while transfers flow: each account is read with its markers in
/// one step, and a transfer seen half-done because its two accounts were
/// read at two moments is checked again and counted in flight.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl accounts audit
  payctl accounts audit --output json | jq '.currencies'")]
pub struct Args {}

#[derive(Serialize)]
struct CurrencyTotal {
    currency: String,
    balances: String,
    in_flight: String,
    /// Balances plus money in flight: constant while no money enters
    /// (open, deposit) or leaves.
    total: String,
}

#[derive(Serialize)]
struct AuditReport {
    accounts: usize,
    currencies: Vec<CurrencyTotal>,
    /// Transfers debited and not yet credited: (id, sender, receiver, amount).
    in_flight: Vec<InFlight>,
    anomalies: Vec<String>,
}

#[derive(Serialize)]
struct InFlight {
    transfer_id: String,
    sender: String,
    receiver: String,
    amount: String,
}

impl Report for AuditReport {
    fn render(&self) -> Rendered {
        let mut table = output::table(["currency", "balances", "in flight", "total"]);
        for c in &self.currencies {
            table.add_row(vec![
                c.currency.clone(),
                c.balances.clone(),
                c.in_flight.clone(),
                c.total.clone(),
            ]);
        }
        for t in &self.in_flight {
            table.add_row(vec![
                "in flight".to_string(),
                format!("{} {}", t.transfer_id, t.amount),
                format!("{} → {}", t.sender, t.receiver),
                String::new(),
            ]);
        }
        for a in &self.anomalies {
            table.add_row(vec![
                "anomaly".to_string(),
                a.clone(),
                String::new(),
                String::new(),
            ]);
        }
        Rendered::Table(table)
    }
}

fn text(minor: i64, code: &str) -> String {
    match Currency::parse(code) {
        Ok(currency) => Money::from_minor(minor, currency).to_decimal().to_string(),
        Err(_) => minor.to_string(),
    }
}

pub async fn run(_args: Args, redis: &mut Redis, output: Output) -> anyhow::Result<()> {
    let accounts = crate::accounts::list(redis).await?;
    let audit = if redis.is_cluster() {
        saga::audit(redis, &accounts).await?
    } else {
        // One server applies a transfer in one atomic step: nothing is
        // ever in flight.
        let mut audit = saga::Audit::default();
        for a in &accounts {
            *audit
                .balances
                .entry(a.currency.code().to_string())
                .or_default() += a.balance.minor_units();
        }
        audit
    };
    let currency_of = |sender: &str| {
        accounts
            .iter()
            .find(|a| a.id == sender)
            .map(|a| a.currency.code().to_string())
            .unwrap_or_default()
    };
    let report = AuditReport {
        accounts: accounts.len(),
        currencies: audit
            .balances
            .iter()
            .map(|(code, &balances)| {
                let in_flight = audit.in_flight.get(code).copied().unwrap_or(0);
                CurrencyTotal {
                    currency: code.clone(),
                    balances: text(balances, code),
                    in_flight: text(in_flight, code),
                    total: text(balances + in_flight, code),
                }
            })
            .collect(),
        in_flight: audit
            .transfers_in_flight
            .iter()
            .map(|(id, sender, receiver, amount)| InFlight {
                transfer_id: id.clone(),
                sender: sender.clone(),
                receiver: receiver.clone(),
                amount: text(*amount, &currency_of(sender)),
            })
            .collect(),
        anomalies: audit.anomalies.clone(),
    };
    output.emit(&report)?;
    if report.anomalies.is_empty() {
        Ok(())
    } else {
        Err(refuse(format!(
            "{} transfer marker(s) do not add up",
            report.anomalies.len()
        )))
    }
}
