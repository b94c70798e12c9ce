//! A real Svix OSS server (v2.0.0) for the tests and the benchmark, when
//! `SVIX_SERVER` names its binary: its own database on the test cluster,
//! queue and cache in memory, a loopback port, a short retry schedule, and
//! delivery only to loopback receivers (`whitelist_subnets`). Started with
//! `migrate`, `jwt generate` (the bearer token), then the server; stopped
//! (and restarted on the same port and database) by PID; killed on drop.
//! [`binary`] prints a loud SKIPPED line to the real stderr when the
//! variable is unset, so a suite without the server passes visibly.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::pg::{fresh_db, TestDb};

/// The Svix server binary, or `None` after a loud SKIPPED line.
pub fn binary(suite: &str) -> Option<PathBuf> {
    match std::env::var_os("SVIX_SERVER").filter(|v| !v.is_empty()) {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "SVIX_SERVER={} is not a file",
                path.display()
            );
            Some(path)
        }
        None => {
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!!! SKIPPED: {suite}: SVIX_SERVER is not set (build the Svix server v2.0.0 and set SVIX_SERVER to its binary); nothing was tested against Svix !!!!!\n"
            );
            None
        }
    }
}

/// A running Svix server.
pub struct SvixServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
    /// The bearer token (`jwt generate`).
    pub token: String,
    _db: TestDb,
}

impl SvixServer {
    /// Starts a fresh server (its own database, migrated) and waits until
    /// it answers its health check.
    pub fn start(bin: &Path) -> SvixServer {
        let db = fresh_db();
        let dir = tempfile::tempdir().expect("svix: temp dir");
        let port = free_port();
        let config = format!(
            "listen_address = \"127.0.0.1:{port}\"\n\
             jwt_secret = \"test-secret-for-svix-{port}\"\n\
             db_dsn = \"{}\"\n\
             queue_type = \"memory\"\n\
             cache_type = \"memory\"\n\
             whitelist_subnets = [\"127.0.0.1/32\"]\n\
             whitelabel_headers = true\n\
             retry_schedule = [1, 1, 2]\n\
             log_level = \"info\"\n",
            db.url.replace("postgres://", "postgresql://")
        );
        fs::write(dir.path().join("config.toml"), config).expect("svix: write config");
        let run = |args: &[&str]| {
            let out = Command::new(bin)
                .args(args)
                .current_dir(dir.path())
                .env_remove("DATABASE_URL")
                .output()
                .expect("svix: run the server binary");
            assert!(
                out.status.success(),
                "svix-server {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        run(&["migrate"]);
        let out = run(&["jwt", "generate"]);
        let token = out
            .lines()
            .find_map(|l| l.strip_prefix("Token (Bearer): "))
            .unwrap_or_else(|| panic!("svix: no token in {out:?}"))
            .trim()
            .to_owned();
        let mut server = SvixServer {
            bin: bin.to_owned(),
            dir,
            child: None,
            port,
            token,
            _db: db,
        };
        server.resume();
        server
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Writes the token into a file (for `[svix] token_file`); its path.
    pub fn token_file(&self) -> PathBuf {
        let path = self.dir.path().join("token");
        fs::write(&path, &self.token).expect("svix: write token");
        path
    }

    /// The `[delivery] provider` line and the `[svix]` section for a
    /// daemon config.
    pub fn config_section(&self) -> String {
        format!(
            "[svix]\nurl = \"{}\"\ntoken_file = \"{}\"\ntimeout = \"5s\"\n",
            self.url(),
            self.token_file().display()
        )
    }

    /// Stops the server (kill -9).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-9", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Starts the server again (same port, database and token) and waits
    /// until it answers.
    pub fn resume(&mut self) {
        let log = fs::File::create(self.dir.path().join("server.log")).expect("svix: log");
        let out = log.try_clone().expect("svix: log");
        let child = Command::new(&self.bin)
            .current_dir(self.dir.path())
            .env_remove("DATABASE_URL")
            .stdout(out)
            .stderr(log)
            .spawn()
            .expect("svix: start the server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.get("/api/v1/health/ping/");
            if (200..300).contains(&status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "svix: no answer within 60 s (last: {status} {body}); log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `GET path` with the token: (status, JSON body or Null).
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.call("GET", path, None)
    }

    /// `DELETE path` with the token.
    pub fn delete(&self, path: &str) -> u16 {
        self.call("DELETE", path, None).0
    }

    /// `POST path` with a JSON body and the token.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.call("POST", path, Some(body))
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let url = format!("{}{path}", self.url());
        let auth = format!("Bearer {}", self.token);
        let result = match (method, body) {
            ("GET", _) => agent.get(&url).header("authorization", &auth).call(),
            ("DELETE", _) => agent.delete(&url).header("authorization", &auth).call(),
            (_, Some(b)) => agent
                .post(&url)
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .send(b.to_string()),
            (_, None) => agent.post(&url).header("authorization", &auth).send_empty(),
        };
        match result {
            Ok(mut r) => {
                let status = r.status().as_u16();
                let text = r.body_mut().read_to_string().unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or_default())
            }
            Err(e) => (0, serde_json::Value::String(e.to_string())),
        }
    }

    /// Every message of application `app` (uid), newest first.
    pub fn messages(&self, app: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut iterator = String::new();
        loop {
            let (status, body) = self.get(&format!(
                "/api/v1/app/{app}/msg?limit=250&with_content=false{iterator}"
            ));
            assert_eq!(status, 200, "svix: listing messages of {app}: {body}");
            out.extend(body["data"].as_array().cloned().unwrap_or_default());
            match (body["done"].as_bool(), body["iterator"].as_str()) {
                (Some(false), Some(it)) => iterator = format!("&iterator={it}"),
                _ => return out,
            }
        }
    }
}

impl Drop for SvixServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("svix: a free port")
}
