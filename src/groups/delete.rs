//! `payctl groups delete`: remove a consumer group and its committed offsets.

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use rdkafka::admin::AdminOptions;
use rdkafka::types::RDKafkaErrorCode;
use serde::Serialize;

use crate::config::KafkaConfig;
use crate::exit::refuse;
use crate::output::{Output, Rendered, Report};

/// Delete a consumer group (Kafka DeleteGroups): its committed offsets go,
/// and the next worker of that name starts as a new group (at the start of
/// each partition). Refused while the group has members. The way out of a
/// group stuck in a rebalance (see `payctl groups list`).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl groups delete payctl-transfer-process          # asks first, at a terminal
  payctl groups delete nightly-audit --yes              # in a script")]
pub struct Args {
    pub group: String,
    /// Do not ask; required when stdin is not a terminal.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Serialize)]
struct Deleted {
    group: String,
    deleted: bool,
}

impl Report for Deleted {
    fn render(&self) -> Rendered {
        Rendered::Line(format!("group {} deleted", self.group))
    }
}

pub async fn run(args: Args, kafka: &KafkaConfig, output: Output) -> anyhow::Result<()> {
    super::refuse_if_active(kafka, &args.group).await?;
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "deleting group {} needs --yes when stdin is not a terminal",
                args.group
            );
        }
        let question = format!(
            "delete consumer group {} and its committed offsets?",
            args.group
        );
        if !crate::output::confirm(&question)? {
            return Err(refuse(format!("group {} left as it is", args.group)));
        }
    }
    let admin = kafka.admin()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .delete_groups(&[args.group.as_str()], &options)
        .await
        .with_context(|| format!("deleting group {} on {}", args.group, kafka.brokers))?;
    for result in results {
        match result {
            Ok(_) => {}
            Err((name, RDKafkaErrorCode::GroupIdNotFound)) => {
                return Err(refuse(format!("no consumer group {name} on the broker")))
            }
            Err((name, RDKafkaErrorCode::NonEmptyGroup)) => {
                return Err(refuse(format!(
                    "group {name} has active members: stop them first"
                )))
            }
            Err((name, code)) => return Err(anyhow!("deleting group {name}: {code}")),
        }
    }
    output.emit(&Deleted {
        group: args.group,
        deleted: true,
    })
}
