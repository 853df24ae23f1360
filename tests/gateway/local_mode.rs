//! `cargo run` as a newcomer meets it: local mode as a real process, its banner read
//! from stdout and every line it suggests tried.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// A `lakegate` in local mode with its data in `dir/local`, and the banner it printed.
pub(crate) struct LocalMode {
    child: Child,
    /// Every line of the banner, up to the blank line that ends it.
    pub(crate) banner: Vec<String>,
}

impl LocalMode {
    /// Starts local mode (with `args`) on `port` (0: any) and waits for its banner.
    pub(crate) fn start(dir: &Path, port: u16, args: &[&str]) -> LocalMode {
        let mut child = local_command(dir, port)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("lakegate runs");
        let lines = read_lines(child.stdout.take().unwrap());
        let mut banner = Vec::new();
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(60))
                .expect("local mode prints its banner within 60 s");
            if line.is_empty() && !banner.is_empty() {
                break;
            }
            banner.push(line);
        }
        LocalMode { child, banner }
    }

    /// The first banner line containing `marker`.
    pub(crate) fn line(&self, marker: &str) -> &str {
        self.banner
            .iter()
            .find(|line| line.contains(marker))
            .unwrap_or_else(|| panic!("{marker:?} in the banner: {:#?}", self.banner))
    }

    /// The first word of the banner starting with `prefix`, without the prefix.
    pub(crate) fn value(&self, prefix: &str) -> String {
        self.banner
            .iter()
            .flat_map(|line| line.split_whitespace())
            .find_map(|word| word.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("{prefix:?} in the banner: {:#?}", self.banner))
            .trim_matches(|c| c == '\'' || c == '"')
            .to_owned()
    }

    /// The gateway's address, from the fleet page's link.
    pub(crate) fn url(&self) -> String {
        let link = self.value("http://");
        format!("http://{}", link.split('/').next().unwrap())
    }

    fn stop(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for LocalMode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `lakegate` as a newcomer's shell runs it: nothing configured but the local folder.
fn local_command(dir: &Path, port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lakegate"));
    command
        .env_clear()
        .env("HOME", dir)
        .env("LAKEGATE_LOCAL_DIR", dir.join("local"))
        .env("DATABRICKS_APP_PORT", port.to_string())
        .stdin(Stdio::null());
    command
}

fn read_lines(stream: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// `lakegate sql <statement>` with `env` besides the local folder.
pub(crate) fn sql(dir: &Path, statement: &str, env: &[(&str, String)]) -> Output {
    local_command(dir, 0)
        .args(["sql", statement])
        .envs(env.iter().map(|(name, value)| (name, value)))
        .output()
        .expect("lakegate sql runs")
}

/// Runs `command` to its end, which must come within 60 s (a local mode that started
/// instead of failing is killed, and the test fails).
fn fails_at_once(mut command: Command) -> Output {
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    match done_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg(id.to_string()).status();
            panic!("a second local mode ran instead of failing");
        }
    }
}

pub(crate) async fn ingest(url: &str, key: &str, id: &str) -> u16 {
    let now = chrono::Utc::now().to_rfc3339();
    lakegate_testkit::http_client()
        .post(format!("{url}/ingest"))
        .header("X-API-Key", key)
        .json(&serde_json::json!({"id": id, "ts": now, "metrics": {"temperature": 21.5}}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A second `cargo run` that cannot have the port changes nothing; a restart keeps the
/// demo key and the page's token; the banner is text alone, its workspace line and
/// `lakegate sql` reach the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_mode_keeps_its_keys_and_a_second_run_on_its_port_changes_nothing() {
    let dir = lakegate_testkit::temp_dir();
    let first = LocalMode::start(dir.path(), 0, &[]);
    for line in &first.banner {
        assert!(!line.starts_with('{'), "a log line in the banner: {line}");
    }
    let url = first.url();
    let key = first.value("LAKEGATE_DEVICE_KEY=");
    let token = first.value(&format!("{url}/#token="));
    assert_eq!(ingest(&url, &key, "before").await, 200);

    let files = ["devices.json", "local.json"].map(|name| dir.path().join("local").join(name));
    let before = files.clone().map(|path| std::fs::read(path).unwrap());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files[1]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "local.json holds secrets");
    }
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let second = fails_at_once(local_command(dir.path(), port));
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{said}");
    assert!(said.contains("Address already in use"), "{said}");
    let after = files.clone().map(|path| std::fs::read(path).unwrap());
    assert!(before == after, "the failed run rewrote the local folder");
    // On a port of its own, a second local mode finds the folder taken.
    let third = fails_at_once(local_command(dir.path(), 0));
    let said = String::from_utf8_lossy(&third.stderr);
    assert!(!third.status.success(), "{said}");
    assert!(said.contains("another lakegate in local mode"), "{said}");
    let after = files.clone().map(|path| std::fs::read(path).unwrap());
    assert!(
        before == after,
        "the second local mode rewrote the local folder"
    );
    // The running gateway's key still works, the registry's reloads notwithstanding.
    assert_eq!(ingest(&url, &key, "during").await, 200);

    first.stop();
    // Stopped, `lakegate sql` says so at once (not after a minute of retries).
    let out = sql(dir.path(), "SELECT 1", &[]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("start local mode"), "{said}");
    let again = LocalMode::start(dir.path(), 0, &[]);
    let url = again.url();
    assert_eq!(again.value("LAKEGATE_DEVICE_KEY="), key);
    assert_eq!(again.value(&format!("{url}/#token=")), token);
    assert_eq!(ingest(&url, &key, "after").await, 200);
    let devices = lakegate_testkit::http_client()
        .get(format!("{url}/api/devices"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(devices.status(), 200);

    // What the banner prints of the workspace works as written, as does the default.
    let printed: Vec<(&str, String)> = [
        "DATABRICKS_HOST",
        "DATABRICKS_CLIENT_ID",
        "DATABRICKS_CLIENT_SECRET",
        "DATABRICKS_WAREHOUSE_ID",
    ]
    .into_iter()
    .map(|name| (name, again.value(&format!("{name}="))))
    .collect();
    let statement =
        "SELECT reading_id, metric, value FROM main.lakegate.readings ORDER BY reading_id";
    for env in [printed, Vec::new()] {
        let out = sql(dir.path(), statement, &env);
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Vec<Vec<&str>> = table
            .lines()
            .map(|line| line.split('|').map(str::trim).collect())
            .collect();
        assert_eq!(rows[0], ["reading_id", "metric", "value"], "{table}");
        assert_eq!(rows[2], ["after", "temperature", "21.5"], "{table}");
        assert_eq!(rows[3][0], "before", "{table}");
        assert_eq!(rows[4][0], "during", "{table}");
        assert_eq!(rows[5], ["(3 rows)"], "{table}");
    }
    // The banner's `lakegate sql` line names this binary.
    let line = again.line(" sql \"SELECT");
    assert!(
        line.trim_start()
            .starts_with(env!("CARGO_BIN_EXE_lakegate")),
        "{line}"
    );
}

/// Every reading the shell examples of the README, `docs/` and the emulator's README
/// send is stamped now: a fixed date falls out of the page's window within a day and
/// the reader sees nothing.
#[test]
fn readme_examples_send_readings_stamped_now() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md"), root.join("emulator/README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "md") {
            pages.push(path);
        }
    }
    let text: String = pages
        .iter()
        .map(|page| std::fs::read_to_string(page).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let mut in_shell = false;
    let mut stamped = 0;
    for line in text.lines() {
        match line.trim_start() {
            "```sh" => in_shell = true,
            "```" => in_shell = false,
            _ if in_shell && line.contains("\"ts\":") => {
                assert!(line.contains("$(date "), "a fixed timestamp: {line}");
                stamped += 1;
            }
            _ => {}
        }
    }
    assert!(
        stamped >= 3,
        "the documentation's ingest examples were not found"
    );
}

/// `--behind-apps-proxy` is found where a newcomer looks first.
#[test]
fn top_level_help_names_behind_apps_proxy() {
    let help = Command::new(env!("CARGO_BIN_EXE_lakegate"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success(), "{text}");
    assert!(text.contains("--behind-apps-proxy"), "{text}");
    assert!(text.contains("sql"), "{text}");
}
