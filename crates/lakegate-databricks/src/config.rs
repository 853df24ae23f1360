//! Unified configuration, resolved like the Databricks SDKs do: explicit
//! settings beat `DATABRICKS_*` environment variables, which beat a profile
//! of `~/.databrickscfg`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use reqwest::Url;
use secrecy::SecretString;

use super::auth::OAuthSettings;
use super::retry::RetryPolicy;

/// Everything the client needs, resolved and validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Normalized: `scheme://host[:port]`, no trailing slash.
    pub host: String,
    pub credentials: Credentials,
    pub warehouse_id: Option<String>,
    /// Limit for one HTTP call (a statement POST gets at least its wait_timeout plus a margin).
    pub http_timeout: Duration,
    pub retry: RetryPolicy,
    pub oauth: OAuthSettings,
}

/// How the client authenticates. `Debug` redacts the secrets.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Personal access token.
    Pat { token: SecretString },
    /// OAuth machine-to-machine: a service principal's client credentials.
    OAuthM2m {
        client_id: String,
        client_secret: SecretString,
    },
}

/// `DATABRICKS_AUTH_TYPE` / `auth_type`: picks a method when several are configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    Pat,
    OAuthM2m,
}

impl FromStr for AuthType {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "pat" => Ok(AuthType::Pat),
            "oauth-m2m" => Ok(AuthType::OAuthM2m),
            other => Err(ConfigError::UnknownAuthType(other.to_owned())),
        }
    }
}

impl fmt::Display for AuthType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthType::Pat => "pat",
            AuthType::OAuthM2m => "oauth-m2m",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("no Databricks host: set DATABRICKS_HOST or `host` in the profile")]
    MissingHost,
    #[error("invalid Databricks host {0:?}")]
    InvalidHost(String),
    #[error(
        "DATABRICKS_HOST {0:?} uses http://, which would send the credentials in cleartext: \
         use https:// (http:// is accepted only for 127.0.0.1, ::1 and localhost)"
    )]
    CleartextHost(String),
    #[error(
        "no Databricks credentials: set DATABRICKS_TOKEN, or DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET"
    )]
    NoCredentials,
    #[error(
        "several authentication methods configured (pat and oauth-m2m): set DATABRICKS_AUTH_TYPE to pick one"
    )]
    AmbiguousAuth,
    #[error("unknown auth type {0:?}: expected `pat` or `oauth-m2m`")]
    UnknownAuthType(String),
    #[error("auth type {auth_type} needs `{missing}`, which is not set")]
    IncompleteCredentials {
        auth_type: AuthType,
        missing: &'static str,
    },
    #[error("profile {profile:?} not found in {}", path.display())]
    UnknownProfile { profile: String, path: PathBuf },
    #[error("cannot read {}: {reason}", path.display())]
    ConfigFile { path: PathBuf, reason: String },
}

/// Raw settings from one source; `None` means "not set here".
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub host: Option<String>,
    pub token: Option<SecretString>,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
    pub warehouse_id: Option<String>,
    pub auth_type: Option<String>,
    /// Profile of the config file (`DATABRICKS_CONFIG_PROFILE`).
    pub profile: Option<String>,
    /// Config file path (`DATABRICKS_CONFIG_FILE`), default `~/.databrickscfg`.
    pub config_file: Option<PathBuf>,
}

impl Settings {
    /// Reads `DATABRICKS_*` variables from `env` (the process environment in
    /// production, a plain map in tests). Empty values count as unset.
    pub fn from_env(env: &HashMap<String, String>) -> Self {
        let var = |name: &str| env.get(name).filter(|v| !v.is_empty()).cloned();
        Settings {
            host: var("DATABRICKS_HOST"),
            token: var("DATABRICKS_TOKEN").map(SecretString::from),
            client_id: var("DATABRICKS_CLIENT_ID"),
            client_secret: var("DATABRICKS_CLIENT_SECRET").map(SecretString::from),
            warehouse_id: var("DATABRICKS_WAREHOUSE_ID"),
            auth_type: var("DATABRICKS_AUTH_TYPE"),
            profile: var("DATABRICKS_CONFIG_PROFILE"),
            config_file: var("DATABRICKS_CONFIG_FILE").map(|path| expand_home(&path, env)),
        }
    }

    fn from_profile(section: &ini::Properties) -> Self {
        let key = |name: &str| {
            section
                .get(name)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        Settings {
            host: key("host"),
            token: key("token").map(SecretString::from),
            client_id: key("client_id"),
            client_secret: key("client_secret").map(SecretString::from),
            warehouse_id: key("warehouse_id"),
            auth_type: key("auth_type"),
            profile: None,
            config_file: None,
        }
    }

    /// Keeps every field set here and fills the others from `lower`.
    fn or(self, lower: Settings) -> Settings {
        Settings {
            host: self.host.or(lower.host),
            token: self.token.or(lower.token),
            client_id: self.client_id.or(lower.client_id),
            client_secret: self.client_secret.or(lower.client_secret),
            warehouse_id: self.warehouse_id.or(lower.warehouse_id),
            auth_type: self.auth_type.or(lower.auth_type),
            profile: self.profile.or(lower.profile),
            config_file: self.config_file.or(lower.config_file),
        }
    }

    fn has_credentials(&self) -> bool {
        self.token.is_some() || self.client_id.is_some() || self.client_secret.is_some()
    }
}

impl Config {
    /// Resolves `explicit` over `env` over the config file.
    ///
    /// As in the SDKs, when no profile is named and explicit or environment
    /// settings already carry credentials, the file is not read at all: an app
    /// with injected service-principal variables ignores a developer's
    /// `[DEFAULT]` token instead of failing as ambiguous.
    pub fn resolve(
        explicit: Settings,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let mut settings = explicit.or(Settings::from_env(env));
        let reads_file = settings.profile.is_some() || !settings.has_credentials();
        if reads_file && let Some(file) = read_profile(&settings, env)? {
            settings = settings.or(file);
        }
        Self::from_settings(settings)
    }

    fn from_settings(settings: Settings) -> Result<Config, ConfigError> {
        let host = normalize_host(settings.host.as_deref().ok_or(ConfigError::MissingHost)?)?;
        let auth_type = settings.auth_type.as_deref().map(str::parse).transpose()?;
        let credentials = match auth_type {
            Some(auth_type) => credentials_for(auth_type, &settings)?,
            None => match (
                settings.token.is_some(),
                settings.client_id.is_some() || settings.client_secret.is_some(),
            ) {
                (true, true) => return Err(ConfigError::AmbiguousAuth),
                (true, false) => credentials_for(AuthType::Pat, &settings)?,
                (false, true) => credentials_for(AuthType::OAuthM2m, &settings)?,
                (false, false) => return Err(ConfigError::NoCredentials),
            },
        };
        Ok(Config {
            host,
            credentials,
            warehouse_id: settings.warehouse_id,
            http_timeout: Duration::from_secs(60),
            retry: RetryPolicy::api(),
            oauth: OAuthSettings::default(),
        })
    }
}

fn credentials_for(auth_type: AuthType, settings: &Settings) -> Result<Credentials, ConfigError> {
    let missing = |missing| ConfigError::IncompleteCredentials { auth_type, missing };
    Ok(match auth_type {
        AuthType::Pat => Credentials::Pat {
            token: settings.token.clone().ok_or_else(|| missing("token"))?,
        },
        AuthType::OAuthM2m => Credentials::OAuthM2m {
            client_id: settings
                .client_id
                .clone()
                .ok_or_else(|| missing("client_id"))?,
            client_secret: settings
                .client_secret
                .clone()
                .ok_or_else(|| missing("client_secret"))?,
        },
    })
}

/// The named profile, or `[DEFAULT]` when none is named. A named profile must
/// exist; a missing file or `[DEFAULT]` section just means "nothing here".
fn read_profile(
    settings: &Settings,
    env: &HashMap<String, String>,
) -> Result<Option<Settings>, ConfigError> {
    let named = settings.profile.as_deref();
    let path = settings
        .config_file
        .clone()
        .or_else(|| home(env).map(|home| home.join(".databrickscfg")));
    let unknown = |path: &Path, profile: &str| ConfigError::UnknownProfile {
        profile: profile.to_owned(),
        path: path.to_owned(),
    };
    let Some(path) = path.filter(|path| path.exists()) else {
        return match named {
            Some(profile) => Err(unknown(Path::new("~/.databrickscfg"), profile)),
            None => Ok(None),
        };
    };
    let file = ini::Ini::load_from_file_noescape(&path).map_err(|err| ConfigError::ConfigFile {
        path: path.clone(),
        reason: err.to_string(),
    })?;
    match file.section(Some(named.unwrap_or("DEFAULT"))) {
        Some(section) => Ok(Some(Settings::from_profile(section))),
        None => match named {
            Some(profile) => Err(unknown(&path, profile)),
            None => Ok(None),
        },
    }
}

fn home(env: &HashMap<String, String>) -> Option<PathBuf> {
    env.get("HOME")
        .or_else(|| env.get("USERPROFILE"))
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
}

fn expand_home(path: &str, env: &HashMap<String, String>) -> PathBuf {
    match (path.strip_prefix("~/"), home(env)) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(path),
    }
}

/// `https://` when no scheme is given (Apps inject a bare host name); no
/// trailing `/`, no default port, no path. `http://` is kept for local emulators, on a
/// loopback address only: anywhere else the client secret and tokens would travel in
/// cleartext.
pub fn normalize_host(raw: &str) -> Result<String, ConfigError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(ConfigError::MissingHost);
    }
    // Never echo credentials someone put in the URL.
    let shown = match raw.rsplit_once('@') {
        Some((_, host)) => format!("(credentials hidden)@{host}"),
        None => raw.to_owned(),
    };
    let invalid = || ConfigError::InvalidHost(shown.clone());
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("https://{raw}")
    };
    let url = Url::parse(&with_scheme).map_err(|_| invalid())?;
    // Credentials belong in a token or client secret, where they stay hidden.
    let has_credentials = !url.username().is_empty() || url.password().is_some();
    if !matches!(url.scheme(), "https" | "http") || has_credentials {
        return Err(invalid());
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(invalid)?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if url.scheme() == "http" && !loopback {
        return Err(ConfigError::CleartextHost(shown));
    }
    // `Url` already drops a port that is the scheme's default (443 for https).
    Ok(match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A temp directory with a `.databrickscfg`, removed on drop.
    struct CfgDir(PathBuf);

    impl CfgDir {
        fn new(contents: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "lakegate-cfg-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(".databrickscfg"), contents).unwrap();
            CfgDir(dir)
        }

        fn home(&self) -> String {
            self.0.display().to_string()
        }
    }

    impl Drop for CfgDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const FILE: &str = "\
[DEFAULT]
host = default.cloud.databricks.com
token = dapi-default

[dev]
host = https://dev.cloud.databricks.com/
client_id = dev-id
client_secret = dev-secret
warehouse_id = wh-dev

[both]
host = both.example.com
token = dapi-both
client_id = both-id
client_secret = both-secret
auth_type = oauth-m2m
";

    fn token_of(config: &Config) -> &str {
        match &config.credentials {
            Credentials::Pat { token } => token.expose_secret(),
            other => panic!("expected a PAT, got {other:?}"),
        }
    }

    #[test]
    fn normalizes_hosts() {
        let cases = [
            (
                "adb-1.azuredatabricks.net",
                "https://adb-1.azuredatabricks.net",
            ),
            (
                "https://x.cloud.databricks.com/",
                "https://x.cloud.databricks.com",
            ),
            (
                "https://x.cloud.databricks.com:443",
                "https://x.cloud.databricks.com",
            ),
            (
                "x.cloud.databricks.com:443/",
                "https://x.cloud.databricks.com",
            ),
            (
                "https://x.cloud.databricks.com/?o=123",
                "https://x.cloud.databricks.com",
            ),
            ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
            ("https://x.example.com:8443", "https://x.example.com:8443"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_host(raw).unwrap(), want, "{raw}");
        }
        assert_eq!(normalize_host("  "), Err(ConfigError::MissingHost));
        assert!(matches!(
            normalize_host("ftp://x"),
            Err(ConfigError::InvalidHost(_))
        ));
        for loopback in [
            "http://localhost:8787",
            "http://[::1]:8787",
            "http://127.0.0.1",
        ] {
            assert_eq!(normalize_host(loopback).unwrap(), loopback);
        }
        for remote in [
            "http://x.cloud.databricks.com",
            "http://10.0.0.5:8080",
            "http://localhost.example.com",
            "http://[::2]",
        ] {
            let err = normalize_host(remote).unwrap_err();
            assert_eq!(err, ConfigError::CleartextHost(remote.to_owned()));
            assert!(err.to_string().contains("DATABRICKS_HOST"), "{err}");
        }
        let err = normalize_host("https://me:s3cr3t@x.example.com").unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }

    #[test]
    fn reads_pat_from_env() {
        let config = Config::resolve(
            Settings::default(),
            &env(&[
                ("DATABRICKS_HOST", "ws.example.com"),
                ("DATABRICKS_TOKEN", "dapi1"),
                ("DATABRICKS_WAREHOUSE_ID", "wh"),
            ]),
        )
        .unwrap();
        assert_eq!(config.host, "https://ws.example.com");
        assert_eq!(token_of(&config), "dapi1");
        assert_eq!(config.warehouse_id.as_deref(), Some("wh"));
    }

    #[test]
    fn reads_service_principal_from_env() {
        let config = Config::resolve(
            Settings::default(),
            &env(&[
                ("DATABRICKS_HOST", "ws.example.com"),
                ("DATABRICKS_CLIENT_ID", "sp"),
                ("DATABRICKS_CLIENT_SECRET", "shh"),
            ]),
        )
        .unwrap();
        match config.credentials {
            Credentials::OAuthM2m {
                client_id,
                client_secret,
            } => {
                assert_eq!(client_id, "sp");
                assert_eq!(client_secret.expose_secret(), "shh");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn explicit_beats_env_beats_file() {
        let dir = CfgDir::new(FILE);
        let vars = env(&[
            ("HOME", &dir.home()),
            ("DATABRICKS_CONFIG_PROFILE", "DEFAULT"),
            ("DATABRICKS_TOKEN", "dapi-env"),
        ]);
        // Host from the file, token from the environment.
        let config = Config::resolve(Settings::default(), &vars).unwrap();
        assert_eq!(config.host, "https://default.cloud.databricks.com");
        assert_eq!(token_of(&config), "dapi-env");

        let explicit = Settings {
            host: Some("explicit.example.com".into()),
            token: Some("dapi-explicit".into()),
            ..Settings::default()
        };
        let config = Config::resolve(explicit, &vars).unwrap();
        assert_eq!(config.host, "https://explicit.example.com");
        assert_eq!(token_of(&config), "dapi-explicit");
    }

    #[test]
    fn uses_default_profile_when_nothing_else_is_set() {
        let dir = CfgDir::new(FILE);
        let config = Config::resolve(Settings::default(), &env(&[("HOME", &dir.home())])).unwrap();
        assert_eq!(config.host, "https://default.cloud.databricks.com");
        assert_eq!(token_of(&config), "dapi-default");
    }

    #[test]
    fn env_credentials_without_profile_skip_the_file() {
        let dir = CfgDir::new(FILE);
        let vars = env(&[
            ("HOME", &dir.home()),
            ("DATABRICKS_HOST", "app.example.com"),
            ("DATABRICKS_CLIENT_ID", "sp"),
            ("DATABRICKS_CLIENT_SECRET", "shh"),
        ]);
        let config = Config::resolve(Settings::default(), &vars).unwrap();
        assert!(matches!(config.credentials, Credentials::OAuthM2m { .. }));
    }

    #[test]
    fn selects_profile_and_file_from_env() {
        let dir = CfgDir::new(FILE);
        let file = dir.0.join(".databrickscfg").display().to_string();
        let vars = env(&[
            ("DATABRICKS_CONFIG_FILE", &file),
            ("DATABRICKS_CONFIG_PROFILE", "dev"),
        ]);
        let config = Config::resolve(Settings::default(), &vars).unwrap();
        assert_eq!(config.host, "https://dev.cloud.databricks.com");
        assert_eq!(config.warehouse_id.as_deref(), Some("wh-dev"));
        assert!(
            matches!(config.credentials, Credentials::OAuthM2m { ref client_id, .. } if client_id == "dev-id")
        );
    }

    #[test]
    fn auth_type_picks_among_several_methods() {
        let dir = CfgDir::new(FILE);
        let vars = env(&[("HOME", &dir.home()), ("DATABRICKS_CONFIG_PROFILE", "both")]);
        let config = Config::resolve(Settings::default(), &vars).unwrap();
        assert!(matches!(config.credentials, Credentials::OAuthM2m { .. }));

        let explicit = Settings {
            auth_type: Some("pat".into()),
            ..Settings::default()
        };
        let config = Config::resolve(explicit, &vars).unwrap();
        assert_eq!(token_of(&config), "dapi-both");
    }

    #[test]
    fn reports_configuration_errors() {
        let err =
            |pairs: &[(&str, &str)]| Config::resolve(Settings::default(), &env(pairs)).unwrap_err();
        assert_eq!(err(&[("DATABRICKS_TOKEN", "t")]), ConfigError::MissingHost);
        assert_eq!(err(&[("DATABRICKS_HOST", "h")]), ConfigError::NoCredentials);
        assert_eq!(
            err(&[
                ("DATABRICKS_HOST", "h"),
                ("DATABRICKS_TOKEN", "t"),
                ("DATABRICKS_CLIENT_ID", "i"),
                ("DATABRICKS_CLIENT_SECRET", "s")
            ]),
            ConfigError::AmbiguousAuth
        );
        assert_eq!(
            err(&[("DATABRICKS_HOST", "h"), ("DATABRICKS_CLIENT_ID", "i")]),
            ConfigError::IncompleteCredentials {
                auth_type: AuthType::OAuthM2m,
                missing: "client_secret"
            }
        );
        assert_eq!(
            err(&[("DATABRICKS_HOST", "h"), ("DATABRICKS_CLIENT_SECRET", "s")]),
            ConfigError::IncompleteCredentials {
                auth_type: AuthType::OAuthM2m,
                missing: "client_id"
            }
        );
        assert_eq!(
            err(&[
                ("DATABRICKS_HOST", "h"),
                ("DATABRICKS_TOKEN", "t"),
                ("DATABRICKS_AUTH_TYPE", "basic")
            ]),
            ConfigError::UnknownAuthType("basic".into())
        );
        assert_eq!(
            err(&[
                ("DATABRICKS_HOST", "h"),
                ("DATABRICKS_CLIENT_ID", "i"),
                ("DATABRICKS_AUTH_TYPE", "pat")
            ]),
            ConfigError::IncompleteCredentials {
                auth_type: AuthType::Pat,
                missing: "token"
            }
        );
    }

    #[test]
    fn unknown_profile_is_an_error() {
        let dir = CfgDir::new(FILE);
        let vars = env(&[("HOME", &dir.home()), ("DATABRICKS_CONFIG_PROFILE", "prod")]);
        let err = Config::resolve(Settings::default(), &vars).unwrap_err();
        assert!(
            matches!(err, ConfigError::UnknownProfile { ref profile, .. } if profile == "prod"),
            "{err:?}"
        );
        // Also when there is no file at all.
        let vars = env(&[
            ("HOME", "/nonexistent"),
            ("DATABRICKS_CONFIG_PROFILE", "prod"),
        ]);
        assert!(matches!(
            Config::resolve(Settings::default(), &vars),
            Err(ConfigError::UnknownProfile { .. })
        ));
    }

    #[test]
    fn debug_redacts_secrets() {
        let vars = env(&[
            ("DATABRICKS_HOST", "h"),
            ("DATABRICKS_CLIENT_ID", "sp"),
            ("DATABRICKS_CLIENT_SECRET", "super-secret-value"),
        ]);
        let settings = Settings::from_env(&vars);
        let config = Config::resolve(Settings::default(), &vars).unwrap();
        for debug in [
            format!("{settings:?}"),
            format!("{config:?}"),
            format!("{:?}", config.credentials),
        ] {
            assert!(!debug.contains("super-secret-value"), "{debug}");
            assert!(debug.contains("REDACTED"), "{debug}");
        }
    }
}
