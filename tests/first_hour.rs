//! The first hour of a new user, point by point: where following README.md
//! and docs/ word for word tripped someone, each message must say what was
//! wrong, where it came from (flag, config file, environment variable) and
//! what to type next, with the exit code docs/cli.md gives; and the docs
//! must not send the reader to files that are not in the repository. One
//! test per point, named after it, through the real binary and a real
//! PostgreSQL; every connection goes to loopback.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use support::api::{call, call_with, daemon_with_api};
use support::bin::{assert_fails, Bin, NOWHERE_CONFIG};
use support::daemon::{config_toml, Daemon};
use support::{fresh_db, migrated_db};

/// A config file without `allow_networks` (the default guard), quiet logs.
const DEFAULT_GUARD: &str = "[log]\nlevel = \"warn\"\n";

/// `channel create` of a channel named `name` in acme to `url`.
fn create<'a>(name: &'a str, url: &'a str) -> [&'a str; 8] {
    [
        "channel",
        "create",
        "--namespace",
        "acme",
        "--name",
        name,
        "--url",
        url,
    ]
}

/// `line` contains every one of `needles`.
fn assert_has(line: &str, needles: &[&str]) {
    for n in needles {
        assert!(line.contains(n), "{n:?} missing from: {line}");
    }
}

/// `url` with its user set to `user` and no password.
fn with_user(url: &str, user: &str) -> String {
    let mut u = url::Url::parse(url).expect("test database URL");
    u.set_username(user).expect("set user");
    u.set_password(None).expect("clear password");
    u.to_string()
}

// 1. A local receiver: the refusal names the address, the file actually read
// and the exact lines to add; a host name resolving to loopback is refused
// at create time with the same message.
#[test]
fn loopback_refusal_shows_the_lines_to_add_to_the_file_read_also_for_localhost() {
    let db = migrated_db();
    let bin = Bin::with_config(DEFAULT_GUARD).env("DATABASE_URL", &db.url);
    let file = bin.dir().join("config.toml").display().to_string();
    for url in [
        "http://127.0.0.1:9/webhooks",
        "http://localhost:9/hook",
        "http://[::ffff:127.0.0.1]:9/x",
    ] {
        let line = bin.fails(2, &create("local", url));
        assert_has(
            &line,
            &[
                "--url",
                "127.0.0.1",
                "loopback",
                "delivery.allow_networks",
                &file,
                "`[delivery]`",
                "`allow_networks = [\"127.0.0.0/8\"]`",
                "sink",
            ],
        );
    }
    let line = bin.fails(2, &create("local", "http://localhost:9/hook"));
    assert_has(&line, &["localhost resolves to 127.0.0.1"]);
    // `channel update --url` is checked the same way.
    let allowed = Bin::for_database(&db.url);
    let id = allowed.create_channel("acme", "ok", "http://127.0.0.1:9/x", &[]);
    let line = bin.fails(
        2,
        &["channel", "update", &id, "--url", "http://localhost:9/y"],
    );
    assert_has(&line, &[&file, "`allow_networks = [\"127.0.0.0/8\"]`"]);

    // No config file read: the hint says to create ./config.toml.
    let none = Bin::without_config().env("DATABASE_URL", &db.url);
    let out = none
        .command(&create("local", "http://127.0.0.1:9/x"))
        .current_dir(none.dir())
        .output()
        .expect("run");
    let line = assert_fails(&out, 2, "create without a config file");
    assert_has(
        &line,
        &[
            "no config file was read",
            "./config.toml",
            "`allow_networks = [\"127.0.0.0/8\"]`",
        ],
    );
    // The README tells how to test with `sink` on 127.0.0.1.
    let readme = read("README.md");
    assert_has(
        &readme,
        &[
            "sink --listen 127.0.0.1",
            "allow_networks = [\"127.0.0.0/8\"]",
        ],
    );
}

// 2. `run` shows PostgreSQL's reason for refusing the login, like the
// one-shot commands.
#[test]
fn run_logs_why_the_database_refuses_the_login() {
    let db = migrated_db();
    let url = with_user(&db.url, "nr_no_such_role");
    // The role's name appears quoted only in PostgreSQL's own message (the
    // URL in the line names it unquoted).
    let reason = "\"nr_no_such_role\"";
    let line = Bin::for_database(&url).fails(1, &["status"]);
    assert_has(&line, &["cannot connect to the database", reason]);
    // From the file, the file and key are named.
    let file_bin = Bin::with_config(&format!("[database]\nurl = \"{url}\"\n"));
    let file = file_bin.dir().join("config.toml").display().to_string();
    let line = file_bin.fails(1, &["status"]);
    assert_has(
        &line,
        &[&format!("{file}: database.url: cannot connect"), reason],
    );
    let mut d = Daemon::run("bad-login", &config_toml(&url, 1, "1s", "", ""), &[]);
    assert!(
        d.wait_line(reason, Duration::from_secs(30)),
        "no reason in run's log: {}",
        d.stderr()
    );
    d.stop(Duration::from_secs(30));
}

// 3. DATABASE_URL errors name DATABASE_URL and never show the password,
// whatever its form.
#[test]
fn database_url_errors_name_the_variable_and_never_show_the_password() {
    let bin = |url: &str| Bin::with_config(DEFAULT_GUARD).env("DATABASE_URL", url);
    for (url, hint) in [
        ("app:s3cr3t@127.0.0.1/app", "postgres://"),
        ("host=127.0.0.1 user=app password=s3cr3t", "postgres://"),
        ("host=127.0.0.1 password='s3 cr3t' user=app", "postgres://"),
        ("postgres://app:s3cr3t@x@127.0.0.1/app", "%40"),
    ] {
        let b = bin(url);
        let file = b.dir().join("config.toml").display().to_string();
        let line = b.fails(2, &["status"]);
        assert_has(&line, &["DATABASE_URL", hint]);
        assert!(!line.contains("s3"), "password shown: {line}");
        assert!(!line.contains(&file), "blames the file: {line}");
    }
    // No config file at all: the variable, not "<defaults …>", is named.
    let none = Bin::without_config().env("DATABASE_URL", "app:s3cr3t@127.0.0.1/app");
    let out = none
        .command(&["status"])
        .current_dir(none.dir())
        .output()
        .expect("run");
    let line = assert_fails(&out, 2, "status without a config file");
    assert_has(&line, &["environment variable DATABASE_URL"]);
    assert!(!line.contains("defaults") && !line.contains("s3"), "{line}");
    // A well-formed URL to nowhere: exit 1, the password hidden.
    let line = bin("postgres://app:s3cr3t@127.0.0.1:1/app").fails(1, &["status"]);
    assert_has(
        &line,
        &["error: DATABASE_URL: cannot connect", "app:***@127.0.0.1:1"],
    );
    assert!(!line.contains("s3"), "{line}");
}

// 4. The wrong database gets "run migrate" only with the database and host
// it would create the schema in.
#[test]
fn not_migrated_names_the_database_and_server_before_advising_migrate() {
    let db = fresh_db();
    let line = Bin::for_database(&db.url).fails(1, &["status"]);
    assert_has(
        &line,
        &[
            &format!("database \"{}\"", db.name),
            " on ",
            "as user",
            "notification-reconciler migrate",
            "DATABASE_URL",
        ],
    );
}

// 5. Ids are UUIDs; flags are named as typed; clap's suggestion is kept.
#[test]
fn ids_and_flags_say_what_to_type() {
    let db = migrated_db();
    let bin = Bin::for_database(&db.url);
    let line = bin.fails(2, &["event", "show", "in_1"]);
    assert_has(&line, &["in_1", "UUID", "event list"]);
    let line = bin.fails(2, &["event", "show", "5c0e8d21"]);
    assert_has(&line, &["UUID", "not a prefix"]);
    let unknown = "5c0e8d21-8f0b-4c1e-9f6a-2f1d3c4b5a69";
    let line = bin.fails(
        2,
        &[
            "rule",
            "create",
            "--namespace",
            "acme",
            "--name",
            "r",
            "--event-type",
            "t",
            "--channel",
            unknown,
        ],
    );
    assert_has(&line, &["--channel", unknown]);
    assert!(!line.contains("--channels"), "{line}");
    let line = bin.fails(2, &["channel", "create", "--headers", "X: y"]);
    assert_has(&line, &["--headers", "tip:", "'--header'"]);
    let line = bin.fails(2, &["channels", "list"]);
    assert_has(&line, &["channels", "tip:", "'channel'"]);
}

// 6. (API) An event matching no rule says so in the answer, as the command
// line does.
#[test]
fn an_api_event_matching_no_rule_says_so_in_the_answer() {
    let db = migrated_db();
    let bin = Bin::for_database(&db.url);
    let (_d, api) = daemon_with_api("A", &db.url, "");
    let acme = bin.ok(&["token", "create", "--name", "t", "--namespace", "acme"]);
    let acme = acme.trim();
    let a = call(
        api,
        "POST",
        "/v1/namespaces/acme/events",
        Some(acme),
        Some(&json!({"type": "invoice.paid", "payload": {"n": 1}})),
    );
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.json["ids"], json!([]), "{}", a.text);
    assert_eq!(a.json["rules_matched"], 0, "{}", a.text);
    let warning = a.json["warning"].as_str().unwrap_or_default();
    assert_has(warning, &["no active rule", "invoice.paid", "/rules"]);
    // The same through the idempotent path.
    let a = call_with(
        api,
        "POST",
        "/v1/namespaces/acme/events",
        Some(acme),
        Some(r#"{"type": "invoice.paid", "payload": {"n": 2}}"#),
        &[("idempotency-key", "k1")],
    );
    assert_eq!(a.json["rules_matched"], 0, "{}", a.text);
    // A rule matched: rules_matched counts it, no warning.
    let ch = bin.create_channel("acme", "c", "http://127.0.0.1:9/x", &[]);
    bin.create_rule("acme", "r", "invoice.paid", &[&ch], None);
    let a = call(
        api,
        "POST",
        "/v1/namespaces/acme/events",
        Some(acme),
        Some(&json!({"type": "invoice.paid", "payload": {"n": 3}})),
    );
    assert_eq!(a.json["rules_matched"], 1, "{}", a.text);
    assert!(a.json.get("warning").is_none(), "{}", a.text);
    // 10. (API) A duplicate channel name is created with a warning.
    let body = json!({"name": "c", "url": "http://127.0.0.1:9/y"});
    let a = call(
        api,
        "POST",
        "/v1/namespaces/acme/channels",
        Some(acme),
        Some(&body),
    );
    assert_eq!(a.status, 201, "{}", a.text);
    let warning = a.json["warning"].as_str().unwrap_or_default();
    assert_has(warning, &["already has a channel named \"c\"", &ch]);
}

// 8. (API) A token for another namespace says which namespace it is for
// (the caller's own token: that leaks nothing).
#[test]
fn a_token_for_another_namespace_says_which_namespace_it_is_for() {
    let db = migrated_db();
    let bin = Bin::for_database(&db.url);
    let (_d, api) = daemon_with_api("A", &db.url, "");
    let globex = bin.ok(&["token", "create", "--name", "g", "--namespace", "globex"]);
    let a = call(
        api,
        "GET",
        "/v1/namespaces/acme/channels",
        Some(globex.trim()),
        None,
    );
    assert_eq!(a.status, 404, "{}", a.text);
    let message = a.json["error"]["message"].as_str().unwrap_or_default();
    assert_has(message, &["\"acme\"", "token for namespace \"globex\""]);
}

// 7. A second `run`: it logs that it stands by and who leads, does not claim
// to release a lock it never held, and an api.listen in use says another
// instance may run there.
#[test]
fn a_second_run_says_it_stands_by_and_who_leads() {
    let db = migrated_db();
    let (mut leader, api) = daemon_with_api("leader", &db.url, "");
    assert!(
        leader.wait_line("/console/", Duration::from_secs(10)),
        "the API line shows no console URL: {}",
        leader.stderr()
    );
    let mut standby = Daemon::run("standby", &config_toml(&db.url, 1, "1s", "", ""), &[]);
    assert!(
        standby.wait_line("standing by", Duration::from_secs(30)),
        "{}",
        standby.stderr()
    );
    let log = standby.stderr();
    assert_has(&log, &["held by notification-reconciler", "takes over"]);
    standby.stop(Duration::from_secs(30));
    let log = standby.stderr();
    assert_has(&log, &["never held the lock"]);
    assert!(!log.contains("lock released"), "{log}");

    let same_port = config_toml(
        &db.url,
        1,
        "1s",
        "",
        &format!("[api]\nlisten = \"{api}\"\n"),
    );
    let mut third = Daemon::run("third", &same_port, &[]);
    let status = third.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", third.stderr());
    assert_has(
        &third.stderr(),
        &["api.listen", "another notification-reconciler instance"],
    );
    leader.stop(Duration::from_secs(30));
    assert_has(&leader.stderr(), &["lock released"]);
}

// 9. The docs stand alone: every file they name is in the repository.
#[test]
fn the_docs_name_no_file_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = repo_files(root);
    let mut docs = vec![root.join("README.md")];
    docs.extend(
        std::fs::read_dir(root.join("docs"))
            .expect("docs/")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "md")),
    );
    let mut missing = Vec::new();
    for doc in &docs {
        let text = std::fs::read_to_string(doc).expect("read doc");
        for name in file_references(&text) {
            let found = files.iter().any(|f| {
                f == &name || f.ends_with(&format!("/{name}")) || f.starts_with(&format!("{name}/"))
            });
            if !found {
                missing.push(format!("{}: {name}", doc.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "files not in the repository: {missing:#?}"
    );
    // The scan itself finds a file name that is not in the repository.
    assert_eq!(
        file_references("as DESIGN.md says (see src/x.rs, ./config.toml)"),
        ["DESIGN.md", "src/x.rs", "config.toml"]
    );
    // And the facts the issue found contradicted in README.md.
    let readme = read("README.md");
    assert!(!readme.contains("`0` = CPUs"), "README's workers default");
    assert_has(&readme, &["8 per CPU, at least 16"]);
}

// 9. `status` prints retention as the docs write it, in the docs' order.
#[test]
fn status_prints_retention_as_written_in_the_docs_order() {
    let db = migrated_db();
    let out = Bin::for_database(&db.url).ok(&["status"]);
    assert_has(&out, &["retention: keep finished 30d;"]);
    let pos = |prefix: &str| {
        out.lines()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{out}"))
    };
    let order = [
        pos("lock:"),
        pos("leader:"),
        pos("retention:"),
        pos("channels:"),
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "order {order:?}:\n{out}"
    );
    let docs = read("docs/cli.md");
    assert_has(&docs, &["retention: keep finished 30d;"]);
}

// 10. The smaller ones: a URL without a scheme or without its `//`, a
// duplicate channel name, and the sink's --config and "not verified".
#[test]
fn smaller_trips_say_what_to_type() {
    let db = migrated_db();
    let bin = Bin::for_database(&db.url);
    let line = bin.fails(2, &create("c", "example.com/webhooks"));
    assert_has(&line, &["--url", "https://example.com/webhooks"]);
    let line = bin.fails(2, &create("c", "http:/127.0.0.1/x"));
    assert_has(&line, &["--url", "//", "\"http://127.0.0.1/x\""]);

    let first = bin.create_channel("acme", "billing", "http://127.0.0.1:9/a", &[]);
    let out = bin.run(&create("billing", "http://127.0.0.1:9/b"));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_has(
        &stderr,
        &[
            "warning:",
            "already has a channel named \"billing\"",
            &first,
        ],
    );

    let port = support::net::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut sink = Daemon::spawn("sink", NOWHERE_CONFIG, &["sink", "--listen", &listen], &[]);
    assert!(
        sink.wait_line("sink listening", Duration::from_secs(10)),
        "{}",
        sink.stderr()
    );
    assert_has(
        &sink.stderr(),
        &["--config", "is not used", "signatures not verified"],
    );
    sink.kill9();
}

/// A file of the repository as text.
fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every file under `root` (paths relative to it, with `/`), without
/// `target/` and `.git/`.
fn repo_files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).expect("under root");
            let rel = rel.to_string_lossy().replace('\\', "/");
            if rel == "target" || rel == ".git" {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.push(rel);
            }
        }
    }
    out
}

/// The file names `text` mentions: words ending in a file extension the
/// repository uses, or starting with one of its folders; not URLs, not
/// absolute paths (`/etc/…`), not `@file` arguments and not build output
/// (`target/…`).
fn file_references(text: &str) -> Vec<String> {
    const EXTS: [&str; 12] = [
        ".md", ".rs", ".toml", ".sh", ".sql", ".json", ".js", ".css", ".html", ".png", ".svg",
        ".yml",
    ];
    const DIRS: [&str; 7] = [
        "src/", "tests/", "docs/", "scripts/", "benches/", "contrib/", ".ci/",
    ];
    let is_word = |c: char| c.is_ascii_alphanumeric() || "_./-".contains(c);
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text
        .char_indices()
        .chain(std::iter::once((text.len(), ' ')))
    {
        match (is_word(c), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                start = None;
                let before = text[..s].chars().next_back();
                let word = text[s..i].trim_end_matches('.');
                let word = word.strip_prefix("./").unwrap_or(word);
                // `host:8080/x.json`, `https://…`: part of a URL.
                if word.is_empty()
                    || before == Some(':')
                    || before == Some('@')
                    || word.starts_with('/')
                    || word.starts_with("target/")
                    || text[..s].ends_with("://")
                {
                    continue;
                }
                let looks_like_file = EXTS.iter().any(|e| word.ends_with(e))
                    || DIRS.iter().any(|d| word.starts_with(d));
                if looks_like_file {
                    out.push(word.trim_end_matches('/').to_string());
                }
            }
            _ => {}
        }
    }
    out
}
