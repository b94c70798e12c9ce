//! The daemon binary as the scenarios run it: a migrated database of its
//! own ([`daemon_db`]) and [`BinDaemon`], the real binary (or
//! `NR_BENCH_BIN`) started on a written config and killed on drop.

use std::process::Command;

use super::support;
use super::support::TestDb;

/// A database for the daemon binary: migrated by that binary when
/// `NR_BENCH_BIN` names another build (it refuses a schema newer than it).
pub(crate) fn daemon_db() -> TestDb {
    let Ok(program) = std::env::var("NR_BENCH_BIN") else {
        return support::migrated_db();
    };
    let db = support::fresh_db();
    // Older builds need a config file (they did not fall back to defaults).
    let dir = tempfile::tempdir().expect("bench: temp dir");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("[database]\nurl = \"{}\"\n", db.url)).expect("bench: config");
    let status = Command::new(program)
        .arg("--config")
        .arg(&config)
        .arg("migrate")
        .status()
        .expect("bench: run NR_BENCH_BIN migrate");
    assert!(status.success(), "bench: NR_BENCH_BIN migrate failed");
    db
}

/// The daemon binary (`NR_BENCH_BIN`, else this build's) as a child, with
/// its log in a temp dir.
pub(crate) struct BinDaemon {
    pub(crate) child: std::process::Child,
    pub(crate) dir: tempfile::TempDir,
}

impl BinDaemon {
    pub(crate) fn start(url: &str, workers: usize, interval: &str) -> BinDaemon {
        BinDaemon::start_with(url, workers, workers as u32 + 2, interval, "")
    }

    /// With `reconciler.shards = shards` (this build only).
    pub(crate) fn start_sharded(url: &str, workers: usize, shards: u32) -> BinDaemon {
        BinDaemon::start_full(url, workers, 16, "15s", &format!("shards = {shards}\n"), "")
    }

    /// With `pool_size` connections, and `delivery_extra` appended to the
    /// `[delivery]` section.
    pub(crate) fn start_with(
        url: &str,
        workers: usize,
        pool_size: u32,
        interval: &str,
        delivery_extra: &str,
    ) -> BinDaemon {
        BinDaemon::start_full(url, workers, pool_size, interval, "", delivery_extra)
    }

    /// With whole sections `sections` appended (e.g. `[retention]`; this
    /// build only).
    pub(crate) fn start_sections(
        url: &str,
        workers: usize,
        interval: &str,
        sections: &str,
    ) -> BinDaemon {
        BinDaemon::start_full(url, workers, workers as u32 + 2, interval, "", sections)
    }

    /// With `reconciler_extra` appended to `[reconciler]` too.
    pub(crate) fn start_full(
        url: &str,
        workers: usize,
        pool_size: u32,
        interval: &str,
        reconciler_extra: &str,
        delivery_extra: &str,
    ) -> BinDaemon {
        let dir = tempfile::Builder::new()
            .prefix("nr-bench-")
            .tempdir()
            .expect("bench: temp dir");
        // This build: loopback allowed, and (unless `delivery_extra` says
        // otherwise) one channel may use every worker, as before fair
        // scheduling, so that the single-channel scenarios stay comparable.
        // An older build (NR_BENCH_BIN) knows neither key.
        let (program, allow) = match std::env::var("NR_BENCH_BIN") {
            Ok(p) => (p, String::new()),
            Err(_) if delivery_extra.contains("max_in_flight_per_channel") => (
                support::bin::BIN.to_string(),
                "allow_networks = [\"127.0.0.0/8\"]\n".to_string(),
            ),
            Err(_) => (
                support::bin::BIN.to_string(),
                format!(
                    "allow_networks = [\"127.0.0.0/8\"]\nmax_in_flight_per_channel = {workers}\n"
                ),
            ),
        };
        let timeout = if delivery_extra.starts_with("timeout") {
            ""
        } else {
            "timeout = \"30s\"\n"
        };
        let config = format!(
            "[database]\nurl = \"{url}\"\npool_size = {pool_size}\n[reconciler]\nworkers = {workers}\ninterval = \"{interval}\"\n{reconciler_extra}\
             [delivery]\n{timeout}{allow}{delivery_extra}[log]\nlevel = \"info\"\n"
        );
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).expect("bench: config");
        let stderr = std::fs::File::create(dir.path().join("stderr")).expect("bench: stderr");
        let child = Command::new(program)
            .arg("--config")
            .arg(&path)
            .arg("run")
            .env_remove("DATABASE_URL")
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("bench: spawn the daemon");
        BinDaemon { child, dir }
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    pub(crate) fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for BinDaemon {
    fn drop(&mut self) {
        self.kill9();
    }
}
