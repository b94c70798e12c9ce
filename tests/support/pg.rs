//! One database per test on one PostgreSQL server per test process.
//!
//! The server is `DATABASE_URL` when set, else a [`Cluster`] started lazily the
//! first time a test asks for a database and cleaned up by its guardian when
//! the process ends. [`fresh_db`] creates an empty database; [`migrated_db`]
//! clones a template database that was migrated once per process, which is
//! much faster than migrating every test's database. A [`TestDb`] drops its
//! database when dropped, so a long suite does not pile them up. Starting and
//! cleaning up the cluster itself is `cluster.rs`'s business.
//!
//! With `DATABASE_URL`, the databases this process created (including the
//! template) are dropped at process exit by a `psql` guardian when `psql` is
//! on `PATH`; without `psql` a killed test process may leave some behind.

use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use postgres::{Client, NoTls};

use super::cluster::Cluster;

/// The schema the daemon's migrations create in the template database.
pub const SCHEMA: &str = "notification";

/// A database of its own for one test; dropped (`WITH (FORCE)`) on drop.
pub struct TestDb {
    /// Connection URL of this database, as the daemon's config takes it.
    pub url: String,
    /// The database name, `nr_test_<pid>_<counter>`.
    pub name: String,
}

impl TestDb {
    /// A new connection to this database (no TLS, 10 s connect timeout).
    pub fn client(&self) -> Client {
        connect(&self.url)
    }
}

impl Drop for TestDb {
    /// Drops the database, best effort: a failure here must not turn a test's
    /// panic into an abort, so it is ignored.
    fn drop(&mut self) {
        let _ = server().exec(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ));
    }
}

/// A new, empty database with a unique name.
pub fn fresh_db() -> TestDb {
    server().create(None)
}

/// A new database holding the daemon's migrated schema (`notification`),
/// cloned from a template migrated once per process.
pub fn migrated_db() -> TestDb {
    let server = server();
    let template = server.template.get_or_init(|| {
        let name = format!("nr_test_{}_tmpl", std::process::id());
        server
            .exec(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .and_then(|()| server.exec(&format!("CREATE DATABASE \"{name}\"")))
            .unwrap_or_else(|e| {
                panic!("test support: cannot create template database {name}: {e}")
            });
        let mut client = connect(&url_for(&server.base, &name));
        notification_reconciler::db::migrate::run(&mut client, SCHEMA)
            .unwrap_or_else(|e| panic!("test support: migrating template database {name}: {e}"));
        // The template must have no sessions when it is cloned.
        drop(client);
        name
    });
    server.create(Some(template))
}

/// The per-process cluster (started if need be), or `None` when
/// `DATABASE_URL` names the server instead.
pub fn shared_cluster() -> Option<&'static Cluster> {
    server().cluster.as_ref()
}

/// The server the test databases live on.
struct Server {
    /// The cluster this process started, unless `DATABASE_URL` is set.
    cluster: Option<Cluster>,
    /// URL of the maintenance database used to create and drop databases.
    base: String,
    /// One maintenance connection; its lock also serialises `CREATE
    /// DATABASE`, since concurrent clones of one template fail.
    admin: Mutex<Option<Client>>,
    /// The migrated template's name, once created.
    template: OnceLock<String>,
    /// With `DATABASE_URL`: the pipe of the `psql` guardian, if any.
    _guardian: Option<ChildStdin>,
}

/// The server, started on first use.
fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(base) => Server {
            _guardian: spawn_external_guardian(&base),
            cluster: None,
            base,
            admin: Mutex::new(None),
            template: OnceLock::new(),
        },
        Err(_) => {
            let cluster = Cluster::start_dedicated();
            Server {
                base: cluster.url(),
                cluster: Some(cluster),
                admin: Mutex::new(None),
                template: OnceLock::new(),
                _guardian: None,
            }
        }
    })
}

impl Server {
    /// Creates a uniquely named database, cloned from `template` if given.
    fn create(&self, template: Option<&str>) -> TestDb {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "nr_test_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let sql = match template {
            Some(t) => format!("CREATE DATABASE \"{name}\" TEMPLATE \"{t}\""),
            None => format!("CREATE DATABASE \"{name}\""),
        };
        self.exec(&sql)
            .unwrap_or_else(|e| panic!("test support: {sql} failed: {e}"));
        TestDb {
            url: url_for(&self.base, &name),
            name,
        }
    }

    /// Runs `sql` on the maintenance connection, reconnecting if it broke.
    fn exec(&self, sql: &str) -> Result<(), postgres::Error> {
        let mut admin = self.admin();
        let client = admin.get_or_insert_with(|| connect(&self.base));
        client.batch_execute(sql)
    }

    /// The locked maintenance connection slot, emptied if the connection is
    /// closed; a poisoned lock is taken over (the slot is still consistent).
    fn admin(&self) -> MutexGuard<'_, Option<Client>> {
        let mut admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        if admin.as_ref().is_some_and(Client::is_closed) {
            *admin = None;
        }
        admin
    }
}

/// Connects to `url` without TLS, with a 10 s connect timeout; panics saying
/// which URL failed.
pub fn connect(url: &str) -> Client {
    let mut config: postgres::Config = url
        .parse()
        .unwrap_or_else(|e| panic!("test support: bad database URL {url}: {e}"));
    config.connect_timeout(Duration::from_secs(10));
    config
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("test support: cannot connect to {url}: {e}"))
}

/// `base` with its database replaced by `dbname`; handles both URLs and
/// `key=value` connection strings.
fn url_for(base: &str, dbname: &str) -> String {
    if base.starts_with("postgres://") || base.starts_with("postgresql://") {
        let mut url = url::Url::parse(base)
            .unwrap_or_else(|e| panic!("test support: bad DATABASE_URL {base}: {e}"));
        url.set_path(&format!("/{dbname}"));
        url.into()
    } else {
        format!("{base} dbname={dbname}")
    }
}

/// The external-server guardian: at process exit, drop every database named
/// `nr_test_<pid>_*`. `$1` is the pid; the URL is passed in the environment
/// so that it does not show in `ps`.
const EXTERNAL_GUARDIAN: &str = r#"trap '' INT HUP QUIT
cat >/dev/null
psql -X -q -d "$NR_TEST_ADMIN_URL" <<EOF
SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', datname)
  FROM pg_database WHERE datname LIKE 'nr\_test\_$1\_%' \gexec
EOF"#;

/// Spawns the `psql` guardian for an external server, or `None` when `psql`
/// is not on `PATH`.
fn spawn_external_guardian(base: &str) -> Option<ChildStdin> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|dir| dir.join("psql").is_file())?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(EXTERNAL_GUARDIAN)
        .arg("nr-test-db-guardian")
        .arg(std::process::id().to_string())
        .env("NR_TEST_ADMIN_URL", base)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()?;
    child.stdin.take()
}
