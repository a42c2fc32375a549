use std::collections::HashSet;

use proptest::prelude::*;

use super::*;

const AGENT: &str = "# HELP heapwarden_worker_up 1 when running and ready\n\
# TYPE heapwarden_worker_up gauge\n\
heapwarden_worker_up{worker=\"0\"} 1\n\
heapwarden_worker_up{worker=\"1\"} 0\n";

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

fn type_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("# TYPE ")).collect()
}

#[test]
fn families_from_several_workers_appear_once() {
    let (w0, w1) = (worker_text("0"), worker_text("1"));
    let merged = merge(&[
        Part {
            worker: None,
            text: AGENT,
        },
        Part {
            worker: Some("0"),
            text: &w0,
        },
        Part {
            worker: Some("1"),
            text: &w1,
        },
    ]);
    let types = type_lines(&merged);
    assert_eq!(types.len(), 3, "{merged}");
    assert_eq!(merged.matches("# HELP http_requests_total").count(), 1);
    // Worker 1's histogram series follow worker 0's inside the one family block.
    let lines: Vec<&str> = merged.lines().collect();
    let start = lines
        .iter()
        .position(|l| *l == "# TYPE http_request_duration_seconds histogram")
        .expect("histogram family");
    assert_eq!(lines.len() - start - 1, 8, "{merged}");
    assert!(
        lines[start + 1..]
            .iter()
            .all(|l| l.starts_with("http_request_duration_seconds_"))
    );
}

#[test]
fn a_missing_worker_label_is_added_and_an_existing_one_kept() {
    let text = "# TYPE demo_jobs_total counter\ndemo_jobs_total{outcome=\"completed\"} 3\n\
demo_cache_invalidations_total 2\nx{worker=\"9\"} 1\n";
    let merged = merge(&[Part {
        worker: Some("2"),
        text,
    }]);
    assert!(
        merged.contains("demo_jobs_total{worker=\"2\",outcome=\"completed\"} 3"),
        "{merged}"
    );
    assert!(
        merged.contains("demo_cache_invalidations_total{worker=\"2\"} 2"),
        "{merged}"
    );
    assert!(merged.contains("x{worker=\"9\"} 1"), "{merged}");
}

#[test]
fn labels_with_quotes_braces_and_commas_survive() {
    let text = "m{route=\"/a,{b}\\\"c\",worker_x=\"1\"} 1\n";
    let merged = merge(&[Part {
        worker: Some("0"),
        text,
    }]);
    assert_eq!(
        merged,
        "m{worker=\"0\",route=\"/a,{b}\\\"c\",worker_x=\"1\"} 1\n"
    );
}

#[test]
fn free_comments_and_garbage_are_dropped() {
    let text = "# just a comment\n# EOF\nnot a sample line with {\n\n9bad 1\ngood 1\n";
    let merged = merge(&[Part { worker: None, text }]);
    assert_eq!(merged, "good 1\n");
}

#[test]
fn a_conflicting_type_keeps_the_first() {
    let a = "# TYPE m counter\nm{worker=\"0\"} 1\n";
    let b = "# TYPE m gauge\nm{worker=\"1\"} 2\n";
    let merged = merge(&[
        Part {
            worker: None,
            text: a,
        },
        Part {
            worker: None,
            text: b,
        },
    ]);
    assert_eq!(
        merged,
        "# TYPE m counter\nm{worker=\"0\"} 1\nm{worker=\"1\"} 2\n"
    );
}

fn arb_part() -> impl Strategy<Value = String> {
    let family = (
        0usize..6,
        prop::sample::select(vec!["counter", "gauge", "histogram"]),
        0usize..4,
    );
    prop::collection::vec(family, 0..6).prop_map(|families| {
        let mut text = String::new();
        for (n, kind, samples) in families {
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

proptest! {
    #[test]
    fn merged_output_never_repeats_a_type_line_and_keeps_every_sample(
        parts in prop::collection::vec(arb_part(), 0..5)
    ) {
        let slots: Vec<String> = (0..parts.len()).map(|i| i.to_string()).collect();
        let input: Vec<Part<'_>> = parts
            .iter()
            .zip(&slots)
            .map(|(text, slot)| Part { worker: Some(slot.as_str()), text })
            .collect();
        let merged = merge(&input);
        let types = type_lines(&merged);
        let distinct: HashSet<&str> = types.iter().map(|l| l.split(' ').nth(2).unwrap_or("")).collect();
        prop_assert_eq!(types.len(), distinct.len(), "{}", merged);
        let samples_in = parts.iter().flat_map(|p| p.lines()).filter(|l| !l.starts_with('#')).count();
        let samples_out = merged.lines().filter(|l| !l.starts_with('#')).count();
        prop_assert_eq!(samples_in, samples_out);
        // Every family's samples are contiguous: a name never reappears after another.
        let mut seen = HashSet::new();
        let mut last = String::new();
        for line in merged.lines().filter(|l| !l.starts_with('#')) {
            let fam = line.split(['{', '_']).take(2).collect::<Vec<_>>().join("_");
            if fam != last {
                prop_assert!(seen.insert(fam.clone()), "family {} split in {}", fam, merged);
                last = fam;
            }
        }
    }
}
