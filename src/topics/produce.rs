//! `payctl topics produce`: lines from stdin or a file become messages.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::config::KafkaConfig;
use crate::kafka::{produce_all, Outgoing};
use crate::output::{self, Output, Rendered, Report};

/// Produce one message per input line; waits for every ack. The topic must
/// exist (a broker such as Tansu would otherwise create it on first write),
/// unless --create says to make it.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  echo '{\"transaction_id\":\"t1\",\"user_id\":\"alice\",\"status\":\"completed\"}' | payctl topics produce payment_transactions --key-field user_id
  payctl topics produce money_transfers --file transfers.jsonl --key-field sender_id -H source=replay
  payctl topics produce payments --key alice < requests.jsonl")]
pub struct Args {
    pub topic: String,
    /// Read lines from this file instead of stdin.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The same key for every message.
    #[arg(long, conflicts_with = "key_field")]
    pub key: Option<String>,
    /// Take each message's key from this field of its JSON value.
    #[arg(long)]
    pub key_field: Option<String>,
    /// A header for every message, repeatable: -H source=replay.
    #[arg(short = 'H', long = "header", value_name = "KEY=VALUE")]
    pub headers: Vec<String>,
    /// Create the topic when it is missing (with --partitions partitions,
    /// replicated as `topics create` does) instead of refusing.
    #[arg(long)]
    pub create: bool,
    /// Partitions of a topic made by --create.
    #[arg(long, default_value_t = 3, requires = "create")]
    pub partitions: i32,
}

#[derive(Serialize)]
struct Produced {
    topic: String,
    messages: usize,
}

impl Report for Produced {
    fn render(&self) -> Rendered {
        Rendered::Line(format!(
            "{} written to {}",
            output::count(self.messages as u64, "message", "messages"),
            self.topic
        ))
    }
}

/// The key of one line, from `--key` or `--key-field`.
fn key_of(line: &str, number: usize, args: &Args) -> anyhow::Result<Option<String>> {
    let Some(field) = &args.key_field else {
        return Ok(args.key.clone());
    };
    let value: serde_json::Value = serde_json::from_str(line)
        .with_context(|| format!("line {number}: not JSON, so it has no {field:?}"))?;
    match value.get(field) {
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
            Ok(Some(v.to_string()))
        }
        _ => bail!("line {number}: no field {field:?} to take the key from"),
    }
}

const CHUNK: usize = 10_000;

/// Makes sure `topic` exists before anything is written to it: refused with
/// a hint when missing, or created with `create`.
async fn ensure_topic(
    kafka: &KafkaConfig,
    topic: &str,
    create: bool,
    partitions: i32,
) -> anyhow::Result<()> {
    let name = topic.to_string();
    let exists = super::ask(kafka, move |cluster| {
        Ok(cluster.topic_names()?.iter().any(|(t, _)| *t == name))
    })
    .await?;
    if exists {
        return Ok(());
    }
    if !create {
        bail!("missing topic: {topic} (create it: payctl topics create {topic}, or add --create)");
    }
    anyhow::ensure!(partitions >= 1, "--partitions must be at least 1");
    let brokers = super::create::broker_count(kafka).await?;
    let (factor, capped) = super::create::replication_factor(3, brokers);
    if let Some(capped) = capped {
        tracing::info!("{capped}");
    }
    crate::kafka::create_topics(kafka, &[topic.to_string()], partitions, factor).await?;
    tracing::info!("created topic {topic} with {partitions} partitions");
    Ok(())
}

pub async fn run(
    args: Args,
    kafka: &KafkaConfig,
    producer: &rdkafka::producer::FutureProducer,
    output: Output,
    show_progress: bool,
) -> anyhow::Result<()> {
    let headers: Vec<(String, String)> = args
        .headers
        .iter()
        .map(|h| {
            h.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("-H {h:?}: expected KEY=VALUE"))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut text = String::new();
    match &args.file {
        Some(path) => {
            text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?
        }
        None => {
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading stdin")?;
        }
    }
    // Every line is checked before any is sent.
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        records.push(Outgoing {
            topic: args.topic.clone(),
            key: key_of(line, i + 1, &args)?,
            payload: line.as_bytes().to_vec(),
            headers: headers.clone(),
        });
    }
    ensure_topic(kafka, &args.topic, args.create, args.partitions).await?;
    let progress = output::progress_bar(records.len() as u64, show_progress);
    for chunk in records.chunks(CHUNK) {
        produce_all(producer, chunk).await?;
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    output.emit(&Produced {
        topic: args.topic,
        messages: records.len(),
    })
}
