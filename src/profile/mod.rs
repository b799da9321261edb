//! Saved connection profiles, as rpk and kafkactl keep them: the brokers,
//! Redis URL and librdkafka options of each cluster an operator works with,
//! under a name, so that `payctl profile use prod` replaces retyping them.
//!
//! They live in one TOML file, `$XDG_CONFIG_HOME/payctl/profiles.toml`
//! (`~/.config/payctl/profiles.toml` when XDG_CONFIG_HOME is unset), written
//! with mode 0600 because it may hold a SASL password. A setting is taken
//! from, in order: its flag, its environment variable, the selected profile
//! (`--profile`, `PAYCTL_PROFILE`, or the file's current one), the built-in
//! default.

pub mod create;
pub mod delete;
pub mod list;
pub mod select;
pub mod show;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::config::masked_option;

/// One cluster's connection settings. Every one is optional: what a
/// profile leaves out comes from the built-in default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Kafka bootstrap servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brokers: Option<String>,
    /// Redis URL (may carry a password: printed masked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// librdkafka options as `KEY=VALUE`, applied before the environment's
    /// and the command line's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kafka_options: Vec<String>,
    /// The Redis ACL user, when the URL names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_username: Option<String>,
    /// A file holding the Redis password (the path is saved, not the password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_password_file: Option<PathBuf>,
    /// The CA that signed the Redis server's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_ca_file: Option<PathBuf>,
    /// A client certificate and its key, for Redis servers that ask for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_key_file: Option<PathBuf>,
}

impl Profile {
    /// The Redis settings other than the URL, as `(flag, value)` rows.
    pub fn redis_rows(&self) -> Vec<(&'static str, String)> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        [
            ("redis-username", self.redis_username.clone()),
            ("redis-password-file", path(&self.redis_password_file)),
            ("redis-ca-file", path(&self.redis_ca_file)),
            ("redis-cert-file", path(&self.redis_cert_file)),
            ("redis-key-file", path(&self.redis_key_file)),
        ]
        .into_iter()
        .filter_map(|(flag, value)| value.map(|v| (flag, v)))
        .collect()
    }

    /// The librdkafka options, secret values masked.
    pub fn masked_options(&self) -> Vec<String> {
        self.kafka_options
            .iter()
            .map(|option| match option.split_once('=') {
                Some((key, value)) => masked_option(key.trim(), value),
                None => option.clone(),
            })
            .collect()
    }
}

/// The profiles file: the profile in use and every saved one by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profiles {
    /// The profile used when neither `--profile` nor `PAYCTL_PROFILE` names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// Where a profile was picked from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// `--profile` or `PAYCTL_PROFILE`.
    Named,
    /// The file's `current`.
    Current,
}

impl Profiles {
    /// The profiles file: `$XDG_CONFIG_HOME/payctl/profiles.toml`, else
    /// `$HOME/.config/payctl/profiles.toml`.
    pub fn path() -> anyhow::Result<PathBuf> {
        let from = |var: &str| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let base = match (from("XDG_CONFIG_HOME"), from("HOME")) {
            (Some(xdg), _) if xdg.is_absolute() => xdg,
            (_, Some(home)) => home.join(".config"),
            _ => bail!("cannot find a config directory: set XDG_CONFIG_HOME or HOME"),
        };
        Ok(base.join("payctl").join("profiles.toml"))
    }

    /// Reads the file; a missing file is no profiles.
    pub fn load(path: &Path) -> anyhow::Result<Profiles> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Profiles::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        toml::from_str(&text).map_err(|e| {
            // toml's own text draws the line with a caret: one line here.
            let at = match e.span() {
                Some(span) => {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |n| n + 1) + 1;
                    format!(" at line {line}, column {column}")
                }
                None => String::new(),
            };
            anyhow::anyhow!(
                "reading profiles from {}{at}: {}",
                path.display(),
                e.message().trim()
            )
        })
    }

    /// Writes the file whole (a new file renamed over the old one, so a
    /// crash leaves one or the other), readable by its owner only.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
        let context = || format!("writing profiles to {}", path.display());
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(context)?;
        }
        let text = toml::to_string_pretty(self).with_context(context)?;
        let temporary = path.with_extension(format!("toml.{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .with_context(context)?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(context)?;
        std::fs::rename(&temporary, path).with_context(context)
    }

    /// The profile to use: `named` (from `--profile`/`PAYCTL_PROFILE`),
    /// else the current one, else none. A name that is not saved is an
    /// error, never a quiet fall back to the defaults (which would point a
    /// command meant for one cluster at another).
    pub fn selected(
        &self,
        named: Option<&str>,
        path: &Path,
    ) -> anyhow::Result<Option<(&str, &Profile, Selection)>> {
        let (name, selection) = match (named, &self.current) {
            (Some(name), _) => (name, Selection::Named),
            (None, Some(current)) => (current.as_str(), Selection::Current),
            (None, None) => return Ok(None),
        };
        match self.profiles.get_key_value(name) {
            Some((name, profile)) => Ok(Some((name.as_str(), profile, selection))),
            None if selection == Selection::Current => bail!(
                "profile {name:?}, the current one in {}, does not exist: \
                 pick another with `payctl profile use NAME`",
                path.display()
            ),
            None => bail!(
                "no profile named {name:?} in {} (see `payctl profile list`)",
                path.display()
            ),
        }
    }
}

/// Checks a profile name: 1 to 64 letters, digits, `.`, `_` or `-`.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        bail!("profile name {name:?} must be 1 to 64 letters, digits, '.', '_' or '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_round_trip_through_toml_and_mask_secrets() {
        let mut profiles = Profiles::default();
        profiles.profiles.insert(
            "prod".into(),
            Profile {
                brokers: Some("b1:9093,b2:9093".into()),
                redis_url: Some("rediss://payctl:hunter2@redis:6380/0".into()),
                kafka_options: vec![
                    "security.protocol=SASL_SSL".into(),
                    "sasl.password=hunter2".into(),
                ],
                redis_ca_file: Some("/etc/ssl/redis-ca.pem".into()),
                ..Profile::default()
            },
        );
        profiles.current = Some("prod".into());
        let text = toml::to_string_pretty(&profiles).unwrap();
        assert_eq!(toml::from_str::<Profiles>(&text).unwrap(), profiles);
        let shown = format!("{:?}", profiles.profiles["prod"].masked_options());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("security.protocol=SASL_SSL"), "{shown}");
        assert!(toml::from_str::<Profiles>("[profiles.x]\nbrokrs = \"typo\"").is_err());
    }

    #[test]
    fn a_missing_selected_profile_is_an_error() {
        let path = Path::new("/p.toml");
        let mut profiles = Profiles::default();
        assert!(profiles.selected(None, path).unwrap().is_none());
        assert!(profiles.selected(Some("prod"), path).is_err());
        profiles.current = Some("gone".into());
        let message = profiles.selected(None, path).unwrap_err().to_string();
        assert!(message.contains("profile use"), "{message}");
        profiles.profiles.insert("gone".into(), Profile::default());
        let (name, _, selection) = profiles.selected(None, path).unwrap().unwrap();
        assert_eq!((name, selection), ("gone", Selection::Current));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("prod-eu.1_a").is_ok());
        for bad in ["", "a b", "x/y", &"n".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
