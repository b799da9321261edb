//! `payctl notify watch` / `unwatch`: who hears about a pair's rate changes.

use anyhow::Context as _;
use serde::Serialize;

use crate::notify::validate_user;
use crate::output::{Output, Rendered, Report};
use crate::rates::Pair;
use crate::store::{keys, Redis};

/// Notify a user when a pair's rate changes (or stop, with `unwatch`).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  payctl notify watch --user alice --pair USD/EUR\n  payctl notify unwatch --user alice --pair USD/EUR"
)]
pub struct Args {
    /// User id.
    #[arg(long)]
    pub user: String,
    /// Currency pair, BASE/QUOTE.
    #[arg(long)]
    pub pair: String,
}

#[derive(Serialize)]
struct Watching {
    user: String,
    pair: String,
    watching: bool,
}

impl Report for Watching {
    fn render(&self) -> Rendered {
        let verb = if self.watching {
            "watches"
        } else {
            "no longer watches"
        };
        Rendered::Line(format!("{} {verb} {}", self.user, self.pair))
    }
}

/// Adds (`watching`) or removes the user from the pair's watchers.
pub async fn run(
    args: Args,
    redis: &mut Redis,
    output: Output,
    watching: bool,
) -> anyhow::Result<()> {
    validate_user(&args.user)?;
    let pair: Pair = args.pair.parse()?;
    let pair = pair.to_string();
    let verb = if watching { "SADD" } else { "SREM" };
    let watchers = redis::cmd(verb)
        .arg(keys::watchers(&pair))
        .arg(&args.user)
        .to_owned();
    let watched = redis::cmd(verb)
        .arg(keys::watching(&args.user))
        .arg(&pair)
        .to_owned();
    if redis.is_cluster() {
        // The two sets live in different slots: each change on its own,
        // both idempotent, so running the command again finishes a half.
        for answer in crate::store::query_each::<i64>(redis, vec![watchers, watched])
            .await
            .context("updating watchers")?
        {
            answer.context("updating watchers")?;
        }
    } else {
        let mut pipe = redis::pipe();
        pipe.atomic().add_command(watchers).add_command(watched);
        let _: (i64, i64) = pipe.query_async(redis).await.context("updating watchers")?;
    }
    output.emit(&Watching {
        user: args.user,
        pair,
        watching,
    })
}
