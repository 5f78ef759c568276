//! The engine's boundary, enforced: `src/engine` decides and never acts. Its
//! production code (everything before a file's `#[cfg(test)]`) names no
//! Kubernetes client, no network, no file system, no process and no clock —
//! callers pass the time in and do the I/O. Nor does it name a `k8s_openapi`
//! type: it reads selectors through its own `LabelQuery`, times as jiff
//! `Timestamp`s and `maxConcurrent` as its own `MaxConcurrent`. (It still
//! reads and writes the CRD types of `crate::api`, whose fields hold some
//! `k8s_openapi` values: ARCHITECTURE.md says which.)

use std::path::{Path, PathBuf};

/// What the engine's production code must not name, and why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("kube::", "a Kubernetes client"),
    (
        "k8s_openapi",
        "Kubernetes API types (the engine has its own)",
    ),
    ("use kube", "a Kubernetes client"),
    ("reqwest", "the network"),
    ("tokio", "an async runtime"),
    ("std::net", "the network"),
    ("std::fs", "the file system"),
    ("std::process", "processes"),
    ("::now()", "a clock of its own"),
    ("SystemTime", "a clock of its own"),
];

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("the engine's directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

#[test]
fn the_engine_names_no_client_network_file_process_or_clock() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine");
    let files = rust_files(&root);
    assert!(files.len() > 20, "the engine's files: {files:?}");
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a source file");
        let production = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (n, line) in production.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for (word, what) in FORBIDDEN {
                if code.contains(word) {
                    let name = file.strip_prefix(&root).unwrap_or(file).display();
                    found.push(format!("{name}:{}: {what} ({word})", n + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the engine reaches out:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_what_it_forbids() {
    // The check itself must be able to fail: a line naming a client is
    // caught, a comment mentioning one is not.
    let caught = |line: &str| {
        let code = line.split("//").next().unwrap_or_default();
        FORBIDDEN.iter().any(|(word, _)| code.contains(word))
    };
    assert!(caught("    let pods: kube::Api<Pod> = todo!();"));
    assert!(caught("    let bytes = std::fs::read(path)?;"));
    assert!(caught("    let now = jiff::Timestamp::now();"));
    assert!(!caught("    // the caller reads std::fs, never the engine"));
}
