//! The book builds and nothing in it, the README or the alert rules points nowhere: every
//! relative link resolves to a file of the repository, every `#anchor` to a heading of its
//! page, every page of `docs/src` is in `SUMMARY.md`, and the README stays short.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use heapwarden_tests::tools::repo_root;

/// mdBook's heading ids: lower case, spaces to `-`, everything but letters, digits, `_` and
/// `-` dropped (`Native workers (LD_PRELOAD)` → `native-workers-ld_preload`).
fn heading_id(text: &str) -> String {
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '_' || c == '-' => Some(c),
            _ => None,
        })
        .collect()
}

/// The lines of a Markdown text outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    prose(text)
        .into_iter()
        .filter(|l| l.starts_with('#'))
        .map(|l| heading_id(l.trim_start_matches('#')))
        .collect()
}

/// `(target, line)` of every inline link `[text](target)` outside fenced code, with inline
/// code spans removed first.
fn links(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let line: String = line.split('`').step_by(2).collect();
        let mut rest = line.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else { break };
            out.push((rest[..end].to_string(), n + 1));
            rest = &rest[end..];
        }
    }
    out
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("docs dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            markdown_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
}

/// Every relative link of `file` resolves; returns the broken ones as readable lines.
fn broken_links(root: &Path, file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).expect("page");
    let mut broken = Vec::new();
    for (target, line) in links(&text) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
        let resolved = if path.is_empty() {
            file.to_path_buf()
        } else {
            file.parent().expect("parent").join(path)
        };
        let shown = format!(
            "{}:{line}: {target}",
            file.strip_prefix(root).unwrap_or(file).display()
        );
        if !resolved.exists() {
            broken.push(format!("{shown} (no such file)"));
            continue;
        }
        if !anchor.is_empty() && resolved.extension().is_some_and(|e| e == "md") {
            let page = std::fs::read_to_string(&resolved).expect("target page");
            if !anchors(&page).contains(anchor) {
                broken.push(format!("{shown} (no heading with that anchor)"));
            }
        }
    }
    broken
}

#[test]
fn every_link_of_the_book_and_the_readme_resolves() {
    let root = repo_root();
    let mut files = vec![root.join("README.md")];
    markdown_files(&root.join("docs/src"), &mut files);
    let broken: Vec<String> = files.iter().flat_map(|f| broken_links(&root, f)).collect();
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_page_is_in_the_summary() {
    let root = repo_root();
    let src = root.join("docs/src");
    let summary = std::fs::read_to_string(src.join("SUMMARY.md")).expect("SUMMARY.md");
    let listed: BTreeSet<PathBuf> = links(&summary)
        .into_iter()
        .map(|(t, _)| src.join(t))
        .collect();
    let mut files = Vec::new();
    markdown_files(&src, &mut files);
    let orphans: Vec<_> = files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "SUMMARY.md") && !listed.contains(*f))
        .collect();
    assert!(
        orphans.is_empty(),
        "pages missing from SUMMARY.md: {orphans:?}"
    );
}

#[test]
fn the_readme_stays_short_and_names_both_commands() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README");
    let lines = readme.lines().count();
    assert!(
        lines <= 150,
        "README.md has {lines} lines; the book holds the rest"
    );
    assert!(
        readme.contains("heapwarden run"),
        "README names the run command"
    );
    assert!(
        readme.contains("./scripts/test"),
        "README names the test command"
    );
}

/// mdBook itself builds the book (scripts/test installs it when missing): an `{{#include}}`
/// of a missing file or a SUMMARY entry without a page fails here.
#[test]
fn the_book_builds() {
    let out = tempfile::tempdir().expect("tempdir");
    let result = Command::new("mdbook")
        .arg("build")
        .arg(repo_root().join("docs"))
        .arg("-d")
        .arg(out.path())
        .output()
        .expect("mdbook is installed (scripts/test installs it: cargo install mdbook)");
    assert!(
        result.status.success(),
        "mdbook build failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let page = out.path().join("operate/config-reference.html");
    let html = std::fs::read_to_string(&page).expect("reference page built");
    assert!(
        html.contains("max-leak-restarts-per-hour"),
        "the reference page includes the example config"
    );
}
