//! `payctl groups lag`: committed offset, end offset and lag per partition;
//! once, as a check for cron (`--max-lag`), or redrawn live (`--watch`).

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::exit::{refuse, ThresholdCrossed};
use crate::kafka::{Cluster, PartitionLag};
use crate::output::{self, Format, Output, Rendered, Report};

/// Show a group's committed offset, end offset and lag per partition.
///
/// End offsets are the partitions' true ends, also on brokers (the local
/// Tansu) whose high watermark counts a batch of records as one.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl groups lag payctl-transfer-process
  payctl groups lag payctl-notify --topic payment_transactions --output json
  payctl groups lag payctl-notify --watch                 # redraw every second until Ctrl-C
  payctl groups lag payctl-transfer-process --max-lag 10000 || page-oncall   # exit 3 when above")]
pub struct Args {
    pub group: String,
    /// Only these topics (default: every topic the group has committed on or
    /// has assigned to a member, with all their partitions).
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Exit 3 when any partition is further behind than this (after
    /// printing the lag), for cron jobs and CI checks.
    #[arg(long, value_name = "N", conflicts_with = "watch")]
    pub max_lag: Option<i64>,
    /// Redraw every --interval seconds with each partition's consumption
    /// rate and time to drain, until Ctrl-C. Off a terminal, or with
    /// --output json, prints one report per interval.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between two redraws of --watch.
    #[arg(long, default_value_t = 1.0, requires = "watch")]
    pub interval: f64,
    /// With --watch: stop after this many reports.
    #[arg(long, requires = "watch")]
    pub count: Option<u64>,
}

/// A group's lag, partition by partition.
#[derive(Debug, Serialize)]
pub struct GroupLag {
    pub group: String,
    pub total: i64,
    pub partitions: Vec<PartitionLag>,
}

impl Report for GroupLag {
    fn render(&self) -> Rendered {
        let mut table = output::table(["topic", "partition", "committed", "end", "lag"]);
        for p in &self.partitions {
            table.add_row(vec![
                p.topic.clone(),
                p.partition.to_string(),
                committed_text(p.committed),
                p.end.to_string(),
                p.lag.to_string(),
            ]);
        }
        table.add_row(total_row(self.total));
        Rendered::Table(table)
    }
}

/// The last row: the lag of all partitions, under the lag column.
fn total_row(total: i64) -> Vec<String> {
    vec![
        "total".into(),
        String::new(),
        String::new(),
        String::new(),
        total.to_string(),
    ]
}

fn committed_text(committed: Option<i64>) -> String {
    committed.map_or("-".to_string(), |c| c.to_string())
}

/// The lag of `group` on `topics`: per partition, the end offset less the
/// group's committed offset, or less the partition's oldest offset where
/// the group has committed nothing (every message waits). With `topics`
/// empty, the topics the group has committed on or is assigned: a group
/// that never committed and has no member then shows no partitions, so
/// name its topics to count them. Blocking calls run on tokio's blocking
/// pool.
pub async fn group_lag(
    kafka: &KafkaConfig,
    group: &str,
    topics: Vec<String>,
) -> anyhow::Result<GroupLag> {
    let (kafka, name) = (kafka.clone(), group.to_string());
    let partitions =
        tokio::task::spawn_blocking(move || Cluster::connect(&kafka, &name)?.lag(&topics))
            .await??;
    Ok(GroupLag {
        group: group.to_string(),
        total: partitions.iter().map(|p| p.lag).sum(),
        partitions,
    })
}

/// One partition in a `--watch` report: its lag, and how fast it moves
/// since the previous report.
#[derive(Debug, Serialize)]
struct WatchedPartition {
    #[serde(flatten)]
    lag: PartitionLag,
    /// Messages committed per second; `None` in the first report.
    consumed_per_s: Option<f64>,
    /// Messages written per second.
    produced_per_s: Option<f64>,
    /// Seconds until the lag is 0 at the current rates; `None` when it is
    /// not shrinking (or in the first report).
    drain_s: Option<f64>,
}

/// One `--watch` report.
#[derive(Debug, Serialize)]
struct Watch {
    group: String,
    /// Milliseconds since the Unix epoch.
    at_ms: u64,
    total: i64,
    partitions: Vec<WatchedPartition>,
}

impl Report for Watch {
    fn render(&self) -> Rendered {
        let mut table = output::table([
            "topic",
            "partition",
            "committed",
            "end",
            "lag",
            "consumed/s",
            "produced/s",
            "drains in",
        ]);
        let rate = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.0}"));
        for p in &self.partitions {
            let drain = match (p.lag.lag, p.drain_s) {
                (0, _) => "drained".to_string(),
                (_, Some(s)) => duration_text(s),
                (_, None) if p.consumed_per_s.is_some() => "not draining".to_string(),
                (_, None) => "-".to_string(),
            };
            table.add_row(vec![
                p.lag.topic.clone(),
                p.lag.partition.to_string(),
                committed_text(p.lag.committed),
                p.lag.end.to_string(),
                p.lag.lag.to_string(),
                rate(p.consumed_per_s),
                rate(p.produced_per_s),
                drain,
            ]);
        }
        table.add_row(total_row(self.total));
        Rendered::Table(table)
    }
}

/// `95` → "1m35s"; under a minute with a decimal.
fn duration_text(seconds: f64) -> String {
    let whole = seconds.round() as u64;
    match whole {
        0..60 => format!("{seconds:.1}s"),
        60..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        _ => format!("{}h{:02}m", whole / 3600, (whole % 3600) / 60),
    }
}

/// Rates between two reports of the same partition.
fn watched(
    lag: PartitionLag,
    before: Option<&(PartitionLag, Instant)>,
    now: Instant,
) -> WatchedPartition {
    let rates = before.and_then(|(old, at)| {
        let seconds = now.duration_since(*at).as_secs_f64();
        (seconds > 0.0).then(|| {
            let consumed = lag.committed.unwrap_or(0) - old.committed.unwrap_or(0);
            let produced = lag.end - old.end;
            (
                consumed.max(0) as f64 / seconds,
                produced.max(0) as f64 / seconds,
            )
        })
    });
    let drain_s = rates.and_then(|(consumed, produced)| {
        let net = consumed - produced;
        (lag.lag > 0 && net > 0.0).then(|| lag.lag as f64 / net)
    });
    WatchedPartition {
        consumed_per_s: rates.map(|r| r.0),
        produced_per_s: rates.map(|r| r.1),
        drain_s,
        lag,
    }
}

async fn watch(
    args: &Args,
    kafka: &KafkaConfig,
    output: Output,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.interval.is_finite() && args.interval >= 0.1,
        "--interval must be at least 0.1 seconds"
    );
    let redraw = output.format() == Format::Table && std::io::stdout().is_terminal();
    let mut previous: HashMap<(String, i32), (PartitionLag, Instant)> = HashMap::new();
    let mut reports = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(args.interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let lag = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            lag = group_lag(kafka, &args.group, args.topics.clone()) => lag?,
        };
        let now = Instant::now();
        let partitions = lag
            .partitions
            .into_iter()
            .map(|p| {
                let key = (p.topic.clone(), p.partition);
                let row = watched(p.clone(), previous.get(&key), now);
                previous.insert(key, (p, now));
                row
            })
            .collect();
        let report = Watch {
            group: lag.group,
            at_ms: crate::clock::now_millis(),
            total: lag.total,
            partitions,
        };
        if redraw {
            // Clear the screen and go home, then the table.
            print!("\x1b[2J\x1b[H");
            output::line(&format!(
                "{}  group {} (every {}s, Ctrl-C to stop)",
                crate::clock::now_rfc3339(),
                report.group,
                args.interval
            ))?;
        }
        output.emit(&report)?;
        reports += 1;
        if args.count.is_some_and(|n| reports >= n) {
            return Ok(());
        }
    }
}

pub async fn run(
    args: Args,
    kafka: &KafkaConfig,
    output: Output,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Without --topic there is nothing to show for a group the broker does
    // not know: say so (exit 1) rather than print an empty table. With
    // --topic, a group yet to commit is shown as everything waiting.
    let (config, name) = (kafka.clone(), args.group.clone());
    let exists = !args.topics.is_empty()
        || tokio::task::spawn_blocking(move || {
            Cluster::connect(&config, &name)?.group_exists(&name)
        })
        .await??;
    if !exists {
        return Err(refuse(format!(
            "no consumer group {:?} on the broker: it has no members and has committed no offsets",
            args.group
        )));
    }
    if args.watch {
        return watch(&args, kafka, output, shutdown).await;
    }
    let lag = group_lag(kafka, &args.group, args.topics.clone()).await?;
    output.emit(&lag)?;
    if let Some(max) = args.max_lag {
        let over: Vec<String> = lag
            .partitions
            .iter()
            .filter(|p| p.lag > max)
            .map(|p| format!("{}/{} ({})", p.topic, p.partition, p.lag))
            .collect();
        if !over.is_empty() {
            return Err(anyhow::Error::new(ThresholdCrossed(format!(
                "group {} is more than {max} behind on {}",
                args.group,
                over.join(", ")
            ))));
        }
    }
    Ok(())
}
