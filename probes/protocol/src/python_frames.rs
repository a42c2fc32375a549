//! Python frames in a native worker's raw heap dump, as the preload writes them and the
//! agent's converter reads them: a sampled stack's Python frames are entries with
//! [`TAG`] set (no user-space address has it), carrying an index into the dump's
//! code-object table and a line; the table is a [`SECTION`] appended to jemalloc's dump,
//! one `index<TAB>qualname<TAB>file` line per code object.

/// Set in every encoded Python frame: a kernel-space address, never a mapped one.
pub const TAG: u64 = 1 << 63;
/// Bits of the line number (lines past 2^24 − 1 are cut to their low bits).
pub const LINE_BITS: u32 = 24;
/// The header line of the code-object table, after jemalloc's `MAPPED_LIBRARIES:`.
pub const SECTION: &str = "PYTHON_FRAMES:";

/// The stack entry for line `line` of code object `index`.
pub fn encode(index: usize, line: u32) -> u64 {
    TAG | ((index as u64) << LINE_BITS) | (u64::from(line) & ((1 << LINE_BITS) - 1))
}

/// `(index, line)` of an encoded Python frame; `None` for an ordinary address.
pub fn decode(entry: u64) -> Option<(usize, u32)> {
    if entry & TAG == 0 {
        return None;
    }
    let payload = entry & !TAG;
    Some((
        (payload >> LINE_BITS) as usize,
        (payload & ((1 << LINE_BITS) - 1)) as u32,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_addresses_are_not_frames() {
        assert_eq!(decode(encode(8191, 30)), Some((8191, 30)));
        assert_eq!(decode(encode(0, 0)), Some((0, 0)));
        assert_eq!(decode(0x7f12_3456_7890), None);
        assert_eq!(decode(encode(3, (1 << LINE_BITS) + 5)), Some((3, 5)));
    }
}
