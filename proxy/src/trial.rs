//! `edgeward filter test`: one filter run against a request written in a file, with a scripted
//! upstream response, by the very host the proxy runs filters with (the configuration is
//! validated as a proxy's, the chain is the proxy's, local answers are built as the proxy
//! builds them). What it reports: each phase's outcome and what the filter changed, the request
//! as it would leave for the upstream, and what the client gets.
//!
//! The module may also be an edgeward configuration: the filter chain of one of its routes
//! runs, each filter with the configuration the file gives it.
//!
//! Requests and responses are HTTP/1.1 messages as text: a request line (or status line),
//! header lines, an empty line and the body (or YAML/JSON). Callouts go, through the proxy's
//! own callout client, to small local servers that answer as scripted: each upstream named
//! with `--callout NAME=FILE` answers every callout with the response in FILE.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use serde::Serialize;

use crate::answer::Answer;
use crate::config::{self, ConfigError, ResponsePhase};
use crate::local_http::{Handler, LocalServer};
use crate::upstream::Upstreams;
use crate::wasm::{FilterChain, FilterHost, StreamInfo, Verdict, WasmError, WholeBody};

/// How long the filter may hold the request (the route's `timeout`).
const TIMEOUT: &str = "2s";

#[derive(Debug, thiserror::Error)]
pub enum TrialError {
    #[error("cannot read {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{}: {why}", path.display())]
    Message { path: PathBuf, why: String },
    #[error("the filter's configuration")]
    Config(#[source] ConfigError),
    #[error("the filter cannot be loaded")]
    Load(#[source] WasmError),
    #[error("the proxy would answer with an invalid head")]
    Answer(#[source] Box<pingora::Error>),
    #[error("the scripted upstreams")]
    Upstreams(#[source] crate::upstream::UpstreamError),
}

impl TrialError {
    /// A problem with the file at `path` (or the module), said in `why`.
    fn about(path: &Path, why: impl Into<String>) -> TrialError {
        TrialError::Message {
            path: path.to_path_buf(),
            why: why.into(),
        }
    }
}

/// What to run (`filter test`'s arguments): the module, or a configuration file for a
/// route's chain; the request; the upstream's response; the connection's facts; the callouts'
/// answers.
#[derive(Debug, clap::Args)]
pub struct Trial {
    /// The filter's .wasm file, or an edgeward configuration (.yaml) whose route's chain runs,
    /// each filter with its configuration from that file.
    pub module: PathBuf,
    /// The filter's configuration: JSON, or a file holding it (or plain text).
    #[arg(long)]
    pub config: Option<String>,
    /// The root id that selects the filter's root context (Envoy's `root_id`), for filters
    /// that register theirs under a name.
    #[arg(long)]
    pub root_id: Option<String>,
    /// With a configuration file: the route whose chain runs (default: the first route with
    /// filters).
    #[arg(long)]
    pub route: Option<String>,
    /// The request: an HTTP/1.1 message (request line, headers, empty line, body), or YAML or
    /// JSON (`.yaml`, `.yml`, `.json`): method, path, headers, body.
    #[arg(long)]
    pub request: PathBuf,
    /// The upstream's response, in either form (default: 200 with no body).
    #[arg(long)]
    pub response: Option<PathBuf>,
    /// The connection's facts the filter reads as properties (YAML or JSON): the client and
    /// local addresses, the protocol, TLS, and any property of your own.
    #[arg(long)]
    pub properties: Option<PathBuf>,
    /// An upstream the filter may call, NAME=FILE: its callouts to NAME are answered with the
    /// response in FILE (repeatable).
    #[arg(long = "callout", value_parser = callout_arg)]
    pub callouts: Vec<(String, PathBuf)>,
}

/// `--callout NAME=FILE`.
fn callout_arg(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => {
            Ok((name.to_string(), PathBuf::from(file)))
        }
        _ => Err(format!(
            "`{text}`: expected NAME=FILE (an upstream and its response)"
        )),
    }
}

/// What happened.
#[derive(Debug, Serialize)]
pub struct TrialReport {
    pub phases: Vec<PhaseReport>,
    /// The request as it would leave for the upstream; `None` when the filter answered it.
    pub upstream_gets: Option<Message>,
    pub client_gets: Message,
    /// The filter failed (a trap, a limit): `filter test` exits 1.
    pub failed: bool,
    /// What each filter used: CPU time, and its instance's memory.
    pub usage: Vec<Usage>,
    /// The metrics the filters defined, with their values after the request.
    pub metrics: Vec<MetricValue>,
}

#[derive(Debug, Serialize)]
pub struct MetricValue {
    pub filter: String,
    /// As the filter defined it.
    pub name: String,
    /// A counter's or gauge's value, a histogram's number of samples.
    pub value: i64,
}

#[derive(Debug, Serialize)]
pub struct Usage {
    pub filter: String,
    pub cpu_microseconds: u64,
    /// `None` when the filter's instance was discarded (it failed).
    pub memory_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct PhaseReport {
    pub phase: &'static str,
    /// `continue`, `answered 403`, `failed 500 trap: ...`, `closed the stream`.
    pub outcome: String,
    /// What the filter changed: `+ name: value`, `- name: value`, `~ body: N -> M bytes`.
    pub changes: Vec<String>,
}

#[derive(Debug, Serialize, Clone)]
pub struct Message {
    /// `GET /path` or `200`.
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// Runs `trial`.
pub async fn run(trial: &Trial) -> Result<TrialReport, TrialError> {
    let (req, body) = read_request(&trial.request)?;
    let (resp, resp_body) = match &trial.response {
        Some(path) => read_response(path)?,
        None => (ok_response()?, Bytes::new()),
    };
    // The scripted upstreams, serving before the filter starts (its start-up may call them).
    let mut scripted = Vec::new();
    for (name, file) in &trial.callouts {
        let (head, body) = read_response(file)?;
        let server =
            scripted_origin(name, head, body).map_err(|e| TrialError::Read(file.clone(), e))?;
        scripted.push((name.clone(), server.addr()));
        tokio::spawn(async move { server.serve().await });
    }
    let config = match is_configuration(&trial.module) {
        true => chain_configuration(trial, &scripted)?,
        false => config::from_str(
            &configuration(trial, &scripted)?,
            Path::new("filter-test.yaml"),
        )
        .map_err(TrialError::Config)?,
    };
    let host = FilterHost::load(&config).map_err(TrialError::Load)?;
    // Callouts and ticks run as in the proxy: its upstreams, its dispatcher and ticker.
    let (filter_origins, serving) = crate::filter_origin::bind(&config, &host)
        .map_err(|e| TrialError::Read(trial.module.clone(), e))?;
    let (upstreams, _tasks) = Upstreams::build(&config.upstreams, None, &filter_origins)
        .map_err(TrialError::Upstreams)?;
    host.serve_upstreams(Arc::new(upstreams));
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    for task in host
        .background_tasks()
        .into_iter()
        .chain(serving.map(|task| task.work))
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { task.start(shutdown).await });
    }
    let route = match &trial.route {
        Some(name) => config.routes.iter().find(|r| &r.name == name),
        None => config.routes.iter().find(|r| !r.filters.is_empty()),
    };
    let Some(route) = route else {
        let what = trial
            .route
            .as_ref()
            .map_or("no route with filters".to_string(), |name| {
                format!("no route `{name}`")
            });
        return Err(TrialError::about(&trial.module, what));
    };
    let request_id = HeaderValue::from_static("filter-test");
    let mut stream = StreamInfo {
        request_id: "filter-test".to_string(),
        route: Arc::from(route.name.as_str()),
        upstream: Arc::from(config.upstreams[route.upstream.0].name.as_str()),
        started: SystemTime::now(),
        ..StreamInfo::default()
    };
    if let Some(path) = &trial.properties {
        set_properties(&mut stream, path)?;
    }
    let info = || stream;
    let Some(chain) = host.chain(route, info, Instant::now()) else {
        return Err(TrialError::about(&trial.module, "no filter"));
    };
    let mut run = Run {
        chain,
        req,
        phases: Vec::new(),
        failed: false,
        upstream_gets: None,
    };
    let answer = run.through(body, resp, resp_body).await;
    run.report(answer, &request_id)
}

/// One request through the chain, phase by phase.
struct Run {
    chain: FilterChain,
    req: RequestHeader,
    phases: Vec<PhaseReport>,
    failed: bool,
    /// The request as it leaves for the upstream, once it does.
    upstream_gets: Option<Message>,
}

/// How the request ended: a filter's answer, or the upstream's (filtered) response.
enum Ending {
    Answer(Answer),
    Response(ResponseHeader, Bytes),
}

impl Run {
    /// Runs every phase the request reaches.
    async fn through(&mut self, body: Bytes, mut resp: ResponseHeader, resp_body: Bytes) -> Ending {
        // Request headers, with the body read meanwhile if the filter holds them.
        let before = message_of_request(&self.req, &body);
        let verdict = if body.is_empty() {
            self.chain.on_request_headers(&mut self.req, true).await
        } else {
            let mut source = WholeBody(Some(body.clone()));
            self.chain
                .on_request_headers_reading(&mut self.req, &mut source)
                .await
        };
        let changes = diff(&before, &message_of_request(&self.req, &body));
        if let Some(answer) = self.step("on_http_request_headers", verdict, changes) {
            return Ending::Answer(answer);
        }
        // The request body, unless the filter took it while it held the headers.
        let mut upstream_body = body.clone();
        if !body.is_empty() {
            let (data, verdict) = match self.chain.take_early_request_body() {
                Some((data, _ended)) => (data, Verdict::Continue),
                None => {
                    self.chain
                        .on_request_body(&mut self.req, Some(body.clone()), true)
                        .await
                }
            };
            upstream_body = data;
            let changes = body_change(&body, &upstream_body);
            if let Some(answer) = self.step("on_http_request_body", verdict, changes) {
                return Ending::Answer(answer);
            }
        }
        self.upstream_gets = Some(message_of_request(&self.req, &upstream_body));
        // The scripted response, through both response phases.
        let mut client_body = resp_body;
        for response_phase in [ResponsePhase::BeforeCache, ResponsePhase::AfterCache] {
            if !self.chain.has_response_phase(response_phase) {
                continue;
            }
            let before = message_of_response(&resp, &client_body);
            let end_of_stream = client_body.is_empty();
            let verdict = self
                .chain
                .on_response_headers(response_phase, &mut self.req, &mut resp, end_of_stream)
                .await;
            let changes = diff(&before, &message_of_response(&resp, &client_body));
            if let Some(answer) = self.step("on_http_response_headers", verdict, changes) {
                return Ending::Answer(answer);
            }
            if !end_of_stream {
                let original = client_body.clone();
                let (data, verdict) = self.chain.on_response_body(
                    response_phase,
                    &mut self.req,
                    Some(original.clone()),
                    true,
                );
                client_body = data;
                let changes = body_change(&original, &client_body);
                if let Some(answer) = self.step("on_http_response_body", verdict, changes) {
                    return Ending::Answer(answer);
                }
            }
        }
        Ending::Response(resp, client_body)
    }

    /// Records a phase; the answer that ended the request there, if one did.
    fn step(
        &mut self,
        name: &'static str,
        verdict: Verdict,
        changes: Vec<String>,
    ) -> Option<Answer> {
        self.phases.push(phase(name, &verdict, changes));
        self.failed |= matches!(verdict, Verdict::Fail(_));
        answer_of(verdict)
    }

    /// The final callbacks, and the report: what the client gets is the filter's answer (or
    /// failure) built as the proxy builds it, or the response as the filters left it.
    fn report(
        mut self,
        ending: Ending,
        request_id: &HeaderValue,
    ) -> Result<TrialReport, TrialError> {
        let (head, body) = match ending {
            Ending::Answer(answer) => answer.response(request_id).map_err(TrialError::Answer)?,
            Ending::Response(head, body) => (head, body),
        };
        // Read before the final callbacks give the instance back.
        let usage = self
            .chain
            .usage()
            .into_iter()
            .map(|(filter, cpu, memory)| Usage {
                filter,
                cpu_microseconds: u64::try_from(cpu.as_micros()).unwrap_or(u64::MAX),
                memory_bytes: memory,
            })
            .collect();
        self.chain.finish(&mut self.req, Some(head.clone()));
        // This process runs one trial: every metric defined is this run's.
        let metrics = crate::metrics::global()
            .custom_values()
            .into_iter()
            .map(|(filter, name, value)| MetricValue {
                filter,
                name,
                value,
            })
            .collect();
        Ok(TrialReport {
            phases: self.phases,
            upstream_gets: self.upstream_gets,
            client_gets: message_of_response(&head, &body),
            failed: self.failed,
            usage,
            metrics,
        })
    }
}

/// A filter's answer or failure, `None` when the request goes on. A closed stream is answered
/// with nothing: reported as a failure of 0.
fn answer_of(verdict: Verdict) -> Option<Answer> {
    match verdict {
        Verdict::Continue => None,
        Verdict::Respond(response) => Some(Answer::Local(response)),
        Verdict::Fail(failure) => Some(Answer::FilterFailed(failure)),
        Verdict::Close => Some(Answer::FilterFailed(crate::wasm::FilterFailure {
            filter: String::new(),
            status: 502,
            code: "closed",
            message: "the filter closed the stream: the client's connection ends".into(),
        })),
    }
}

fn phase(name: &'static str, verdict: &Verdict, changes: Vec<String>) -> PhaseReport {
    let outcome = match verdict {
        Verdict::Continue => "continue".to_string(),
        Verdict::Respond(response) => format!("answered {}", response.status),
        Verdict::Fail(failure) => format!(
            "failed {} {}: {}",
            failure.status, failure.code, failure.message
        ),
        Verdict::Close => "closed the stream".to_string(),
    };
    PhaseReport {
        phase: name,
        outcome,
        changes,
    }
}

/// A local origin answering every request with `head` and `body`, for callouts to `name`.
fn scripted_origin(name: &str, head: ResponseHeader, body: Bytes) -> std::io::Result<LocalServer> {
    let handler: Handler = Arc::new(move |_request| {
        let mut response = hyper::Response::new(http_body_util::Full::new(body.clone()));
        *response.status_mut() = head.status;
        *response.headers_mut() = head.headers.clone();
        Box::pin(async move { response })
    });
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    LocalServer::bind(format!("scripted upstream `{name}`"), loopback, handler)
}

/// The configuration `filter test` serves the filter with: one route, an echo upstream that
/// is never asked (the response is scripted), and the scripted upstreams it may call.
fn configuration(trial: &Trial, scripted: &[(String, SocketAddr)]) -> Result<String, TrialError> {
    let module = std::fs::canonicalize(&trial.module)
        .map_err(|e| TrialError::Read(trial.module.clone(), e))?;
    let config = match &trial.config {
        None => String::new(),
        Some(text) => {
            // JSON as written, or a file holding it; anything else is the plain text itself.
            let text = match std::fs::read_to_string(text) {
                Ok(contents) => contents,
                Err(_) => text.clone(),
            };
            let value = serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or(serde_json::Value::String(text));
            format!("\n    config: {value}")
        }
    };
    // The filter is named after its file, as its log lines show it.
    let name = module
        .file_stem()
        .and_then(|stem| stem.to_str())
        .filter(|stem| {
            stem.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .unwrap_or("filter")
        .to_string();
    let module = serde_json::Value::String(module.display().to_string());
    let root_id = match &trial.root_id {
        Some(id) => format!("\n    root_id: {}", serde_json::Value::String(id.clone())),
        None => String::new(),
    };
    let mut upstreams = String::from("\n  upstream: {builtin: echo}");
    let mut callouts = Vec::new();
    for (upstream, addr) in scripted {
        let quoted = serde_json::Value::String(upstream.clone());
        upstreams.push_str(&format!("\n  {quoted}: {{endpoints: [\"{addr}\"]}}"));
        callouts.push(quoted.to_string());
    }
    let callouts = match callouts.is_empty() {
        true => String::new(),
        false => format!("\n    callouts: [{}]", callouts.join(", ")),
    };
    Ok(format!(
        "listeners: [{{address: \"127.0.0.1:1\"}}]\nworkers: 1\nupstreams:{upstreams}\nfilters:\n  {name}:\n    module: {module}{root_id}{config}{callouts}\nroutes: [{{name: test, upstream: upstream, filters: [{name}], timeout: {TIMEOUT}}}]\n"
    ))
}

/// Whether `module` names a configuration file (YAML) rather than a filter module.
fn is_configuration(module: &Path) -> bool {
    module
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml"))
}

/// A configuration file as its chains run under `filter test`: each upstream named by a
/// `--callout` is the scripted server instead, in cleartext HTTP/1.1.
fn chain_configuration(
    trial: &Trial,
    scripted: &[(String, SocketAddr)],
) -> Result<config::Config, TrialError> {
    if trial.config.is_some() || trial.root_id.is_some() {
        return Err(TrialError::about(
            &trial.module,
            "--config and --root-id are for a single module: a chain's filters take theirs from this file",
        ));
    }
    let mut config = config::load(&trial.module).map_err(TrialError::Config)?;
    for (name, addr) in scripted {
        let Some(upstream) = config.upstreams.iter_mut().find(|u| &u.name == name) else {
            return Err(TrialError::about(
                &trial.module,
                format!("--callout {name}=...: the configuration has no upstream `{name}`"),
            ));
        };
        upstream.origin = config::Origin::Endpoints(vec![config::Endpoint {
            addr: *addr,
            host: addr.ip().to_string(),
        }]);
        upstream.tls = None;
        upstream.health_check = None;
        upstream.protocol = config::UpstreamProtocol::Http1;
    }
    Ok(config)
}

/// A message read from a file: its first line, its header lines, its body.
struct Written {
    first: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

/// A message's head lines and body.
fn split_message(path: &Path) -> Result<Written, TrialError> {
    let bytes = std::fs::read(path).map_err(|e| TrialError::Read(path.to_path_buf(), e))?;
    let bad = |why: &str| TrialError::about(path, why);
    let (head, body) = match find(&bytes, b"\r\n\r\n") {
        Some(at) => (&bytes[..at], &bytes[at + 4..]),
        None => match find(&bytes, b"\n\n") {
            Some(at) => (&bytes[..at], &bytes[at + 2..]),
            None => (bytes.as_slice(), &[][..]),
        },
    };
    let head = std::str::from_utf8(head).map_err(|_| bad("the head is not UTF-8 text"))?;
    let mut lines = head.lines().map(|line| line.trim_end_matches('\r'));
    let first = lines.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(&format!("`{line}` is not a header line (name: value)")))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok(Written {
        first,
        headers,
        body: Bytes::copy_from_slice(body),
    })
}

/// The connection's facts a properties file gives (YAML or JSON, a mapping of property paths
/// to values): `source.address` and `destination.address` (`ip:port`), `request.protocol`
/// (`HTTP/1.0`, `HTTP/1.1`, `HTTP/2`), `connection.tls_version` (which makes the request
/// `https`) and `connection.requested_server_name`. Any other key is a property of the request
/// under that exact name, as a filter's `proxy_set_property` of one segment would leave it.
fn set_properties(stream: &mut StreamInfo, path: &Path) -> Result<(), TrialError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| TrialError::Read(path.to_path_buf(), e))?;
    let value = config::yaml_value(&text, path).map_err(TrialError::Config)?;
    let bad = |why: String| TrialError::about(path, why);
    let Some(map) = value.as_object() else {
        return Err(bad("a mapping of property paths to values".into()));
    };
    for (key, value) in map {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let address = || {
            text.parse::<std::net::SocketAddr>()
                .map_err(|_| bad(format!("`{key}`: `{text}` is not an ip:port address")))
        };
        match key.as_str() {
            "source.address" => stream.client = Some(address()?),
            "destination.address" => stream.server = Some(address()?),
            "request.protocol" => {
                stream.protocol = match text.as_str() {
                    "HTTP/1.0" => "HTTP/1.0",
                    "HTTP/1.1" => "HTTP/1.1",
                    "HTTP/2" => "HTTP/2",
                    _ => return Err(bad(format!("`{key}`: HTTP/1.0, HTTP/1.1 or HTTP/2"))),
                }
            }
            "connection.tls_version" => {
                stream.tls_version = Some(text.into());
                stream.scheme = "https";
            }
            "connection.requested_server_name" => {
                stream.requested_server_name = Some(Arc::from(text.as_str()));
            }
            own => {
                stream
                    .custom
                    .insert(own.as_bytes().to_vec(), text.into_bytes());
            }
        }
    }
    Ok(())
}

/// A message written as YAML or JSON (a file ending in `.yaml`, `.yml` or `.json`):
/// `{method, path, headers, body}` for a request, `{status, headers, body}` for a response;
/// headers a mapping (or a list of `[name, value]` pairs for repeated ones), the body text.
/// `None` for any other file, which is HTTP/1.1 text.
fn structured(path: &Path) -> Result<Option<Written>, TrialError> {
    let is_structured = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
    if !is_structured {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| TrialError::Read(path.to_path_buf(), e))?;
    let value = config::yaml_value(&text, path).map_err(TrialError::Config)?;
    let bad = |why: &str| TrialError::about(path, why);
    let field = |name: &str| value.get(name).filter(|v| !v.is_null());
    let text_of = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    // The first line as the text form writes it, so that both forms share one reader.
    let first = match (field("status"), field("method"), field("path")) {
        (Some(status), _, _) => format!("HTTP/1.1 {}", text_of(status)),
        (None, method, Some(target)) => format!(
            "{} {} HTTP/1.1",
            method.map_or("GET".to_string(), text_of),
            text_of(target)
        ),
        _ => return Err(bad("needs `status` (a response) or `path` (a request)")),
    };
    let headers = match field("headers") {
        None => Vec::new(),
        Some(serde_json::Value::Object(map)) => {
            map.iter().map(|(k, v)| (k.clone(), text_of(v))).collect()
        }
        Some(serde_json::Value::Array(pairs)) => pairs
            .iter()
            .map(|pair| match pair.as_array().map(Vec::as_slice) {
                Some([name, value]) => Ok((text_of(name), text_of(value))),
                _ => Err(bad("each header in a list is a [name, value] pair")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(bad(
                "`headers` is a mapping or a list of [name, value] pairs",
            ))
        }
    };
    let body = field("body").map(text_of).unwrap_or_default();
    Ok(Some(Written {
        first,
        headers,
        body: Bytes::from(body),
    }))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A message in either form: YAML or JSON by its extension, else HTTP/1.1 text.
fn read_message(path: &Path) -> Result<Written, TrialError> {
    match structured(path)? {
        Some(written) => Ok(written),
        None => split_message(path),
    }
}

fn read_request(path: &Path) -> Result<(RequestHeader, Bytes), TrialError> {
    let Written {
        first: line,
        headers,
        body,
    } = read_message(path)?;
    let bad = |why: String| TrialError::about(path, why);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(bad(format!(
            "`{line}` is not a request line (GET /path HTTP/1.1)"
        )));
    };
    let mut req = RequestHeader::build(method, target.as_bytes(), Some(headers.len()))
        .map_err(|e| bad(format!("`{line}`: {e}")))?;
    for (name, value) in headers {
        req.append_header(name.clone(), value)
            .map_err(|e| bad(format!("header `{name}`: {e}")))?;
    }
    Ok((req, body))
}

fn read_response(path: &Path) -> Result<(ResponseHeader, Bytes), TrialError> {
    let Written {
        first: line,
        headers,
        body,
    } = read_message(path)?;
    let bad = |why: String| TrialError::about(path, why);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("`{line}` is not a status line (HTTP/1.1 200 OK)")))?;
    let mut resp =
        ResponseHeader::build(status, Some(headers.len())).map_err(|e| bad(e.to_string()))?;
    for (name, value) in headers {
        resp.append_header(name.clone(), value)
            .map_err(|e| bad(format!("header `{name}`: {e}")))?;
    }
    Ok((resp, body))
}

fn ok_response() -> Result<ResponseHeader, TrialError> {
    let mut resp = ResponseHeader::build(200, Some(1)).map_err(TrialError::Answer)?;
    resp.insert_header("content-length", "0")
        .map_err(TrialError::Answer)?;
    Ok(resp)
}

fn message_of_request(req: &RequestHeader, body: &Bytes) -> Message {
    Message {
        head: format!("{} {}", req.method, String::from_utf8_lossy(req.raw_path())),
        headers: pairs(&req.headers),
        body: String::from_utf8_lossy(body).into_owned(),
    }
}

fn message_of_response(resp: &ResponseHeader, body: &Bytes) -> Message {
    Message {
        head: resp.status.as_u16().to_string(),
        headers: pairs(&resp.headers),
        body: String::from_utf8_lossy(body).into_owned(),
    }
}

fn pairs(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// What changed from `before` to `after`: the head line, then headers added and removed.
fn diff(before: &Message, after: &Message) -> Vec<String> {
    let mut changes = Vec::new();
    if before.head != after.head {
        changes.push(format!("~ {} -> {}", before.head, after.head));
    }
    for header in &after.headers {
        if !before.headers.contains(header) {
            changes.push(format!("+ {}: {}", header.0, header.1));
        }
    }
    for header in &before.headers {
        if !after.headers.contains(header) {
            changes.push(format!("- {}: {}", header.0, header.1));
        }
    }
    changes
}

fn body_change(before: &Bytes, after: &Bytes) -> Vec<String> {
    if before == after {
        Vec::new()
    } else {
        vec![format!("~ body: {} -> {} bytes", before.len(), after.len())]
    }
}

impl std::fmt::Display for TrialReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for phase in &self.phases {
            writeln!(f, "{}: {}", phase.phase, phase.outcome)?;
            for change in &phase.changes {
                writeln!(f, "  {change}")?;
            }
        }
        match &self.upstream_gets {
            Some(request) => {
                writeln!(f, "\nthe upstream gets:")?;
                write_message(f, request)?;
            }
            None => writeln!(f, "\nthe upstream is never asked")?,
        }
        writeln!(f, "\nthe client gets:")?;
        write_message(f, &self.client_gets)?;
        writeln!(f)?;
        for usage in &self.usage {
            let memory = usage
                .memory_bytes
                .map_or("no instance left".to_string(), |bytes| {
                    format!("{} KiB of memory", bytes / 1024)
                });
            writeln!(
                f,
                "filter {}: {} µs of CPU, {memory}",
                usage.filter, usage.cpu_microseconds
            )?;
        }
        if !self.metrics.is_empty() {
            writeln!(f, "\nmetrics:")?;
        }
        for metric in &self.metrics {
            writeln!(f, "  {} {} = {}", metric.filter, metric.name, metric.value)?;
        }
        Ok(())
    }
}

fn write_message(f: &mut std::fmt::Formatter<'_>, message: &Message) -> std::fmt::Result {
    writeln!(f, "  {}", message.head)?;
    for (name, value) in &message.headers {
        writeln!(f, "  {name}: {value}")?;
    }
    if !message.body.is_empty() {
        writeln!(f)?;
        for line in message.body.lines() {
            writeln!(f, "  {line}")?;
        }
    }
    Ok(())
}
