//! The shape of the house, kept by a test: every module of `src/` imports
//! only from its own room or from rooms on a lower layer, and no two
//! modules import each other (a module and its own submodules excepted: a
//! room's `mod.rs` may use its parts, and they the words it defines).
//! Run it to see the shape: `cargo test --test architecture`.
//!
//! What counts as an import: every path that names the crate (`crate::a::b`,
//! in `use` lines and in code, `use crate::{a, b}` groups included) and
//! every `super::` path, resolved to the deepest module of `src/` it names.
//! Comments, string literals and the `#[cfg(test)]` part at the end of a
//! file are left out. The layers are those of docs/architecture.md
//! "The house".

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each room (a top-level module of `src/`) and its layer: a room may
/// import from its own layer (not back: no two modules import each other)
/// and from those below, never from above.
const LAYERS: &[(&str, u8)] = &[
    // Front doors.
    ("main", 5),
    ("cli", 5),
    ("api", 5),
    ("console", 5),
    ("sink", 5),
    // The daemon.
    ("service", 4),
    // What the daemon and the front doors do.
    ("reconcile", 3),
    ("ops", 3),
    // Sending and sharing the work.
    ("delivery", 2),
    ("shard", 2),
    // The database and the leader's lock.
    ("db", 1),
    ("lock", 1),
    ("fence", 1),
    // Pure leaves and shared words.
    ("config", 0),
    ("state", 0),
    ("rate_limit", 0),
    ("secrets", 0),
    ("http_server", 0),
    ("exit", 0),
];

/// The crate root only declares the rooms.
const ROOT: &str = "lib";

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` → `a::b`; `src/a/mod.rs` → `a`; `src/lib.rs` → `lib`.
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix(src()).expect("under src/");
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without comments, string literals and its
/// `#[cfg(test)]` part.
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i + 1 < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('"', '\n'); a lifetime has no closing quote.
            let end = text[i + 1..].find('\'').map_or(b.len(), |e| i + 1 + e + 1);
            i = end;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The paths after each `prefix` in `code` (`crate::a::b::C` → `a::b::C`),
/// with `use crate::{a, b::c}` groups expanded.
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().last();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split([',', '{', '}', ' ', '\n']) {
                if !item.is_empty() && item != "self" {
                    found.push(item.to_string());
                }
            }
            continue;
        }
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        if !path.is_empty() {
            found.push(path);
        }
    }
    found
}

/// The deepest module of `modules` that `path` (from the crate root) names.
fn resolve(path: &[&str], modules: &BTreeSet<String>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| modules.contains(m))
}

fn room(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

/// Whether one module is the other or a descendant of it.
fn related(a: &str, b: &str) -> bool {
    a == b || a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"))
}

/// Module → the modules it imports, and the file of each module.
fn imports() -> (
    BTreeMap<String, BTreeSet<String>>,
    BTreeMap<String, PathBuf>,
) {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let paths: BTreeMap<String, PathBuf> = files.into_iter().map(|f| (module_of(&f), f)).collect();
    let modules: BTreeSet<String> = paths.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (module, file) in &paths {
        let code = code_of(&std::fs::read_to_string(file).expect("read a source file"));
        let mut to = BTreeSet::new();
        for p in paths_after(&code, "crate::") {
            let parts: Vec<&str> = p.split("::").filter(|s| !s.is_empty()).collect();
            to.extend(resolve(&parts, &modules));
        }
        let parent: Vec<&str> = match module.rsplit_once("::") {
            Some((parent, _)) => parent.split("::").collect(),
            None => Vec::new(),
        };
        for p in paths_after(&code, "super::") {
            let mut parts = parent.clone();
            parts.extend(p.split("::").filter(|s| !s.is_empty() && *s != "*"));
            match resolve(&parts, &modules) {
                Some(m) => {
                    to.insert(m);
                }
                None if !parent.is_empty() => {
                    to.insert(parent.join("::"));
                }
                None => {}
            }
        }
        to.remove(module);
        graph.insert(module.clone(), to);
    }
    (graph, paths)
}

#[test]
fn every_room_has_a_layer() {
    let (graph, _) = imports();
    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let missing: BTreeSet<&str> = graph
        .keys()
        .map(|m| room(m))
        .filter(|r| *r != ROOT && !layers.contains_key(r))
        .collect();
    assert!(
        missing.is_empty(),
        "rooms without a layer (add them to LAYERS here and to docs/architecture.md \"The house\"): {missing:?}"
    );
}

#[test]
fn imports_run_one_way_and_no_two_modules_import_each_other() {
    let (graph, paths) = imports();
    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let file = |m: &str| {
        paths[m]
            .strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")))
            .unwrap_or(&paths[m])
            .display()
            .to_string()
    };
    let mut wrong = Vec::new();
    for (from, tos) in &graph {
        if from == ROOT {
            continue;
        }
        for to in tos {
            let (a, b) = (room(from), room(to));
            if let (Some(la), Some(lb)) = (layers.get(a), layers.get(b)) {
                if a != b && lb > la {
                    wrong.push(format!(
                        "{} imports `{to}`: room `{b}` (layer {lb}) is above `{a}` (layer {la})",
                        file(from)
                    ));
                }
            }
            if from < to && !related(from, to) && graph.get(to).is_some_and(|t| t.contains(from)) {
                wrong.push(format!(
                    "{} imports `{to}` and {} imports `{from}`: two modules import each other",
                    file(from),
                    file(to)
                ));
            }
        }
    }
    let mut rooms: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (from, tos) in &graph {
        for to in tos {
            if room(from) != room(to) && from != ROOT {
                rooms.entry(room(from)).or_default().insert(room(to));
            }
        }
    }
    for (a, tos) in &rooms {
        for b in tos {
            if a < b && rooms.get(b).is_some_and(|t| t.contains(a)) {
                wrong.push(format!("rooms `{a}` and `{b}` import each other"));
            }
        }
    }
    assert!(wrong.is_empty(), "the house leans:\n{}", wrong.join("\n"));
    // What the shape is, for whoever runs it to look.
    for (a, tos) in &rooms {
        println!(
            "{a} -> {}",
            tos.iter().copied().collect::<Vec<_>>().join(", ")
        );
    }
}

#[test]
fn the_checker_sees_an_import_in_code_and_in_a_group_but_not_in_a_comment() {
    let code = code_of(
        "use crate::{config::Config, db};\n// crate::cli::run\nfn f() { crate::lock::x(); let s = \"crate::api\"; }\n",
    );
    let mut found = paths_after(&code, "crate::");
    found.sort();
    assert_eq!(found, vec!["config::Config", "db", "lock::x"]);
}
