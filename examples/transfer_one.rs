//! Using the payctl library directly: open two accounts, initiate one
//! transfer, and apply it with the same worker `payctl transfer process` runs.
//!
//! The transfer goes through a topic of this run's own (the pipeline's is
//! `Topics::default().transfers`), so the worker's new group reads only it;
//! its outcome events go to `payment_transactions` as the pipeline's do.
//!
//! Needs the local stack (`scripts/stack.sh up`):
//!   cargo run --example transfer_one

mod common;

use payctl::accounts;
use payctl::config::{Topics, WorkerLimits};
use payctl::kafka::create_topics;
use payctl::transfer::initiate::{prepare, Publisher, TransferRequest};
use payctl::transfer::process::TransferProcessor;
use payctl::worker::{self, WorkerSpec};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let kafka = common::kafka();
    let redis_config = common::redis();
    let mut redis = redis_config.connect().await?;

    let suffix = common::suffix();
    let topics = Topics {
        transfers: format!("example-transfers-{suffix}"),
        ..Topics::default()
    };
    // A worker needs its input's dead-letter topic too; one replica, as the
    // local broker is one broker.
    let own = [topics.transfers.clone(), Topics::dlq(&topics.transfers)];
    create_topics(&kafka, &own, 3, 1).await?;
    let (payer, payee) = common::two_accounts(&mut redis, &suffix).await?;

    let request = TransferRequest {
        from: payer.clone(),
        to: payee.clone(),
        amount: "7.25".parse()?,
        currency: None,
        idempotency_key: None,
    };
    let transfers = prepare(&mut redis, &[request], |_| String::new())
        .await?
        .map_err(|problems| anyhow::anyhow!(problems[0].message.clone()))?;
    let producer = kafka.producer()?;
    let mut publisher = Publisher {
        redis: &mut redis,
        producer: &producer,
        topic: &topics.transfers,
    };
    for initiated in publisher.initiate(transfers).await? {
        println!("initiated {}", initiated?.transfer.transfer_id);
    }

    let spec = WorkerSpec {
        group: format!("example-{suffix}"),
        inputs: vec![topics.transfers.clone()],
        outputs: vec![topics.transactions.clone()],
        outcomes: &[],
        limits: WorkerLimits {
            until_idle: Some(std::time::Duration::from_secs(2)),
            batch_size: WorkerLimits::DEFAULT_BATCH_SIZE,
            ..WorkerLimits::default()
        },
        redis: Some(redis.clone()),
    };
    let mut processor = TransferProcessor::new(
        redis_config.connect().await?,
        true,
        topics.transactions.clone(),
    );
    let summary = worker::run(&kafka, &spec, &mut processor, CancellationToken::new()).await?;
    println!(
        "processed {} message(s): {:?}",
        summary.processed, summary.outcomes
    );
    for id in [&payer, &payee] {
        let account = accounts::require(&mut redis, id).await?;
        println!("{id}: {} {}", account.balance, account.currency);
    }
    Ok(())
}
