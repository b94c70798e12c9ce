//! A throw-away PostgreSQL cluster in a temporary directory, listening on a
//! free loopback port, tuned for tests (no fsync, no durable commits), or
//! at PostgreSQL's durable defaults for the benchmark ([`Cluster::start_durable`]).
//!
//! The same [`Cluster`] backs the per-process shared server of `pg.rs` and the
//! dedicated clusters that a test stops and restarts itself. Cleanup does not
//! rely on destructors, which Rust never runs for statics nor for a killed
//! process: each cluster has a *guardian*, a `sh` child blocked reading a pipe
//! whose write end only this process holds. When the process ends for any
//! reason the kernel closes the pipe, and the guardian stops the server
//! (`-m immediate`) and removes the directory. Dropping a `Cluster` just closes
//! that pipe early and waits for the guardian. Databases inside the cluster
//! are `pg.rs`'s business.
//!
//! When the process runs as root the PostgreSQL tools run as the `postgres`
//! user through `runuser`, since `initdb` refuses root.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

/// Settings appended to `postgresql.conf`: speed over durability, enough
/// connections for parallel tests, loopback only.
const SETTINGS: &str = "
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
shared_buffers = 128MB
listen_addresses = '127.0.0.1'
";

/// Settings of a durable cluster ([`Cluster::start_durable`]): PostgreSQL's
/// defaults (fsync, synchronous commit and full page writes on), with only
/// enough connections and loopback only.
const DURABLE_SETTINGS: &str = "
max_connections = 300
listen_addresses = '127.0.0.1'
";

/// A PostgreSQL cluster owned by this test process.
///
/// Methods take `&self`, so a test may share one through an `Arc` and, say,
/// restart it from another thread. Dropping it stops the server and removes
/// its directory; so does the end of the process, however it ends.
pub struct Cluster {
    /// The temporary directory holding everything (owned by `postgres` as root).
    dir: PathBuf,
    /// The data directory, `dir/data`; also the unix socket directory.
    data: PathBuf,
    /// The server log, `dir/postgres.log`.
    log: PathBuf,
    /// The loopback TCP port, chosen once when the cluster is prepared.
    port: u16,
    /// The guardian: its stdin is the pipe whose closing triggers cleanup.
    guardian: Mutex<Option<(Child, ChildStdin)>>,
}

impl Cluster {
    /// Creates, configures and starts a cluster of its own for one test;
    /// panics, with the server log's tail, if it cannot.
    pub fn start_dedicated() -> Cluster {
        let cluster = Cluster::prepare_without_start();
        cluster.start();
        cluster
    }

    /// Creates and configures a cluster (temp dir, guardian, `initdb`, port)
    /// without starting the server, so a test can hand [`Cluster::url`] to the
    /// daemon while the database is still down and [`Cluster::start`] later.
    ///
    /// The port is free when chosen; another process could in principle take
    /// it before the server starts.
    pub fn prepare_without_start() -> Cluster {
        Cluster::prepare(SETTINGS)
    }

    /// Creates and starts a cluster at PostgreSQL's durable defaults (fsync
    /// and synchronous commit on), for benchmarks that must pay what a real
    /// deployment pays per commit.
    pub fn start_durable() -> Cluster {
        Cluster::start_durable_with("")
    }

    /// [`Cluster::start_durable`] with `extra` settings appended to
    /// `postgresql.conf` (e.g. `shared_preload_libraries`).
    pub fn start_durable_with(extra: &str) -> Cluster {
        let cluster = Cluster::prepare(&format!("{DURABLE_SETTINGS}{extra}"));
        cluster.start();
        cluster
    }

    /// Creates and configures a cluster with `extra` appended to the test
    /// settings of [`Cluster::prepare_without_start`] (e.g. `ssl = on`),
    /// without starting it: the test writes files with
    /// [`Cluster::write_file`] first.
    pub fn prepare_with(extra: &str) -> Cluster {
        Cluster::prepare(&format!("{SETTINGS}{extra}"))
    }

    /// [`Cluster::prepare_with`] at PostgreSQL's durable defaults (those of
    /// [`Cluster::start_durable`]).
    pub fn prepare_durable_with(extra: &str) -> Cluster {
        Cluster::prepare(&format!("{DURABLE_SETTINGS}{extra}"))
    }

    /// An empty cluster directory (temp dir, guardian, port): the start of
    /// [`Cluster::prepare`] and [`Cluster::start_standby_of`].
    fn empty() -> Cluster {
        let tools = tools();
        let dir = tempfile::Builder::new()
            .prefix("nr-test-pg-")
            .tempdir_in(std::env::temp_dir())
            .expect("test support: cannot create a temp dir for PostgreSQL")
            .keep();
        if let Some((uid, gid)) = tools.run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap_or_else(|e| {
                panic!(
                    "test support: cannot chown {} to postgres: {e}",
                    dir.display()
                )
            });
        }
        let data = dir.join("data");
        let log = dir.join("postgres.log");
        let port = free_port();
        // The guardian exists before anything is written into `dir`, so an
        // interrupted initdb leaves nothing behind either.
        let guardian = spawn_guardian(tools, &dir, &data);
        Cluster {
            dir,
            data,
            log,
            port,
            guardian: Mutex::new(Some(guardian)),
        }
    }

    /// [`Cluster::prepare_without_start`] with `settings` appended to
    /// `postgresql.conf`.
    fn prepare(settings: &str) -> Cluster {
        let cluster = Cluster::empty();
        let out = cluster
            .tool("initdb")
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync")
            .arg("-D")
            .arg(&cluster.data)
            .output()
            .expect("test support: cannot run initdb");
        if !out.status.success() {
            panic!(
                "test support: initdb failed ({}):\n{}",
                out.status,
                both(&out)
            );
        }
        let mut conf = fs::OpenOptions::new()
            .append(true)
            .open(cluster.data.join("postgresql.conf"))
            .expect("test support: cannot open postgresql.conf");
        write!(
            conf,
            "{settings}port = {}\nunix_socket_directories = '{}'\n",
            cluster.port,
            cluster.data.display()
        )
        .expect("test support: cannot write postgresql.conf");
        cluster
    }

    /// Starts the server and waits until it accepts connections; panics with
    /// `pg_ctl`'s output and the log's tail if it does not.
    pub fn start(&self) {
        self.pg_ctl(&["start", "-w", "-t", "60", "-l"], Some(&self.log));
    }

    /// Stops the server (`-m fast`) and waits until it is gone.
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-w", "-t", "60", "-m", "fast"], None);
    }

    /// Restarts the server (`pg_ctl restart -m fast`): sessions are
    /// terminated, the data stays.
    pub fn restart_fast(&self) {
        self.pg_ctl(
            &["restart", "-w", "-t", "60", "-m", "fast", "-l"],
            Some(&self.log),
        );
    }

    /// Writes `contents` to `name` in the data directory, owned by the
    /// server's user, mode 0600 (what PostgreSQL demands of a key file).
    pub fn write_file(&self, name: &str, contents: &[u8]) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.data.join(name);
        fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("test support: cannot write {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .expect("test support: chmod 600");
        if let Some((uid, gid)) = tools().run_as {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .expect("test support: chown to postgres");
        }
    }

    /// The URL of database `dbname` over the Unix socket (no TLS there: a
    /// test's own client when `pg_hba.conf` allows TCP only with TLS).
    pub fn socket_url_for(&self, dbname: &str) -> String {
        let dir = self.data.display().to_string().replace('/', "%2F");
        format!("postgres://postgres@{dir}:{}/{dbname}", self.port)
    }

    /// The postmaster's PID (first line of `postmaster.pid`).
    pub fn postmaster_pid(&self) -> u32 {
        let text = fs::read_to_string(self.data.join("postmaster.pid"))
            .expect("test support: read postmaster.pid (is the server running?)");
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("test support: a PID on the first line of postmaster.pid")
    }

    /// Kills the postmaster with SIGKILL (a crash: no shutdown checkpoint;
    /// its backends end when they notice) and waits until it is gone.
    pub fn kill_postmaster(&self) {
        let pid = self.postmaster_pid();
        let status = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("test support: run kill");
        assert!(status.success(), "test support: kill -KILL {pid} failed");
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        // A zombie until reaped by init: gone once its state is not running.
        while proc.exists()
            && !fs::read_to_string(proc.join("stat")).is_ok_and(|s| s.contains(") Z "))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "test support: postmaster {pid} still alive 30 s after SIGKILL"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// A streaming standby of `primary` made by `pg_basebackup -R` (over
    /// `conninfo`, a libpq connection string to the primary, so that a
    /// TLS-only primary can be used), with `extra` appended to its
    /// `postgresql.conf`, started and replicating. It has its own port,
    /// socket and cleanup, like any [`Cluster`].
    pub fn start_standby_of(primary: &Cluster, conninfo: &str, extra: &str) -> Cluster {
        let cluster = Cluster::empty();
        let out = cluster
            .tool("pg_basebackup")
            .arg("-D")
            .arg(&cluster.data)
            .args([
                "-d",
                conninfo,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ])
            .output()
            .expect("test support: cannot run pg_basebackup");
        if !out.status.success() {
            panic!(
                "test support: pg_basebackup failed ({}):\n{}\n--- primary log tail ---\n{}",
                out.status,
                both(&out),
                primary.log_tail(20)
            );
        }
        let mut conf = fs::OpenOptions::new()
            .append(true)
            .open(cluster.data.join("postgresql.conf"))
            .expect("test support: cannot open the standby's postgresql.conf");
        write!(
            conf,
            "\n{extra}\nport = {}\nunix_socket_directories = '{}'\n",
            cluster.port,
            cluster.data.display()
        )
        .expect("test support: cannot write the standby's postgresql.conf");
        cluster.start();
        cluster
    }

    /// Promotes a standby to primary and waits until it accepts writes.
    pub fn promote(&self) {
        self.pg_ctl(&["promote", "-w", "-t", "60"], None);
    }

    /// The URL of the `postgres` maintenance database.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of database `dbname` on this cluster (user `postgres`, trust).
    pub fn url_for(&self, dbname: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{dbname}", self.port)
    }

    /// The loopback TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory holding the cluster; gone after drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory (`-D`), also the unix socket directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The last `lines` lines of the server log, for panic messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Runs `pg_ctl <args> [<log>] -D <data>` and panics on failure.
    fn pg_ctl(&self, args: &[&str], log: Option<&Path>) {
        let mut cmd = self.tool("pg_ctl");
        cmd.args(args);
        if let Some(log) = log {
            cmd.arg(log);
        }
        // pg_ctl redirects the server's own output to the log file, so the
        // server does not hold these pipes open and `output()` returns.
        let out = cmd
            .arg("-D")
            .arg(&self.data)
            .output()
            .expect("test support: cannot run pg_ctl");
        if !out.status.success() {
            panic!(
                "test support: pg_ctl {} failed ({}) for {}:\n{}\n--- server log tail ---\n{}",
                args[0],
                out.status,
                self.data.display(),
                both(&out),
                self.log_tail(40)
            );
        }
    }

    /// A command running PostgreSQL tool `name`, as `postgres` when root.
    fn tool(&self, name: &str) -> Command {
        let mut cmd = tools().command(name);
        cmd.current_dir(&self.dir).stdin(Stdio::null());
        cmd
    }
}

impl Drop for Cluster {
    /// Closes the guardian's pipe and waits while it stops the server and
    /// removes the directory.
    fn drop(&mut self) {
        let guardian = self.guardian.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some((mut child, stdin)) = guardian.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// Where the PostgreSQL tools are and whom they must run as.
struct Tools {
    /// The directory holding `initdb`, `pg_ctl`, `postgres`, `psql`.
    bin: PathBuf,
    /// `Some((uid, gid))` of the `postgres` user when this process is root.
    run_as: Option<(u32, u32)>,
}

impl Tools {
    /// A command for tool `name`, wrapped in `runuser -u postgres --` as root.
    fn command(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        match self.run_as {
            Some(_) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", "postgres", "--"]).arg(path);
                cmd
            }
            None => Command::new(path),
        }
    }
}

/// The PostgreSQL tools, located once per process.
fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let root = fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .expect("test support: cannot stat /proc/self to learn the effective uid");
        let run_as = root.then(|| (id_of("-u"), id_of("-g")));
        Tools {
            bin: find_bin_dir(),
            run_as,
        }
    })
}

/// The directory holding the PostgreSQL server tools: `$NR_TEST_PG_BIN`,
/// else where `initdb` on `PATH` really lives, else the highest version under
/// `/usr/lib/postgresql/*/bin`.
fn find_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NR_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("initdb"))
            .find(|initdb| initdb.is_file())
    });
    if let Some(initdb) = on_path {
        let real = fs::canonicalize(&initdb).unwrap_or(initdb);
        return real
            .parent()
            .expect("initdb has a parent dir")
            .to_path_buf();
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "test support: no PostgreSQL server tools: initdb is neither on PATH nor under \
             /usr/lib/postgresql/*/bin (install the server package, set NR_TEST_PG_BIN, or set \
             DATABASE_URL to use an existing server)"
        )
    })
}

/// `id <flag> postgres`: the uid or gid of the `postgres` user.
fn id_of(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .expect("test support: cannot run `id`");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| {
            panic!(
                "test support: running as root but there is no `postgres` user to run \
                 initdb as ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
}

/// A loopback TCP port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("test support: cannot bind 127.0.0.1:0 to find a free port")
        .port()
}

/// The guardian script: wait for the pipe to close, then stop the server and
/// remove the directory. `$1` = data dir, `$2` = temp dir, the rest = the
/// `pg_ctl` command. It ignores terminal signals so that a Ctrl-C aimed at
/// `cargo test` does not kill it before it has cleaned up.
const GUARDIAN: &str = r#"trap '' INT HUP QUIT
data=$1; dir=$2; shift 2
cat >/dev/null
if [ -f "$data/postmaster.pid" ]; then "$@" stop -D "$data" -m immediate -w -t 60; fi
rm -rf "$dir""#;

/// Spawns the guardian of `dir` in its own process group, with output
/// discarded so it never holds cargo's pipes open.
fn spawn_guardian(tools: &Tools, dir: &Path, data: &Path) -> (Child, ChildStdin) {
    let stop = tools.command("pg_ctl");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(GUARDIAN)
        .arg("nr-test-pg-guardian")
        .arg(data)
        .arg(dir)
        .arg(stop.get_program())
        .args(stop.get_args())
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .expect("test support: cannot spawn the cleanup guardian (sh)");
    let stdin = child.stdin.take().expect("guardian stdin is piped");
    (child, stdin)
}

/// A command's stdout and stderr, for panic messages.
fn both(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
