//! The binary's own view of its settings: `--help` lists each setting's variable and
//! default (and no secret's value), a bad variable is named, and a former name is warned
//! about once at start-up.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

const LAKEGATE: &str = env!("CARGO_BIN_EXE_lakegate");

/// `lakegate <args>` with only the given variables (no workspace of the machine's).
fn lakegate(args: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut command = Command::new(LAKEGATE);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars.iter().copied());
    command
}

fn output(args: &[&str], vars: &[(&str, &str)]) -> Output {
    lakegate(args, vars).output().expect("run lakegate")
}

#[test]
fn serve_help_lists_the_variables_and_defaults_and_hides_secrets() {
    let secrets = [
        ("DATABRICKS_CLIENT_SECRET", "s3cr3t-client"),
        (
            "LAKEGATE_DEVICE_KEYS",
            r#"{"devices":{"hidden-device":{}}}"#,
        ),
    ];
    let help = output(&["serve", "--help"], &secrets);
    assert!(help.status.success(), "{help:?}");
    let text = String::from_utf8(help.stdout).unwrap();
    for expected in [
        "--linger-ms <MS>",
        "[env: LAKEGATE_LINGER_MS=] [default: 20]",
        "[env: DATABRICKS_APP_PORT=] [default: 8000]",
        "[env: LAKEGATE_MAX_BODY_BYTES=] [default: 1048576]",
        "[env: LAKEGATE_SHUTDOWN_GRACE_SECS=] [default: 12]",
        "[env: LAKEGATE_TABLE=]",
        "[env: DATABRICKS_CLIENT_SECRET]",
        "[env: LAKEGATE_DEVICE_KEYS]",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    assert!(!text.contains("s3cr3t-client") && !text.contains("hidden-device"));
    // Former names are not advertised.
    assert!(!text.contains("LAKEGATE_FLUSH_MS="), "{text}");

    let relay = output(
        &["relay", "--help"],
        &[("LAKEGATE_RELAY_KEY", "lgr_s3cr3t")],
    );
    let text = String::from_utf8(relay.stdout).unwrap();
    for expected in [
        "[env: LAKEGATE_UPSTREAM=]",
        "[env: LAKEGATE_RELAY_KEY]",
        "[env: LAKEGATE_RELAY_BATCH=] [default: 500]",
        "[env: LAKEGATE_LINGER_MS=] [default: 20]",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    assert!(!text.contains("lgr_s3cr3t"), "{text}");
}

#[test]
fn a_bad_variable_stops_start_up_naming_it() {
    let run = output(&["serve"], &[("LAKEGATE_MAX_BODY_BYTES", "lots")]);
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    let stderr = String::from_utf8(run.stderr).unwrap();
    assert!(
        stderr.contains("error: configuration: LAKEGATE_MAX_BODY_BYTES: \"lots\" is not valid"),
        "{stderr}"
    );
}

#[test]
fn the_former_linger_name_is_warned_about_once_at_start_up() {
    let dir = lakegate_testkit::temp_dir();
    let registry = dir.path().join("devices.json");
    std::fs::write(&registry, r#"{"devices":{}}"#).unwrap();
    let spool = dir.path().join("spool");
    // A relay starts without a workspace; its upstream need not answer.
    let mut relay = lakegate(
        &["relay", "--listen", "127.0.0.1:0"],
        &[
            ("LAKEGATE_FLUSH_MS", "50"),
            ("LAKEGATE_UPSTREAM", "http://127.0.0.1:1"),
            ("LAKEGATE_SPOOL_DIR", spool.to_str().unwrap()),
            ("LAKEGATE_RELAY_KEY", "lgr_relay-key"),
            ("LAKEGATE_DEVICE_KEYS_FILE", registry.to_str().unwrap()),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("start the relay");
    // Its log until it listens: the warning comes before, once.
    let mut warnings = Vec::new();
    for line in BufReader::new(relay.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.contains("LAKEGATE_FLUSH_MS") {
            warnings.push(line.clone());
        }
        if line.contains("lakegate listening") {
            break;
        }
    }
    relay.kill().unwrap();
    relay.wait().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("LAKEGATE_FLUSH_MS is deprecated: rename it LAKEGATE_LINGER_MS")
            && warnings[0].contains("\"WARN\""),
        "{warnings:?}"
    );
}

/// clap's own message for a bad flag value quotes the value: a key given as a flag where
/// it does not belong must be refused without it.
#[test]
fn a_secret_given_as_a_flag_is_refused_without_being_echoed() {
    let device_key = lakegate::devices::generate_key_of(lakegate::devices::KeyKind::Device);
    let device_key = secrecy::ExposeSecret::expose_secret(&device_key.key).to_owned();
    let flag = format!("--relay-key={device_key}");
    let refused = output(&["relay", &flag, "--upstream", "http://127.0.0.1:1"], &[]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(said.contains("--relay-key"), "{said}");
    assert!(said.contains("is a device key (lgd_...)"), "{said}");
    assert!(!said.contains(&device_key[4..]), "{said}");
}
