//! `payctl groups reset`: move a consumer group's committed offsets, with a
//! plan shown first and applied only with `--execute`.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::config::KafkaConfig;
use crate::kafka::Cluster;
use crate::output::{self, Output, Rendered, Report};

/// Plan (and with --execute, apply) new committed offsets for a group.
///
/// Without --execute nothing changes: the plan shows each partition's
/// current and new offset and how many messages the group would read
/// again or skip. Refused while the group has members (their next commit
/// would undo it). New offsets outside a partition's [low, end] are
/// clamped, and the row says so.
#[derive(Debug, clap::Args)]
#[command(
    group(clap::ArgGroup::new("to").required(true).args([
        "to_earliest", "to_latest", "to_offset", "to_time", "shift_by", "by_duration", "from_file",
    ])),
    after_help = "Examples:
  payctl groups reset payctl-notify --topic payment_transactions --to-time 2026-11-20T10:00:00Z
  payctl groups reset payctl-notify --topic payment_transactions --shift-by -1000 --execute
  payctl groups reset payctl-transfer-process --topic money_transfers --by-duration 1h
  payctl groups reset audit --topic payments --to-latest --output json > plan.json
  payctl groups reset audit --from-file plan.json --execute     # the plan as printed
  payctl groups reset audit --from-file plan.csv --execute      # topic,partition,offset")]
pub struct Args {
    pub group: String,
    /// The topics to reset (all their partitions); repeatable. Not with
    /// --from-file, whose rows name them.
    #[arg(
        long = "topic",
        required_unless_present = "from_file",
        conflicts_with = "from_file"
    )]
    pub topics: Vec<String>,
    /// To each partition's oldest message.
    #[arg(long)]
    pub to_earliest: bool,
    /// To each partition's end: everything waiting is skipped.
    #[arg(long)]
    pub to_latest: bool,
    /// To this offset in every partition.
    #[arg(long, value_name = "N")]
    pub to_offset: Option<i64>,
    /// To each partition's first message at or after this RFC 3339 time.
    #[arg(long, value_name = "TIME", value_parser = parse_rfc3339)]
    pub to_time: Option<i64>,
    /// Move each partition by N from its committed offset (-1000 reads the
    /// last 1,000 again).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub shift_by: Option<i64>,
    /// To each partition's first message of this recent past (90s, 15m, 1h, 7d).
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    pub by_duration: Option<i64>,
    /// A plan from a file: the JSON this command prints, or CSV with the
    /// header topic,partition,offset.
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,
    /// Apply the plan (default: only show it).
    #[arg(long)]
    pub execute: bool,
}

fn parse_rfc3339(text: &str) -> Result<i64, String> {
    crate::clock::parse_rfc3339(text)
        .map(|ms| ms as i64)
        .map_err(|e| e.to_string())
}

fn parse_age(text: &str) -> Result<i64, String> {
    crate::clock::parse_age(text)
        .map(|age| crate::clock::now_millis().saturating_sub(age) as i64)
        .map_err(|e| e.to_string())
}

/// One partition of the plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub topic: String,
    pub partition: i32,
    /// The committed offset now (`None`: the group never committed here).
    #[serde(default)]
    pub current: Option<i64>,
    /// The offset to commit.
    pub new: i64,
    #[serde(default)]
    pub low: i64,
    #[serde(default)]
    pub end: i64,
    /// Messages read again (> 0) or skipped (< 0) compared with now.
    #[serde(default)]
    pub reread: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The plan, as printed and as `--from-file` reads it back.
#[derive(Debug, Serialize, Deserialize)]
pub struct Plan {
    pub group: String,
    pub executed: bool,
    pub partitions: Vec<Row>,
}

impl Report for Plan {
    fn render(&self) -> Rendered {
        let mut table = output::table(["topic", "partition", "current", "new", "change", "note"]);
        for r in &self.partitions {
            let change = match r.reread {
                0 => "none".to_string(),
                n if n > 0 => format!("re-read {n}"),
                n => format!("skip {}", -n),
            };
            table.add_row(vec![
                r.topic.clone(),
                r.partition.to_string(),
                r.current.map_or("-".into(), |c| c.to_string()),
                r.new.to_string(),
                change,
                r.note.clone().unwrap_or_default(),
            ]);
        }
        Rendered::Table(table)
    }
}

/// A plan file's rows: (topic, partition, offset), with the line or item
/// each came from for error messages.
fn read_plan_file(path: &PathBuf) -> anyhow::Result<Vec<(String, i32, i64, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the plan {}", path.display()))?;
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum File {
            Plan(Plan),
            Rows(Vec<Row>),
        }
        let file: File = serde_json::from_str(trimmed).with_context(|| {
            format!(
                "{}: not a plan as `groups reset --output json` prints it",
                path.display()
            )
        })?;
        let rows = match file {
            File::Plan(plan) => plan.partitions,
            File::Rows(rows) => rows,
        };
        return Ok(rows
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    r.topic,
                    r.partition,
                    r.new,
                    format!("partition entry {}", i + 1),
                )
            })
            .collect());
    }
    #[derive(Deserialize)]
    struct CsvRow {
        topic: String,
        partition: i32,
        offset: i64,
    }
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(trimmed.as_bytes());
    let mut rows = Vec::new();
    for (i, row) in reader.deserialize::<CsvRow>().enumerate() {
        let line = i + 2;
        let row = row.with_context(|| {
            format!(
                "{} line {line}: expected topic,partition,offset",
                path.display()
            )
        })?;
        rows.push((row.topic, row.partition, row.offset, format!("line {line}")));
    }
    Ok(rows)
}

/// What the new offset of one partition is to be.
enum Target {
    Earliest,
    Latest,
    Offset(i64),
    Time(i64),
    Shift(i64),
}

fn plan(args: &Args, cluster: &Cluster) -> anyhow::Result<Vec<Row>> {
    let all = cluster.topic_names()?;
    let partitions_of = |topic: &str| {
        all.iter()
            .find(|(name, _)| name == topic)
            .map(|(_, partitions)| partitions.clone())
            .ok_or_else(|| anyhow::anyhow!("no topic {topic:?} on the broker"))
    };
    // (topic, partition, target, where it was asked for)
    let mut wanted: Vec<(String, i32, Target, Option<String>)> = Vec::new();
    if let Some(path) = &args.from_file {
        for (topic, partition, offset, at) in read_plan_file(path)? {
            let partitions =
                partitions_of(&topic).with_context(|| format!("{}, {at}", path.display()))?;
            if !partitions.contains(&partition) {
                bail!(
                    "{}, {at}: topic {topic} has no partition {partition} (it has {})",
                    path.display(),
                    partitions.len()
                );
            }
            wanted.push((topic, partition, Target::Offset(offset), Some(at)));
        }
    } else {
        let target = || {
            if args.to_earliest {
                Target::Earliest
            } else if args.to_latest {
                Target::Latest
            } else if let Some(n) = args.to_offset {
                Target::Offset(n)
            } else if let Some(ms) = args.to_time.or(args.by_duration) {
                Target::Time(ms)
            } else {
                Target::Shift(args.shift_by.unwrap_or(0))
            }
        };
        for topic in &args.topics {
            for partition in partitions_of(topic)? {
                wanted.push((topic.clone(), partition, target(), None));
            }
        }
    }
    let mut topics: Vec<&(String, Vec<i32>)> = Vec::new();
    for (topic, _, _, _) in &wanted {
        if let Some(entry) = all.iter().find(|(name, _)| name == topic) {
            if !topics.iter().any(|(name, _)| name == topic) {
                topics.push(entry);
            }
        }
    }
    let committed: HashMap<(String, i32), Option<i64>> = cluster
        .committed(&topics)?
        .into_iter()
        .map(|(t, p, c)| ((t, p), c))
        .collect();
    let mut rows = Vec::with_capacity(wanted.len());
    for (topic, partition, target, _) in wanted {
        let (low, end) = cluster.watermarks(&topic, partition)?;
        let current = committed
            .get(&(topic.clone(), partition))
            .copied()
            .flatten();
        let asked = match target {
            Target::Earliest => low,
            Target::Latest => end,
            Target::Offset(n) => n,
            Target::Time(ms) => cluster.offset_at_time(&topic, partition, ms, end)?,
            Target::Shift(n) => current.unwrap_or(low).saturating_add(n),
        };
        let new = asked.clamp(low, end);
        let mut notes = Vec::new();
        if new != asked {
            notes.push(format!(
                "{asked} is outside {low}..{end}: clamped to the {}",
                if asked < low { "oldest" } else { "end" }
            ));
        }
        if current.is_none() {
            notes.push("no commit yet: counted from the oldest".into());
        }
        rows.push(Row {
            reread: current.unwrap_or(low) - new,
            topic,
            partition,
            current,
            new,
            low,
            end,
            note: (!notes.is_empty()).then(|| notes.join("; ")),
        });
    }
    Ok(rows)
}

pub async fn run(args: Args, kafka: &KafkaConfig, output: Output) -> anyhow::Result<()> {
    super::refuse_if_active(kafka, &args.group).await?;
    let execute = args.execute;
    let group = args.group.clone();
    let config = kafka.clone();
    let partitions = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Row>> {
        let cluster = Cluster::connect(&config, &args.group)?;
        let rows = plan(&args, &cluster)?;
        if execute {
            let offsets: Vec<(String, i32, i64)> = rows
                .iter()
                .map(|r| (r.topic.clone(), r.partition, r.new))
                .collect();
            cluster.commit(&offsets)?;
            // Read back: what the broker holds now is the answer.
            let topics: Vec<(String, Vec<i32>)> = rows
                .iter()
                .map(|r| (r.topic.clone(), vec![r.partition]))
                .collect();
            let refs: Vec<&(String, Vec<i32>)> = topics.iter().collect();
            let now = cluster.committed(&refs)?;
            for (row, (_, _, committed)) in rows.iter().zip(now) {
                if committed != Some(row.new) {
                    bail!(
                        "the broker holds {committed:?} for {}/{} after committing {}",
                        row.topic,
                        row.partition,
                        row.new
                    );
                }
            }
        }
        Ok(rows)
    })
    .await??;
    output.emit(&Plan {
        group,
        executed: execute,
        partitions,
    })?;
    if !execute {
        tracing::warn!("dry run: nothing changed; add --execute to apply");
    }
    Ok(())
}
