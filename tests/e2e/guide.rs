//! docs/writing-filters.md followed to the letter, so that the guide cannot rot: its blocks
//! run in order in a fresh folder, with this build's edgeward first on the `PATH`.
//!
//! - `sh` blocks run in bash (`set -euo pipefail`), each line as written, in the folder the
//!   block before left; one difference: port 8080 becomes a free port. `edgeward run` is
//!   started in the background (its configuration's port changed the same way) and the
//!   block goes on once it serves; after a block that rebuilds a module while it runs with
//!   `--watch`, the next block waits until it has reloaded.
//! - A block whose info string says `file=PATH` is written to PATH.
//! - `diff` blocks are applied with `git apply`.
//! - `text` blocks are the output of the `sh` block before: each line must come, in order,
//!   in what it printed; `...` stands for lines left out, a line ending in `...` for the
//!   rest of that line.
//!
//! Any other block fails the test: nothing in the guide escapes it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A fenced block of the guide.
struct Block {
    info: String,
    text: String,
    /// Its first line in the guide, for messages.
    line: usize,
}

fn blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (number, line) in markdown.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Block {
                    info: info.trim().to_string(),
                    text: String::new(),
                    line: number + 1,
                })
            }
            (Some(_), Some("")) => blocks.extend(open.take()),
            (Some(block), _) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "an unclosed block in the guide");
    blocks
}

/// Whether `output` shows every line of `expected`, in order (`...` skips lines).
fn shows(output: &str, expected: &str) -> Result<(), String> {
    let mut lines = output.lines().map(str::trim_end);
    for wanted in expected.lines().map(str::trim_end) {
        if wanted == "..." {
            continue;
        }
        let found = match wanted.strip_suffix("...") {
            Some(start) => lines.any(|line| line.starts_with(start)),
            None => lines.any(|line| line == wanted),
        };
        if !found {
            return Err(format!("`{wanted}` is not shown (in order) in:\n{output}"));
        }
    }
    Ok(())
}

/// An `edgeward run` the guide started, killed when the test ends.
struct Server {
    child: Child,
    log: PathBuf,
    /// Configuration generations it has served (1 at start; one more per reload).
    generations: usize,
    /// Started with `--watch`: it reloads when a module is rebuilt.
    watching: bool,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The guide's reader: where they are, and what they started.
struct Reader {
    root: PathBuf,
    cwd: PathBuf,
    path: std::ffi::OsString,
    port: u16,
    server: Option<Server>,
    last_output: String,
}

impl Reader {
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .current_dir(&self.cwd)
            .env("PATH", &self.path)
            // The filter's crates are the ones the test filters built already.
            .env("CARGO_NET_OFFLINE", "true")
            .env_remove("CARGO_TARGET_DIR")
            .env("EDGEWARD_RUNTIME_DIR", &self.root)
            .stdin(Stdio::null());
        command
    }

    fn with_port(&self, text: &str) -> String {
        text.replace(":8080", &format!(":{}", self.port))
    }

    fn run_shell(&mut self, block: &Block) {
        let mut script = String::new();
        for line in block.text.lines() {
            if line.starts_with("edgeward run ") {
                // The lines before it run first; those after it find it serving.
                self.shell(&script, block);
                script.clear();
                self.start_server(line, block);
                continue;
            }
            script.push_str(&self.with_port(line));
            script.push('\n');
            let rebuilds = line.starts_with("cargo build") || line.starts_with("npm run build");
            if rebuilds && self.server.as_ref().is_some_and(|s| s.watching) {
                // The lines after the build see the reloaded filter.
                self.shell(&script, block);
                script.clear();
                self.wait_for_reload(block);
            }
        }
        self.shell(&script, block);
    }

    /// Runs `script` in bash where the reader is; keeps what it printed.
    fn shell(&mut self, script: &str, block: &Block) {
        if script.trim().is_empty() {
            return;
        }
        let state = self.root.join(".cwd");
        let out = self
            .command("bash")
            .arg("-c")
            .arg(format!(
                "set -euo pipefail\n{script}\npwd > '{}'",
                state.display()
            ))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "the block at line {} failed:\n{script}\nstdout:\n{stdout}\nstderr:\n{}",
            block.line,
            String::from_utf8_lossy(&out.stderr)
        );
        self.cwd = PathBuf::from(std::fs::read_to_string(&state).unwrap().trim_end());
        self.last_output.push_str(&stdout);
    }

    fn start_server(&mut self, line: &str, block: &Block) {
        // The configuration's port, as for the commands: the same `:8080` made free.
        let config = self.cwd.join("edgeward.yaml");
        let yaml = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, self.with_port(&yaml)).unwrap();
        let log = self.root.join("edgeward-run.log");
        let file = std::fs::File::create(&log).unwrap();
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        let child = self
            .command("edgeward")
            .args(&args)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        self.server = Some(Server {
            child,
            log,
            generations: 1,
            watching: args.contains(&"--watch"),
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "`{line}` (line {}) never served:\n{}",
                block.line,
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn server_log(&self) -> String {
        self.server
            .as_ref()
            .map(|s| std::fs::read_to_string(&s.log).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Waits until the running edgeward serves one more generation.
    fn wait_for_reload(&mut self, block: &Block) {
        let Some(server) = &mut self.server else {
            return;
        };
        server.generations += 1;
        let wanted = format!("configuration generation {} serves", server.generations);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = std::fs::read_to_string(&server.log).unwrap_or_default();
            if log.contains(&wanted) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "edgeward did not reload after the build at line {}:\n{log}",
                block.line
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn the_filter_writing_guide_works_as_written() {
    let guide = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/writing-filters.md");
    let guide = std::fs::read_to_string(guide).unwrap();
    let root = tempfile::tempdir().unwrap();
    let binary_dir = Path::new(env!("CARGO_BIN_EXE_edgeward")).parent().unwrap();
    let mut paths = vec![binary_dir.to_path_buf()];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let mut reader = Reader {
        root: root.path().to_path_buf(),
        cwd: root.path().to_path_buf(),
        path: std::env::join_paths(paths).unwrap(),
        port: free_port(),
        server: None,
        last_output: String::new(),
    };
    for block in blocks(&guide) {
        let file = block
            .info
            .split_whitespace()
            .find_map(|word| word.strip_prefix("file="));
        match (block.info.as_str(), file) {
            (_, Some(path)) => std::fs::write(reader.cwd.join(path), &block.text).unwrap(),
            ("sh", None) => {
                reader.last_output.clear();
                reader.run_shell(&block);
            }
            ("diff", None) => {
                let mut apply = reader
                    .command("git")
                    .args(["apply", "-"])
                    .stdin(Stdio::piped())
                    .spawn()
                    .unwrap();
                use std::io::Write;
                apply
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(block.text.as_bytes())
                    .unwrap();
                let status = apply.wait().unwrap();
                assert!(
                    status.success(),
                    "the diff at line {} does not apply",
                    block.line
                );
            }
            ("text", None) => {
                if let Err(e) = shows(&reader.last_output, &block.text) {
                    panic!("the output block at line {}: {e}", block.line);
                }
            }
            (other, None) => panic!(
                "the block at line {} is `{other}`, which this test cannot check",
                block.line
            ),
        }
    }
}
