//! Splitting a worker's output stream into lines of bounded length. A line longer than
//! the cap keeps its first `cap` bytes and counts the rest, which is read and discarded
//! up to the next newline: the stream is always read to its end, so a worker can never
//! stall on a full pipe or die of SIGPIPE because of what it printed.

/// One line of output, without its newline (and without a `\r` before it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub bytes: Vec<u8>,
    /// Bytes of this line past the cap, dropped.
    pub truncated: u64,
}

#[derive(Debug)]
pub struct LineSplitter {
    cap: usize,
    current: Vec<u8>,
    truncated: u64,
}

impl LineSplitter {
    pub fn new(cap: usize) -> LineSplitter {
        LineSplitter {
            cap: cap.max(1),
            current: Vec::new(),
            truncated: 0,
        }
    }

    /// Feeds a chunk read from the stream; `emit` gets every line it completes.
    pub fn push(&mut self, mut chunk: &[u8], mut emit: impl FnMut(Line)) {
        while !chunk.is_empty() {
            let (part, rest, complete) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                None => (chunk, &[][..], false),
            };
            let room = self.cap - self.current.len();
            let kept = part.len().min(room);
            self.current.extend_from_slice(&part[..kept]);
            self.truncated += (part.len() - kept) as u64;
            if complete {
                emit(self.take());
            }
            chunk = rest;
        }
    }

    /// End of the stream: the last line, if it had no newline.
    pub fn finish(&mut self) -> Option<Line> {
        (!self.current.is_empty() || self.truncated > 0).then(|| self.take())
    }

    fn take(&mut self) -> Line {
        let mut bytes = std::mem::take(&mut self.current);
        if self.truncated == 0 && bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        Line {
            bytes,
            truncated: std::mem::take(&mut self.truncated),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split(cap: usize, chunks: &[&[u8]]) -> Vec<Line> {
        let mut s = LineSplitter::new(cap);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, |l| out.push(l));
        }
        out.extend(s.finish());
        out
    }

    fn line(text: &str, truncated: u64) -> Line {
        Line {
            bytes: text.as_bytes().to_vec(),
            truncated,
        }
    }

    #[test]
    fn lines_are_split_across_chunks_and_crlf_is_trimmed() {
        let out = split(100, &[b"one\r\ntw", b"o\n\nthree"]);
        assert_eq!(
            out,
            vec![
                line("one", 0),
                line("two", 0),
                line("", 0),
                line("three", 0)
            ]
        );
    }

    #[test]
    fn a_long_line_keeps_its_head_and_counts_the_rest_and_the_next_line_is_whole() {
        let long = vec![b'x'; 10_000];
        let out = split(8, &[&long[..3000], &long[3000..], b"\nnext\n"]);
        assert_eq!(out, vec![line("xxxxxxxx", 9992), line("next", 0)]);
    }

    proptest! {
        /// Whatever the bytes and however they are chunked: no line exceeds the cap, and
        /// kept + truncated bytes + newlines add up to the input.
        #[test]
        fn every_byte_is_kept_or_counted(
            data in proptest::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..2000),
            cuts in proptest::collection::vec(0usize..2000, 0..8),
            cap in 1usize..64,
        ) {
            let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            bounds.push(0);
            bounds.push(data.len());
            bounds.sort_unstable();
            let chunks: Vec<&[u8]> = bounds.windows(2).map(|w| &data[w[0]..w[1]]).collect();
            let out = split(cap, &chunks);
            let newlines = data.iter().filter(|&&b| b == b'\n').count();
            let crs: usize = out.iter().filter(|l| l.truncated == 0).count();
            let kept: usize = out.iter().map(|l| l.bytes.len()).sum();
            let cut: u64 = out.iter().map(|l| l.truncated).sum();
            prop_assert!(out.iter().all(|l| l.bytes.len() <= cap));
            prop_assert!(out.len() == newlines || out.len() == newlines + 1);
            // A trimmed `\r` is the only byte neither kept nor counted.
            let total = kept + cut as usize + newlines;
            prop_assert!(total <= data.len() && data.len() - total <= crs);
        }
    }
}
