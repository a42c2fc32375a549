//! Pyroscope's push API messages, declared with prost from the published schema's field
//! numbers (`api/push/v1/push.proto` and `api/types/v1/types.proto` in grafana/pyroscope):
//! the request body of `POST /push.v1.PusherService/Push` in `application/proto`.

use prost::Message;

/// `push.v1.PushRequest`
#[derive(Clone, PartialEq, Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub series: Vec<RawProfileSeries>,
}

/// `push.v1.RawProfileSeries`: one label set and its profiles.
#[derive(Clone, PartialEq, Message)]
pub struct RawProfileSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<LabelPair>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<RawSample>,
}

/// `push.v1.RawSample`: `raw_profile` is a (gzipped) pprof.
#[derive(Clone, PartialEq, Message)]
pub struct RawSample {
    #[prost(bytes = "vec", tag = "1")]
    pub raw_profile: Vec<u8>,
    #[prost(string, tag = "2")]
    pub id: String,
}

/// `types.v1.LabelPair`
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Message)]
pub struct LabelPair {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

impl LabelPair {
    pub fn new(name: &str, value: impl Into<String>) -> LabelPair {
        LabelPair {
            name: name.to_string(),
            value: value.into(),
        }
    }
}

/// One profile as one series with one sample.
pub fn push_request(labels: Vec<LabelPair>, raw_profile: Vec<u8>, id: String) -> Vec<u8> {
    PushRequest {
        series: vec![RawProfileSeries {
            labels,
            samples: vec![RawSample { raw_profile, id }],
        }],
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_numbers_are_the_published_ones() {
        let body = push_request(vec![LabelPair::new("a", "b")], vec![7], "x".into());
        // series (1, len) { labels (1, len) { name (1) "a", value (2) "b" },
        //                   samples (2, len) { raw_profile (1) [7], ID (2) "x" } }
        let expected = [
            0x0a, 16, 0x0a, 6, 0x0a, 1, b'a', 0x12, 1, b'b', 0x12, 6, 0x0a, 1, 7, 0x12, 1, b'x',
        ];
        assert_eq!(body, expected);
        assert_eq!(PushRequest::decode(&body[..]).unwrap().series.len(), 1);
    }
}
