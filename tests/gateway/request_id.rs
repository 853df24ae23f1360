//! `X-Request-Id`: an incoming one is kept only when short and printable ASCII.

use reqwest::header::HeaderValue;

use lakegate_testkit::gateway::Harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_fit_request_ids_are_kept() {
    let mut gateway = Harness::start().await;
    let answered_id = |sent: HeaderValue| {
        let request = gateway
            .http
            .get(format!("{}/healthz", gateway.url))
            .header("x-request-id", sent);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            let ids: Vec<_> = response.headers().get_all("x-request-id").iter().collect();
            assert_eq!(ids.len(), 1, "{ids:?}");
            ids[0].to_str().unwrap().to_owned()
        }
    };
    let generated = |id: &str| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());

    let proxy_id = "0b5c3e9e-7f7a-4a51-9a43-2f3c5a1b6d20";
    assert_eq!(
        answered_id(HeaderValue::from_static(proxy_id)).await,
        proxy_id
    );
    let longest = "r".repeat(128);
    assert_eq!(
        answered_id(HeaderValue::from_str(&longest).unwrap()).await,
        longest
    );

    let too_long = "r".repeat(129);
    let unfit = [
        HeaderValue::from_str(&too_long).unwrap(),
        HeaderValue::from_bytes("caf\u{e9}".as_bytes()).unwrap(),
        HeaderValue::from_static("spaces and\ttabs"),
    ];
    for sent in unfit {
        let id = answered_id(sent.clone()).await;
        assert!(generated(&id), "{sent:?} answered with {id:?}");
    }
    gateway.stop().await;
}
