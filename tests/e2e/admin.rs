//! The admin listener's purge API refuses what a web page could make a browser send: bodies
//! that are not JSON, and requests from another site.

use edgeward_testkit::{client, Origin, Proxy};

use crate::support::{config, start_proxy};

async fn caching_proxy(origin: &Origin) -> Proxy {
    start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
admin: {address: "{{admin}}"}
cache: {memory: 16MiB}
upstreams: {o: {endpoints: ["$origin"]}}
routes: [{upstream: o, cache: {enabled: true}}]
"#,
        &[("origin", origin.addr().to_string())],
    ))
    .await
}

/// Fetches `path` through the proxy; its `Cache-Status`.
async fn cache_status(proxy: &Proxy, path: &str) -> String {
    let response = client::http1().get(proxy.url(path)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let status = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_string();
    status
}

/// Posts `body` to the purge API with `headers`: the status and the JSON answer.
async fn purge(proxy: &Proxy, headers: &[(&str, &str)], body: &str) -> (u16, serde_json::Value) {
    let mut request = client::http1()
        .post(format!(
            "http://{}/cache/purge",
            proxy.placeholder_addr("admin")
        ))
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn purges_from_a_browser_on_another_site_are_refused() {
    let origin = Origin::start("origin").await;
    let proxy = caching_proxy(&origin).await;
    let path = "/cache/page?h=cache-control:max-age=600";
    cache_status(&proxy, path).await;
    assert!(cache_status(&proxy, path).await.contains("hit"));
    let body = format!("{{\"url\": \"{path}\"}}");
    let admin = proxy.placeholder_addr("admin").to_string();
    let evil = [
        ("content-type", "application/json"),
        ("origin", "http://evil.example"),
    ];
    for (headers, status) in [
        // What a cross-site form or `fetch` in `no-cors` mode sends without a preflight.
        (&[("content-type", "text/plain")][..], 415),
        (
            &[("content-type", "application/x-www-form-urlencoded")][..],
            415,
        ),
        (&[][..], 415),
        (&evil[..], 403),
    ] {
        let (got, answer) = purge(&proxy, headers, &body).await;
        assert_eq!(got, status, "{headers:?}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
        assert!(
            cache_status(&proxy, path).await.contains("hit"),
            "{headers:?} purged"
        );
    }
    // The admin listener's own origin, or none (curl, scripts), may purge.
    let own = format!("http://{admin}");
    let same_site = [
        ("content-type", "application/json; charset=utf-8"),
        ("origin", own.as_str()),
    ];
    let (got, answer) = purge(&proxy, &same_site, &body).await;
    assert_eq!((got, answer["purged"].as_u64()), (200, Some(1)), "{answer}");
    cache_status(&proxy, path).await;
    let (got, answer) = purge(&proxy, &[("content-type", "application/json")], &body).await;
    assert_eq!((got, answer["purged"].as_u64()), (200, Some(1)), "{answer}");
}
