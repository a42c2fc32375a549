//! The book's code map (`docs/src/internals/architecture.md`) stays true: its tables name exactly the workspace members and the
//! `agent/src/` entries, each crate's path dependencies and each agent module's
//! `crate::…` paths stay within the row's "may use" column, and every row uses only rows
//! below it (the layers only use the layers below them; `cli` is the top).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use heapwarden_tests::tools::repo_root;

/// The page that holds the code map tables.
const CODE_MAP: &str = "docs/src/internals/architecture.md";

/// `agent/src/demo/` is moving to the `demo/` crate (issue 10, part 1): until it has,
/// the agent's copy is outside the map and the `demo/` row may name no member yet.
const MOVING: &str = "demo";

struct Row {
    name: String,
    may_use: Vec<String>,
}

/// The rows of the code-map table whose header starts with `| {first} |`, top first.
fn table(readme: &str, first: &str) -> Vec<Row> {
    let header = format!("| {first} |");
    let mut lines = readme.lines().skip_while(|l| !l.starts_with(&header));
    assert!(
        lines.next().is_some(),
        "{CODE_MAP} has no table starting {header}"
    );
    lines
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let ticked = |cell: &str| -> Vec<String> {
                cell.split('`')
                    .skip(1)
                    .step_by(2)
                    .map(|n| n.trim_end_matches('/').to_string())
                    .collect()
            };
            let name = ticked(cells[0]).pop().unwrap_or_else(|| panic!("row {l}"));
            Row {
                name,
                may_use: ticked(cells.last().expect("cells")),
            }
        })
        .collect()
}

/// Every row may use only rows below it.
fn check_layering(rows: &[Row], what: &str) {
    for (i, row) in rows.iter().enumerate() {
        for used in &row.may_use {
            let below = rows[i + 1..].iter().any(|r| &r.name == used);
            assert!(
                below,
                "{what}: {} may use {used}, which is not a row below it",
                row.name
            );
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The top-level idents after every `crate::` in `source` (`crate::{a::b, c}` gives a, c).
fn crate_paths(source: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = BTreeSet::new();
    for (at, _) in source.match_indices("crate::") {
        let rest = &source[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut start) = (0usize, 0usize);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.insert(ident(group[start..i].trim_start()));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident(group[start..i].trim_start()));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.remove("");
    found
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The workspace members from the root Cargo.toml (`members = [...]`).
fn members(root: &Path) -> Vec<String> {
    let manifest = read(&root.join("Cargo.toml"));
    let list = manifest
        .split_once("members")
        .and_then(|(_, rest)| rest.split_once('['))
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list)
        .expect("workspace members");
    list.split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect()
}

/// The code-map row covering a member: the member's folder or its nearest listed parent
/// (`probes/` covers the probe's sub-crates).
fn covering<'a>(rows: &'a [Row], member: &str) -> Option<&'a Row> {
    let mut path = Some(Path::new(member));
    while let Some(p) = path {
        if let Some(row) = rows.iter().find(|r| Path::new(&r.name) == p) {
            return Some(row);
        }
        path = p.parent().filter(|p| !p.as_os_str().is_empty());
    }
    None
}

#[test]
fn crates_match_the_code_map_and_depend_only_on_what_it_allows() {
    let root = repo_root();
    let readme = read(&root.join(CODE_MAP));
    let rows = table(&readme, "crate folder");
    check_layering(&rows, "crates");
    let members = members(&root);
    let moving = root.join("agent/src").join(MOVING).exists();
    for row in &rows {
        let listed = members
            .iter()
            .any(|m| covering(&rows, m).is_some_and(|r| r.name == row.name));
        assert!(
            listed || (moving && row.name == MOVING),
            "the code map lists {}/, which is no workspace member ({members:?})",
            row.name
        );
    }
    for member in &members {
        let row = covering(&rows, member)
            .unwrap_or_else(|| panic!("workspace member {member} is not in the code map"));
        let manifest = read(&root.join(member).join("Cargo.toml"));
        for line in manifest.lines().filter(|l| l.contains("path = \"")) {
            let dep = line
                .split("path = \"")
                .nth(1)
                .and_then(|r| r.split('"').next());
            let target = root.join(member).join(dep.expect("path dependency"));
            let target = target.canonicalize().expect("path dependency exists");
            let target = target
                .strip_prefix(root.canonicalize().expect("root"))
                .expect("inside");
            let used = covering(&rows, &target.to_string_lossy()).expect("dependency in the map");
            assert!(
                used.name == row.name || row.may_use.contains(&used.name),
                "{member} depends on {}/, which its row does not allow ({:?})",
                used.name,
                row.may_use
            );
        }
    }
}

#[test]
fn agent_modules_match_the_code_map_and_use_only_the_layers_below() {
    let root = repo_root();
    let readme = read(&root.join(CODE_MAP));
    let rows = table(&readme, "`agent/src/`");
    check_layering(&rows, "agent/src");
    assert_eq!(
        rows.first().map(|r| r.name.as_str()),
        Some("cli"),
        "cli is the top"
    );
    let src = root.join("agent/src");
    let mut entries = BTreeSet::new();
    for entry in std::fs::read_dir(&src).expect("agent/src").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !matches!(name.as_str(), "lib.rs" | "main.rs") && name != MOVING {
            entries.insert(name);
        }
    }
    let listed: BTreeSet<String> = rows.iter().map(|r| r.name.clone()).collect();
    assert_eq!(entries, listed, "agent/src entries vs the code map");

    let module = |name: &str| name.trim_end_matches(".rs").to_string();
    let allowed: BTreeMap<String, BTreeSet<String>> = rows
        .iter()
        .map(|r| {
            (
                module(&r.name),
                r.may_use.iter().map(|u| module(u)).collect(),
            )
        })
        .collect();
    let mut violations = Vec::new();
    for row in &rows {
        let path = src.join(&row.name);
        let mut files = Vec::new();
        if path.is_dir() {
            rust_files(&path, &mut files);
        } else {
            files.push(path);
        }
        let me = module(&row.name);
        for file in files {
            for used in crate_paths(&read(&file)) {
                let known = allowed.contains_key(&used);
                if used == me || (!known && used == MOVING) {
                    continue;
                }
                // The fuzz driver is test-only, for every module's tests.
                let is_test = file.to_string_lossy().ends_with("tests.rs");
                if used == "fuzzing" && is_test {
                    continue;
                }
                if !known || !allowed[&me].contains(&used) {
                    let file = file
                        .strip_prefix(&root)
                        .unwrap_or(&file)
                        .display()
                        .to_string();
                    violations.push(format!("{file} uses crate::{used}"));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports the code map does not allow:\n{}",
        violations.join("\n")
    );
}

#[test]
fn crate_paths_reads_groups_and_nested_paths() {
    let source = "use crate::a::B;\nuse crate::{b::{C, D}, c, d::E};\nlet x = crate::e::f();";
    let found: Vec<String> = crate_paths(source).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "d", "e"]);
}
