//! The native (LD_PRELOAD) probe's plan. Owned by the native probe's work (issue 9),
//! which replaces this file; until then a `native` pool runs plain programs.

use super::AttachInput;

/// The env that loads the preload library, or why it cannot be loaded.
pub fn plan(_input: &AttachInput<'_>) -> Result<Vec<(String, String)>, String> {
    Err("no native probe yet".to_string())
}
