//! Shared helpers for the scenarios.

use edgeward_testkit::{client, set_default_binary, Proxy};

/// Starts the edgeward binary built for these tests with `yaml`; see [`Proxy::start`].
pub async fn start_proxy(yaml: &str) -> Proxy {
    use_built_binary();
    Proxy::start(yaml).await
}

/// Points the testkit at the `edgeward` binary Cargo built for this test run.
pub fn use_built_binary() {
    set_default_binary(env!("CARGO_BIN_EXE_edgeward"));
}

/// Fills `$name` placeholders in a config template, e.g. `$a` → the address of origin `a`.
/// (`{{listen}}`-style placeholders are left for the testkit, which picks free ports.)
pub fn config(template: &str, vars: &[(&str, String)]) -> String {
    let mut vars: Vec<&(&str, String)> = vars.iter().collect();
    // Longest names first, so `$ab` is not half-replaced by `$a`.
    vars.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    vars.iter()
        .fold(template.to_string(), |text, (name, value)| {
            text.replace(&format!("${name}"), value)
        })
}

/// GETs `path` and returns (status, parsed JSON body).
pub async fn get_json(
    proxy: &Proxy,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let mut request = edgeward_testkit::client::http1().get(proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request through the proxy");
    let status = response.status().as_u16();
    let body = response.text().await.expect("response body");
    let json =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {body}"));
    (status, json)
}

/// How long [`eventually`] waits: generous, since CI machines are slow and shared and the
/// conditions polled for are background work such as JWKS refreshes.
pub const EVENTUALLY: std::time::Duration = std::time::Duration::from_secs(40);

/// Polls `check` until it yields a value; fails the test after [`EVENTUALLY`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_explained(what, || {
        let answer = check();
        async move { answer.await.ok_or_else(String::new) }
    })
    .await
}

/// [`eventually`] for checks that can say what is still missing: the last explanation is
/// part of the failure message.
pub async fn eventually_explained<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    within(EVENTUALLY, what, check).await
}

/// Polls `check` until it yields a value, failing the test once `limit` has passed: for
/// scenarios where how soon is part of what is asserted. The check's last explanation is part
/// of the failure message.
pub async fn within<T, F, Fut>(limit: std::time::Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let missing = match check().await {
            Ok(value) => return value,
            Err(missing) => missing,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}{}",
            if missing.is_empty() {
                String::new()
            } else {
                format!(": {missing}")
            }
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits for a line of the proxy's log (stderr) containing `needle`, for up to
/// [`EVENTUALLY`]; returns the line.
pub async fn wait_for_log(proxy: &Proxy, needle: &str) -> String {
    proxy.wait_for_stderr(needle, EVENTUALLY).await
}

/// The value of a metric line (exact name with labels) on the admin listener.
pub async fn metric(proxy: &Proxy, series: &str) -> f64 {
    let text = client::http1()
        .get(format!(
            "http://{}/metrics",
            proxy.placeholder_addr("admin")
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}
