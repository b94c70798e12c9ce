//! The real binary run to completion: a config file written into a temp dir
//! (or a given path, or none), a clean environment (`DATABASE_URL`,
//! `RUST_LOG` and the systemd variables removed unless set on purpose), and
//! the one check every error path shares: "exit code N with exactly one line
//! on stderr, and no panic". Long-running children (`run`) are
//! [`super::daemon::Daemon`]s, which build their command here too. What a
//! command must print is the tests' business.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_notification-reconciler");

/// A config whose own URL points nowhere: only `DATABASE_URL` can make a
/// command reach a database, which proves the override. Loopback is allowed
/// past the SSRF guard: the tests' receivers listen on 127.0.0.1.
pub const NOWHERE_CONFIG: &str = "[database]\nurl = \"postgres://nobody@127.0.0.1:1/nowhere\"\n\n\
     [delivery]\nallow_networks = [\"127.0.0.0/8\", \"::1/128\"]\n\n[log]\nlevel = \"warn\"\n";

/// The `[delivery]` line that lets the tests' loopback receivers past the
/// SSRF guard, which refuses loopback by default.
pub const ALLOW_LOOPBACK: &str = "allow_networks = [\"127.0.0.0/8\", \"::1/128\"]";

/// `text` with [`ALLOW_LOOPBACK`] added to its `[delivery]` section (or a
/// new one at the end), unless it sets `allow_networks` itself.
pub fn allow_loopback(text: &str) -> String {
    if text.contains("allow_networks") {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + ALLOW_LOOPBACK.len() + 16);
    let mut added = false;
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        if !added && line.trim() == "[delivery]" {
            out.push_str(ALLOW_LOOPBACK);
            out.push('\n');
            added = true;
        }
    }
    if !added {
        out.push_str("\n[delivery]\n");
        out.push_str(ALLOW_LOOPBACK);
        out.push('\n');
    }
    out
}

impl Bin {
    /// `channel create` in `ns` with custom `headers` ('K: V'); the new id.
    pub fn create_channel(&self, ns: &str, name: &str, url: &str, headers: &[&str]) -> String {
        let mut extra = Vec::new();
        for h in headers {
            extra.extend(["--header", h]);
        }
        self.create_channel_with(ns, name, url, &extra)
    }

    /// `channel create` in `ns` with `extra` arguments (`--rate-limit`,
    /// `--ordered`, …); the new id.
    pub fn create_channel_with(&self, ns: &str, name: &str, url: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "channel",
            "create",
            "--namespace",
            ns,
            "--name",
            name,
            "--url",
            url,
        ];
        args.extend_from_slice(extra);
        self.ok(&args).trim().to_owned()
    }

    /// `rule create` in `ns` for `event_type` to `channels`, with `filter`
    /// when given; the new id.
    pub fn create_rule(
        &self,
        ns: &str,
        name: &str,
        event_type: &str,
        channels: &[&str],
        filter: Option<&str>,
    ) -> String {
        let mut args = vec![
            "rule",
            "create",
            "--namespace",
            ns,
            "--name",
            name,
            "--event-type",
            event_type,
        ];
        for c in channels {
            args.extend(["--channel", c]);
        }
        if let Some(f) = filter {
            args.extend(["--filter", f]);
        }
        self.ok(&args).trim().to_owned()
    }
}

/// Environment variables removed from every child unless [`Bin::env`] sets
/// them: the test runner's own must not leak into the binary.
const CLEARED_ENV: [&str; 6] = [
    "DATABASE_URL",
    "RUST_LOG",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "SINK_SECRET",
];

/// How to start the binary: which config file, which environment.
pub struct Bin {
    dir: tempfile::TempDir,
    config: Option<PathBuf>,
    env: Vec<(String, String)>,
    /// The program: [`BIN`] unless [`Bin::program`] names another build
    /// (the benchmarks' A/B runs).
    program: PathBuf,
}

impl Bin {
    /// `--config <temp dir>/config.toml` holding `text`.
    pub fn with_config(text: &str) -> Bin {
        let bin = Bin::without_config();
        let path = bin.dir.path().join("config.toml");
        fs::write(&path, text).expect("bin: write config");
        Bin {
            config: Some(path),
            ..bin
        }
    }

    /// `--config <path>` as given (it may be missing on purpose).
    pub fn with_config_file(path: &Path) -> Bin {
        Bin {
            config: Some(path.to_owned()),
            ..Bin::without_config()
        }
    }

    /// No `--config` at all (the arguments may bring their own).
    pub fn without_config() -> Bin {
        let dir = tempfile::Builder::new()
            .prefix("nr-test-bin-")
            .tempdir()
            .expect("bin: temp dir");
        Bin {
            dir,
            config: None,
            env: Vec::new(),
            program: PathBuf::from(BIN),
        }
    }

    /// Runs `program` instead of this build's binary.
    pub fn program(mut self, program: &Path) -> Bin {
        self.program = program.to_owned();
        self
    }

    /// [`NOWHERE_CONFIG`] with `DATABASE_URL` set to `url`.
    pub fn for_database(url: &str) -> Bin {
        Bin::with_config(NOWHERE_CONFIG).env("DATABASE_URL", url)
    }

    /// Sets `key` to `value` in the child's environment.
    pub fn env(mut self, key: &str, value: &str) -> Bin {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The temp dir (holding the config file, if written here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The command line `BIN [--config <file>] <args>` with the environment
    /// (`BIN` or the program given).
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new(&self.program);
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        cmd.args(args);
        for key in CLEARED_ENV {
            cmd.env_remove(key);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `args` to completion.
    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        self.command(args)
            .output()
            .expect("run notification-reconciler")
    }

    /// Runs `args`, expects exit 0, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_ok(&out, &format!("{args:?}"));
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs `args`, expects exit `code` and exactly one line on stderr;
    /// returns that line.
    pub fn fails(&self, code: i32, args: &[&str]) -> String {
        assert_fails(&self.run(args), code, &format!("{args:?}"))
    }
}

/// Asserts exit 0 (`what` and stderr in the message); returns stdout.
pub fn assert_ok(out: &Output, what: &str) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Asserts exit `code`, no panic and exactly one line on stderr; returns
/// that line (without the newline).
pub fn assert_fails(out: &Output, code: i32, what: &str) -> String {
    one_line_failure(out, code).unwrap_or_else(|problem| panic!("{what}: {problem}"))
}

/// The one stderr line if `out` exited with `code`, did not panic and
/// wrote exactly one line to stderr; otherwise what is wrong (with the whole
/// stderr).
pub fn one_line_failure(out: &Output, code: i32) -> Result<String, String> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(code) {
        return Err(format!(
            "exit {:?}, expected {code}; stderr: {stderr}",
            out.status.code()
        ));
    }
    if stderr.contains("panicked") {
        return Err(format!("panicked: {stderr}"));
    }
    let line = stderr.trim_end();
    if line.lines().count() != 1 {
        return Err(format!(
            "expected exactly one line on stderr, got: {stderr}"
        ));
    }
    Ok(line.to_owned())
}
