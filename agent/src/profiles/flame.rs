//! A leak profile minus its baseline as a differential flame graph (SVG, rendered by
//! `inferno`, Brendan Gregg's flamegraph.pl in Rust): one tower per allocating stack,
//! root at the bottom, width the live bytes in the leak profile, red where a frame grew
//! since the baseline and blue where it shrank. Allocator frames are trimmed from the leaf
//! as in the diff report, so the leaking function is the top of its tower.

use std::collections::HashMap;
use std::path::Path;

use inferno::flamegraph::{self, Options};

use super::diff::read_profile;
use super::error::ProfileError;
use super::pprof::Profile;
use super::trim::first_application_frame;

/// Frames kept per stack, counted from the leaf: deeper stacks are cut at the root side.
const MAX_DEPTH: usize = 128;
/// Wide enough that function names stay legible in most frames.
const IMAGE_WIDTH: usize = 1600;

/// Live bytes per root-first stack (`a;b;c`) of one profile.
fn stacks(profile: &Profile, path: &Path) -> Result<HashMap<String, i64>, ProfileError> {
    let string = |i: i64| super::diff::string_at(profile, i);
    let value_index = super::diff::live_bytes_index(profile, path)?;
    let functions: HashMap<u64, (&str, &str)> = profile
        .function
        .iter()
        .map(|f| (f.id, (string(f.name), string(f.filename))))
        .collect();
    let locations: HashMap<u64, &super::pprof::Location> =
        profile.location.iter().map(|l| (l.id, l)).collect();
    let mut out: HashMap<String, i64> = HashMap::new();
    for sample in &profile.sample {
        let bytes = sample.value.get(value_index).copied().unwrap_or(0).max(0);
        let mut frames: Vec<(String, String)> = Vec::new();
        for id in &sample.location_id {
            match locations.get(id) {
                Some(loc) if !loc.line.is_empty() => frames.extend(loc.line.iter().map(|l| {
                    let (name, file) = functions.get(&l.function_id).copied().unwrap_or(("", ""));
                    (name.to_owned(), file.to_owned())
                })),
                Some(loc) => frames.push((format!("{:#x}", loc.address), String::new())),
                None => frames.push((format!("location#{id}"), String::new())),
            }
        }
        let keep_from = first_application_frame(&frames);
        let mut names: Vec<String> = frames
            .into_iter()
            .skip(keep_from)
            .take(MAX_DEPTH)
            .map(|(name, _)| frame_name(&name))
            .collect();
        if names.is_empty() {
            names.push("<empty stack>".to_owned());
        }
        names.reverse();
        *out.entry(names.join(";")).or_default() += bytes;
    }
    Ok(out)
}

/// A frame name fit for the folded format: `;` separates frames and a line is one stack.
fn frame_name(name: &str) -> String {
    let name = if name.is_empty() { "<unknown>" } else { name };
    name.chars()
        .map(|c| match c {
            ';' => ':',
            c if c.is_control() => '?',
            c => c,
        })
        .collect()
}

/// The folded differential lines (`stack base_bytes leak_bytes`), sorted as inferno wants.
pub fn folded_diff(base: &Profile, profile: &Profile) -> Result<Vec<String>, ProfileError> {
    let base = stacks(base, Path::new("<base>"))?;
    let leak = stacks(profile, Path::new("<profile>"))?;
    let mut lines: Vec<String> = base
        .keys()
        .chain(leak.keys().filter(|k| !base.contains_key(*k)))
        .map(|stack| {
            let b = base.get(stack).copied().unwrap_or(0);
            let l = leak.get(stack).copied().unwrap_or(0);
            format!("{stack} {b} {l}")
        })
        .collect();
    lines.sort();
    Ok(lines)
}

/// Renders `profile` minus `base` as an SVG differential flame graph.
pub fn diff_svg(
    base_id: u64,
    base: &Profile,
    profile_id: u64,
    profile: &Profile,
) -> Result<String, ProfileError> {
    let lines = folded_diff(base, profile)?;
    let mut options = Options::default();
    options.title = format!("heapwarden diff {profile_id} (base {base_id})");
    options.subtitle = Some(
        "width: live bytes in the leak profile; red: grew since the baseline, blue: shrank"
            .to_owned(),
    );
    options.count_name = "bytes".to_owned();
    options.image_width = Some(IMAGE_WIDTH);
    let mut svg = Vec::new();
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)
        .map_err(|source| ProfileError::Render { source })?;
    Ok(String::from_utf8_lossy(&svg).into_owned())
}

/// Reads two stored `.pb.gz` files and renders their differential flame graph.
pub fn diff_svg_files(
    base_id: u64,
    base: &Path,
    profile_id: u64,
    profile: &Path,
) -> Result<String, ProfileError> {
    diff_svg(
        base_id,
        &read_profile(base)?,
        profile_id,
        &read_profile(profile)?,
    )
}

#[cfg(test)]
#[path = "flame_tests.rs"]
mod tests;
