use std::collections::HashSet;

use proptest::prelude::*;

use super::*;

fn worker_text(slot: &str) -> String {
    format!(
        "# HELP http_requests_total Requests served.\n\
# TYPE http_requests_total counter\n\
http_requests_total{{worker=\"{slot}\",method=\"GET\",route=\"/items/{{id}}\",status=\"200\"}} 5\n\
# HELP http_request_duration_seconds Request latency.\n\
# TYPE http_request_duration_seconds histogram\n\
http_request_duration_seconds_bucket{{worker=\"{slot}\",le=\"0.1\"}} 3\n\
http_request_duration_seconds_bucket{{worker=\"{slot}\",le=\"+Inf\"}} 5\n\
http_request_duration_seconds_sum{{worker=\"{slot}\"}} 0.4\n\
http_request_duration_seconds_count{{worker=\"{slot}\"}} 5\n"
    )
}

fn one(slot: usize, text: &str) -> WorkerPage {
    merge_workers(&[WorkerPart { slot, text }], usize::MAX)
}

fn type_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("# TYPE ")).collect()
}

#[test]
fn families_from_several_workers_appear_once() {
    let (w0, w1) = (worker_text("0"), worker_text("1"));
    let page = merge_workers(
        &[
            WorkerPart { slot: 0, text: &w0 },
            WorkerPart { slot: 1, text: &w1 },
        ],
        usize::MAX,
    );
    assert!(page.rejected.is_empty(), "{:?}", page.rejected);
    let text = &page.text;
    assert_eq!(type_lines(text).len(), 2, "{text}");
    assert_eq!(text.matches("# HELP http_requests_total").count(), 1);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| *l == "# TYPE http_request_duration_seconds histogram")
        .expect("histogram family");
    assert_eq!(lines.len() - start - 1, 8, "{text}");
    assert!(
        lines[start + 1..]
            .iter()
            .all(|l| l.starts_with("http_request_duration_seconds_"))
    );
}

#[test]
fn the_worker_label_always_names_the_slot() {
    let text = "# TYPE demo_jobs_total counter\ndemo_jobs_total{outcome=\"completed\"} 3\n\
demo_cache_invalidations_total 2\nx{worker=\"9\"} 1\ny{worker=\"2\"} 1\n";
    let page = one(2, text);
    let out = &page.text;
    assert!(
        out.contains("demo_jobs_total{worker=\"2\",outcome=\"completed\"} 3"),
        "{out}"
    );
    assert!(
        out.contains("demo_cache_invalidations_total{worker=\"2\"} 2"),
        "{out}"
    );
    assert!(out.contains("x{worker=\"2\"} 1"), "{out}");
    assert!(!out.contains("worker=\"9\""), "{out}");
    assert_eq!(page.rejected.get(&(2, Reject::WorkerLabel)), Some(&1));
}

#[test]
fn labels_with_quotes_braces_and_commas_survive() {
    let text = "m{route=\"/a,{b}\\\"c\",worker_x=\"1\"} 1\n";
    assert_eq!(
        one(0, text).text,
        "m{worker=\"0\",route=\"/a,{b}\\\"c\",worker_x=\"1\"} 1\n"
    );
}

#[test]
fn bad_lines_are_dropped_and_counted_the_rest_kept() {
    let text = "# just a comment\n# EOF\nnot a sample line with {\n\n9bad 1\n\
x{this is not a label} 1\ndup{a=\"1\",a=\"2\"} 1\nesc{a=\"\\q\"} 1\nnan +nan\n\
ts 1 1.5\ntrailing 1 2 3\n# TYPE t weird\ngood 1\ngood 2\n";
    let page = one(0, text);
    assert_eq!(page.text, "good{worker=\"0\"} 1\n");
    assert_eq!(page.rejected.get(&(0, Reject::Syntax)), Some(&9));
    assert_eq!(page.rejected.get(&(0, Reject::Duplicate)), Some(&1));
}

#[test]
fn the_agent_prefix_is_reserved() {
    let text = "# HELP heapwarden_worker_up forged\n# TYPE heapwarden_worker_up gauge\n\
heapwarden_worker_up{worker=\"0\"} 0\nmine 1\n";
    let page = one(0, text);
    assert_eq!(page.text, "mine{worker=\"0\"} 1\n");
    assert_eq!(page.rejected.get(&(0, Reject::Reserved)), Some(&3));
}

#[test]
fn a_conflicting_type_keeps_the_first_workers() {
    let page = merge_workers(
        &[
            WorkerPart {
                slot: 0,
                text: "# TYPE m counter\nm 1\n",
            },
            WorkerPart {
                slot: 1,
                text: "# TYPE m gauge\nm 2\n",
            },
        ],
        usize::MAX,
    );
    assert_eq!(page.text, "# TYPE m counter\nm{worker=\"0\"} 1\n");
    assert_eq!(page.rejected.get(&(1, Reject::Conflict)), Some(&1));
}

#[test]
fn histogram_and_summary_samples_must_fit_their_type() {
    let text = "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{x=\"1\"} 1\n\
h_bucket{le=\"x\"} 1\nh 1\nh_sum 1\nh_count{le=\"1\"} 1\nh_count 1\n\
# TYPE s summary\ns{quantile=\"0.5\"} 1\ns 1\ns_sum 1\ns_count 1\ns_bucket 1\n\
# TYPE late gauge\n";
    let page = one(0, text);
    assert_eq!(
        page.text,
        "# TYPE h histogram\nh_bucket{worker=\"0\",le=\"1\"} 1\nh_sum{worker=\"0\"} 1\n\
h_count{worker=\"0\"} 1\n# TYPE s summary\ns{worker=\"0\",quantile=\"0.5\"} 1\n\
s_sum{worker=\"0\"} 1\ns_count{worker=\"0\"} 1\ns_bucket{worker=\"0\"} 1\n"
    );
    assert_eq!(page.rejected.get(&(0, Reject::Syntax)), Some(&5));
}

#[test]
fn a_family_named_like_another_histograms_series_is_dropped() {
    let page = merge_workers(
        &[
            WorkerPart {
                slot: 0,
                text: "h_bucket 1\n",
            },
            WorkerPart {
                slot: 1,
                text: "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\n",
            },
        ],
        usize::MAX,
    );
    assert_eq!(
        page.text,
        "# TYPE h histogram\nh_bucket{worker=\"1\",le=\"+Inf\"} 1\n"
    );
    assert_eq!(page.rejected.get(&(0, Reject::Conflict)), Some(&1));
}

#[test]
fn each_worker_keeps_whole_families_within_its_budget() {
    let text = "a 1\nb 1\nb{x=\"1\"} 1\nc 1\n";
    let page = merge_workers(&[WorkerPart { slot: 0, text }], 40);
    // `a` (15 bytes) fits, `b` (35) does not, `c` (15) still does.
    assert_eq!(page.text, "a{worker=\"0\"} 1\nc{worker=\"0\"} 1\n");
    assert_eq!(page.rejected.get(&(0, Reject::TooLarge)), Some(&2));
}

/// Lines near the format's edges: names that clash, reserved prefixes, `le`/`quantile`,
/// `worker`, odd floats and escapes, stray TYPE/HELP lines, and arbitrary text.
pub fn arb_line() -> impl Strategy<Value = String> {
    let names = prop::sample::select(vec![
        "a",
        "a_sum",
        "a_count",
        "a_bucket",
        "a_total",
        "h",
        "h_bucket",
        "h_sum",
        "h_count",
        "s",
        "s_sum",
        "heapwarden_worker_up",
        "x:y",
        "9x",
        "",
    ]);
    let label_names = prop::sample::select(vec![
        "le", "quantile", "worker", "__name__", "a", "a", "b", "0x", "é",
    ]);
    let label_values = prop::sample::select(vec![
        "1", "+Inf", "-Inf", "NaN", "x", "\\\"", "\\q", "a,b}", "\\n", "0", "",
    ]);
    let values = prop::sample::select(vec![
        "1", "-0", "1e5", "+Inf", "-inf", "NaN", "+nan", "0x10", "1_0", "x", ".5", "",
    ]);
    let kinds = prop::sample::select(vec![
        "counter",
        "gauge",
        "histogram",
        "summary",
        "untyped",
        "Gauge",
    ]);
    let labels = prop::collection::vec((label_names, label_values), 0..4);
    let sample = (names.clone(), labels, values, prop::option::of(-5i64..5)).prop_map(
        |(name, labels, value, ts)| {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            let ts = ts.map(|t| format!(" {t}")).unwrap_or_default();
            if labels.is_empty() {
                format!("{name} {value}{ts}")
            } else {
                format!("{name}{{{}}} {value}{ts}", labels.join(","))
            }
        },
    );
    prop_oneof![
        4 => sample,
        2 => (names.clone(), kinds).prop_map(|(n, k)| format!("# TYPE {n} {k}")),
        1 => (names, "[ -~]{0,8}").prop_map(|(n, t)| format!("# HELP {n} {t}")),
        1 => "\\PC{0,40}",
        1 => "[{}=\",# a-z0-9\\\\ \t]{0,30}",
    ]
}

pub fn arb_exposition() -> impl Strategy<Value = String> {
    prop::collection::vec(arb_line(), 0..24).prop_map(|lines| lines.join("\n"))
}

fn arb_part() -> impl Strategy<Value = String> {
    let family = (
        prop::sample::select(vec!["counter", "gauge", "histogram"]),
        0usize..4,
    );
    prop::collection::btree_map(0usize..6, family, 0..6).prop_map(|families| {
        let mut text = String::new();
        for (n, (kind, samples)) in families {
            let name = format!("fam_{n}");
            text.push_str(&format!("# HELP {name} help {n}\n# TYPE {name} {kind}\n"));
            for s in 0..samples {
                if kind == "histogram" {
                    text.push_str(&format!(
                        "{name}_bucket{{le=\"+Inf\",i=\"{s}\"}} 1\n{name}_count{{i=\"{s}\"}} 1\n"
                    ));
                } else {
                    text.push_str(&format!("{name}{{i=\"{s}\"}} {s}\n"));
                }
            }
        }
        text
    })
}

/// Checks what any merged page must be: every line parses, each family's TYPE appears
/// once and before its samples, and a family's samples are contiguous.
pub fn assert_valid_page(page: &str) -> Result<(), TestCaseError> {
    let mut typed = std::collections::HashMap::new();
    let mut finished = HashSet::new();
    let mut current = String::new();
    for line in page.lines() {
        let parsed = parse_line(line);
        prop_assert!(parsed.is_ok(), "unparsable output line {:?}", line);
        let family = match parsed.unwrap_or(Line::Nothing) {
            Line::Type { name, kind } => {
                prop_assert!(
                    typed.insert(name.to_string(), kind).is_none(),
                    "second TYPE {}",
                    name
                );
                name.to_string()
            }
            Line::Help { name, .. } => name.to_string(),
            Line::Sample(s) => {
                prop_assert_eq!(s.labels.first().map(|l| l.0), Some("worker"));
                let base = ["_bucket", "_sum", "_count"].iter().find_map(|sfx| {
                    s.name.strip_suffix(sfx).filter(|b| match typed.get(*b) {
                        Some(Kind::Histogram) => true,
                        Some(Kind::Summary) => *sfx != "_bucket",
                        _ => false,
                    })
                });
                base.unwrap_or(s.name).to_string()
            }
            Line::Nothing => continue,
        };
        if family != current {
            prop_assert!(!finished.contains(&family), "family {} split", family);
            finished.insert(std::mem::replace(&mut current, family));
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn merged_output_is_valid_and_keeps_every_good_sample(
        parts in prop::collection::vec(arb_part(), 0..5)
    ) {
        let input: Vec<WorkerPart<'_>> = parts
            .iter()
            .enumerate()
            .map(|(slot, text)| WorkerPart { slot, text })
            .collect();
        let page = merge_workers(&input, usize::MAX);
        assert_valid_page(&page.text)?;
        // Only TYPE conflicts between workers may drop samples here.
        let dropped: u64 = page.rejected.iter()
            .filter(|((_, r), _)| *r != Reject::Conflict)
            .map(|(_, n)| n).sum();
        prop_assert_eq!(dropped, 0, "{:?}", page.rejected);
        let conflicts: u64 = page.rejected.values().sum();
        let samples_in = parts.iter().flat_map(|p| p.lines()).filter(|l| !l.starts_with('#')).count() as u64;
        let samples_out = page.text.lines().filter(|l| !l.starts_with('#')).count() as u64;
        prop_assert_eq!(samples_in, samples_out + conflicts);
    }

    #[test]
    fn any_text_merges_into_a_valid_page(
        parts in prop::collection::vec(arb_exposition(), 0..4)
    ) {
        let input: Vec<WorkerPart<'_>> = parts
            .iter()
            .enumerate()
            .map(|(slot, text)| WorkerPart { slot, text })
            .collect();
        let page = merge_workers(&input, 4096);
        assert_valid_page(&page.text)?;
    }
}

/// Fuzz target (`bench/fuzz.sh`): hostile worker texts of every shape, and arbitrary
/// lines through the line parser, never panic and always give a valid page.
#[test]
fn fuzz_exposition_parser() {
    let input = (
        prop::collection::vec(arb_exposition(), 0..4),
        "\\PC{0,80}",
        1usize..4096,
    );
    crate::fuzzing::fuzz("exposition parser", input, |(texts, line, budget)| {
        let _ = parse_line(&line);
        let mut parts: Vec<WorkerPart<'_>> = texts
            .iter()
            .enumerate()
            .map(|(slot, text)| WorkerPart { slot, text })
            .collect();
        parts.push(WorkerPart {
            slot: parts.len(),
            text: &line,
        });
        let page = merge_workers(&parts, budget);
        assert_valid_page(&page.text)
    });
}
