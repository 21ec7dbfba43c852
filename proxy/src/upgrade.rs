//! The binary hand-over (`edgeward run --upgrade`): a new process takes the listening sockets
//! of the edgeward running the same configuration file, which then stops accepting, finishes
//! its requests and exits. The two find each other through files named after the
//! configuration file's path: the old process's pid, and the Unix socket Pingora passes the
//! listening sockets over.

use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tokio::net::TcpSocket;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(
        "no edgeward runs `{}` to take over (its pid file `{}` cannot be read); start it without --upgrade",
        config.display(),
        pid_file.display()
    )]
    NoPidFile {
        config: PathBuf,
        pid_file: PathBuf,
        source: std::io::Error,
    },
    #[error("the pid file `{}` holds no process id", pid_file.display())]
    BadPidFile { pid_file: PathBuf },
    #[error("cannot ask edgeward (pid {pid}) to hand its listeners over")]
    Signal { pid: i32, source: nix::Error },
    #[error(
        "process {pid}, named in `{}`, is not an edgeward (it is `{name}`): the pid file is stale",
        pid_file.display()
    )]
    NotEdgeward {
        pid: i32,
        name: String,
        pid_file: PathBuf,
    },
}

/// Where a running edgeward leaves its pid, and where its listening sockets are handed over.
#[derive(Clone)]
pub(crate) struct ProcessFiles {
    pub(crate) pid_file: PathBuf,
    pub(crate) upgrade_socket: PathBuf,
}

impl ProcessFiles {
    /// The files of the edgeward that serves `config` (by its absolute path), named so that
    /// two edgewards with different files never share them: in `EDGEWARD_RUNTIME_DIR` when it
    /// is set (systemd's `RuntimeDirectory`, say), else in the system's temporary folder.
    pub(crate) fn of(config: &Path) -> ProcessFiles {
        let absolute = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
        let tag = hex::encode(&Sha256::digest(absolute.as_os_str().as_bytes())[..6]);
        let folder = std::env::var_os("EDGEWARD_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        ProcessFiles {
            pid_file: folder.join(format!("edgeward-{tag}.pid")),
            upgrade_socket: folder.join(format!("edgeward-{tag}-upgrade.sock")),
        }
    }

    /// Records this process as the one serving the configuration (replacing, by a rename, the
    /// old one's record after a hand-over).
    pub(crate) fn write_pid(&self) {
        let staged = self
            .pid_file
            .with_extension(format!("pid.{}", std::process::id()));
        let written = std::fs::write(&staged, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&staged, &self.pid_file));
        if let Err(e) = written {
            log::warn!(
                "cannot write the pid file `{}` ({e}): `run --upgrade` will not find this process",
                self.pid_file.display()
            );
        }
    }

    /// Removes the pid file at exit, unless a newer process has written its own there.
    pub(crate) fn remove_pid_if_ours(&self) {
        let ours = std::fs::read_to_string(&self.pid_file)
            .is_ok_and(|text| text.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.pid_file);
        }
    }

    /// Asks the edgeward serving the configuration to hand its listening sockets over
    /// (`SIGQUIT`, which it answers by sending them to the upgrade socket); its pid.
    pub(crate) fn ask_old_process(&self, config: &Path) -> Result<i32, UpgradeError> {
        let text =
            std::fs::read_to_string(&self.pid_file).map_err(|source| UpgradeError::NoPidFile {
                config: config.to_path_buf(),
                pid_file: self.pid_file.clone(),
                source,
            })?;
        let pid = text
            .trim()
            .parse::<i32>()
            .ok()
            .filter(|pid| *pid > 0 && *pid as u32 != std::process::id())
            .ok_or_else(|| UpgradeError::BadPidFile {
                pid_file: self.pid_file.clone(),
            })?;
        // A pid file outliving a crash may name a process that has since taken its number:
        // never signal one that does not run this program.
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let name = name.trim();
        if name != own_command_name() {
            return Err(UpgradeError::NotEdgeward {
                pid,
                name: name.to_string(),
                pid_file: self.pid_file.clone(),
            });
        }
        kill(Pid::from_raw(pid), Signal::SIGQUIT)
            .map_err(|source| UpgradeError::Signal { pid, source })?;
        Ok(pid)
    }
}

/// Tells the service manager (systemd's `Type=notify`) how this process stands: `state` is
/// its `KEY=value` lines (`READY=1`, `MAINPID=`, `STOPPING=1`). Without `NOTIFY_SOCKET`, as
/// outside systemd, nothing happens; a failure is logged, never fatal.
pub(crate) fn notify_service_manager(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = notify_socket_address(&socket).and_then(|address| {
        let datagram = std::os::unix::net::UnixDatagram::unbound()?;
        datagram.send_to_addr(state.as_bytes(), &address).map(drop)
    });
    if let Err(e) = sent {
        log::warn!("cannot tell the service manager `{state}`: {e}");
    }
}

/// `NOTIFY_SOCKET`: a path, or with a leading `@` an abstract socket name.
fn notify_socket_address(
    socket: &std::ffi::OsStr,
) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name),
        None => std::os::unix::net::SocketAddr::from_pathname(socket),
    }
}

/// Starts the successor of this process for a binary upgrade asked by `SIGUSR2`: `program`
/// (the path this one was started from, where the new binary now is) with `run --upgrade`
/// on the same configuration, as a child of this process, so that it stays in the same
/// service (a systemd unit's control group). The successor takes the listeners over as
/// `run --upgrade` always does. Its pid.
pub(crate) fn start_successor(program: &Path, config: &Path, watch: bool) -> std::io::Result<u32> {
    let mut command = std::process::Command::new(program);
    command.args(["run", "--upgrade", "--config"]).arg(config);
    if watch {
        command.arg("--watch");
    }
    let child = command.stdin(std::process::Stdio::null()).spawn()?;
    Ok(child.id())
}

/// Binds `address` as Pingora will (with `SO_REUSEADDR`) and lets it go, without listening: a
/// listener there, even for a moment, would accept connections that nobody then serves.
pub(crate) fn check_bindable(address: SocketAddr) -> std::io::Result<()> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)
}

/// This process's command name as the kernel keeps it (at most 15 bytes).
fn own_command_name() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .map(|name| name.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_are_named_after_the_configuration_files_path() {
        let a = ProcessFiles::of(Path::new("/etc/edgeward/a.yaml"));
        let b = ProcessFiles::of(Path::new("/etc/edgeward/b.yaml"));
        assert_ne!(a.pid_file, b.pid_file);
        assert_ne!(a.upgrade_socket, b.upgrade_socket);
        let again = ProcessFiles::of(Path::new("/etc/edgeward/a.yaml"));
        assert_eq!(a.pid_file, again.pid_file);
    }

    #[test]
    fn a_missing_or_bad_pid_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let files = ProcessFiles {
            pid_file: dir.path().join("x.pid"),
            upgrade_socket: dir.path().join("x.sock"),
        };
        let config = Path::new("e.yaml");
        assert!(matches!(
            files.ask_old_process(config),
            Err(UpgradeError::NoPidFile { .. })
        ));
        std::fs::write(&files.pid_file, "not a pid").unwrap();
        assert!(matches!(
            files.ask_old_process(config),
            Err(UpgradeError::BadPidFile { .. })
        ));
        // pid 1 is no edgeward (and is never signalled).
        std::fs::write(&files.pid_file, "1\n").unwrap();
        assert!(matches!(
            files.ask_old_process(config),
            Err(UpgradeError::NotEdgeward { pid: 1, .. })
        ));
    }
}
