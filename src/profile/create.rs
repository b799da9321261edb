//! `payctl profile create`: save the connection flags given on the command
//! line under a name.

use anyhow::bail;
use serde::Serialize;

use super::{check_name, Profile, Profiles};
use crate::output::{Output, Rendered, Report};

/// Save a connection profile from the connection flags given on this
/// command line (not from the environment): --brokers, -X, --redis-url and
/// the other --redis-* flags. Secrets in -X options or the Redis URL are
/// stored in the profiles file, which only its owner may read; they are
/// printed as ***. For the Redis password, prefer --redis-password-file:
/// the profile keeps the file's path, not the password.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl profile create prod --brokers b1.example.com:9093,b2.example.com:9093 \\
      -X security.protocol=SASL_SSL -X sasl.mechanism=SCRAM-SHA-512 \\
      -X sasl.username=payctl -X sasl.password=\"$KAFKA_PASSWORD\" \\
      --redis-url rediss://redis.example.com:6380/0 --redis-username payctl \\
      --redis-password-file /run/secrets/redis-password --redis-ca-file /etc/ssl/redis-ca.pem --use
  payctl profile create local --brokers 127.0.0.1:9092 --redis-url redis://127.0.0.1:6379/0 --if-missing")]
pub struct Args {
    /// The profile's name: letters, digits, '.', '_' or '-'.
    pub name: String,
    /// Make it the current profile (the first profile saved always is).
    #[arg(long = "use")]
    pub select: bool,
    /// Replace a saved profile of the same name.
    #[arg(long, conflicts_with = "if_missing")]
    pub force: bool,
    /// Leave a saved profile of the same name as it is, and succeed.
    #[arg(long)]
    pub if_missing: bool,
}

/// The connection settings given as flags on the command line: a
/// profile's settings, but for relative paths (made absolute when saved).
pub type GivenFlags = Profile;

#[derive(Serialize)]
struct Created {
    name: String,
    path: String,
    /// False when `--if-missing` found one already saved.
    created: bool,
    current: bool,
}

impl Report for Created {
    fn render(&self) -> Rendered {
        let what = if self.created {
            "saved in"
        } else {
            "already in"
        };
        let current = if self.current { " (current)" } else { "" };
        Rendered::Line(format!(
            "profile {} {what} {}{current}",
            self.name, self.path
        ))
    }
}

pub fn run(args: Args, given: &GivenFlags, output: Output) -> anyhow::Result<()> {
    check_name(&args.name)?;
    for option in &given.kafka_options {
        if !option.contains('=') {
            bail!("-X {option:?}: expected KEY=VALUE");
        }
    }
    let path = Profiles::path()?;
    let mut profiles = Profiles::load(&path)?;
    let exists = profiles.profiles.contains_key(&args.name);
    if exists && args.if_missing {
        return output.emit(&Created {
            current: profiles.current.as_deref() == Some(args.name.as_str()),
            name: args.name,
            path: path.display().to_string(),
            created: false,
        });
    }
    if exists && !args.force {
        bail!(
            "profile {:?} already exists in {}: use --force to replace it",
            args.name,
            path.display()
        );
    }
    if given == &Profile::default() {
        bail!("nothing to save: give --brokers, --redis-url, -X KEY=VALUE or a --redis-* flag on the command line");
    }
    // A profile is used from any directory: its files by absolute path.
    let absolute = |path: &Option<std::path::PathBuf>| -> anyhow::Result<_> {
        path.as_deref()
            .map(std::path::absolute)
            .transpose()
            .map_err(Into::into)
    };
    let profile = Profile {
        redis_password_file: absolute(&given.redis_password_file)?,
        redis_ca_file: absolute(&given.redis_ca_file)?,
        redis_cert_file: absolute(&given.redis_cert_file)?,
        redis_key_file: absolute(&given.redis_key_file)?,
        ..given.clone()
    };
    profiles.profiles.insert(args.name.clone(), profile);
    if args.select || profiles.current.is_none() {
        profiles.current = Some(args.name.clone());
    }
    profiles.save(&path)?;
    output.emit(&Created {
        current: profiles.current.as_deref() == Some(args.name.as_str()),
        name: args.name,
        path: path.display().to_string(),
        created: true,
    })
}
