//! No password, SASL secret or token reaches `--help`, logs at any `-v`
//! level, error messages, `status` or `--output json`: every text payctl
//! prints is collected with secrets configured every way there is, and
//! grepped for them.

mod common;

use common::{unique, Pipeline, Run};

const KAFKA_SECRET: &str = "kafka-Secret-7f3a";
const REDIS_SECRET: &str = "redis-Secret-9c2e";
const KEY_SECRET: &str = "key-Secret-41d0";

/// Everything a run printed, labelled for the failure message (the label,
/// the command line, has its secrets replaced: it is not payctl's output).
fn printed(label: &str, run: &Run) -> String {
    let mut label = label.to_string();
    for secret in [KAFKA_SECRET, REDIS_SECRET, KEY_SECRET] {
        label = label.replace(secret, "<secret>");
    }
    format!(
        "--- {label} (exit {})\n{}{}",
        run.code, run.stdout, run.stderr
    )
}

/// The subcommands a `--help` text lists under "Commands:".
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        // Wrapped descriptions are indented deeper than names.
        .filter(|line| !line[2..].starts_with(' '))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(String::from)
        .collect()
}

#[test]
fn secrets_never_appear_in_help_logs_errors_status_or_json() {
    let p = Pipeline::new();
    let config = std::env::temp_dir().join(unique("secrets"));
    std::fs::create_dir_all(&config).unwrap();
    let config = config.display().to_string();
    let redis_with_password =
        common::redis_url().replacen("redis://", &format!("redis://payctl:{REDIS_SECRET}@"), 1);
    let sasl = format!(
        "security.protocol=SASL_PLAINTEXT sasl.mechanism=PLAIN sasl.username=payctl sasl.password={KAFKA_SECRET}"
    );
    let env = [
        ("XDG_CONFIG_HOME", config.as_str()),
        ("REDIS_URL", redis_with_password.as_str()),
        ("PAYCTL_KAFKA_OPTIONS", sasl.as_str()),
    ];
    let run = |args: &[&str]| p.payctl_env(args, &env);
    let mut seen = String::new();

    // Every --help page, with the secrets in the environment.
    let mut pending = vec![Vec::<String>::new()];
    let mut pages = 0;
    while let Some(path) = pending.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let help = run(&args).expect(0);
        pages += 1;
        for sub in subcommands(&help.stdout) {
            let mut deeper = path.clone();
            deeper.push(sub);
            pending.push(deeper);
        }
        seen.push_str(&printed(&args.join(" "), &help));
    }
    assert!(pages > 40, "only {pages} help pages found");

    // Commands that fail on the secured settings, at every verbosity.
    for verbosity in [None, Some("-v"), Some("-vv")] {
        let mut with = |args: &[&str]| {
            let mut args = args.to_vec();
            args.extend(verbosity);
            let out = run(&args);
            seen.push_str(&printed(&args.join(" "), &out));
            out
        };
        let redis = with(&["accounts", "list"]).expect(2);
        assert!(redis.stderr.contains("payctl:***@"), "{}", redis.stderr);
        with(&["topics", "list"]).expect(2);
        with(&[
            "transfer", "initiate", "--from", "a", "--to", "b", "--amount", "1",
        ]);
        with(&["notify", "consume", "--until-idle", "1"]);
        with(&["status"]);
        with(&["status", "--output", "json"]);
        // A librdkafka configuration error quotes the value it refused.
        with(&[
            "topics",
            "list",
            "-X",
            &format!("ssl.key.password={KEY_SECRET}"),
            "-X",
            "ssl.key.location=/nonexistent",
        ]);
    }

    // A Redis password from the environment or a file, at every verbosity.
    let file = std::path::Path::new(&config).join("redis-password");
    std::fs::write(&file, format!("{KEY_SECRET}\n")).unwrap();
    let plain_url = common::redis_url();
    for verbosity in ["-q", "-v", "-vv"] {
        for env in [
            [
                ("REDIS_PASSWORD", REDIS_SECRET),
                ("REDIS_USERNAME", "payctl"),
            ],
            [
                ("REDIS_PASSWORD_FILE", file.to_str().unwrap()),
                ("REDIS_USERNAME", "payctl"),
            ],
        ] {
            let mut env = env.to_vec();
            env.extend([
                ("XDG_CONFIG_HOME", config.as_str()),
                ("REDIS_URL", plain_url.as_str()),
            ]);
            for args in [&["accounts", "list"][..], &["status", "--output", "json"]] {
                let mut args = args.to_vec();
                args.push(verbosity);
                let out = p.payctl_env(&args, &env);
                assert_ne!(out.code, 0, "the stack's Redis has no user payctl");
                seen.push_str(&printed(&args.join(" "), &out));
            }
        }
    }

    // Profiles keep secrets, and never show them.
    let create = run(&[
        "profile",
        "create",
        "secured",
        "--brokers",
        "broker.example.com:9093",
        "--redis-url",
        &redis_with_password,
        "-X",
        &format!("sasl.password={KAFKA_SECRET}"),
        "-X",
        &format!("sasl.oauthbearer.client.secret={KEY_SECRET}"),
    ])
    .expect(0);
    seen.push_str(&printed("profile create", &create));
    let stored = std::fs::read_to_string(format!("{config}/payctl/profiles.toml")).unwrap();
    assert!(stored.contains(KAFKA_SECRET) && stored.contains(KEY_SECRET));
    for args in [
        &["profile", "list"][..],
        &["profile", "list", "-o", "json"],
        &["profile", "show", "-vv"],
        &["profile", "show", "secured", "-o", "json"],
        &["--profile", "secured", "status", "-o", "json", "-vv"],
    ] {
        let out = p.payctl_env(
            args,
            &[
                ("XDG_CONFIG_HOME", config.as_str()),
                ("REDIS_URL", ""),
                ("PAYCTL_KAFKA_OPTIONS", ""),
            ],
        );
        seen.push_str(&printed(&args.join(" "), &out));
    }
    assert!(
        seen.contains("sasl.password=***"),
        "profiles show masked options"
    );

    for secret in [KAFKA_SECRET, REDIS_SECRET, KEY_SECRET] {
        if let Some(at) = seen.find(secret) {
            let start = seen[..at].rfind("\n---").unwrap_or(0);
            panic!(
                "{secret} was printed:\n{}",
                &seen[start..(at + 200).min(seen.len())]
            );
        }
    }
}
