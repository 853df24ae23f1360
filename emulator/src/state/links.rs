//! External links issued for EXTERNAL_LINKS results: each names one chunk of a
//! result, requires its own key header and expires.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};

use crate::results::ResultSet;

pub(crate) struct LinkStore {
    lifetime: Duration,
    links: Mutex<HashMap<String, Link>>,
}

struct Link {
    result: Arc<ResultSet>,
    chunk: usize,
    key: String,
    expires: Instant,
}

/// A link as the response describes it.
pub(crate) struct Issued {
    pub path: String,
    pub key: String,
    pub expiration: DateTime<Utc>,
}

/// Why a link cannot be downloaded.
pub(crate) enum LinkRefusal {
    /// Unknown (never issued, or expired and forgotten).
    Unknown,
    Expired,
    /// The key header is missing or wrong.
    WrongKey,
}

impl LinkStore {
    pub(crate) fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            links: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh link to one chunk; every response hands out a new one, as Databricks does.
    pub(crate) fn issue(&self, result: Arc<ResultSet>, chunk: usize) -> Issued {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let key = uuid::Uuid::new_v4().simple().to_string();
        let now = Instant::now();
        let expires = now + self.lifetime;
        let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        // Expired links would only answer 403, which unknown ones do too.
        links.retain(|_, link| link.expires > now);
        links.insert(
            token.clone(),
            Link {
                result,
                chunk,
                key: key.clone(),
                expires,
            },
        );
        let expiration = Utc::now() + self.lifetime;
        Issued {
            path: format!("/external/{token}"),
            key,
            expiration,
        }
    }

    /// The result and chunk the link `token` names, when it is live and `key` is its key.
    pub(crate) fn resolve(
        &self,
        token: &str,
        key: Option<&str>,
    ) -> Result<(Arc<ResultSet>, usize), LinkRefusal> {
        let links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        let link = links.get(token).ok_or(LinkRefusal::Unknown)?;
        if Instant::now() >= link.expires {
            return Err(LinkRefusal::Expired);
        }
        if key != Some(link.key.as_str()) {
            return Err(LinkRefusal::WrongKey);
        }
        Ok((Arc::clone(&link.result), link.chunk))
    }
}

impl Issued {
    pub(crate) fn expiration_text(&self) -> String {
        self.expiration.to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}
