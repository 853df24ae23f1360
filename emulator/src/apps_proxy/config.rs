//! How an Apps proxy is set up.

use std::net::SocketAddr;
use std::time::Duration;

/// How an [`AppsProxy`](super::AppsProxy) is set up.
#[derive(Clone, Debug)]
pub struct AppsProxyConfig {
    /// Where the proxy listens; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The app behind the proxy: `http://HOST:PORT`, without a path.
    pub app_url: String,
    /// On-behalf-of-user authorization: send the app `X-Forwarded-Access-Token`.
    pub user_authorization: bool,
    /// The principals with CAN USE on the app (service principals' application ids,
    /// users' emails in any case); `None` admits every principal of the workspace.
    pub can_use: Option<Vec<String>>,
    /// Pass custom `X-` headers (`X-API-Key`, ...) on to the app; off strips them.
    pub forward_custom_headers: bool,
    /// How long the app has to answer a request, and its response body to end.
    pub request_timeout: Duration,
    /// The largest request body the proxy forwards.
    pub max_body_bytes: u64,
}

impl AppsProxyConfig {
    /// A proxy on a free loopback port in front of `app_url`: every principal may use
    /// the app, no user authorization, custom headers forwarded, a 120 s request
    /// timeout and a 32 MiB body cap (Databricks documents none; this is the emulator's).
    pub fn new(app_url: impl Into<String>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            app_url: app_url.into(),
            user_authorization: false,
            can_use: None,
            forward_custom_headers: true,
            request_timeout: Duration::from_secs(120),
            max_body_bytes: 32 * 1024 * 1024,
        }
    }
}
