//! `payctl notify list`: a user's notifications, newest first.

use anyhow::Context as _;
use redis::AsyncCommands;

use crate::notify::{validate_user, Notification, NotificationList};
use crate::output::Output;
use crate::store::{keys, Redis};

/// List a user's notifications, newest first.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  payctl notify list --user alice\n  payctl notify list --user 42 --limit 5 --output json"
)]
pub struct Args {
    /// User id.
    #[arg(long)]
    pub user: String,
    /// At most this many.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

pub async fn run(args: Args, redis: &mut Redis, output: Output) -> anyhow::Result<()> {
    validate_user(&args.user)?;
    if args.limit == 0 {
        return output.emit(&NotificationList(Vec::new()));
    }
    let items: Vec<String> = redis
        .lrange(keys::notifications(&args.user), -(args.limit as isize), -1)
        .await
        .context("reading notifications")?;
    let mut list = Vec::with_capacity(items.len());
    for item in items.iter().rev() {
        match serde_json::from_str::<Notification>(item) {
            Ok(n) => list.push(n),
            Err(e) => tracing::warn!("skipping an unreadable notification ({e}): {item}"),
        }
    }
    output.emit(&NotificationList(list))
}
