//! `payctl profile use`: pick the profile commands use by default.

use anyhow::bail;
use serde::Serialize;

use super::Profiles;
use crate::output::{Output, Rendered, Report};

/// Make a saved profile the current one: every later command takes its
/// settings (a flag or environment variable still wins).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl profile use prod
  payctl profile use local")]
pub struct Args {
    pub name: String,
}

#[derive(Serialize)]
struct Selected {
    current: String,
}

impl Report for Selected {
    fn render(&self) -> Rendered {
        Rendered::Line(format!("using profile {}", self.current))
    }
}

pub fn run(args: Args, output: Output) -> anyhow::Result<()> {
    let path = Profiles::path()?;
    let mut profiles = Profiles::load(&path)?;
    if !profiles.profiles.contains_key(&args.name) {
        bail!(
            "no profile named {:?} in {} (see `payctl profile list`)",
            args.name,
            path.display()
        );
    }
    profiles.current = Some(args.name.clone());
    profiles.save(&path)?;
    output.emit(&Selected { current: args.name })
}
