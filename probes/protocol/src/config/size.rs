//! Sizes in the config file: "512MiB", "1.5 GiB", "64KiB" or a bare number of bytes;
//! written back in the largest binary unit that divides them ("512MiB"), so the
//! effective config reads as it was written.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A byte count written like "512MiB", "1.5 GiB" or a bare integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Size(pub u64);

impl Size {
    pub const fn kib(n: u64) -> Size {
        Size(n * 1024)
    }
    pub const fn mib(n: u64) -> Size {
        Size(n * 1024 * 1024)
    }
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| Size(b.as_u64()))
            .map_err(|_| format!("expected a size like \"512MiB\", got {s:?}"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        for (unit, scale) in UNITS {
            if self.0 >= scale && self.0.is_multiple_of(scale) {
                return write!(f, "{}{unit}", self.0 / scale);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match SizeInput::deserialize(d)? {
            SizeInput::Int(n) => Ok(Size(n)),
            SizeInput::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeInput {
    Int(u64),
    Text(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        assert_eq!("512MiB".parse::<Size>().unwrap(), Size::mib(512));
        assert_eq!("64 KiB".parse::<Size>().unwrap(), Size::kib(64));
        assert_eq!("1kB".parse::<Size>().unwrap(), Size(1000));
        assert_eq!("0B".parse::<Size>().unwrap(), Size(0));
        assert_eq!(
            "lots".parse::<Size>().unwrap_err(),
            "expected a size like \"512MiB\", got \"lots\""
        );
        assert_eq!(Size::mib(512).to_string(), "512MiB");
        assert_eq!(Size(1000).to_string(), "1000B");
    }

    #[test]
    fn a_bare_number_is_bytes() {
        let table: toml::Table = "a = 4096\nb = \"4KiB\"".parse().unwrap();
        let a: Size = table["a"].clone().try_into().unwrap();
        let b: Size = table["b"].clone().try_into().unwrap();
        assert_eq!((a, b), (Size::kib(4), Size::kib(4)));
    }
}
