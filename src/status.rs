//! `payctl status`: is the pipeline healthy?
//!
//! Checks that the broker and Redis answer and that the pipeline's topics
//! and their dead-letter topics exist; reports each worker group's state
//! (failing on one stuck in a rebalance), its lag, and each DLQ's waiting
//! messages. Exits 1 when a check fails.

use std::time::Duration;

use serde::Serialize;

use crate::config::{KafkaConfig, RedisConfig, Topics};
use crate::exit::refuse;
use crate::output::{self, Output, Rendered, Report};

/// Check the broker, Redis, topics, worker lag and DLQs; exit 1 when unhealthy.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl status
  payctl status --output json | jq '.checks[] | select(.ok | not)'
  payctl status --max-lag 10000 --max-dead-letters 0   # also fail on lag or dead letters")]
pub struct Args {
    #[command(flatten)]
    pub workers: crate::groups::WorkerGroups,
    /// Fail when a worker group is further behind than this.
    #[arg(long)]
    pub max_lag: Option<i64>,
    /// Fail when a DLQ holds more messages than this.
    #[arg(long)]
    pub max_dead_letters: Option<i64>,
}

/// One line of the report.
#[derive(Debug, Serialize)]
pub struct Check {
    pub check: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
struct Status {
    healthy: bool,
    checks: Vec<Check>,
}

impl Report for Status {
    fn render(&self) -> Rendered {
        let mut table = output::table(["check", "ok", "detail"]);
        for c in &self.checks {
            table.add_row(vec![
                c.check.clone(),
                if c.ok { "ok" } else { "FAIL" }.into(),
                c.detail.clone(),
            ]);
        }
        Rendered::Table(table)
    }
}

fn check(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        check: name.into(),
        ok,
        detail: detail.into(),
    }
}

async fn redis_check(redis: &RedisConfig) -> Check {
    let ping = async {
        let mut con = redis.connect().await?;
        let _: String = redis::cmd("PING").query_async(&mut con).await?;
        anyhow::Ok(durability(&mut con).await)
    };
    match tokio::time::timeout(Duration::from_secs(6), ping).await {
        Ok(Ok(durability)) => check(
            "redis",
            true,
            format!("{} answers; {durability}", redis.display_url()),
        ),
        Ok(Err(e)) => check("redis", false, format!("{e:#}")),
        Err(_) => check(
            "redis",
            false,
            format!("{} did not answer within 6s", redis.display_url()),
        ),
    }
}

/// What a crash of Redis keeps, from its persistence settings: the workers
/// commit offsets once Redis answers, so only `appendfsync always` keeps
/// every effect they moved past. A Redis that hides CONFIG (a managed one,
/// say) is reported as unknown. On a cluster every master is asked: one
/// that keeps less than the others is named.
async fn durability(con: &mut crate::store::Redis) -> String {
    let setting = |name: &'static str| {
        let mut con = con.clone();
        async move {
            let answers: Vec<(String, Vec<String>)> = con
                .on_every_master(redis::cmd("CONFIG").arg("GET").arg(name))
                .await
                .ok()?;
            Some(
                answers
                    .into_iter()
                    .map(|(node, pair)| (node, pair.into_iter().nth(1)))
                    .collect::<Vec<_>>(),
            )
        }
    };
    let (Some(aof), Some(fsync)) = (setting("appendonly").await, setting("appendfsync").await)
    else {
        return describe(None, None);
    };
    let verdicts: Vec<(String, String)> = aof
        .into_iter()
        .zip(fsync)
        .map(|((node, aof), (_, fsync))| (node, describe(aof, fsync)))
        .collect();
    let Some((_, first)) = verdicts.first() else {
        return describe(None, None);
    };
    if !con.is_cluster() {
        first.clone()
    } else if verdicts.iter().all(|(_, v)| v == first) {
        format!("every master ({}): {first}", verdicts.len())
    } else {
        verdicts
            .iter()
            .map(|(node, verdict)| format!("{node}: {verdict}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn describe(aof: Option<String>, fsync: Option<String>) -> String {
    match (aof, fsync) {
        (Some(aof), _) if aof == "no" => {
            "no append-only file: a restart of Redis loses its data".into()
        }
        (Some(_), Some(fsync)) if fsync == "always" => "appendfsync always".into(),
        (Some(_), Some(fsync)) => format!(
            "appendfsync {fsync}: a crash of Redis can lose writes it acknowledged, which the workers will not apply again"
        ),
        _ => "persistence unknown (CONFIG GET refused)".into(),
    }
}

pub async fn run(
    args: Args,
    kafka: &KafkaConfig,
    redis: &RedisConfig,
    topics: &Topics,
    output: Output,
) -> anyhow::Result<()> {
    let mut checks = vec![redis_check(redis).await];
    let pipeline = [
        &topics.transfers,
        &topics.transactions,
        &topics.rate_changes,
        &topics.conversions,
        &topics.payments,
    ];
    let broker = crate::topics::ask(kafka, |cluster| cluster.topic_names()).await;
    match broker {
        Err(e) => checks.push(check("broker", false, format!("{e:#}"))),
        Ok(existing) => {
            checks.push(check(
                "broker",
                true,
                format!("{} answers, {} topics", kafka.brokers, existing.len()),
            ));
            let exists = |t: &str| existing.iter().any(|(name, _)| name == t);
            for topic in pipeline {
                for name in [topic.clone(), Topics::dlq(topic)] {
                    let ok = exists(&name);
                    let detail = if ok {
                        "exists".to_string()
                    } else {
                        format!("missing: payctl topics create {name}")
                    };
                    checks.push(check(format!("topic {name}"), ok, detail));
                }
            }
            let workers = &args.workers;
            let groups = [
                (&workers.transfer_group, vec![topics.transfers.clone()]),
                (
                    &workers.notify_group,
                    vec![topics.transactions.clone(), topics.rate_changes.clone()],
                ),
                (&workers.rates_group, vec![topics.conversions.clone()]),
                (&workers.payments_group, vec![topics.payments.clone()]),
            ];
            let names = workers.names();
            match crate::groups::list::describe_all(kafka, names.clone(), Vec::new()).await {
                Ok(described) => {
                    for (group, trouble) in described {
                        if !names.contains(&group.group) {
                            continue;
                        }
                        let detail = trouble.clone().unwrap_or_else(|| {
                            format!("{}, {} member(s)", group.state, group.members.len())
                        });
                        checks.push(check(
                            format!("group {}", group.group),
                            trouble.is_none(),
                            detail,
                        ));
                    }
                }
                Err(e) => checks.push(check("groups", false, format!("{e:#}"))),
            }
            for (group, inputs) in groups {
                let inputs: Vec<String> = inputs.into_iter().filter(|t| exists(t)).collect();
                if inputs.is_empty() {
                    continue;
                }
                let name = format!("lag {group}");
                match crate::groups::lag::group_lag(kafka, group, inputs).await {
                    Ok(lag) => {
                        let ok = args.max_lag.is_none_or(|max| lag.total <= max);
                        let never = lag.partitions.iter().all(|p| p.committed.is_none());
                        let note = if never { " (no commits yet)" } else { "" };
                        checks.push(check(name, ok, format!("{} behind{note}", lag.total)));
                    }
                    Err(e) => checks.push(check(name, false, format!("{e:#}"))),
                }
            }
            for topic in pipeline {
                let dlq = Topics::dlq(topic);
                if !exists(&dlq) {
                    continue;
                }
                let name = dlq.clone();
                match crate::topics::ask(kafka, move |cluster| cluster.describe(&name)).await {
                    Ok(offsets) => {
                        let waiting = offsets.messages();
                        let ok = args.max_dead_letters.is_none_or(|max| waiting <= max);
                        checks.push(check(
                            format!("dlq {dlq}"),
                            ok,
                            format!("{waiting} waiting"),
                        ));
                    }
                    Err(e) => checks.push(check(format!("dlq {dlq}"), false, format!("{e:#}"))),
                }
            }
        }
    }
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.check.as_str())
        .collect();
    let failed = failed.join(", ");
    let status = Status {
        healthy: failed.is_empty(),
        checks,
    };
    output.emit(&status)?;
    if status.healthy {
        Ok(())
    } else {
        Err(refuse(format!("unhealthy: {failed}")))
    }
}
