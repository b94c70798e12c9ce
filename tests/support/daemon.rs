//! The real binary as a child process, for the fault tests: `run` (or any
//! command) with a config file written into a temp dir, stdout and stderr
//! captured to files there (so a killed child's log can still be read and no
//! pipe can fill up), stopped by PID with `kill -9` or `kill -TERM` through
//! the `kill` command (no `unsafe`). Dropping a [`Daemon`] that still runs
//! kills it and reaps it, so a failing test leaves no process behind.
//! What the daemon must do is the tests' business.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_notification-reconciler");

/// A config file for the database at `url`: `workers` workers, a pass every
/// `interval`, short delivery timeouts and a tiny retry schedule, then `extra`
/// appended verbatim (whole extra sections, e.g. `[metrics]`). A non-empty
/// `delivery` replaces the body of the `[delivery]` section.
pub fn config_toml(
    url: &str,
    workers: usize,
    interval: &str,
    delivery: &str,
    extra: &str,
) -> String {
    let delivery = if delivery.is_empty() {
        "timeout = \"5s\"\nconnect_timeout = \"2s\"\nretry_schedule = [\"10ms\", \"10ms\", \"10ms\"]\n"
    } else {
        delivery
    };
    format!(
        "[database]\nurl = \"{url}\"\nconnect_timeout = \"2s\"\n\n\
         [reconciler]\ninterval = \"{interval}\"\nworkers = {workers}\n\n\
         [delivery]\n{delivery}\n{extra}\n"
    )
}

/// A child process of the binary with its own temp dir.
pub struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    /// A name for messages (e.g. "A", "run #3").
    pub name: String,
}

impl Daemon {
    /// Starts `notification-reconciler --config <dir>/config.toml run` with
    /// `config` as the file; `DATABASE_URL` and `RUST_LOG` are removed from
    /// the environment unless `env` sets them.
    pub fn run(name: &str, config: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn(name, config, &["run"], env)
    }

    /// Starts the binary with `args` after `--config <file>`.
    pub fn spawn(name: &str, config: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("nr-test-daemon-")
            .tempdir()
            .expect("daemon: temp dir");
        let path = dir.path().join("config.toml");
        fs::write(&path, config).expect("daemon: write config");
        let stdout = fs::File::create(dir.path().join("stdout")).expect("daemon: stdout file");
        let stderr = fs::File::create(dir.path().join("stderr")).expect("daemon: stderr file");
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&path)
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("daemon: spawn the binary");
        Daemon {
            child,
            dir,
            name: name.to_owned(),
        }
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The temp dir (config, stdout, stderr).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// Everything the child wrote to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    /// Whether the child is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Peak resident memory of the child (`VmHWM` of `/proc/<pid>/status`),
    /// in bytes, while it runs.
    pub fn vm_hwm(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("daemon: read /proc/<pid>/status (is it still running?)");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("daemon: VmHWM in /proc/<pid>/status");
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("daemon: VmHWM value");
        kb * 1024
    }

    /// Sends `signal` (e.g. "-9", "-TERM") with the `kill` command.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.pid().to_string())
            .status()
            .expect("daemon: run kill");
        assert!(status.success(), "kill {signal} {} failed", self.pid());
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal("-9");
        self.child.wait().expect("daemon: wait after kill -9")
    }

    /// `kill -TERM` and wait up to `timeout` for the exit; panics (after
    /// killing it) if it does not exit in time.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal("-TERM");
        self.wait(timeout)
    }

    /// Waits up to `timeout` for the child to exit by itself; panics (after
    /// killing it) if it does not.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("daemon: try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "daemon {} did not exit within {timeout:?}; stderr:\n{}",
                    self.name,
                    tail(&self.stderr(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `n` lines of `text`, for failure messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; panics with
/// `what` (and the output of `context`) if it never held.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
