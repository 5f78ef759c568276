//! The Dockerfile cannot be built on these machines (no Docker), so its one
//! fragile part is checked here: the dependency-caching stage copies only
//! Cargo.toml and Cargo.lock, and Cargo refuses to read a manifest whose
//! declared targets have no source file. Every `[lib]`, `[[bin]]`,
//! `[[bench]]`, `[[test]]` and `[[example]]` target therefore needs a
//! placeholder in that stage, and its directory must reach the final build.

use std::collections::BTreeSet;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{name}"))
        .unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

/// The source path of every target Cargo.toml declares: its `path`, else
/// Cargo's default for the kind.
fn declared_targets(manifest: &str) -> Vec<String> {
    let mut package = String::new();
    // (section, name, path) of the target being read.
    let mut targets: Vec<(String, Option<String>, Option<String>)> = Vec::new();
    let mut section = String::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.trim_matches(|c| c == '[' || c == ']').to_owned();
            if matches!(
                section.as_str(),
                "lib" | "bin" | "bench" | "test" | "example"
            ) {
                targets.push((section.clone(), None, None));
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"').to_owned();
        match (section.as_str(), key.trim()) {
            ("package", "name") => package = value,
            ("lib" | "bin" | "bench" | "test" | "example", k @ ("name" | "path")) => {
                if let Some(t) = targets.last_mut() {
                    if k == "name" {
                        t.1 = Some(value);
                    } else {
                        t.2 = Some(value);
                    }
                }
            }
            _ => {}
        }
    }
    targets
        .into_iter()
        .map(|(kind, name, path)| {
            path.unwrap_or_else(|| {
                let name = name.unwrap_or_else(|| package.clone());
                match kind.as_str() {
                    "lib" => "src/lib.rs".to_owned(),
                    "bin" if name == package => "src/main.rs".to_owned(),
                    "bin" => format!("src/bin/{name}.rs"),
                    "bench" => format!("benches/{name}.rs"),
                    "test" => format!("tests/{name}.rs"),
                    _ => format!("examples/{name}.rs"),
                }
            })
        })
        .collect()
}

/// The `.rs` paths the dependency stage names: from `COPY Cargo.toml` to the
/// end of the `RUN` that first runs `cargo build`. A loop over bare names
/// (`benches/$b.rs`) names nothing, on purpose: the list must be explicit.
fn placeholders(dockerfile: &str) -> BTreeSet<String> {
    let text = dockerfile.replace("\\\n", " ");
    let mut stage = Vec::new();
    for line in text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("COPY Cargo.toml"))
    {
        stage.push(line);
        if line.contains("cargo build") {
            break;
        }
    }
    stage
        .iter()
        .flat_map(|l| l.split(|c: char| c.is_whitespace() || c == ';' || c == '"' || c == '\''))
        .filter(|t| t.ends_with(".rs"))
        .map(str::to_owned)
        .collect()
}

fn missing(manifest: &str, dockerfile: &str) -> Vec<String> {
    let have = placeholders(dockerfile);
    declared_targets(manifest)
        .into_iter()
        .filter(|p| !have.contains(p))
        .collect()
}

#[test]
fn every_declared_target_has_a_placeholder_in_the_dependency_stage() {
    let manifest = read("Cargo.toml");
    let dockerfile = read("Dockerfile");
    let targets = declared_targets(&manifest);
    assert!(
        targets.iter().any(|t| t == "benches/remediation.rs"),
        "the manifest reader missed a bench: {targets:?}"
    );
    let missing = missing(&manifest, &dockerfile);
    assert!(
        missing.is_empty(),
        "Cargo.toml declares targets the Dockerfile's dependency stage has no placeholder for \
         (cargo build fails reading the manifest): {missing:?}"
    );
}

#[test]
fn a_missing_placeholder_is_reported() {
    // The stage as it was when `[[bench]] remediation` was added: the new
    // bench is reported, and so is the looped `engine` (only explicit paths
    // count, so that this check can read the list).
    let before = "COPY Cargo.toml Cargo.lock ./\n\
        RUN mkdir -p src benches \\\n \
         && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \\\n \
         && for b in engine controller; do echo 'fn main() {}' > benches/$b.rs; done \\\n \
         && cargo build --release --locked\n";
    let manifest = "[package]\nname = \"patchloop\"\n[lib]\npath = \"src/lib.rs\"\n\
        [[bin]]\nname = \"patchloop\"\n[[bench]]\nname = \"engine\"\nharness = false\n\
        [[bench]]\nname = \"remediation\"\nharness = false\n";
    assert_eq!(
        missing(manifest, before),
        ["benches/engine.rs", "benches/remediation.rs"]
    );
}

#[test]
fn every_target_directory_reaches_the_build_and_is_not_ignored() {
    let dockerfile = read("Dockerfile");
    let ignored = read(".dockerignore");
    for target in declared_targets(&read("Cargo.toml")) {
        let dir = target.split('/').next().unwrap_or_default();
        assert!(
            dockerfile
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("COPY {dir} "))),
            "the Dockerfile never copies {dir}/ (for {target})"
        );
        assert!(
            !ignored
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == dir),
            ".dockerignore excludes {dir}/ (for {target})"
        );
    }
}
