//! `payctl profile show`: one profile's settings, secrets masked.

use anyhow::bail;
use serde::Serialize;

use super::Profiles;
use crate::config::masked_url;
use crate::output::{record_table, Output, Rendered, Report};

/// Show a saved profile (the current one without a name). Passwords are
/// shown as ***.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl profile show
  payctl profile show prod --output json")]
pub struct Args {
    pub name: Option<String>,
}

#[derive(Serialize)]
struct Shown {
    name: String,
    current: bool,
    path: String,
    brokers: Option<String>,
    redis_url: Option<String>,
    kafka_options: Vec<String>,
    /// The other Redis settings by flag name (`redis-ca-file` …).
    redis: std::collections::BTreeMap<&'static str, String>,
}

impl Report for Shown {
    fn render(&self) -> Rendered {
        let mut rows = vec![
            ("name", self.name.clone()),
            ("current", self.current.to_string()),
            ("file", self.path.clone()),
        ];
        rows.extend(self.brokers.clone().map(|b| ("brokers", b)));
        rows.extend(self.redis_url.clone().map(|u| ("redis-url", u)));
        rows.extend(
            self.redis
                .iter()
                .map(|(flag, value)| (*flag, value.clone())),
        );
        rows.extend(self.kafka_options.iter().map(|o| ("-X", o.clone())));
        Rendered::Table(record_table(rows))
    }
}

pub fn run(args: Args, output: Output) -> anyhow::Result<()> {
    let path = Profiles::path()?;
    let profiles = Profiles::load(&path)?;
    let Some(name) = args.name.or_else(|| profiles.current.clone()) else {
        bail!("no profile is current: name one, or pick one with `payctl profile use NAME`");
    };
    let Some(profile) = profiles.profiles.get(&name) else {
        bail!("no profile named {name:?} in {}", path.display());
    };
    output.emit(&Shown {
        current: profiles.current.as_ref() == Some(&name),
        path: path.display().to_string(),
        brokers: profile.brokers.clone(),
        redis_url: profile.redis_url.as_deref().map(masked_url),
        kafka_options: profile.masked_options(),
        redis: profile.redis_rows().into_iter().collect(),
        name,
    })
}
