//! The real edgeward binary, run as a child process with a config written to a temp dir.
//!
//! Configs name their listen addresses with placeholders such as `{{listen}}`, `{{listen2}}`
//! or `{{admin}}`; each distinct `{{name}}` (letters, digits, `_`) becomes its own free
//! 127.0.0.1 port, below the ephemeral range, so tests can run in parallel.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tempfile::TempDir;
use tokio::time::{sleep, Instant};

const POLL: Duration = Duration::from_millis(20);
/// Debug builds on slow machines can take a while to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

static DEFAULT_BINARY: OnceLock<PathBuf> = OnceLock::new();

/// Sets the edgeward binary used when [`ProxyBuilder::binary`] is not called (including by
/// [`Proxy::start`] and [`run_edgeward`]). Takes precedence over `EDGEWARD_BIN`. Calling it
/// again with the same path is fine; a different path panics.
pub fn set_default_binary(path: &str) {
    let stored = DEFAULT_BINARY.get_or_init(|| path.into());
    assert_eq!(
        stored,
        Path::new(path),
        "set_default_binary called with two different paths"
    );
}

fn default_binary() -> PathBuf {
    if let Some(path) = DEFAULT_BINARY.get() {
        return path.clone();
    }
    match std::env::var_os("EDGEWARD_BIN") {
        Some(path) => path.into(),
        None => panic!(
            "no edgeward binary: call ProxyBuilder::binary(env!(\"CARGO_BIN_EXE_edgeward\")) \
             or edgeward_testkit::set_default_binary(..), or set EDGEWARD_BIN"
        ),
    }
}

/// Absolute, because the child runs with the temp dir as its working directory.
fn absolute(binary: &Path) -> PathBuf {
    std::path::absolute(binary)
        .unwrap_or_else(|e| panic!("edgeward binary path {}: {e}", binary.display()))
}

/// An address that refuses connections for as long as this value lives: a socket bound to a
/// 127.0.0.1 port but not listening. Unlike a port merely found free, no other test can take
/// it over in the meantime.
pub struct DeadEndpoint {
    _socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl DeadEndpoint {
    pub fn new() -> DeadEndpoint {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = socket.local_addr().unwrap();
        DeadEndpoint {
            _socket: socket,
            addr,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Default for DeadEndpoint {
    fn default() -> Self {
        Self::new()
    }
}

/// Below the kernel's ephemeral port range (where `bind(…:0)` and outgoing connections take
/// their ports) lie the ports handed to proxy listeners: nothing else in a test run can take
/// one between the moment it is chosen and the moment the proxy binds it, as an origin bound
/// to port 0 could if the listener port came from the ephemeral range too.
const LISTENER_PORTS_START: u16 = 20_000;

/// A 127.0.0.1 listener on a port for a proxy listener, held until the proxy starts.
/// Ports are taken in turn (a process-wide counter keeps the tests of one run apart; a start
/// that depends on the process id keeps concurrent runs apart) and checked by binding them.
fn reserve_listener_port() -> TcpListener {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let end = ephemeral_range_start();
    let Some(count) = end.checked_sub(LISTENER_PORTS_START).filter(|n| *n >= 1000) else {
        // A kernel configured without room below its ephemeral range: take any free port.
        return TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    };
    let offset = std::process::id().wrapping_mul(7919);
    for _ in 0..count {
        let n = NEXT.fetch_add(1, Ordering::Relaxed).wrapping_add(offset) % u32::from(count);
        let port = LISTENER_PORTS_START + n as u16;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return listener;
        }
    }
    panic!("no free 127.0.0.1 port in {LISTENER_PORTS_START}..{end}");
}

/// The first port of the kernel's ephemeral range (32768 where it cannot be read).
fn ephemeral_range_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Every distinct `{{name}}` placeholder in `yaml`.
fn placeholder_names(yaml: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (i, _) in yaml.match_indices("{{") {
        let rest = &yaml[i + 2..];
        let Some(end) = rest.find("}}") else { break };
        let name = &rest[..end];
        let is_ident =
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if is_ident && !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    names
}

/// Replaces each placeholder with its own free port address.
fn substitute_placeholders(yaml: &str) -> (String, BTreeMap<String, SocketAddr>) {
    let names = placeholder_names(yaml);
    // Hold every listener until all are bound, so no two placeholders get the same port.
    let listeners: Vec<_> = names.iter().map(|_| reserve_listener_port()).collect();
    let mut yaml = yaml.to_owned();
    let mut addrs = BTreeMap::new();
    for (name, listener) in names.into_iter().zip(&listeners) {
        let addr = listener.local_addr().unwrap();
        yaml = yaml.replace(&format!("{{{{{name}}}}}"), &addr.to_string());
        addrs.insert(name, addr);
    }
    (yaml, addrs)
}

/// Lines a child wrote to one stream, collected by a background thread.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    /// Reads `stream` line by line until EOF, echoing each line to the test's stderr so
    /// `--nocapture` (or a failing test) shows the proxy's output.
    fn collect(stream: impl Read + Send + 'static) -> (Lines, JoinHandle<()>) {
        let lines = Lines::default();
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            let mut stream = BufReader::new(stream);
            let mut buf = Vec::new();
            while matches!(stream.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                eprintln!("[edgeward] {line}");
                sink.0.lock().unwrap().push(line.to_owned());
                buf.clear();
            }
        });
        (lines, reader)
    }

    fn get(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// Builds a [`Proxy`]; see [`Proxy::builder`].
pub struct ProxyBuilder {
    yaml: String,
    binary: Option<PathBuf>,
    files: Vec<(String, Vec<u8>)>,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

impl ProxyBuilder {
    /// An extra argument of `edgeward run`, after `--config <file>` (e.g. `--watch`).
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// Path of the edgeward binary. Tests pass `env!("CARGO_BIN_EXE_edgeward")`.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Extra file written next to the config (relative name), e.g. for configs referencing
    /// files. The proxy runs with that directory as its working directory.
    pub fn file(mut self, relative_name: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((relative_name.to_owned(), contents.into()));
        self
    }

    /// Extra env var for the child (`EDGEWARD_LOG` defaults to `info`; this overrides it).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Writes the config, spawns `edgeward run --config <dir>/edgeward.yaml` and waits until
    /// every placeholder address accepts TCP connections.
    pub async fn start(self) -> Proxy {
        let binary = absolute(&self.binary.unwrap_or_else(default_binary));
        let (yaml, addrs) = substitute_placeholders(&self.yaml);
        assert!(
            !addrs.is_empty(),
            "the config has no {{{{listen}}}} placeholder, so there is no way to tell when \
             the proxy is ready (and fixed ports break parallel tests):\n{yaml}"
        );
        let dir = write_files(&[("edgeward.yaml", yaml.as_bytes())], &self.files);
        let config = dir.path().join("edgeward.yaml");

        let mut child = Command::new(&binary)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(&self.args)
            .current_dir(dir.path())
            .env("EDGEWARD_LOG", "info")
            // Its pid file goes with its folder.
            .env("EDGEWARD_RUNTIME_DIR", dir.path())
            .envs(self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
        let (stdout, stdout_reader) = Lines::collect(child.stdout.take().unwrap());
        let (stderr, stderr_reader) = Lines::collect(child.stderr.take().unwrap());

        let mut proxy = Proxy {
            child,
            addrs,
            stdout,
            stderr,
            readers: [stdout_reader, stderr_reader],
            dir,
        };
        proxy.wait_until_ready().await;
        proxy
    }
}

/// The edgeward binary running as a child process. Drop kills it (SIGKILL) and reaps it.
pub struct Proxy {
    child: Child,
    addrs: BTreeMap<String, SocketAddr>,
    stdout: Lines,
    stderr: Lines,
    readers: [JoinHandle<()>; 2],
    /// Holds the config (and extra files) for as long as the proxy runs.
    dir: TempDir,
}

impl Proxy {
    /// `yaml` is a complete edgeward config; every distinct `{{name}}` placeholder in it is
    /// replaced by its own free address like `127.0.0.1:40123` before it is written.
    pub fn builder(yaml: &str) -> ProxyBuilder {
        ProxyBuilder {
            yaml: yaml.to_owned(),
            binary: None,
            files: Vec::new(),
            env: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Shortcut for `Proxy::builder(yaml).start().await`, using the default binary
    /// ([`set_default_binary`], else `EDGEWARD_BIN`).
    pub async fn start(yaml: &str) -> Proxy {
        Proxy::builder(yaml).start().await
    }

    /// Address substituted for `{{listen}}`.
    pub fn addr(&self) -> SocketAddr {
        self.placeholder_addr("listen")
    }

    /// Address substituted for another placeholder, e.g. `proxy.placeholder_addr("admin")`.
    pub fn placeholder_addr(&self, name: &str) -> SocketAddr {
        match self.addrs.get(name) {
            Some(addr) => *addr,
            None => panic!(
                "the config has no {{{{{name}}}}} placeholder; it has {:?}",
                self.addrs.keys().collect::<Vec<_>>()
            ),
        }
    }

    /// Replaces the configuration file with `yaml`, whose placeholders get the addresses they
    /// got at start (a new placeholder is a mistake in the test). The file is replaced by a
    /// rename, as deployment tools do, so the proxy never reads half of it.
    pub fn rewrite_config(&self, yaml: &str) {
        let mut text = yaml.to_owned();
        for name in placeholder_names(yaml) {
            let addr = self.placeholder_addr(&name);
            text = text.replace(&format!("{{{{{name}}}}}"), &addr.to_string());
        }
        self.write_file("edgeward.yaml", text);
    }

    /// Writes (or replaces, by a rename) a file next to the configuration.
    pub fn write_file(&self, relative_name: &str, contents: impl AsRef<[u8]>) {
        let path = self.dir.path().join(relative_name);
        let staged = self.dir.path().join(format!(".{relative_name}.new"));
        std::fs::write(&staged, contents)
            .unwrap_or_else(|e| panic!("writing {}: {e}", staged.display()));
        std::fs::rename(&staged, &path)
            .unwrap_or_else(|e| panic!("renaming to {}: {e}", path.display()));
    }

    /// The proxy's working directory, where its config and the builder's extra files are: a
    /// test may change those files while it runs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `http://127.0.0.1:port{path}` for `{{listen}}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stdout so far, split into lines.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.get()
    }

    /// Everything the process wrote to stderr so far, split into lines.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.get()
    }

    /// Waits (polling, up to `timeout`) until some stdout line contains `needle`; returns that
    /// line or panics with all output.
    pub async fn wait_for_stdout(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_line("stdout", Self::stdout_lines, needle, timeout)
            .await
    }

    /// [`Proxy::wait_for_stdout`] for stderr, where edgeward logs.
    pub async fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_line("stderr", Self::stderr_lines, needle, timeout)
            .await
    }

    async fn wait_for_line(
        &self,
        stream: &str,
        lines: fn(&Self) -> Vec<String>,
        needle: &str,
        timeout: Duration,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = lines(self).into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no {stream} line contained {needle:?} within {timeout:?}\n{}",
                    self.output()
                );
            }
            sleep(POLL).await;
        }
    }

    /// Peak resident set size of the proxy process in bytes (VmHWM).
    pub fn peak_rss_bytes(&self) -> u64 {
        self.proc_status_bytes("VmHWM")
    }

    /// Current resident set size in bytes (VmRSS).
    pub fn rss_bytes(&self) -> u64 {
        self.proc_status_bytes("VmRSS")
    }

    /// The names of the process's threads other than its main thread (`/proc/<pid>/task/*/comm`,
    /// which the kernel cuts at 15 bytes), sorted.
    pub fn thread_names(&self) -> Vec<String> {
        let pid = self.pid();
        let tasks = format!("/proc/{pid}/task");
        let mut names: Vec<String> = std::fs::read_dir(&tasks)
            .unwrap_or_else(|e| panic!("reading {tasks} (has the proxy exited?): {e}"))
            .filter_map(|task| {
                let task = task.ok()?.path();
                // The main thread's id is the process id.
                if task.file_name()?.to_str()? == pid.to_string() {
                    return None;
                }
                // A thread that ends meanwhile is simply not counted.
                let comm = std::fs::read_to_string(task.join("comm")).ok()?;
                Some(comm.trim_end_matches('\n').to_owned())
            })
            .collect();
        names.sort();
        names
    }

    /// How many epoll instances (event loops) the process has open: its file descriptors
    /// that are `anon_inode:[eventpoll]`.
    pub fn event_polls(&self) -> usize {
        let fds = format!("/proc/{}/fd", self.pid());
        std::fs::read_dir(&fds)
            .unwrap_or_else(|e| panic!("reading {fds} (has the proxy exited?): {e}"))
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target.as_os_str() == "anon_inode:[eventpoll]")
            .count()
    }

    /// Reads a `<field>: <n> kB` line of /proc/<pid>/status.
    fn proc_status_bytes(&self, field: &str) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {path} (has the proxy exited?): {e}"));
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or_else(|| panic!("no {field} in {path} (has the proxy exited?):\n{status}"))
    }

    /// Sends `signal` ("TERM", "INT", ...) with `kill` (avoiding unsafe libc calls) and waits
    /// up to `timeout` for the process to exit, returning its exit status.
    pub async fn signal_and_wait(&mut self, signal: &str, timeout: Duration) -> ExitStatus {
        self.signal(signal);
        self.wait_for_exit(timeout, &format!("SIG{signal}")).await
    }

    /// Sends `signal` ("TERM", "INT", ...) with `kill` and returns at once.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        let kill = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("running kill");
        assert!(kill.success(), "kill -{signal} {pid} failed: {kill}");
    }

    /// Waits up to `timeout` for the process to exit (after `what`, for the failure message)
    /// and returns its exit status.
    pub async fn wait_for_exit(&mut self, timeout: Duration, what: &str) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "proxy did not exit within {timeout:?} of {what}\n{}",
                    self.output()
                );
            }
            sleep(POLL).await;
        }
    }

    /// Polls until every placeholder address accepts connections, failing fast if the child
    /// exits first.
    async fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.wait_for_readers().await;
                panic!(
                    "edgeward exited before it was ready: {status}\n{}",
                    self.output()
                );
            }
            let mut pending = Vec::new();
            for (name, addr) in &self.addrs {
                if tokio::net::TcpStream::connect(addr).await.is_err() {
                    pending.push(format!("{{{{{name}}}}} = {addr}"));
                }
            }
            if pending.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "edgeward not listening on {} after {READY_TIMEOUT:?}\n{}",
                    pending.join(", "),
                    self.output()
                );
            }
            sleep(POLL).await;
        }
    }

    /// Gives the reader threads a moment to drain the pipes of an exited child, so a panic
    /// message includes its last words.
    async fn wait_for_readers(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.readers.iter().all(JoinHandle::is_finished) && Instant::now() < deadline {
            sleep(POLL).await;
        }
    }

    /// All captured output, for panic messages.
    fn output(&self) -> String {
        format!(
            "--- edgeward stdout ---\n{}\n--- edgeward stderr ---\n{}\n--- end ---",
            self.stdout_lines().join("\n"),
            self.stderr_lines().join("\n")
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Both fail harmlessly if the process has already exited and been reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `files` (relative names) and `extra` into a fresh temp dir.
fn write_files(files: &[(&str, &[u8])], extra: &[(String, Vec<u8>)]) -> TempDir {
    let dir = tempfile::tempdir().expect("creating temp dir");
    let all = files.iter().copied().chain(
        extra
            .iter()
            .map(|(name, data)| (name.as_str(), data.as_slice())),
    );
    for (name, contents) in all {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
    dir
}

/// Runs the default edgeward binary to completion, e.g. for
/// `run_edgeward(&["validate", "--config", "{dir}/bad.yaml"], &[("bad.yaml", "...")])`.
///
/// `files` are written into a fresh temp dir (also the working directory), and `{dir}` in
/// any argument is replaced by that dir's path.
pub fn run_edgeward(args: &[&str], files: &[(&str, &str)]) -> Output {
    let binary = absolute(&default_binary());
    let files: Vec<_> = files.iter().map(|(n, c)| (*n, c.as_bytes())).collect();
    let dir = write_files(&files, &[]);
    let dir_str = dir.path().to_str().expect("temp dir path is not UTF-8");
    Command::new(&binary)
        .args(args.iter().map(|arg| arg.replace("{dir}", dir_str)))
        .current_dir(dir.path())
        .env("EDGEWARD_RUNTIME_DIR", dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", binary.display()))
}

/// A run of edgeward under [`run_edgeward_bounded`]: its output, how long it took and the most
/// memory it was seen to hold.
#[derive(Debug)]
pub struct BoundedRun {
    pub output: Output,
    pub elapsed: Duration,
    /// The largest resident set (`VmHWM`, in bytes) sampled while it ran; 0 when it ended
    /// before the first sample.
    pub peak_memory: u64,
}

/// Runs edgeward like [`run_edgeward`] (with files of any bytes), watching it: it is killed,
/// and the test fails, once it runs longer than `time_limit` or its resident memory grows
/// past `memory_limit` (sampled every few milliseconds from /proc). For inputs meant to be
/// refused quickly and cheaply, such as YAML alias bombs, so that a regression fails the test instead of eating
/// the machine.
pub fn run_edgeward_bounded(
    args: &[&str],
    files: &[(&str, &[u8])],
    time_limit: Duration,
    memory_limit: u64,
) -> BoundedRun {
    let binary = absolute(&default_binary());
    let dir = write_files(files, &[]);
    let dir_str = dir.path().to_str().expect("temp dir path is not UTF-8");
    // Output goes to files, so that a child writing much cannot block on a full pipe.
    let stdout_path = dir.path().join(".edgeward-stdout");
    let stderr_path = dir.path().join(".edgeward-stderr");
    let create = |path: &Path| {
        std::fs::File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let started = std::time::Instant::now();
    let mut child = Command::new(&binary)
        .args(args.iter().map(|arg| arg.replace("{dir}", dir_str)))
        .current_dir(dir.path())
        .env("EDGEWARD_RUNTIME_DIR", dir.path())
        .stdin(Stdio::null())
        .stdout(create(&stdout_path))
        .stderr(create(&stderr_path))
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", binary.display()));
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_memory = 0;
    let (status, over) = loop {
        if let Some(status) = child.try_wait().expect("waiting for edgeward") {
            break (status, None);
        }
        peak_memory = peak_memory.max(high_water_mark(&status_file));
        let over = if peak_memory > memory_limit {
            Some(format!("its memory grew past {} MiB", memory_limit >> 20))
        } else if started.elapsed() > time_limit {
            Some(format!("it ran longer than {time_limit:?}"))
        } else {
            None
        };
        if over.is_some() {
            let _ = child.kill();
            break (child.wait().expect("waiting for edgeward"), over);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = started.elapsed();
    let output = Output {
        status,
        stdout: std::fs::read(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read(&stderr_path).unwrap_or_default(),
    };
    if let Some(over) = over {
        panic!(
            "edgeward {args:?} was killed: {over}; stderr so far:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    BoundedRun {
        output,
        elapsed,
        peak_memory,
    }
}

/// `VmHWM` (the peak resident set) of a process from its /proc status file, in bytes; 0 when
/// it cannot be read (the process has ended).
fn high_water_mark(status_file: &str) -> u64 {
    std::fs::read_to_string(status_file)
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib << 10)
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_distinct_placeholder_gets_its_own_port() {
        let yaml = "a: {{listen}}\nb: {{admin}}\nc: {{listen}}\nd: {{ not one }}\ne: {{x";
        let (out, addrs) = substitute_placeholders(yaml);
        assert_eq!(addrs.keys().collect::<Vec<_>>(), ["admin", "listen"]);
        assert_ne!(addrs["listen"].port(), addrs["admin"].port());
        let listen = addrs["listen"];
        let admin = addrs["admin"];
        assert_eq!(
            out,
            format!("a: {listen}\nb: {admin}\nc: {listen}\nd: {{{{ not one }}}}\ne: {{{{x")
        );
    }

    #[tokio::test]
    #[should_panic(expected = "last words")]
    async fn a_child_that_exits_early_fails_with_its_output() {
        // `sh run --config ..` runs the script `run` from the working directory (the temp dir),
        // which also shows that extra files land there.
        Proxy::builder("listen: {{listen}}")
            .binary("/bin/sh")
            .file("run", "echo 'last words' >&2; exit 3")
            .start()
            .await;
    }
}
