//! The differential flame graph: folded lines carry base and leak bytes per root-first
//! stack with allocator frames trimmed, and the SVG names the leaking function in a red
//! (grown) frame and a shrinking one in blue.

use super::super::tests::profile_of;
use super::*;

fn pair() -> (Profile, Profile) {
    let base = profile_of(&[
        (&["malloc", "app::cache_fill", "main"], 4000),
        (&["malloc", "app::steady", "main"], 500),
    ]);
    let leak = profile_of(&[
        (
            &[
                "prof_backtrace_impl",
                "__rust_alloc",
                "app::leaky;odd",
                "main",
            ],
            90000,
        ),
        (&["malloc", "app::cache_fill", "main"], 1000),
        (&["malloc", "app::steady", "main"], 500),
    ]);
    (base, leak)
}

#[test]
fn folded_lines_are_root_first_trimmed_and_carry_both_profiles() {
    let (base, leak) = pair();
    let lines = folded_diff(&base, &leak).unwrap();
    assert_eq!(
        lines,
        [
            "main;app::cache_fill 4000 1000",
            "main;app::leaky:odd 0 90000",
            "main;app::steady 500 500",
        ]
    );
}

/// The `<g>` element of the frame titled `name …`.
fn frame<'a>(svg: &'a str, name: &str) -> &'a str {
    let title = format!("<title>{name} (");
    let at = svg
        .find(&title)
        .unwrap_or_else(|| panic!("no frame {name} in {svg}"));
    let start = svg[..at].rfind("<g").unwrap();
    let end = at + svg[at..].find("</g>").unwrap();
    &svg[start..end]
}

/// `rgb(r,g,b)` of a frame's rect.
fn fill(frame: &str) -> (u8, u8, u8) {
    let at = frame.find("fill=\"rgb(").expect("a fill") + 10;
    let rgb: Vec<u8> = frame[at..]
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .map(|c| c.trim().parse().unwrap())
        .collect();
    (rgb[0], rgb[1], rgb[2])
}

#[test]
fn grown_frames_are_red_and_shrunk_ones_blue() {
    let (base, leak) = pair();
    let svg = diff_svg(3, &base, 12, &leak).unwrap();
    assert!(svg.starts_with("<?xml"), "{}", &svg[..100]);
    assert!(svg.contains("heapwarden diff 12 (base 3)"));
    let (r, g, b) = fill(frame(&svg, "app::leaky:odd"));
    assert!(r > 200 && g < 200 && b < 200, "grown: rgb({r},{g},{b})");
    // Shades scale with the change against the largest one: a small shrink is pale blue.
    let (r, g, b) = fill(frame(&svg, "app::cache_fill"));
    assert!(b == 255 && r < b && g < b, "shrunk: rgb({r},{g},{b})");
}

#[test]
fn profiles_without_space_samples_are_an_error() {
    let (base, _) = pair();
    let empty = Profile {
        string_table: vec![String::new()],
        ..Default::default()
    };
    assert!(matches!(
        diff_svg(1, &base, 2, &empty),
        Err(ProfileError::NoSpaceSamples { .. })
    ));
}
