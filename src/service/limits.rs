//! The process's open-file limit against what the configured workers need.
//! Each worker keeps a keep-alive connection to its receiver, each pooled
//! database connection is a socket, and a few more files are the lock and
//! listener connections, the metrics server and the log. systemd's default
//! soft limit (1024) is below what a thousand workers need, so the daemon
//! warns at start instead of failing connections later with "too many open
//! files". This module only reads `/proc/self/limits`; setting the limit is
//! the service manager's business (`LimitNOFILE=` in contrib/systemd).

use crate::config::Config;

/// Files beyond one per worker and per pooled connection: the lock and
/// listener connections, the metrics server and its clients, the log,
/// connections being replaced.
pub const SPARE_FILES: u64 = 64;

/// Open files the daemon may need with `workers` workers and `pool_size`
/// pooled database connections.
pub fn files_needed(workers: usize, pool_size: u32) -> u64 {
    workers as u64 + u64::from(pool_size) + SPARE_FILES
}

/// The soft "Max open files" limit in the text of `/proc/self/limits`;
/// `None` when unlimited or not found.
pub fn soft_open_files(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A warning when this process's soft open-file limit is below what
/// `config` needs; `None` when it is enough or cannot be read.
pub fn open_files_warning(config: &Config) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    warning(
        soft_open_files(&text)?,
        config.reconciler.workers,
        config.database.pool_size,
    )
}

fn warning(limit: u64, workers: usize, pool_size: u32) -> Option<String> {
    let needed = files_needed(workers, pool_size);
    (limit < needed).then(|| {
        format!(
            "the open-file limit ({limit}) is below what {workers} workers and {pool_size} pooled connections may need (about {needed}): raise it (systemd: LimitNOFILE=), or deliveries will fail with \"too many open files\""
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str =
        "Limit                     Soft Limit           Hard Limit           Units     \n\
        Max cpu time              unlimited            unlimited            seconds   \n\
        Max open files            1024                 524288               files     \n\
        Max locked memory         8388608              8388608              bytes     \n";

    #[test]
    fn the_soft_open_file_limit_is_read_from_proc_limits() {
        assert_eq!(soft_open_files(LIMITS), Some(1024));
        assert_eq!(
            soft_open_files("Max open files  unlimited  unlimited  files\n"),
            None
        );
        assert_eq!(soft_open_files(""), None);
    }

    #[test]
    fn a_thousand_workers_under_systemds_default_limit_are_warned_about() {
        let w = warning(1024, 1024, 32).expect("a warning");
        assert!(
            w.contains("(1024)") && w.contains("1024 workers") && w.contains("LimitNOFILE"),
            "{w}"
        );
        assert_eq!(warning(1024, 16, 8), None);
        assert_eq!(warning(65536, 4096, 1026), None);
    }
}
