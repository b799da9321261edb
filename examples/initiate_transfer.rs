//! Initiating a transfer with an idempotency key, as a client's API would:
//! check the request against the accounts (`prepare`), store it and publish
//! it to `money_transfers` (`Publisher::initiate`, which returns once the
//! broker has acknowledged the message). Initiating the same key again
//! returns the same transfer with `created == false`: a client that retries
//! after a timeout never moves the money twice.
//!
//! Nothing processes the transfer here: `payctl transfer process` (or the
//! `transfer_one` example) does that later.
//!
//! Needs the local stack (`scripts/stack.sh up`):
//!   cargo run --example initiate_transfer
//!
//! Prints:
//!   initiated <transfer id> created=true
//!   again <transfer id> created=false

mod common;

use anyhow::Context as _;
use payctl::config::Topics;
use payctl::kafka::FutureProducer;
use payctl::store::Redis;
use payctl::transfer::initiate::{prepare, Initiated, Publisher, TransferRequest};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let kafka = common::kafka();
    let mut redis = common::redis().connect().await?;
    let topics = Topics::default();

    let suffix = common::suffix();
    let (payer, payee) = common::two_accounts(&mut redis, &suffix).await?;

    // The client's key for this payment: the same on every retry of it.
    let request = TransferRequest {
        from: payer,
        to: payee,
        amount: "7.25".parse()?,
        currency: None,
        idempotency_key: Some(format!("example-{suffix}")),
    };
    let producer = kafka.producer()?;
    let first = initiate(&mut redis, &producer, &topics.transfers, &request).await?;
    println!(
        "initiated {} created={}",
        first.transfer.transfer_id, first.created
    );
    let again = initiate(&mut redis, &producer, &topics.transfers, &request).await?;
    println!(
        "again {} created={}",
        again.transfer.transfer_id, again.created
    );
    Ok(())
}

/// Initiates one transfer: `prepare` checks it (both accounts exist, same
/// currency, a valid amount), `initiate` stores and publishes it.
async fn initiate(
    redis: &mut Redis,
    producer: &FutureProducer,
    topic: &str,
    request: &TransferRequest,
) -> anyhow::Result<Initiated> {
    let transfers = prepare(redis, std::slice::from_ref(request), |_| String::new())
        .await?
        .map_err(|problems| anyhow::anyhow!(problems[0].message.clone()))?;
    let mut publisher = Publisher {
        redis,
        producer,
        topic,
    };
    // One result per transfer handed in: an error of this transfer alone
    // (not acknowledged, a key used for another transfer) is the inner one.
    publisher
        .initiate(transfers)
        .await?
        .pop()
        .context("no result for the transfer")?
}
