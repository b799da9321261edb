//! `payctl profile list`: the saved profiles, secrets masked.

use serde::Serialize;

use super::Profiles;
use crate::config::masked_url;
use crate::output::{table, Output, Rendered, Report};

/// List saved profiles; `*` marks the current one. Passwords are shown as ***.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl profile list
  payctl profile list --output json | jq -r '.profiles[] | select(.current) | .name'")]
pub struct Args {}

#[derive(Serialize)]
struct Listed {
    path: String,
    profiles: Vec<Entry>,
}

#[derive(Serialize)]
struct Entry {
    name: String,
    current: bool,
    brokers: Option<String>,
    redis_url: Option<String>,
    kafka_options: Vec<String>,
    redis: std::collections::BTreeMap<&'static str, String>,
}

impl Report for Listed {
    fn render(&self) -> Rendered {
        if self.profiles.is_empty() {
            return Rendered::Line(format!(
                "no profiles in {} (save one with `payctl profile create NAME --brokers …`)",
                self.path
            ));
        }
        let mut t = table(["", "name", "brokers", "redis url", "kafka options"]);
        for entry in &self.profiles {
            t.add_row(vec![
                if entry.current { "*" } else { "" }.to_string(),
                entry.name.clone(),
                entry.brokers.clone().unwrap_or_else(|| "-".into()),
                entry.redis_url.clone().unwrap_or_else(|| "-".into()),
                entry.kafka_options.join(" "),
            ]);
        }
        Rendered::Table(t)
    }
}

pub fn run(_args: Args, output: Output) -> anyhow::Result<()> {
    let path = Profiles::path()?;
    let profiles = Profiles::load(&path)?;
    let entries = profiles
        .profiles
        .iter()
        .map(|(name, profile)| Entry {
            name: name.clone(),
            current: profiles.current.as_ref() == Some(name),
            brokers: profile.brokers.clone(),
            redis_url: profile.redis_url.as_deref().map(masked_url),
            kafka_options: profile.masked_options(),
            redis: profile.redis_rows().into_iter().collect(),
        })
        .collect();
    output.emit(&Listed {
        path: path.display().to_string(),
        profiles: entries,
    })
}
