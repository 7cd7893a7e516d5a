//! Servers the baseline adapters start for themselves: find the binary, pick
//! a private port, run it with its log in a temporary folder, stop it.
//!
//! A [`ServerProcess`] stops its server when dropped (SIGKILL if it was not
//! stopped gracefully first), and asks the kernel to kill the server if this
//! process dies without dropping it (`PR_SET_PDEATHSIG`), so a crashed or
//! killed load test leaves no server behind.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How often a stopping server is checked for exit.
pub const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long a server has to exit after its stop signal before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How many bytes of a server's log an error message quotes.
pub const LOG_TAIL_BYTES: usize = 2_000;

/// A server child process with its temporary folder.
pub struct ServerProcess {
    child: Option<Child>,
    /// What it is, for messages (`redis-server`, `postgres`).
    pub name: String,
    /// Its stdout and stderr.
    pub log: PathBuf,
    /// Its data folder; removed when this is dropped, after the server.
    dir: Option<tempfile::TempDir>,
}

impl ServerProcess {
    /// Starts `command` with stdout and stderr in `log` (created), keeping
    /// `dir` alive as long as the server.
    pub fn spawn(
        mut command: Command,
        name: &str,
        log: PathBuf,
        dir: Option<tempfile::TempDir>,
    ) -> io::Result<ServerProcess> {
        let out = File::create(&log)?;
        let err = out.try_clone()?;
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        set_parent_death_signal(&mut command);
        let child = command.spawn()?;
        Ok(ServerProcess {
            child: Some(child),
            name: name.to_string(),
            log,
            dir,
        })
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process has not exited.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The last bytes of its log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Sends `signal`, waits up to [`STOP_GRACE`] for the exit, then SIGKILL.
    pub async fn stop(&mut self, signal: i32) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal_pid(child.id(), signal);
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if tokio::time::Instant::now() >= deadline => break,
                Ok(None) => tokio::time::sleep(EXIT_POLL_INTERVAL).await,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The folder goes after the server, never under a live one.
        drop(self.dir.take());
    }
}

/// The last [`LOG_TAIL_BYTES`] of a log file, or a note that it cannot be read.
pub fn log_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(LOG_TAIL_BYTES);
            String::from_utf8_lossy(&bytes[start..]).trim().to_string()
        }
        Err(e) => format!("(log {} unreadable: {e})", path.display()),
    }
}

/// Sends a signal to a pid we started.
#[allow(unsafe_code)] // libc calls; each block says why it is sound
fn signal_pid(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a pid of a child we spawned and have not reaped
    // yet (so the pid cannot have been reused) and a valid signal number.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// Asks the kernel to SIGKILL the child when the thread that spawned it
/// exits. Servers are spawned from runtime worker threads (or a test's own
/// thread), which live until the runtime shuts down, after every
/// `ServerProcess` has been dropped.
#[allow(unsafe_code)] // libc calls; each block says why it is sound
fn set_parent_death_signal(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls
    // prctl(2), which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A free TCP port on 127.0.0.1 (free now; a race with another process
/// binding it first is possible and shows as a failed start).
pub fn free_port() -> io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// `name` on `PATH`, if it is there.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The newest `/usr/lib/postgresql/*/bin` holding `postgres` and `initdb`
/// (Debian's layout), or the folder of `postgres` on `PATH`.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("postgres").is_file() && dir.join("initdb").is_file();
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_both(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let dir = find_in_path("postgres")?.parent()?.to_path_buf();
    has_both(&dir).then_some(dir)
}

/// The uid and gid of a user, from `/etc/passwd`.
pub fn user_ids(user: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != user {
            return None;
        }
        let _password = f.next()?;
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

/// True when this process runs as root.
#[allow(unsafe_code)] // libc calls; each block says why it is sound
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and has no side effects.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `command` to completion with its output in `log`, failing with the
/// log's tail when it exits non-zero.
pub fn run_to_completion(mut command: Command, what: &str, log: &Path) -> Result<(), String> {
    let out = File::create(log).map_err(|e| format!("{what}: creating {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| format!("{what}: {e}"))?;
    let status = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(|e| format!("{what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status}):\n{}", log_tail(log)))
    }
}
