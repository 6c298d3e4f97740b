//! Tidy checks: facts about the repository that the compiler does not check, kept true by a test
//! (rust-analyzer's "tidy" tests). Each failure message says what to change.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use mycelium_test_support::{rust_files, workspace_root};

/// The workspace's crates by short name (`broker` for `mycelium-broker`), with their manifests.
fn manifests() -> BTreeMap<String, toml::Table> {
    let crates = workspace_root().join("crates");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&crates).expect("crates/").flatten() {
        let manifest = entry.path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let table: toml::Table = text.parse().expect("a crate manifest parses");
        let name = entry.file_name().to_string_lossy().into_owned();
        out.insert(name.trim_start_matches("mycelium-").to_owned(), table);
    }
    out
}

fn normal_dependencies(manifest: &toml::Table) -> Vec<String> {
    manifest
        .get("dependencies")
        .and_then(toml::Value::as_table)
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

/// The arrows of the `text` block under "## Code map" in ARCHITECTURE.md, as (dependency,
/// dependent) pairs: `a <- b <- c` draws b -> a and c -> b; `{ a, b }` is a group.
fn drawn_edges(architecture: &str) -> BTreeSet<(String, String)> {
    let map = architecture
        .split("## Code map")
        .nth(1)
        .expect("ARCHITECTURE.md has a '## Code map' section");
    let block = map
        .split("```text")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the code map opens with a ```text block: the crate graph");
    let group = |token: &str| -> Vec<String> {
        token
            .trim()
            .trim_start_matches('{')
            .trim_end_matches('}')
            .split(',')
            .map(|n| n.split_whitespace().next().unwrap_or("").to_owned())
            .filter(|n| !n.is_empty())
            .collect()
    };
    let mut edges = BTreeSet::new();
    for line in block.lines().filter(|l| l.contains("<-")) {
        let tokens: Vec<Vec<String>> = line.split("<-").map(group).collect();
        for pair in tokens.windows(2) {
            for dependency in &pair[0] {
                for dependent in &pair[1] {
                    edges.insert((dependency.clone(), dependent.clone()));
                }
            }
        }
    }
    edges
}

/// Whether `from` reaches `to` along `edges` (dependent -> dependency).
fn reaches(edges: &BTreeSet<(String, String)>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut pending = vec![from.to_owned()];
    while let Some(node) = pending.pop() {
        if node == to {
            return true;
        }
        if seen.insert(node.clone()) {
            pending.extend(
                edges
                    .iter()
                    .filter(|(_, dependent)| *dependent == node)
                    .map(|(dependency, _)| dependency.clone()),
            );
        }
    }
    false
}

#[test]
fn crate_graph_is_the_documented_one() {
    let architecture =
        std::fs::read_to_string(workspace_root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let drawn = drawn_edges(&architecture);
    assert!(
        !drawn.is_empty(),
        "no arrows found in ARCHITECTURE.md's crate graph"
    );
    let manifests = manifests();
    let mut actual = BTreeSet::new();
    for (name, manifest) in &manifests {
        for dependency in normal_dependencies(manifest) {
            if let Some(short) = dependency.strip_prefix("mycelium-") {
                actual.insert((short.to_owned(), name.clone()));
            }
        }
    }
    let mut problems = Vec::new();
    for (dependency, dependent) in &drawn {
        if !actual.contains(&(dependency.clone(), dependent.clone())) {
            problems.push(format!(
                "ARCHITECTURE.md draws `{dependency} <- {dependent}`, but mycelium-{dependent} does not depend on mycelium-{dependency}"
            ));
        }
    }
    for (dependency, dependent) in &actual {
        if dependency == "test-support" {
            problems.push(format!(
                "mycelium-{dependent} lists mycelium-test-support under [dependencies]; it is a dev-dependency only"
            ));
        } else if !reaches(&drawn, dependent, dependency) {
            problems.push(format!(
                "mycelium-{dependent} depends on mycelium-{dependency}, which ARCHITECTURE.md's crate graph does not allow (draw it, or remove the dependency)"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Whether `text` names the crate `ident` as a path root (`ident::` or `use ident`).
fn names_crate(text: &str, ident: &str) -> bool {
    text.match_indices(ident).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = &text[at + ident.len()..];
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
            && (after.starts_with("::") || after.starts_with(';') || after.starts_with(" as "))
    })
}

#[test]
fn normal_dependencies_are_used_by_the_code_that_lists_them() {
    let root = workspace_root();
    let mut problems = Vec::new();
    for (name, manifest) in manifests() {
        let dir = root.join("crates").join(format!("mycelium-{name}"));
        let code: String = rust_files(&dir.join("src"))
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap_or_default())
            .collect();
        for dependency in normal_dependencies(&manifest) {
            let ident = dependency.replace('-', "_");
            if !names_crate(&code, &ident) {
                problems.push(format!(
                    "mycelium-{name} lists `{dependency}` under [dependencies] but its src/ never uses it (only tests? move it to [dev-dependencies])"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The broker crate's layers, lowest first: a module may name its own layer and those before it.
const BROKER_LAYERS: [&str; 5] = ["routing", "store", "dlq", "consumer", "broker"];

/// `crate::<layer>` references in `text` (comments included: a doc link upward is a smell too).
fn layer_references(text: &str) -> BTreeSet<&'static str> {
    BROKER_LAYERS
        .iter()
        .filter(|layer| names_crate(text, &format!("crate::{layer}")))
        .copied()
        .collect()
}

fn broker_sources() -> Vec<(String, String)> {
    let src = workspace_root().join("crates/mycelium-broker/src");
    rust_files(&src)
        .into_iter()
        .map(|file| {
            let relative = file
                .strip_prefix(&src)
                .unwrap_or(&file)
                .to_string_lossy()
                .into_owned();
            (relative, std::fs::read_to_string(&file).unwrap_or_default())
        })
        .collect()
}

#[test]
fn broker_layers_point_one_way() {
    let mut problems = Vec::new();
    let mut layered = 0;
    for (file, text) in broker_sources() {
        let Some(layer) = BROKER_LAYERS
            .iter()
            .position(|l| file.starts_with(&format!("{l}/")))
        else {
            assert!(
                file == "lib.rs",
                "{file}: every broker module lives in one of the layers {BROKER_LAYERS:?}"
            );
            continue;
        };
        layered += 1;
        for used in layer_references(&text) {
            let used_at = BROKER_LAYERS.iter().position(|l| *l == used).unwrap_or(0);
            if used_at > layer {
                problems.push(format!(
                    "crates/mycelium-broker/src/{file} (layer `{}`) names `crate::{used}`, a layer above it; pass what it needs through a trait or a value instead",
                    BROKER_LAYERS[layer]
                ));
            }
        }
    }
    assert!(layered > 10, "the broker's sources were not found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Module-level references inside the routing layer (`crate::routing::<module>`), as edges.
fn routing_edges() -> BTreeMap<String, BTreeSet<String>> {
    let mut edges = BTreeMap::new();
    for (file, text) in broker_sources() {
        let Some(module) = file
            .strip_prefix("routing/")
            .and_then(|m| m.strip_suffix(".rs"))
            .filter(|m| *m != "mod")
        else {
            continue;
        };
        let used: BTreeSet<String> = text
            .match_indices("crate::routing::")
            .filter_map(|(at, prefix)| {
                let rest = &text[at + prefix.len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                rest[name.len()..].starts_with("::").then_some(name)
            })
            .filter(|m| m != module)
            .collect();
        edges.insert(module.to_owned(), used);
    }
    edges
}

/// A cycle through `edges`, if there is one.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

#[test]
fn routing_modules_have_no_cycles() {
    let edges = routing_edges();
    assert!(edges.len() >= 5, "the routing layer's modules were not found");
    if let Some(cycle) = find_cycle(&edges) {
        panic!("the routing layer's modules form a cycle: {}", cycle.join(" -> "));
    }
}

/// Spellings that mean code outside the layout type knows a data-directory path or writes a
/// state file by hand.
const LAYOUT_ONLY: [&str; 6] = [
    "join(\"subscriptions\")",
    "join(\"dlq\")",
    "join(\"topics\")",
    "http-jwt.secret",
    "with_extension(\"tmp\")",
    "fs::rename(",
];

#[test]
fn only_the_layout_type_knows_data_directory_paths() {
    let root = workspace_root();
    let layout = root.join("crates/mycelium-storage/src/layout.rs");
    let mut problems = Vec::new();
    for file in rust_files(&root.join("crates")) {
        let in_src = file.components().any(|c| c.as_os_str() == "src");
        if file == layout || !in_src {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for spelling in LAYOUT_ONLY.iter().filter(|s| text.contains(**s)) {
            problems.push(format!(
                "{}: `{spelling}`: data-directory paths come from mycelium_storage::DataDir, state files are written with write_atomic",
                file.strip_prefix(&root).unwrap_or(&file).display()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checks_catch_what_they_look_for() {
    // The helpers above, on inputs that must fail, so a check that cannot fail is noticed.
    let drawn = drawn_edges("## Code map\n```text\ncodec <- protocol <- { broker, client }\n```\n");
    assert!(drawn.contains(&("protocol".into(), "broker".into())));
    assert!(drawn.contains(&("protocol".into(), "client".into())));
    assert!(reaches(&drawn, "client", "codec"));
    assert!(!reaches(&drawn, "codec", "client"));
    assert!(names_crate("use serde_json::Value;", "serde_json"));
    assert!(!names_crate("let my_serde_json = 1;", "serde_json"));
    assert_eq!(
        layer_references("use crate::broker::Broker;\nuse crate::routing::topic::TopicRef;"),
        BTreeSet::from(["broker", "routing"])
    );
    let mut cyclic = BTreeMap::new();
    cyclic.insert("topic".to_owned(), BTreeSet::from(["metrics".to_owned()]));
    cyclic.insert("metrics".to_owned(), BTreeSet::from(["topic".to_owned()]));
    assert!(find_cycle(&cyclic).is_some());
    cyclic.insert("metrics".to_owned(), BTreeSet::new());
    assert!(find_cycle(&cyclic).is_none());
    assert!(Path::new(&workspace_root()).join("Cargo.toml").exists());
}
