//! Saved connection profiles against the real stack: what `profile create`
//! stores, and the precedence flag > environment > profile > default.

mod common;

use common::{unique, Pipeline, Run};

/// A fresh config directory for one test's profiles.
fn config_dir() -> String {
    let dir = std::env::temp_dir().join(unique("profiles"));
    std::fs::create_dir_all(&dir).unwrap();
    dir.display().to_string()
}

/// Runs payctl with `XDG_CONFIG_HOME=dir` and extra environment; the
/// pipeline's own KAFKA_BOOTSTRAP_SERVERS / REDIS_URL are removed unless
/// `env` sets them again, so the profile is what decides.
fn run(p: &Pipeline, dir: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut all: Vec<(&str, &str)> = vec![
        ("XDG_CONFIG_HOME", dir),
        ("KAFKA_BOOTSTRAP_SERVERS", ""),
        ("REDIS_URL", ""),
        ("PAYCTL_KAFKA_OPTIONS", ""),
    ];
    all.extend_from_slice(env);
    p.payctl_env(args, &all)
}

#[test]
fn a_profile_supplies_what_flags_and_environment_leave_out() {
    let p = Pipeline::new();
    let dir = config_dir();
    let brokers = common::brokers();
    // A profile on a Redis database of its own, so its effect is visible.
    let redis_db14 = common::redis_url().rsplit_once('/').unwrap().0.to_string() + "/14";
    run(
        &p,
        &dir,
        &[
            "profile",
            "create",
            "stack",
            "--brokers",
            &brokers,
            "--redis-url",
            &redis_db14,
        ],
        &[],
    )
    .expect(0);
    let file = std::fs::read_to_string(format!("{dir}/payctl/profiles.toml")).unwrap();
    assert!(file.contains("current = \"stack\""), "{file}");
    let mode = std::fs::metadata(format!("{dir}/payctl/profiles.toml"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o600);

    // The profile's Redis (database 14) and brokers are used...
    let account = unique("prof");
    // (empty env values are treated as unset by clap's env, so the
    // profile decides)
    run(
        &p,
        &dir,
        &["accounts", "open", &account, "--currency", "USD"],
        &[],
    )
    .expect(0);
    let mut db14 = redis::Client::open(redis_db14.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let exists: bool = redis::cmd("EXISTS")
        .arg(format!("account:{account}"))
        .query(&mut db14)
        .unwrap();
    assert!(exists, "the profile's Redis database holds the account");
    let listed = run(&p, &dir, &["topics", "list", "-o", "json"], &[]).expect(0);
    assert!(listed.stdout.contains(&p.transfers), "{}", listed.stdout);

    // ...the environment beats the profile...
    let unreachable = "127.0.0.1:9";
    let env_wins = run(
        &p,
        &dir,
        &["topics", "list"],
        &[("KAFKA_BOOTSTRAP_SERVERS", unreachable)],
    );
    let env_wins = env_wins.expect(2);
    assert!(
        env_wins.stderr.contains("127.0.0.1:9"),
        "{}",
        env_wins.stderr
    );
    // ...and a flag beats the environment.
    run(
        &p,
        &dir,
        &["topics", "list", "--brokers", &brokers],
        &[("KAFKA_BOOTSTRAP_SERVERS", unreachable)],
    )
    .expect(0);
    let mut db14 = db14;
    let _: () = redis::cmd("DEL")
        .arg(format!("account:{account}"))
        .query(&mut db14)
        .unwrap();
}

#[test]
fn kafka_options_layer_profile_then_environment_then_flags() {
    let p = Pipeline::new();
    let dir = config_dir();
    let brokers = common::brokers();
    run(
        &p,
        &dir,
        &[
            "profile",
            "create",
            "odd",
            "--brokers",
            &brokers,
            "-X",
            "security.protocol=from_profile",
        ],
        &[],
    )
    .expect(0);
    let profile = run(&p, &dir, &["topics", "list"], &[]).expect(2);
    assert!(
        profile.stderr.contains("from_profile"),
        "{}",
        profile.stderr
    );
    run(
        &p,
        &dir,
        &["topics", "list"],
        &[("PAYCTL_KAFKA_OPTIONS", "security.protocol=plaintext")],
    )
    .expect(0);
    let flag = run(
        &p,
        &dir,
        &["topics", "list", "-X", "security.protocol=from_flag"],
        &[("PAYCTL_KAFKA_OPTIONS", "security.protocol=plaintext")],
    )
    .expect(2);
    assert!(flag.stderr.contains("from_flag"), "{}", flag.stderr);
}

#[test]
fn profiles_are_listed_used_and_deleted_and_a_missing_one_is_an_error() {
    let p = Pipeline::new();
    let dir = config_dir();
    let brokers = common::brokers();
    let none = run(&p, &dir, &["profile", "list"], &[]).expect(0);
    assert!(none.stdout.starts_with("no profiles in"), "{}", none.stdout);
    for name in ["one", "two"] {
        run(
            &p,
            &dir,
            &["profile", "create", name, "--brokers", &brokers],
            &[],
        )
        .expect(0);
    }
    // The first profile saved is current; a second one is not until used.
    let list = run(&p, &dir, &["profile", "list", "-o", "json"], &[])
        .expect(0)
        .json();
    let current: Vec<&str> = list["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["current"] == true)
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(current, ["one"]);
    run(&p, &dir, &["profile", "use", "two"], &[]).expect(0);
    let shown = run(&p, &dir, &["profile", "show", "-o", "json"], &[])
        .expect(0)
        .json();
    assert_eq!(shown["name"], "two");
    // Saving over a profile needs --force; --if-missing leaves it alone.
    let again = run(
        &p,
        &dir,
        &["profile", "create", "two", "--brokers", "x:1"],
        &[],
    )
    .expect(2);
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    run(
        &p,
        &dir,
        &[
            "profile",
            "create",
            "two",
            "--brokers",
            "x:1",
            "--if-missing",
        ],
        &[],
    )
    .expect(0);
    let kept = run(&p, &dir, &["profile", "show", "two", "-o", "json"], &[])
        .expect(0)
        .json();
    assert_eq!(kept["brokers"], brokers.as_str());
    // A profile named on the command line or in the environment must exist.
    let named = run(&p, &dir, &["--profile", "nope", "topics", "list"], &[]).expect(2);
    assert!(
        named.stderr.contains("no profile named \"nope\""),
        "{}",
        named.stderr
    );
    let from_env = run(&p, &dir, &["topics", "list"], &[("PAYCTL_PROFILE", "nope")]).expect(2);
    assert!(from_env.stderr.contains("\"nope\""), "{}", from_env.stderr);
    // Deleting the current profile leaves none current: defaults apply again.
    run(&p, &dir, &["profile", "delete", "two"], &[]).expect(0);
    let after = run(&p, &dir, &["profile", "list", "-o", "json"], &[])
        .expect(0)
        .json();
    assert_eq!(after["profiles"].as_array().unwrap().len(), 1);
    assert!(after["profiles"][0]["current"] == false);
    // A broken file is one clear line naming it.
    std::fs::write(format!("{dir}/payctl/profiles.toml"), "current = [").unwrap();
    let broken = run(&p, &dir, &["accounts", "list"], &[]).expect(2);
    assert!(broken.stderr.contains("profiles.toml"), "{}", broken.stderr);
    assert_eq!(broken.stderr.trim().lines().count(), 1, "{}", broken.stderr);
}
