//! The module graph points one way, along a request's flow. Every `crate::module` reference in
//! `src/` may name only a module earlier in [`FLOW`]; so there is no import cycle and no stage
//! reaches into a later one. A failure names the file, the line and the reference.
//!
//! To add a module, put it in `FLOW` where it belongs (and in `src/lib.rs`, in the same order).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test or bench that cannot set up panics with a message: that is its failure report"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The modules in flow order: foundations, then the request stages in the order a request meets
/// them, then the compiled config, the orchestrator, and the process around it. `main.rs` (the
/// process shell) and `lib.rs` (the module list) may name anything.
const FLOW: &[&str] = &[
    // What one connection knows; the vocabulary of route classes; the metrics every stage reports to;
    // the entries-and-bytes budgets every in-memory cache is held to; per-request header values; a
    // request's headers as the stages read them.
    "conn", "route", "metrics", "bounded", "values", "head", //
    // The stages, in request order (classify happens before identify, but the two share nothing).
    "identity", "limit", "wire", "upstream", "body", "forward", "headers", "error", "access", "top", //
    // Config: schema and reader, TLS key loading, the compiled snapshot.
    "tls", "config", "snapshot", //
    // The orchestrator, then what runs it.
    // (`h1`: tiergate's own HTTP/1.1 connections, which `server` starts and hands to hyper.)
    "proxy", "admin", "reload", "h1", "server", "app", "demo", "cli",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/limit/redis.rs` → `limit`); `None` for the crate
/// root and the binary.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// `crate::x` references in code (comments and strings stripped line by line, well enough for this
/// codebase: a reference inside a string literal would be a false positive, and none exists).
fn references(text: &str) -> Vec<(usize, String)> {
    let mut refs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                refs.push((n + 1, name));
            }
            rest = after;
        }
        // `use crate::{a, b}` groups.
        if let Some(group) = code.split("use crate::{").nth(1) {
            for part in group.split(',') {
                let name: String = part.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    refs.push((n + 1, name));
                }
            }
        }
    }
    refs
}

#[test]
fn modules_depend_only_on_modules_earlier_in_the_flow() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let rank = |m: &str| FLOW.iter().position(|f| *f == m);
    let mut problems = Vec::new();
    let mut edges: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else { continue };
        let Some(from) = rank(&module) else {
            problems.push(format!("{}: module `{module}` is not in FLOW (tests/architecture.rs)", file.display()));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (line, target) in references(&text) {
            if target == module {
                continue;
            }
            edges.entry(module.clone()).or_default().push(target.clone());
            match rank(&target) {
                None => {
                    problems.push(format!("{}:{line}: `crate::{target}` names a module not in FLOW", file.display()))
                }
                Some(to) if to > from => problems.push(format!(
                    "{}:{line}: `crate::{target}` points against the flow ({module} comes before {target})",
                    file.display()
                )),
                Some(_) => {}
            }
        }
    }
    assert!(problems.is_empty(), "module graph:\n{}", problems.join("\n"));
    assert!(!edges.is_empty(), "the scan found no references at all: the test itself is broken");
}

#[test]
fn lib_lists_the_modules_in_flow_order() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let listed: Vec<&str> = lib.lines().filter_map(|l| l.trim().strip_prefix("pub mod ")?.strip_suffix(';')).collect();
    assert_eq!(listed, FLOW, "src/lib.rs lists its modules in flow order");
}

#[test]
fn the_scanner_sees_a_back_edge() {
    // The checker must be able to fail: a reference from an early module to a later one.
    let refs = references(
        "use crate::proxy::Proxy; // crate::ignored\nlet x = crate::app::start;\nuse crate::{limit, route::Class};",
    );
    let names: Vec<&str> = refs.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["proxy", "app", "limit", "route"]);
}
