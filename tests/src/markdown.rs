//! The commands a docs page shows, read from the page: its `## ` sections and the lines
//! of its fenced code blocks. The tests that run a page's commands (`tour.rs` for the
//! README, `oncall_guide.rs` for the on-call page, `package.rs` for the manual install in
//! production.md) run what the page says, not a copy.

/// The text under the `## ` heading that starts with `title`, up to the next `## `.
pub fn section<'a>(markdown: &'a str, title: &str) -> &'a str {
    markdown
        .split("\n## ")
        .find(|s| s.starts_with(title))
        .unwrap_or_else(|| panic!("no `## {title}` section"))
}

/// A fenced code block: the word after its opening fence (`sh`, or empty) and its lines,
/// trimmed (fences inside list items are indented), `\` continuations joined, ` #`
/// comments cut, empty lines dropped.
#[derive(Debug)]
pub struct CodeBlock {
    pub lang: String,
    pub lines: Vec<String>,
}

pub fn code_blocks(markdown: &str) -> Vec<CodeBlock> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        match (open.take(), trimmed.strip_prefix("```")) {
            (None, Some(lang)) => open = Some((lang.trim().to_string(), String::new())),
            (None, None) => {}
            (Some((lang, body)), Some(_)) => blocks.push(CodeBlock {
                lang,
                lines: body
                    .replace(" \\\n", " ")
                    .replace("\\\n", " ")
                    .lines()
                    .map(|l| l.split(" #").next().unwrap_or_default().trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect(),
            }),
            (Some((lang, mut body)), None) => {
                body.push_str(trimmed);
                body.push('\n');
                open = Some((lang, body));
            }
        }
    }
    assert!(open.is_none(), "a code block is not closed");
    blocks
}

/// The commands of a page's code blocks: the `$ ` lines of any block (the rest is their
/// output) and every line of an `sh` block.
pub fn commands(markdown: &str) -> Vec<String> {
    code_blocks(markdown)
        .into_iter()
        .flat_map(|block| {
            let sh = block.lang == "sh";
            block
                .lines
                .into_iter()
                .filter_map(move |l| match l.strip_prefix("$ ") {
                    Some(command) => Some(command.to_string()),
                    None => sh.then_some(l),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_prompted_lines_and_sh_blocks() {
        let page = "text `heapwarden nope`\n\n1. **Step**\n\n   ```\n   $ heapwarden ps   # a comment\n   SLOT PID\n   ```\n\n```sh\nA=1 \\\nheapwarden run\n```\n\n```\nheapwarden: an error\n```\n";
        assert_eq!(commands(page), ["heapwarden ps", "A=1 heapwarden run"]);
    }
}
