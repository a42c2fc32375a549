//! What a page may claim: a function only when the heap grew, Buffers and native memory
//! named as such; and the series' lifecycle (one per slot, replaced, expired only once
//! the worker left and the TTL passed), its escaping and its length limit.

use super::*;

const MIB: u64 = 1 << 20;

fn figures(rss: u64, heap: Option<u64>, external: Option<u64>) -> MemoryFigures {
    MemoryFigures {
        rss: rss * MIB,
        pss: None,
        heap: heap.map(|h| h * MIB),
        external: external.map(|e| e * MIB),
    }
}

#[test]
fn a_growing_heap_names_the_top_function() {
    let culprit = classify(
        &figures(100, Some(50), None),
        &figures(160, Some(105), None),
        Some(("orders::cache::remember", 41 * MIB as i64)),
    );
    assert_eq!(culprit.kind, SuspectKind::Heap);
    assert_eq!(culprit.function, "orders::cache::remember");
    assert_eq!(culprit.growth_bytes, 41 * MIB as i64);
}

#[test]
fn a_growing_heap_without_a_diff_names_no_function() {
    let culprit = classify(
        &figures(100, Some(50), None),
        &figures(160, Some(105), None),
        None,
    );
    assert_eq!(culprit.kind, SuspectKind::Heap);
    assert_eq!(culprit.function, "");
    assert_eq!(culprit.growth_bytes, 55 * MIB as i64);
}

#[test]
fn resident_growth_over_a_flat_heap_is_native_rss_and_names_no_function() {
    // The profile still has a top entry (noise), but the heap did not grow.
    let culprit = classify(
        &figures(100, Some(50), None),
        &figures(300, Some(51), None),
        Some(("app::noise", 512 * 1024)),
    );
    assert_eq!(culprit.kind, SuspectKind::NativeRss);
    assert_eq!(culprit.function, "");
    assert_eq!(culprit.growth_bytes, 200 * MIB as i64);
    // A heap growth that explains under a quarter of the resident growth is flat too.
    let culprit = classify(
        &figures(100, Some(50), None),
        &figures(500, Some(60), None),
        Some(("app::small", 10 * MIB as i64)),
    );
    assert_eq!(culprit.kind, SuspectKind::NativeRss);
    assert_eq!(culprit.function, "");
}

#[test]
fn pss_is_preferred_to_rss_when_both_ends_have_it() {
    let mut base = figures(100, None, None);
    let mut now = figures(400, None, None);
    base.pss = Some(80 * MIB);
    now.pss = Some(130 * MIB);
    let culprit = classify(&base, &now, None);
    assert_eq!(culprit.kind, SuspectKind::NativeRss);
    assert_eq!(culprit.growth_bytes, 50 * MIB as i64);
}

#[test]
fn a_worker_without_heap_figures_is_native_rss() {
    let culprit = classify(&figures(100, None, None), &figures(180, None, None), None);
    assert_eq!(culprit.kind, SuspectKind::NativeRss);
    assert_eq!(culprit.growth_bytes, 80 * MIB as i64);
}

#[test]
fn node_buffers_growing_over_a_flat_js_heap_are_external() {
    let culprit = classify(
        &figures(100, Some(20), Some(5)),
        &figures(170, Some(21), Some(70)),
        Some(("leakBuffers", 300 * 1024)),
    );
    assert_eq!(culprit.kind, SuspectKind::External);
    assert_eq!(culprit.function, "");
    assert_eq!(culprit.growth_bytes, 65 * MIB as i64);
    // Both growing alike: the JS heap leak is the one to name.
    let culprit = classify(
        &figures(100, Some(20), Some(5)),
        &figures(200, Some(70), Some(40)),
        Some(("leakInNamedFunction", 45 * MIB as i64)),
    );
    assert_eq!(culprit.kind, SuspectKind::Heap);
    assert_eq!(culprit.function, "leakInNamedFunction");
}

#[test]
fn a_shrinking_top_entry_is_never_named() {
    let culprit = classify(
        &figures(100, Some(50), None),
        &figures(160, Some(105), None),
        Some(("app::freed", -(3 * MIB as i64))),
    );
    assert_eq!(culprit.function, "");
}

#[test]
fn long_names_are_cut_and_control_characters_replaced() {
    let long = "a".repeat(MAX_FUNCTION_CHARS + 40);
    let cut = label_function(&long);
    assert_eq!(cut.chars().count(), MAX_FUNCTION_CHARS);
    assert!(cut.ends_with('…'));
    assert_eq!(label_function("f\nx\u{7}"), "f?x?");
    // Multi-byte names are cut on a character boundary.
    let wide = "é".repeat(MAX_FUNCTION_CHARS * 2);
    assert_eq!(label_function(&wide).chars().count(), MAX_FUNCTION_CHARS);
}

fn suspect(worker_id: u64, function: &str, at: Instant) -> Suspect {
    Suspect {
        worker_id,
        rule: Rule::Trend,
        function: function.to_owned(),
        profile_id: Some(12),
        kind: SuspectKind::Heap,
        growth_bytes: 41 * MIB as i64,
        profile_link: String::new(),
        detected_at: at,
    }
}

fn series(view: &SuspectView) -> Vec<String> {
    render(view)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn one_series_per_slot_and_a_new_detection_replaces_it() {
    let t0 = Instant::now();
    let mut view = SuspectView::new();
    record(&mut view, 1, suspect(7, "first", t0));
    record(&mut view, 1, suspect(8, "second", t0));
    record(&mut view, 2, suspect(9, "other", t0));
    let lines = series(&view);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        lines[0],
        "heapwarden_leak_suspect_info{worker=\"1\",rule=\"trend\",function=\"second\",profile_id=\"12\",kind=\"heap\",profile_link=\"\"} 42991616"
    );
    assert!(lines[1].contains("worker=\"2\""), "{lines:?}");
}

#[test]
fn a_suspect_goes_once_its_worker_left_and_the_ttl_passed() {
    let t0 = Instant::now();
    let ttl = Duration::from_secs(60);
    let mut view = SuspectView::new();
    record(&mut view, 0, suspect(7, "f", t0));
    // Still the leaking worker (profile-only): kept past the TTL.
    assert!(!expire(&mut view, |_| Some(7), ttl, t0 + ttl * 10));
    // Replaced, but within the TTL: kept, so the page can still name it.
    assert!(!expire(&mut view, |_| Some(8), ttl, t0 + ttl / 2));
    assert_eq!(view.len(), 1);
    // Replaced and past the TTL: gone, and the family is still declared.
    assert!(expire(&mut view, |_| Some(8), ttl, t0 + ttl));
    assert!(view.is_empty());
    assert!(series(&view).is_empty());
    assert!(render(&view).contains("# TYPE heapwarden_leak_suspect_info gauge"));
    // A slot a reload removed counts as left.
    record(&mut view, 3, suspect(7, "f", t0));
    assert!(expire(&mut view, |_| None, ttl, t0 + ttl));
}

#[test]
fn label_values_are_escaped_in_the_text_format() {
    let mut view = SuspectView::new();
    record(
        &mut view,
        0,
        suspect(1, "<impl Fmt for \"x\\y\">::fmt", Instant::now()),
    );
    let line = &series(&view)[0];
    assert!(
        line.contains(r#"function="<impl Fmt for \"x\\y\">::fmt""#),
        "{line}"
    );
    let no_profile = Suspect {
        profile_id: None,
        ..suspect(1, "", Instant::now())
    };
    record(&mut view, 0, no_profile);
    assert!(series(&view)[0].contains("profile_id=\"\""));
}

#[test]
fn the_profile_link_is_carried_whole_or_not_at_all() {
    let link = "https://grafana.example/a/grafana-pyroscope-app/explore?var-serviceName=shop&var-filters=worker%7C%3D%7C1&from=1&to=2";
    let mut view = SuspectView::new();
    let linked = Suspect {
        profile_link: label_link(Some(link)),
        ..suspect(1, "f", Instant::now())
    };
    record(&mut view, 1, linked);
    let line = &series(&view)[0];
    assert!(
        line.ends_with(&format!(",profile_link=\"{link}\"}} 42991616")),
        "{line}"
    );
    assert_eq!(label_link(None), "");
    // Too long to carry whole: left out, never cut into a link to the wrong page.
    let long = format!("https://g.example/{}", "a".repeat(MAX_LINK_CHARS));
    assert_eq!(label_link(Some(&long)), "");
    assert_eq!(label_link(Some("https://g.example/\nx")), "");
}
