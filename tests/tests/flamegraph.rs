//! The differential flame graph of a real leak, drawn by a real browser: the demo leaks in
//! `leak_on_purpose_for_heap_profile`, `heapwarden diff <id> --svg FILE` (and the admin
//! API's `?format=svg`) renders leak minus baseline, and headless Chromium lays it out.
//! A script in the page measures every frame as drawn: the leaking function's frame is
//! there, red (grew), and wider than every frame but its own callers.

use std::process::Command;
use std::time::Duration;

use heapwarden_tests::tools::{assert_success, run_tool, text};
use heapwarden_tests::*;
use serde_json::Value;

const SECS: fn(u64) -> Duration = Duration::from_secs;
const LEAK_FN: &str = "leak_on_purpose_for_heap_profile";

/// Appended to the SVG: measures every frame's rectangle as the browser drew it and
/// writes `[{name, x, y, width, fill}]` (URI-encoded JSON) into `#hw-measure`.
const MEASURE: &str = r#"<script type="text/ecmascript"><![CDATA[
(function () {
  var out = [];
  var frames = document.querySelectorAll('#frames g');
  for (var i = 0; i < frames.length; i++) {
    var title = frames[i].querySelector('title');
    var rect = frames[i].querySelector('rect');
    if (!title || !rect) continue;
    var box = rect.getBoundingClientRect();
    var name = title.textContent.replace(/ \([^()]*\)$/, '');
    out.push({ name: name, x: box.x, y: box.y, width: box.width, fill: rect.getAttribute('fill') });
  }
  var node = document.createElementNS('http://www.w3.org/2000/svg', 'text');
  node.setAttribute('id', 'hw-measure');
  node.textContent = encodeURIComponent(JSON.stringify(out));
  document.documentElement.appendChild(node);
})();
]]></script>
"#;

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Chromium must be installed (scripts/test installs it from Debian): a test never skips.
fn chromium_measures(svg: &str, dir: &std::path::Path) -> Vec<Value> {
    let end = svg.rfind("</svg>").expect("an SVG document");
    let page = format!("{}{MEASURE}{}", &svg[..end], &svg[end..]);
    let path = dir.join("measured.svg");
    std::fs::write(&path, page).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let mut chromium = Command::new("chromium");
    chromium
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1700,1200",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", path.display()));
    let output = run_tool(chromium, "chromium");
    assert_success("chromium --dump-dom", &output);
    let dom = String::from_utf8_lossy(&output.stdout);
    let at = dom
        .find("id=\"hw-measure\">")
        .unwrap_or_else(|| panic!("the page's measurements: {}", text(&output)))
        + "id=\"hw-measure\">".len();
    let encoded = &dom[at..at + dom[at..].find('<').expect("end of the measurements")];
    serde_json::from_str(&percent_decode(encoded)).expect("measurements JSON")
}

#[test]
fn the_leaking_function_is_the_widest_red_frame_in_chromium() {
    let _guard = TimeoutGuard::new("flamegraph", SECS(170));
    let sandbox = Sandbox::new();
    let config = AgentConfig::new(1, &[])
        .set("pool", "min-uptime", "1s")
        .set("sampling", "interval", "250ms")
        .set("watchdog", "warmup", "3s")
        .set("watchdog", "max-memory", "1GiB")
        .set("watchdog", "growth", "off")
        .set("watchdog", "trend-window", "6s")
        .set("watchdog", "trend-min-rate", "1MiB/s")
        .set("watchdog", "action", "profile-only")
        .set("log", "level", "warn")
        .set("demo", "seed-rows", "20")
        .set("demo", "leak-rate", "6MiB");
    let agent = sandbox.agent(&config.to_string());
    wait_until_ok(config.admin, "/readyz", SECS(60), &agent.logs);
    let detection = agent.logs.wait_for(
        SECS(90),
        "the detection record",
        msg("A memory leak was detected."),
    );
    assert_eq!(
        detection["suspect"].as_str().map(|f| f.contains(LEAK_FN)),
        Some(true),
        "{detection}"
    );
    let id = detection["profile_id"]
        .as_u64()
        .expect("a leak profile")
        .to_string();
    let file = sandbox.path().join("leak.svg");
    let cli = Command::new(heapwarden())
        .args(["diff", &id, "--svg"])
        .arg(&file)
        .arg("-c")
        .arg(sandbox.path().join("heapwarden.toml"))
        .output()
        .expect("run heapwarden diff --svg");
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let svg = std::fs::read_to_string(&file).expect("the SVG file");
    assert!(svg.contains(LEAK_FN), "the SVG names {LEAK_FN}");

    // The admin API serves the same picture.
    let token = std::fs::read_to_string(sandbox.path().join("state/admin-token")).expect("token");
    let reply = heapwarden_tests::http::fetch(
        &heapwarden_tests::http::client(SECS(30)),
        "GET",
        &format!(
            "http://{}/api/v1/profiles/{id}/diff?format=svg",
            config.admin
        ),
        &[("authorization", &format!("Bearer {}", token.trim()))],
        None,
    )
    .expect("GET the SVG");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("image/svg+xml"));
    assert!(reply.body.contains(LEAK_FN));

    let frames = chromium_measures(&svg, sandbox.path());
    assert!(frames.len() > 3, "frames drawn: {frames:?}");
    let leak = frames
        .iter()
        .filter(|f| f["name"].as_str().is_some_and(|n| n.ends_with(LEAK_FN)))
        .max_by(|a, b| {
            a["width"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["width"].as_f64().unwrap())
        })
        .unwrap_or_else(|| panic!("no {LEAK_FN} frame in {frames:?}"));
    let (lx, ly, lw) = (
        leak["x"].as_f64().unwrap(),
        leak["y"].as_f64().unwrap(),
        leak["width"].as_f64().unwrap(),
    );
    let widest = frames
        .iter()
        .filter_map(|f| f["width"].as_f64())
        .fold(0.0, f64::max);
    eprintln!(
        "chromium drew {} frames; {LEAK_FN}: {lw:.0} px of {widest:.0} px",
        frames.len()
    );
    assert!(lw > 50.0, "the leak's frame is drawn wide: {leak}");
    // Grew: inferno's red (rgb(255, g, b) with g = b < 255).
    let fill = leak["fill"].as_str().unwrap_or("");
    assert!(
        fill.starts_with("rgb(255,"),
        "a growing frame is red: {leak}"
    );
    for frame in &frames {
        let (x, y, w) = (
            frame["x"].as_f64().unwrap(),
            frame["y"].as_f64().unwrap(),
            frame["width"].as_f64().unwrap(),
        );
        let caller = y > ly && x <= lx + 0.5 && x + w >= lx + lw - 0.5;
        let same = frame["name"] == leak["name"];
        assert!(
            w <= lw + 0.5 || caller || same,
            "{frame} is wider than the leaking frame {leak} without calling it"
        );
    }
}
