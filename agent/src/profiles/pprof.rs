//! The pprof wire format (`profile.proto` from github.com/google/pprof), hand-derived as
//! prost messages because `pprof_util` keeps its generated types private; plus gzip
//! encode/decode of a whole profile. Only the fields heapwarden writes or reads are
//! declared; prost skips the rest when decoding someone else's profile.

use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use prost::Message;

/// A decoded profile larger than this is refused: a profile is a few MB at most, and an
/// unbounded decompression of a hostile file would be a memory bomb in the agent.
pub const MAX_DECODED_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Clone, PartialEq, Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    /// Innermost (inlined) function first, the function the address belongs to last.
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// Serialises and gzips a profile (the `.pb.gz` every pprof tool opens).
pub fn encode_gz(profile: &Profile) -> std::io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&profile.encode_to_vec())?;
    gz.finish()
}

/// Decodes a `.pb.gz` (or a plain `.pb`: pprof accepts both, so we do too).
pub fn decode(bytes: &[u8]) -> Result<Profile, DecodeError> {
    let raw = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(bytes)
            .take(MAX_DECODED_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(DecodeError::Gzip)?;
        if out.len() as u64 > MAX_DECODED_BYTES {
            return Err(DecodeError::TooLarge);
        }
        out
    } else {
        bytes.to_vec()
    };
    Profile::decode(raw.as_slice()).map_err(DecodeError::Proto)
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("gzip stream is corrupt: {0}")]
    Gzip(std::io::Error),
    #[error("decompressed profile exceeds {MAX_DECODED_BYTES} bytes")]
    TooLarge,
    #[error("not a pprof protobuf: {0}")]
    Proto(prost::DecodeError),
}

/// Builds the string table: index 0 is always "", each string stored once.
#[derive(Debug)]
pub struct StringTable {
    index: std::collections::HashMap<String, i64>,
    strings: Vec<String>,
}

impl Default for StringTable {
    fn default() -> Self {
        StringTable {
            index: [(String::new(), 0)].into_iter().collect(),
            strings: vec![String::new()],
        }
    }
}

impl StringTable {
    pub fn intern(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.strings.len() as i64;
        self.strings.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }

    pub fn finish(self) -> Vec<String> {
        self.strings
    }
}
