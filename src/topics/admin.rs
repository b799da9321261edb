//! The rest of a topic's life: `topics delete`, `topics add-partitions`,
//! `topics config get/set`. Each change is read back from the broker
//! afterwards: a broker that answers yes and changes nothing is an error,
//! not a success.

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use rdkafka::admin::{AdminOptions, ConfigSource, NewPartitions, ResourceSpecifier};
use rdkafka::types::RDKafkaErrorCode;
use serde::Serialize;

use crate::config::KafkaConfig;
use crate::exit::refuse;
use crate::output::{self, Output, Rendered, Report};

fn options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))
}

/// An admin error code in words, naming the broker's refusal.
fn refused(what: &str, code: RDKafkaErrorCode) -> anyhow::Error {
    match code {
        RDKafkaErrorCode::UnsupportedVersion | RDKafkaErrorCode::InvalidRequest => {
            anyhow!("{what}: the broker does not support it ({code:?}: {code})")
        }
        _ => anyhow!("{what}: {code:?} ({code})"),
    }
}

/// A failed admin request in words: a broker without the API says so.
fn admin_failed(
    what: &str,
    api: &str,
    kafka: &KafkaConfig,
    e: rdkafka::error::KafkaError,
) -> anyhow::Error {
    match e {
        rdkafka::error::KafkaError::AdminOp(RDKafkaErrorCode::UnsupportedFeature) => anyhow!(
            "{what}: the broker at {} does not offer the {api} API",
            kafka.brokers
        ),
        _ => anyhow::Error::new(e).context(format!("{what} on {}", kafka.brokers)),
    }
}

/// Partition counts of `topics` as the broker reports them now (`None`
/// for a topic it does not have).
async fn partition_counts(
    kafka: &KafkaConfig,
    topics: &[String],
) -> anyhow::Result<Vec<Option<usize>>> {
    let names = crate::topics::ask(kafka, |cluster| cluster.topic_names()).await?;
    Ok(topics
        .iter()
        .map(|t| {
            names
                .iter()
                .find(|(name, _)| name == t)
                .map(|(_, p)| p.len())
        })
        .collect())
}

/// How long a change may take to show in the broker's metadata.
const READ_BACK: Duration = Duration::from_secs(10);

/// Reads the broker again until `settled` holds for what `read` returns,
/// or [`READ_BACK`] has passed: metadata may lag behind a change the broker
/// has accepted. Returns the last reading.
async fn read_back<T, F>(read: impl Fn() -> F, settled: impl Fn(&T) -> bool) -> anyhow::Result<T>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = std::time::Instant::now() + READ_BACK;
    loop {
        let reading = read().await?;
        if settled(&reading) || std::time::Instant::now() > deadline {
            return Ok(reading);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ------------------------------------------------------------------ delete

/// Delete topics and every message in them.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl topics delete scratch-events                # asks first, at a terminal
  payctl topics delete old-audit old-audit.dlq --yes # in a script")]
pub struct DeleteArgs {
    #[arg(required = true)]
    pub topics: Vec<String>,
    /// Do not ask; required when stdin is not a terminal.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Serialize)]
struct Deleted {
    topic: String,
    deleted: bool,
}

#[derive(Serialize)]
#[serde(transparent)]
struct DeletedList(Vec<Deleted>);

impl Report for DeletedList {
    fn render(&self) -> Rendered {
        let mut table = output::table(["topic", "result"]);
        for d in &self.0 {
            table.add_row(vec![d.topic.clone(), "deleted".into()]);
        }
        Rendered::Table(table)
    }
}

pub async fn delete(args: DeleteArgs, kafka: &KafkaConfig, output: Output) -> anyhow::Result<()> {
    let before = partition_counts(kafka, &args.topics).await?;
    let missing: Vec<&str> = args
        .topics
        .iter()
        .zip(&before)
        .filter(|(_, count)| count.is_none())
        .map(|(t, _)| t.as_str())
        .collect();
    if !missing.is_empty() {
        bail!(
            "no topic {} on the broker: nothing deleted",
            missing.join(", ")
        );
    }
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            bail!("deleting topics needs --yes when stdin is not a terminal: nothing deleted");
        }
        let question = format!(
            "delete {} ({}) and every message in {}?",
            output::count(args.topics.len() as u64, "topic", "topics"),
            args.topics.join(", "),
            if args.topics.len() == 1 { "it" } else { "them" }
        );
        if !output::confirm(&question)? {
            return Err(refuse("topics left as they are"));
        }
    }
    let names: Vec<&str> = args.topics.iter().map(String::as_str).collect();
    let results = kafka
        .admin()?
        .delete_topics(&names, &options())
        .await
        .map_err(|e| admin_failed("deleting topics", "DeleteTopics", kafka, e))?;
    for result in results {
        if let Err((topic, code)) = result {
            return Err(refused(&format!("deleting topic {topic}"), code));
        }
    }
    let after = read_back(
        || partition_counts(kafka, &args.topics),
        |counts| counts.iter().all(Option::is_none),
    )
    .await?;
    let left: Vec<&str> = args
        .topics
        .iter()
        .zip(&after)
        .filter(|(_, count)| count.is_some())
        .map(|(t, _)| t.as_str())
        .collect();
    if !left.is_empty() {
        bail!(
            "the broker accepted the deletion, but still lists {} {} s later",
            left.join(", "),
            READ_BACK.as_secs()
        );
    }
    output.emit(&DeletedList(
        args.topics
            .into_iter()
            .map(|topic| Deleted {
                topic,
                deleted: true,
            })
            .collect(),
    ))
}

// ------------------------------------------------------------------ partitions

/// Add partitions to a topic (Kafka never removes them).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl topics add-partitions money_transfers --to 6
  payctl topics add-partitions payments --to 12 --output json

Keys move: a key's partition is its hash modulo the count, so records of one
key written before and after may land in different partitions, and their
order across the change is not kept.

Needs the broker's CreatePartitions API: Apache Kafka has it, Tansu does not
(payctl then says so and exits 2).")]
pub struct AddPartitionsArgs {
    pub topic: String,
    /// The total number of partitions afterwards.
    #[arg(long, value_name = "N")]
    pub to: usize,
}

#[derive(Serialize)]
struct Partitions {
    topic: String,
    before: usize,
    after: usize,
}

impl Report for Partitions {
    fn render(&self) -> Rendered {
        Rendered::Line(format!(
            "{}: {} → {} partitions",
            self.topic, self.before, self.after
        ))
    }
}

pub async fn add_partitions(
    args: AddPartitionsArgs,
    kafka: &KafkaConfig,
    output: Output,
) -> anyhow::Result<()> {
    let Some(before) = partition_counts(kafka, std::slice::from_ref(&args.topic)).await?[0] else {
        bail!("no topic {:?} on the broker", args.topic);
    };
    if args.to <= before {
        bail!(
            "{} has {before} partitions; --to must be more (Kafka cannot remove partitions)",
            args.topic
        );
    }
    let results = kafka
        .admin()?
        .create_partitions(&[NewPartitions::new(&args.topic, args.to)], &options())
        .await
        .map_err(|e| admin_failed("adding partitions", "CreatePartitions", kafka, e))?;
    for result in results {
        if let Err((topic, code)) = result {
            return Err(refused(&format!("adding partitions to {topic}"), code));
        }
    }
    let to = args.to;
    let after = read_back(
        || partition_counts(kafka, std::slice::from_ref(&args.topic)),
        |counts| counts[0] == Some(to),
    )
    .await?[0]
        .unwrap_or(0);
    if after != args.to {
        bail!(
            "the broker accepted {} partitions for {}, but reports {after} {} s later",
            args.to,
            args.topic,
            READ_BACK.as_secs()
        );
    }
    output.emit(&Partitions {
        topic: args.topic,
        before,
        after,
    })
}

// ------------------------------------------------------------------ config

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Show a topic's settings (all, or the named ones).
    #[command(after_help = "Examples:
  payctl topics config get money_transfers
  payctl topics config get money_transfers retention.ms cleanup.policy --output json")]
    Get(ConfigGetArgs),
    /// Change the named settings of a topic; the others stay as they are.
    #[command(after_help = "Examples:
  payctl topics config set money_transfers retention.ms=604800000
  payctl topics config set audit cleanup.policy=compact min.insync.replicas=2

Uses the IncrementalAlterConfigs API (Apache Kafka 2.3 and later, Tansu), so
settings not named keep their values. Each one is read back afterwards.")]
    Set(ConfigSetArgs),
}

#[derive(Debug, clap::Args)]
pub struct ConfigGetArgs {
    pub topic: String,
    /// Only these settings.
    pub keys: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ConfigSetArgs {
    pub topic: String,
    /// KEY=VALUE pairs (split at the first '=').
    #[arg(required = true, value_parser = parse_setting)]
    pub settings: Vec<(String, String)>,
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("{text:?}: expected KEY=VALUE")),
    }
}

#[derive(Debug, Clone, Serialize)]
struct Setting {
    name: String,
    value: Option<String>,
    source: &'static str,
    read_only: bool,
}

#[derive(Serialize)]
struct Settings {
    topic: String,
    settings: Vec<Setting>,
}

impl Report for Settings {
    fn render(&self) -> Rendered {
        let mut table = output::table(["setting", "value", "source"]);
        for s in &self.settings {
            table.add_row(vec![
                s.name.clone(),
                s.value.clone().unwrap_or_else(|| "(hidden)".into()),
                s.source.to_string(),
            ]);
        }
        Rendered::Table(table)
    }
}

fn source_text(source: &ConfigSource) -> &'static str {
    match source {
        ConfigSource::Unknown => "unknown",
        ConfigSource::DynamicTopic => "topic",
        ConfigSource::DynamicBroker => "broker (dynamic)",
        ConfigSource::DynamicDefaultBroker => "broker default (dynamic)",
        ConfigSource::StaticBroker => "broker",
        ConfigSource::Default => "default",
    }
}

async fn settings(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<Vec<Setting>> {
    let results = kafka
        .admin()?
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &options())
        .await
        .map_err(|e| {
            admin_failed(
                &format!("reading the settings of {topic}"),
                "DescribeConfigs",
                kafka,
                e,
            )
        })?;
    let resource = results
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("the broker sent no settings for {topic}"))?
        .map_err(|code| refused(&format!("reading the settings of {topic}"), code))?;
    let mut settings: Vec<Setting> = resource
        .entries
        .iter()
        .map(|e| Setting {
            name: e.name.clone(),
            value: if e.is_sensitive {
                None
            } else {
                e.value.clone()
            },
            source: source_text(&e.source),
            read_only: e.is_read_only,
        })
        .collect();
    settings.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(settings)
}

async fn require_topic(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<()> {
    match partition_counts(kafka, &[topic.to_string()]).await?[0] {
        Some(_) => Ok(()),
        None => bail!("no topic {topic:?} on the broker"),
    }
}

pub async fn config_get(
    args: ConfigGetArgs,
    kafka: &KafkaConfig,
    output: Output,
) -> anyhow::Result<()> {
    require_topic(kafka, &args.topic).await?;
    let mut all = settings(kafka, &args.topic).await?;
    if all.is_empty() {
        tracing::warn!("the broker reported no settings for {}", args.topic);
    }
    if !args.keys.is_empty() {
        let unknown: Vec<&str> = args
            .keys
            .iter()
            .filter(|k| !all.iter().any(|s| &s.name == *k))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            bail!(
                "the broker reports no setting {} for {}",
                unknown.join(", "),
                args.topic
            );
        }
        all.retain(|s| args.keys.contains(&s.name));
    }
    output.emit(&Settings {
        topic: args.topic,
        settings: all,
    })
}

#[derive(Serialize)]
struct Changed {
    topic: String,
    changes: Vec<Change>,
}

#[derive(Serialize)]
struct Change {
    name: String,
    before: Option<String>,
    after: Option<String>,
}

impl Report for Changed {
    fn render(&self) -> Rendered {
        let mut table = output::table(["setting", "before", "after"]);
        for c in &self.changes {
            table.add_row(vec![
                c.name.clone(),
                c.before.clone().unwrap_or_else(|| "-".into()),
                c.after.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        Rendered::Table(table)
    }
}

pub async fn config_set(
    args: ConfigSetArgs,
    kafka: &KafkaConfig,
    output: Output,
) -> anyhow::Result<()> {
    require_topic(kafka, &args.topic).await?;
    let before = settings(kafka, &args.topic).await?;
    let value_of = |all: &[Setting], name: &str| {
        all.iter()
            .find(|s| s.name == name)
            .and_then(|s| s.value.clone())
    };
    // IncrementalAlterConfigs changes the named settings only (the older
    // AlterConfigs replaces a topic's whole set of overrides).
    let admin = kafka.admin()?;
    let (topic, changes) = (args.topic.clone(), args.settings.clone());
    tokio::task::spawn_blocking(move || {
        crate::kafka::set_topic_settings(
            admin.inner().native_ptr(),
            &topic,
            &changes,
            Duration::from_secs(10),
        )
    })
    .await?
    .with_context(|| {
        format!(
            "changing the settings of {} on {}",
            args.topic, kafka.brokers
        )
    })?;
    let after = read_back(
        || settings(kafka, &args.topic),
        |now| {
            args.settings
                .iter()
                .all(|(key, value)| value_of(now, key).as_deref() == Some(value.as_str()))
        },
    )
    .await?;
    let mut changes = Vec::new();
    for (key, value) in &args.settings {
        let now = value_of(&after, key);
        if now.as_deref() != Some(value.as_str()) {
            bail!(
                "the broker accepted {key}={value} for {}, but reports {key}={} {} s later",
                args.topic,
                now.as_deref().unwrap_or("(nothing)"),
                READ_BACK.as_secs()
            );
        }
        changes.push(Change {
            name: key.clone(),
            before: value_of(&before, key),
            after: now,
        });
    }
    output.emit(&Changed {
        topic: args.topic,
        changes,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_setting;

    #[test]
    fn a_setting_splits_at_its_first_equals_sign() {
        let pair = |k: &str, v: &str| Ok((k.to_string(), v.to_string()));
        assert_eq!(
            parse_setting("retention.ms=3600000"),
            pair("retention.ms", "3600000")
        );
        assert_eq!(parse_setting("a.b=x=y"), pair("a.b", "x=y"));
        assert_eq!(parse_setting(" a.b =x"), pair("a.b", "x"));
        assert_eq!(parse_setting("a.b="), pair("a.b", ""));
        for malformed in ["retention.ms", "=3600000", " =x", ""] {
            let refused = parse_setting(malformed).unwrap_err();
            assert!(refused.contains("KEY=VALUE"), "{malformed:?}: {refused}");
        }
    }
}
