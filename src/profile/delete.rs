//! `payctl profile delete`: forget a saved profile.

use anyhow::bail;
use serde::Serialize;

use super::Profiles;
use crate::output::{Output, Rendered, Report};

/// Delete a saved profile. Deleting the current one leaves no profile
/// current (commands fall back to flags, environment and defaults).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl profile delete staging")]
pub struct Args {
    pub name: String,
}

#[derive(Serialize)]
struct Deleted {
    name: String,
    was_current: bool,
}

impl Report for Deleted {
    fn render(&self) -> Rendered {
        let note = if self.was_current {
            "; no profile is current now"
        } else {
            ""
        };
        Rendered::Line(format!("profile {} deleted{note}", self.name))
    }
}

pub fn run(args: Args, output: Output) -> anyhow::Result<()> {
    let path = Profiles::path()?;
    let mut profiles = Profiles::load(&path)?;
    if profiles.profiles.remove(&args.name).is_none() {
        bail!("no profile named {:?} in {}", args.name, path.display());
    }
    let was_current = profiles.current.as_deref() == Some(args.name.as_str());
    if was_current {
        profiles.current = None;
    }
    profiles.save(&path)?;
    output.emit(&Deleted {
        name: args.name,
        was_current,
    })
}
