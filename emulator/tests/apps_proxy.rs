//! The emulated Databricks Apps proxy in front of a small echo app: who passes, what
//! the app hears, limits, streaming, protocols, and the binary form.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::routing::{any, get};
use futures_util::StreamExt;
use lakegate_emulator::{AppsProxy, AppsProxyConfig, Emulator, TokenOwner};
use lakegate_testkit::{
    PAT, SP_ID, SP_SECRET, emulator_config, fetch_token, http_client, http_client_builder,
    start_emulator,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// What the echo app saw, and hooks for the streaming tests.
#[derive(Default)]
struct Seen {
    hits: AtomicUsize,
    /// `/stream` sends its second chunk once this is notified.
    release: Notify,
    /// `/upload` notifies this when its first body chunk arrived.
    first_chunk: Notify,
}

/// An app that answers every request with what it received, plus `/slow`,
/// `/stream` and `/upload`.
async fn start_app() -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/slow", get(slow))
        .route("/stream", get(stream))
        .route("/upload", any(upload))
        .fallback(echo)
        .with_state(Arc::clone(&seen));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

async fn echo(State(seen): State<Arc<Seen>>, request: Request) -> axum::Json<Value> {
    seen.hits.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    axum::Json(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()),
        "version": format!("{:?}", parts.version),
        "headers": header_map(&parts.headers),
        "body_bytes": body.len(),
    }))
}

async fn slow(State(seen): State<Arc<Seen>>) -> &'static str {
    seen.hits.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    "late"
}

/// One chunk now, the second once the test releases it.
async fn stream(State(seen): State<Arc<Seen>>) -> Body {
    seen.hits.fetch_add(1, Ordering::SeqCst);
    let chunks = futures_util::stream::unfold(0, move |step| {
        let seen = Arc::clone(&seen);
        async move {
            match step {
                0 => Some((Ok::<_, std::io::Error>(Bytes::from("first\n")), 1)),
                1 => {
                    seen.release.notified().await;
                    Some((Ok(Bytes::from("second\n")), 2))
                }
                _ => None,
            }
        }
    });
    Body::from_stream(chunks)
}

/// Reads the body chunk by chunk, telling the test when the first arrived.
async fn upload(State(seen): State<Arc<Seen>>, request: Request) -> String {
    seen.hits.fetch_add(1, Ordering::SeqCst);
    let mut body = request.into_body().into_data_stream();
    let mut total = 0;
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return "broken".into();
        };
        if total == 0 {
            seen.first_chunk.notify_one();
        }
        total += chunk.len();
    }
    total.to_string()
}

fn header_map(headers: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        map.entry(name.as_str().to_owned()).or_default().push(value);
    }
    map
}

/// The one value of `name` the app received, or `None`.
fn one(echoed: &Value, name: &str) -> Option<String> {
    let values = echoed["headers"][name].as_array()?;
    assert_eq!(values.len(), 1, "{name}: {values:?}");
    values[0].as_str().map(str::to_owned)
}

struct Setup {
    emulator: Emulator,
    proxy: AppsProxy,
    seen: Arc<Seen>,
    http: reqwest::Client,
}

impl Setup {
    async fn start(configure: impl FnOnce(AppsProxyConfig) -> AppsProxyConfig) -> Setup {
        let emulator = start_emulator(emulator_config()).await;
        let (app_url, seen) = start_app().await;
        let proxy = AppsProxy::start(configure(AppsProxyConfig::new(app_url)), &emulator)
            .await
            .unwrap();
        Setup {
            emulator,
            proxy,
            seen,
            http: http_client(),
        }
    }

    async fn sp_token(&self) -> String {
        fetch_token(&self.http, &self.emulator.url()).await
    }

    fn get(&self, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let request = self.http.get(format!("{}{path}", self.proxy.url()));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    fn hits(&self) -> usize {
        self.seen.hits.load(Ordering::SeqCst)
    }
}

async fn status_and_json(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_app_hears_who_called_from_the_proxy_never_from_the_client() {
    let setup = Setup::start(|config| config).await;
    let token = setup.sp_token().await;
    let request_id = "3f0e4c1a-5b7d-4e2f-9a8b-0c1d2e3f4a5b";
    let (status, echoed) = status_and_json(
        setup
            .get("/api/echo?x=1", Some(&token))
            .header("X-API-Key", "device-key")
            .header("X-Site", "plant-4")
            .header("X-Request-Id", request_id)
            .header("X-Forwarded-Email", "admin@example.com")
            .header("X-Forwarded-User", "admin")
            .header("X-Forwarded-Preferred-Username", "admin")
            .header("X-Forwarded-Access-Token", "forged-token")
            .header("X-Forwarded-For", "203.0.113.9")
            .header("X-Forwarded-Host", "evil.example.com")
            .header("X-Real-Ip", "203.0.113.9"),
    )
    .await;
    assert_eq!(status, 200, "{echoed}");
    assert_eq!(echoed["path"], "/api/echo?x=1");
    assert_eq!(echoed["version"], "HTTP/1.1");
    // The credential stays at the proxy.
    assert_eq!(one(&echoed, "authorization"), None, "{echoed}");
    // Its own identity headers, never the client's: a service principal's application id.
    for name in [
        "x-forwarded-email",
        "x-forwarded-user",
        "x-forwarded-preferred-username",
    ] {
        assert_eq!(one(&echoed, name).as_deref(), Some(SP_ID), "{name}");
    }
    assert_eq!(one(&echoed, "x-real-ip").as_deref(), Some("127.0.0.1"));
    let proxy_host = setup.proxy.addr().to_string();
    assert_eq!(
        one(&echoed, "x-forwarded-host").as_deref(),
        Some(proxy_host.as_str())
    );
    assert_eq!(one(&echoed, "x-forwarded-for"), None, "{echoed}");
    // No user authorization: no access token, forged or not.
    assert_eq!(one(&echoed, "x-forwarded-access-token"), None, "{echoed}");
    // Custom headers pass, and the client's request id is kept.
    assert_eq!(one(&echoed, "x-api-key").as_deref(), Some("device-key"));
    assert_eq!(one(&echoed, "x-site").as_deref(), Some("plant-4"));
    assert_eq!(one(&echoed, "x-request-id").as_deref(), Some(request_id));

    // Without one, the proxy makes a request id: a fresh UUID each time.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (_, echoed) = status_and_json(setup.get("/", Some(&token))).await;
        let id = one(&echoed, "x-request-id").unwrap();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn with_user_authorization_the_app_gets_a_token_of_the_caller() {
    let setup = Setup::start(|config| AppsProxyConfig {
        user_authorization: true,
        ..config
    })
    .await;
    let ana = setup.emulator.user_token("ana@example.com");
    let boss = setup.emulator.user_token("boss@example.com");
    let forwarded_token = async |token: &str| {
        let request = setup
            .get("/", Some(token))
            .header("X-Forwarded-Access-Token", &boss)
            .header("X-Forwarded-Email", "boss@example.com");
        let (status, echoed) = status_and_json(request).await;
        assert_eq!(status, 200, "{echoed}");
        (
            one(&echoed, "x-forwarded-email").unwrap(),
            one(&echoed, "x-forwarded-access-token").unwrap(),
        )
    };

    let (email, token) = forwarded_token(&ana).await;
    assert_eq!(email, "ana@example.com");
    // Not the forged one, not the one ana presented, but one of ana's own.
    assert_ne!(token, boss);
    assert_ne!(token, ana);
    assert_eq!(
        setup.emulator.token_owner(&token),
        Some(TokenOwner::User("ana@example.com".into()))
    );
    // The same one for every request with ana's token.
    assert_eq!(forwarded_token(&ana).await.1, token);

    // A service principal's calls carry a token of the service principal.
    let sp = setup.sp_token().await;
    let (name, token) = forwarded_token(&sp).await;
    assert_eq!(name, SP_ID);
    assert_eq!(
        setup.emulator.token_owner(&token),
        Some(TokenOwner::ServicePrincipal(SP_ID.into()))
    );
}

#[tokio::test]
async fn custom_headers_can_be_stripped() {
    let setup = Setup::start(|config| AppsProxyConfig {
        forward_custom_headers: false,
        ..config
    })
    .await;
    let token = setup.sp_token().await;
    let (status, echoed) = status_and_json(
        setup
            .get("/", Some(&token))
            .header("X-API-Key", "device-key")
            .header("X-Request-Id", "kept-id")
            .header("Accept", "application/json"),
    )
    .await;
    assert_eq!(status, 200, "{echoed}");
    assert_eq!(one(&echoed, "x-api-key"), None, "{echoed}");
    assert_eq!(one(&echoed, "accept").as_deref(), Some("application/json"));
    assert_eq!(one(&echoed, "x-request-id").as_deref(), Some("kept-id"));
    assert_eq!(one(&echoed, "x-forwarded-email").as_deref(), Some(SP_ID));
}

#[tokio::test]
async fn only_live_oauth_tokens_of_principals_with_can_use_pass() {
    let setup = Setup::start(|config| AppsProxyConfig {
        can_use: Some(vec![SP_ID.into(), "Ana@Example.com".into()]),
        ..config
    })
    .await;
    let refused = async |request: reqwest::RequestBuilder, status: u16, code: &str| {
        let (answered, body) = status_and_json(request).await;
        assert_eq!(
            (answered, body["error_code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
        body["message"].as_str().unwrap().to_owned()
    };

    refused(setup.get("/", None), 401, "UNAUTHENTICATED").await;
    refused(
        setup.get("/", Some("emu-not-issued")),
        401,
        "UNAUTHENTICATED",
    )
    .await;
    let basic = setup.get("/", None).basic_auth(SP_ID, Some(SP_SECRET));
    refused(basic, 401, "UNAUTHENTICATED").await;
    // The workspace accepts the PAT; the Apps proxy does not.
    let message = refused(setup.get("/", Some(PAT)), 401, "UNAUTHENTICATED").await;
    assert!(message.contains("Personal access tokens"), "{message}");
    // An expired token.
    setup.emulator.set_token_lifetime(Duration::from_millis(50));
    let expired = setup.emulator.user_token("ana@example.com");
    setup.emulator.set_token_lifetime(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(100)).await;
    refused(setup.get("/", Some(&expired)), 401, "UNAUTHENTICATED").await;
    // A principal without CAN USE.
    let bob = setup.emulator.user_token("bob@example.com");
    let message = refused(setup.get("/", Some(&bob)), 403, "PERMISSION_DENIED").await;
    assert!(message.contains("bob@example.com"), "{message}");
    assert_eq!(setup.hits(), 0, "a refused request reached the app");

    // Listed principals pass: the service principal, and ana in any case.
    let sp = setup.sp_token().await;
    let ana = setup.emulator.user_token("ana@example.com");
    for token in [&sp, &ana] {
        assert_eq!(
            setup.get("/", Some(token)).send().await.unwrap().status(),
            200
        );
    }
    assert_eq!(setup.hits(), 2);
}

/// Sends `head` and then `chunks` (each as one HTTP/1.1 chunk, `pause` apart) over a
/// raw connection to `addr`; returns the response's status and body text.
async fn chunked_request(
    addr: SocketAddr,
    head: &str,
    chunks: &[&[u8]],
    between: impl AsyncFn(usize),
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    for (index, chunk) in chunks.iter().enumerate() {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(chunk);
        framed.extend_from_slice(b"\r\n");
        // The proxy may answer and close before the whole body is sent.
        if stream.write_all(&framed).await.is_err() {
            break;
        }
        between(index).await;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    (status, answer)
}

fn chunked_head(path: &str, token: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer {token}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
}

#[tokio::test]
async fn bodies_over_the_cap_are_413_and_never_reach_the_app() {
    let setup = Setup::start(|config| AppsProxyConfig {
        max_body_bytes: 1024,
        ..config
    })
    .await;
    let token = setup.sp_token().await;
    let post = |body: Vec<u8>| {
        setup
            .http
            .post(format!("{}/", setup.proxy.url()))
            .bearer_auth(&token)
            .body(body)
    };
    // Up to the cap passes whole.
    let (status, echoed) = status_and_json(post(vec![b'a'; 1024])).await;
    assert_eq!((status, &echoed["body_bytes"]), (200, &json!(1024)));
    // Over it, by Content-Length: refused before the app is asked.
    let (status, body) = status_and_json(post(vec![b'a'; 1025])).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (413, Some("REQUEST_ENTITY_TOO_LARGE")),
        "{body}"
    );
    assert_eq!(setup.hits(), 1);

    // Over it while streaming, without a Content-Length: the app's request is aborted.
    let head = chunked_head("/upload", &token);
    let chunk = [b'b'; 600];
    let (status, answer) =
        chunked_request(setup.proxy.addr(), &head, &[&chunk, &chunk], async |_| {}).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("REQUEST_ENTITY_TOO_LARGE"), "{answer}");
}

#[tokio::test]
async fn request_bodies_stream_to_the_app() {
    let setup = Setup::start(|config| config).await;
    let token = setup.sp_token().await;
    let head = chunked_head("/upload", &token);
    let seen = Arc::clone(&setup.seen);
    // The second chunk is sent only once the app has the first: a proxy that
    // collected the body before forwarding would never get it.
    let first_arrived = async |index: usize| {
        if index == 0 {
            tokio::time::timeout(Duration::from_secs(5), seen.first_chunk.notified())
                .await
                .expect("the first chunk reached the app before the body ended");
        }
    };
    let (status, answer) = chunked_request(
        setup.proxy.addr(),
        &head,
        &[b"first chunk", b"and the rest"],
        first_arrived,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.ends_with("23"), "{answer}");
}

#[tokio::test]
async fn response_bodies_stream_to_the_client() {
    let setup = Setup::start(|config| config).await;
    let token = setup.sp_token().await;
    let mut response = setup.get("/stream", Some(&token)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    // The app holds its second chunk until the client has the first.
    let first = tokio::time::timeout(Duration::from_secs(5), response.chunk())
        .await
        .expect("the first chunk arrived while the app was still answering")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"first\n");
    setup.seen.release.notify_one();
    let rest = response.text().await.unwrap();
    assert_eq!(rest, "second\n");
}

#[tokio::test]
async fn the_proxy_gives_up_on_a_slow_app_with_504() {
    let setup = Setup::start(|config| AppsProxyConfig {
        request_timeout: Duration::from_millis(300),
        ..config
    })
    .await;
    let token = setup.sp_token().await;
    let started = Instant::now();
    let (status, body) = status_and_json(setup.get("/slow", Some(&token))).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (504, Some("DEADLINE_EXCEEDED")),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(setup.hits(), 1);

    // A response still streaming at the deadline is cut off.
    let mut response = setup.get("/stream", Some(&token)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(&response.chunk().await.unwrap().unwrap()[..], b"first\n");
    let rest = tokio::time::timeout(Duration::from_secs(3), response.chunk())
        .await
        .expect("the body ends at the deadline");
    assert!(rest.is_err(), "{rest:?}");
}

#[tokio::test]
async fn http2_clients_reach_the_app_over_h2c() {
    let setup = Setup::start(|config| config).await;
    let token = setup.sp_token().await;
    let h2 = http_client_builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2
        .post(format!("{}/h2", setup.proxy.url()))
        .bearer_auth(&token)
        .header("X-API-Key", "device-key")
        .body("{\"t\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["version"], "HTTP/2.0");
    assert_eq!(echoed["body_bytes"], 8);
    assert_eq!(one(&echoed, "x-forwarded-user").as_deref(), Some(SP_ID));
    assert_eq!(one(&echoed, "x-api-key").as_deref(), Some("device-key"));
    assert_eq!(one(&echoed, "authorization"), None);
    // Without it, no refusal over HTTP/2 either.
    let response = h2.get(setup.proxy.url()).send().await.unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn an_app_that_is_not_listening_is_502() {
    let emulator = start_emulator(emulator_config()).await;
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_url = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let proxy = AppsProxy::start(AppsProxyConfig::new(app_url), &emulator)
        .await
        .unwrap();
    let http = http_client();
    let token = fetch_token(&http, &emulator.url()).await;
    let request = http.get(proxy.url()).bearer_auth(&token);
    let (status, body) = status_and_json(request).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (502, Some("TEMPORARILY_UNAVAILABLE")),
        "{body}"
    );
    proxy.shutdown().await;

    for bad in [
        "https://127.0.0.1:1",
        "http://127.0.0.1:1/app",
        "127.0.0.1:1",
    ] {
        let refused = AppsProxy::start(AppsProxyConfig::new(bad), &emulator).await;
        assert!(refused.is_err(), "{bad} accepted");
    }
}

/// Kills the emulator process when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_binary_serves_the_proxy_next_to_the_workspace() {
    let (app_url, seen) = start_app().await;
    let child = Command::new(env!("CARGO_BIN_EXE_lakegate-emulator"))
        .args(["--listen", "127.0.0.1:0"])
        .args(["--service-principal", &format!("{SP_ID}:{SP_SECRET}")])
        .args(["--token", PAT])
        .args(["--apps-proxy-listen", "127.0.0.1:0"])
        .args(["--apps-proxy-app", &app_url])
        .args(["--apps-proxy-can-use", SP_ID])
        .args(["--apps-proxy-user-authorization"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let mut lines = BufReader::new(running.0.stdout.take().unwrap()).lines();
    let mut next_url = |prefix: &str| {
        let line = lines.next().unwrap().unwrap();
        let rest = line
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{line}"));
        rest.split(' ').next().unwrap().to_owned()
    };
    let workspace = next_url("lakegate-emulator listening on ");
    let proxy = next_url("lakegate-emulator apps proxy listening on ");

    let http = http_client();
    let token = fetch_token(&http, &workspace).await;
    let (status, echoed) = status_and_json(http.get(&proxy).bearer_auth(&token)).await;
    assert_eq!(status, 200, "{echoed}");
    assert_eq!(one(&echoed, "x-forwarded-email").as_deref(), Some(SP_ID));
    // The forwarded token works on the workspace: the same process issued it.
    let forwarded = one(&echoed, "x-forwarded-access-token").unwrap();
    let response = http
        .get(format!("{workspace}/api/2.0/secrets/scopes/list"))
        .bearer_auth(&forwarded)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, _) = status_and_json(http.get(&proxy).bearer_auth(PAT)).await;
    assert_eq!(status, 401);
    assert_eq!(seen.hits.load(Ordering::SeqCst), 1);
}
