//! Redaction of sensitive keys before a record reaches the JSON serialiser: a drain
//! wrapper that hands slog-json a serializer which swaps sensitive values for
//! "[REDACTED]", at the top level and inside nested JSON values. Which keys match is
//! `heapwarden_protocol::RedactKeys`, shared with the workers; a nested value goes out as
//! `heapwarden_protocol::Nested`, as the demo logs one.

use std::fmt;

use heapwarden_protocol::{Nested, REDACTED, RedactKeys};
use slog::{
    BorrowedKV, Drain, KV, Key, OwnedKV, OwnedKVList, Record, RecordStatic, SerdeValue, Serializer,
};

pub struct Redact<D> {
    inner: D,
    keys: RedactKeys,
}

impl<D> Redact<D> {
    pub fn new(inner: D, keys: &[String]) -> Self {
        Redact {
            inner,
            keys: RedactKeys::new(keys),
        }
    }
}

impl<D: Drain> Drain for Redact<D> {
    type Ok = D::Ok;
    type Err = D::Err;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<D::Ok, D::Err> {
        let record_kv = RedactedKv {
            inner: record.kv(),
            keys: self.keys.clone(),
        };
        let context = OwnedKVList::from(OwnedKV(RedactedKv {
            inner: values.clone(),
            keys: self.keys.clone(),
        }));
        let static_part = RecordStatic {
            location: record.location(),
            level: record.level(),
            tag: record.tag(),
        };
        let args = record.msg();
        let redacted = Record::new(&static_part, args, BorrowedKV(&record_kv));
        self.inner.log(&redacted, &context)
    }
}

struct RedactedKv<K> {
    inner: K,
    keys: RedactKeys,
}

impl<K: KV> KV for RedactedKv<K> {
    fn serialize(&self, record: &Record, serializer: &mut dyn Serializer) -> slog::Result {
        self.inner.serialize(
            record,
            &mut RedactingSerializer {
                inner: serializer,
                keys: &self.keys,
            },
        )
    }
}

struct RedactingSerializer<'a> {
    inner: &'a mut dyn Serializer,
    keys: &'a RedactKeys,
}

macro_rules! forward {
    ($($name:ident: $ty:ty),* $(,)?) => {
        $(fn $name(&mut self, key: Key, val: $ty) -> slog::Result {
            if self.keys.is_sensitive(key) {
                return self.inner.emit_str(key, REDACTED);
            }
            self.inner.$name(key, val)
        })*
    };
}

impl Serializer for RedactingSerializer<'_> {
    forward!(
        emit_usize: usize, emit_isize: isize, emit_bool: bool, emit_char: char,
        emit_u8: u8, emit_i8: i8, emit_u16: u16, emit_i16: i16, emit_u32: u32,
        emit_i32: i32, emit_f32: f32, emit_u64: u64, emit_i64: i64, emit_f64: f64,
        emit_u128: u128, emit_i128: i128, emit_str: &str,
        emit_arguments: &fmt::Arguments,
    );

    fn emit_unit(&mut self, key: Key) -> slog::Result {
        self.inner.emit_unit(key)
    }

    fn emit_none(&mut self, key: Key) -> slog::Result {
        self.inner.emit_none(key)
    }

    fn emit_serde(&mut self, key: Key, value: &dyn SerdeValue) -> slog::Result {
        if self.keys.is_sensitive(key) {
            return self.inner.emit_str(key, REDACTED);
        }
        let mut json = serde_json::to_value(value.as_serde()).unwrap_or(serde_json::Value::Null);
        self.keys.redact_json(&mut json);
        self.inner.emit_serde(key, &Nested(json))
    }
}
