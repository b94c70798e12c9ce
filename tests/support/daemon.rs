//! The real binary as a long-running child process (`run`, or any command
//! that must be watched or stopped): started through [`Bin`] with a config
//! file in its temp dir, stdout and stderr captured to files there (so a
//! killed child's log can still be read and no pipe can fill up), stopped by
//! PID with `kill -9` or `kill -TERM` through the `kill` command (no
//! `unsafe`). Dropping a [`Daemon`] that still runs kills it and reaps it,
//! so a failing test leaves no process behind. What the daemon must do is
//! the tests' business.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::bin::Bin;
pub use super::bin::BIN;

/// A config file for the database at `url`: `workers` workers, a pass every
/// `interval`, short delivery timeouts and a tiny retry schedule, then `extra`
/// appended verbatim (whole extra sections, e.g. `[metrics]`). A non-empty
/// `delivery` replaces the body of the `[delivery]` section.
///
/// The default `[delivery]` body also lets one channel use every worker and
/// turns the circuit breaker off: most of these tests deliver to a single
/// channel and are about something else (throughput, faults, retries);
/// tests of fair scheduling (tests/fairness.rs) set their own.
pub fn config_toml(
    url: &str,
    workers: usize,
    interval: &str,
    delivery: &str,
    extra: &str,
) -> String {
    let delivery = if delivery.is_empty() {
        format!(
            "timeout = \"5s\"\nconnect_timeout = \"2s\"\nretry_schedule = [\"10ms\", \"10ms\", \"10ms\"]\n\
             max_in_flight_per_channel = {workers}\nbreaker_failures = 0\n"
        )
    } else {
        delivery.to_owned()
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
    bin: Bin,
    /// A name for messages (e.g. "A", "run #3").
    pub name: String,
}

impl Daemon {
    /// Starts `notification-reconciler --config <dir>/config.toml run` with
    /// `config` as the file; `DATABASE_URL`, `RUST_LOG` and the systemd
    /// variables are removed from the environment unless `env` sets them.
    pub fn run(name: &str, config: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn(name, config, &["run"], env)
    }

    /// Starts the binary with `args` after `--config <file>`. The config
    /// gets [`super::bin::ALLOW_LOOPBACK`] unless it sets `allow_networks`
    /// itself (the receivers are on 127.0.0.1, which the SSRF guard refuses
    /// by default; a test of that default sets `allow_networks = []`).
    pub fn spawn(name: &str, config: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn_program(name, None, config, args, env)
    }

    /// [`Daemon::spawn`] of `program` (another build) when given.
    pub fn spawn_program(
        name: &str,
        program: Option<&Path>,
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let config = super::bin::allow_loopback(config);
        let bin = env
            .iter()
            .fold(Bin::with_config(&config), |bin, (k, v)| bin.env(k, v));
        let bin = match program {
            Some(p) => bin.program(p),
            None => bin,
        };
        let stdout = fs::File::create(bin.dir().join("stdout")).expect("daemon: stdout file");
        let stderr = fs::File::create(bin.dir().join("stderr")).expect("daemon: stderr file");
        let child = bin
            .command(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("daemon: spawn the binary");
        Daemon {
            child,
            bin,
            name: name.to_owned(),
        }
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The temp dir (config, stdout, stderr).
    pub fn dir(&self) -> &Path {
        self.bin.dir()
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir().join("stderr")).unwrap_or_default()
    }

    /// Everything the child wrote to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(self.dir().join("stdout")).unwrap_or_default()
    }

    /// Waits up to `timeout` until a stderr line contains `text`; true if
    /// one did.
    pub fn wait_line(&self, text: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr().lines().any(|l| l.contains(text)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

    /// `kill -TERM` without waiting.
    pub fn term(&self) {
        self.signal("-TERM");
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal("-9");
        self.child.wait().expect("daemon: wait after kill -9")
    }

    /// `kill -TERM` and wait up to `timeout` for the exit; panics (after
    /// killing it) if it does not exit in time.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.term();
        self.wait(timeout)
    }

    /// `kill -TERM`, wait up to `timeout`, and assert a clean exit (code 0),
    /// with the tail of stderr in the message if it was not.
    pub fn stop(&mut self, timeout: Duration) {
        let status = self.terminate(timeout);
        assert!(
            status.success(),
            "daemon {} exit: {status}\n{}",
            self.name,
            tail(&self.stderr(), 40)
        );
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
