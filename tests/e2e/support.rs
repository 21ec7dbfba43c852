//! Shared helpers for the scenarios.

use std::time::{Duration, Instant};

use edgeward_testkit::{client, set_default_binary, Proxy};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Starts the edgeward binary built for these tests with `yaml`; see [`Proxy::start`].
pub async fn start_proxy(yaml: &str) -> Proxy {
    use_built_binary();
    Proxy::start(yaml).await
}

/// Points the testkit at the `edgeward` binary Cargo built for this test run.
pub fn use_built_binary() {
    set_default_binary(env!("CARGO_BIN_EXE_edgeward"));
}

/// Runs `edgeward validate` on `yaml`, which it must refuse (exit status 1): what it said on
/// stderr.
pub fn refused_by_validate(yaml: &str) -> String {
    use_built_binary();
    let output = edgeward_testkit::run_edgeward(
        &["validate", "--config", "{dir}/c.yaml"],
        &[("c.yaml", yaml)],
    );
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    stderr
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

/// The access log line (JSON on the proxy's stdout, the default `access_log`) of the request
/// with `request_id`, once it is written.
pub async fn access_log_entry(proxy: &Proxy, request_id: &str) -> serde_json::Value {
    let needle = format!("\"request_id\":\"{request_id}\"");
    let line = proxy.wait_for_stdout(&needle, EVENTUALLY).await;
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("access log line ({e}): {line}"))
}

/// GETs `path` on the admin listener: (status, JSON body).
pub async fn admin_json(proxy: &Proxy, path: &str) -> (u16, serde_json::Value) {
    let url = format!("http://{}{path}", proxy.placeholder_addr("admin"));
    let response = client::http1().get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    let json =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"));
    (status, json)
}

/// The admin listener's `/metrics` page, parsed.
pub async fn scrape(proxy: &Proxy) -> Metrics {
    let response = client::http1()
        .get(format!(
            "http://{}/metrics",
            proxy.placeholder_addr("admin")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "GET /metrics");
    Metrics::parse(&response.text().await.unwrap())
}

/// The value of one series on the admin listener, e.g.
/// `edgeward_filter_traps_total{filter="hostile"}`: the metric name and the whole label set
/// must match (labels in any order). Fails the test if the proxy does not expose the series,
/// so that a renamed metric or label cannot make an assertion pass vacuously.
pub async fn metric(proxy: &Proxy, series: &str) -> f64 {
    scrape(proxy).await.value(series)
}

/// [`metric`] for a series that may legitimately not be exposed yet: `None` until it is.
pub async fn metric_if_exposed(proxy: &Proxy, series: &str) -> Option<f64> {
    scrape(proxy).await.get(series)
}

/// Waits until `/metrics` shows every expected series with its value, and returns that page.
/// A request's counters (and its filters' `on_log`) are updated just after its response
/// reached the client, so a test must wait.
pub async fn metrics_showing(proxy: &Proxy, expected: &[(&str, f64)]) -> Metrics {
    eventually_explained("metrics", || async {
        let metrics = scrape(proxy).await;
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(series, value)| metrics.get(series) != Some(*value))
            .map(|(series, value)| format!("{series}: want {value}, got {:?}", metrics.get(series)))
            .collect();
        if wrong.is_empty() {
            Ok(metrics)
        } else {
            Err(format!("{wrong:#?} in:\n{}", metrics.text()))
        }
    })
    .await
}

/// A series: a metric name and its labels (sorted by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The samples of a Prometheus text exposition (version 0.0.4).
#[derive(Debug, Clone)]
pub struct Metrics {
    samples: Vec<(Series, f64)>,
    text: String,
}

impl Metrics {
    /// Parses every sample line; comments and blank lines are skipped. A line that is not a
    /// sample fails the test.
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
            .map(|line| {
                let (series, rest) = Series::parse_prefix(line)
                    .unwrap_or_else(|e| panic!("bad metric line {line:?}: {e}"));
                let mut fields = rest.split_whitespace();
                let value = fields
                    .next()
                    .and_then(parse_value)
                    .unwrap_or_else(|| panic!("bad metric value in {line:?}"));
                // An optional timestamp may follow; nothing else.
                assert!(
                    fields.nth(1).is_none(),
                    "unexpected text after the value in {line:?}"
                );
                (series, value)
            })
            .collect();
        Metrics {
            samples,
            text: text.to_owned(),
        }
    }

    /// The value of `series` (see [`metric`]), or `None` when it is not exposed.
    pub fn get(&self, series: &str) -> Option<f64> {
        let wanted = Series::parse(series);
        let mut found = self.samples.iter().filter(|(s, _)| *s == wanted);
        let value = found.next().map(|(_, value)| *value);
        assert!(found.next().is_none(), "{series} is exposed twice");
        value
    }

    /// The value of `series`; fails the test (showing the page) if it is not exposed.
    pub fn value(&self, series: &str) -> f64 {
        self.get(series)
            .unwrap_or_else(|| panic!("no series {series} on /metrics:\n{}", self.text))
    }

    /// The value of `series`, or 0 when it is not exposed: for counters that the proxy
    /// creates on their first increment, where "never happened" is what is asserted.
    pub fn value_or_zero(&self, series: &str) -> f64 {
        self.get(series).unwrap_or(0.0)
    }

    /// The sum of every sample of metric `name` whose labels include `labels` (and whichever
    /// others), e.g. a filter's callbacks over all phases; `None` when there is none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matching = self
            .samples
            .iter()
            .filter(|(series, _)| {
                series.name == name
                    && labels.iter().all(|(label, value)| {
                        series.labels.get(*label).map(String::as_str) == Some(value)
                    })
            })
            .peekable();
        matching.peek()?;
        Some(matching.map(|(_, value)| value).sum())
    }

    /// The page as the proxy sent it, for failure messages.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl Series {
    /// Parses `name` or `name{label="value",...}` (the whole text).
    pub fn parse(text: &str) -> Series {
        match Series::parse_prefix(text.trim()) {
            Ok((series, "")) => series,
            Ok((_, rest)) => panic!("unexpected {rest:?} after the series in {text:?}"),
            Err(e) => panic!("bad series {text:?}: {e}"),
        }
    }

    /// Parses the series at the start of `text`; returns it and the rest, trimmed.
    fn parse_prefix(text: &str) -> Result<(Series, &str), String> {
        let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        let end = text.find(|c: char| !is_name(c)).unwrap_or(text.len());
        let (name, mut rest) = text.split_at(end);
        if name.is_empty() {
            return Err("no metric name".into());
        }
        let mut labels = std::collections::BTreeMap::new();
        if let Some(after_brace) = rest.strip_prefix('{') {
            rest = after_brace;
            loop {
                rest = rest.trim_start();
                if let Some(after) = rest.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let end = rest.find('=').ok_or("a label without `=`")?;
                let label = rest[..end].trim().to_owned();
                rest = rest[end + 1..]
                    .trim_start()
                    .strip_prefix('"')
                    .ok_or("a label value without quotes")?;
                let mut value = String::new();
                let mut chars = rest.char_indices();
                let close = loop {
                    match chars.next().ok_or("an unterminated label value")? {
                        (i, '"') => break i,
                        (_, '\\') => match chars.next().ok_or("a dangling escape")?.1 {
                            'n' => value.push('\n'),
                            other => value.push(other),
                        },
                        (_, c) => value.push(c),
                    }
                };
                if labels.insert(label.clone(), value).is_some() {
                    return Err(format!("label {label} given twice"));
                }
                rest = rest[close + 1..].trim_start();
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
        }
        Ok((
            Series {
                name: name.to_owned(),
                labels,
            },
            rest.trim(),
        ))
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

/// Everything the peer sends until it closes the connection (or `limit` passes), and when it
/// closed.
pub async fn read_until_closed(
    stream: &mut (impl AsyncRead + Unpin),
    limit: Duration,
) -> (Vec<u8>, Option<Instant>) {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut buf = [0; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok();
    (received, closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP edgeward_requests_total Requests answered.
# TYPE edgeward_requests_total counter
edgeward_requests_total{route="web",status="200"} 30
edgeward_requests_total{route="web",status="2"} 3
edgeward_requests_in_flight 0
edgeward_requests_in_flight_max 7
wasmcustom_odd{filter="a \"quoted\", {braced} one"} 1.5
edgeward_request_duration_seconds_bucket{route="web",le="+Inf"} 30
"#;

    #[test]
    fn whole_series_are_matched_never_prefixes() {
        let metrics = Metrics::parse(PAGE);
        let total = |labels: &str| metrics.get(&format!("edgeward_requests_total{{{labels}}}"));
        assert_eq!(total(r#"route="web",status="200""#), Some(30.0));
        assert_eq!(total(r#"status="200",route="web""#), Some(30.0));
        assert_eq!(total(r#"route="web",status="2""#), Some(3.0));
        assert_eq!(total(r#"route="web",status="20""#), None);
        assert_eq!(total(r#"route="web""#), None);
        assert_eq!(metrics.get("edgeward_requests_total"), None);
        assert_eq!(metrics.get("edgeward_requests_in_flight"), Some(0.0));
        assert_eq!(metrics.get("edgeward_requests_in_fligh"), None);
        assert_eq!(
            metrics.get(r#"wasmcustom_odd{filter="a \"quoted\", {braced} one"}"#),
            Some(1.5)
        );
        assert_eq!(
            metrics.get(r#"edgeward_request_duration_seconds_bucket{le="+Inf",route="web"}"#),
            Some(30.0)
        );
        assert_eq!(metrics.value_or_zero("edgeward_never_seen_total"), 0.0);
    }

    #[test]
    #[should_panic(expected = "no series edgeward_renamed_total on /metrics")]
    fn a_series_that_is_not_exposed_fails_the_test() {
        Metrics::parse(PAGE).value("edgeward_renamed_total");
    }
}
