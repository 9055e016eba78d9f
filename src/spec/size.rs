//! Byte sizes as make-disk-image writes them: a number of MiB (`2048`) or a
//! string with an IEC unit (`"512M"`, `"1.5G"` is refused, `"2GiB"`, `"4096K"`).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One mebibyte, the unit make-disk-image counts disk sizes in.
pub const MIB: u64 = 1024 * 1024;

/// A size in bytes, read from a MiB count or a string with an IEC unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// A size of `n` MiB.
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * MIB)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error(
        "`{0}` is not a size: write a whole number of MiB (2048) or a number with a unit K, M, G or T (\"512M\", \"2G\")"
    )]
    Malformed(String),
    #[error("`{0}` is negative: sizes are zero or more")]
    Negative(String),
    #[error("`{0}` is too large")]
    Overflow(String),
}

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(text: &str) -> Result<Self, SizeError> {
        let trimmed = text.trim();
        if trimmed.starts_with('-') {
            return Err(SizeError::Negative(text.to_owned()));
        }
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (digits, unit) = trimmed.split_at(split);
        if digits.is_empty() {
            return Err(SizeError::Malformed(text.to_owned()));
        }
        let number: u64 = digits
            .parse()
            .map_err(|_| SizeError::Overflow(text.to_owned()))?;
        // A bare number is MiB, as make-disk-image's diskSize.
        let multiplier: u64 = match unit.trim() {
            "" | "M" | "MiB" | "m" => MIB,
            "B" | "b" => 1,
            "K" | "KiB" | "k" => 1024,
            "G" | "GiB" | "g" => 1024 * MIB,
            "T" | "TiB" | "t" => 1024 * 1024 * MIB,
            _ => return Err(SizeError::Malformed(text.to_owned())),
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| SizeError::Overflow(text.to_owned()))
    }
}

impl fmt::Display for ByteSize {
    /// The shortest exact form: `512M`, `2G`, `4097K`, `1000B`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1024 * 1024 * MIB, "T"),
            (1024 * MIB, "G"),
            (MIB, "M"),
            (1024, "K"),
        ];
        for (unit, suffix) in UNITS {
            if self.0 >= unit && self.0 % unit == 0 {
                return write!(f, "{}{}", self.0 / unit, suffix);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

struct ByteSizeVisitor;

impl Visitor<'_> for ByteSizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number of MiB or a size string such as \"512M\" or \"2G\"")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
        v.checked_mul(MIB)
            .map(ByteSize)
            .ok_or_else(|| E::custom(SizeError::Overflow(v.to_string())))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
        if v < 0 {
            return Err(E::custom(SizeError::Negative(v.to_string())));
        }
        self.visit_u64(v as u64)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<ByteSize, E> {
        if v < 0.0 {
            return Err(E::custom(SizeError::Negative(v.to_string())));
        }
        Err(E::custom(SizeError::Malformed(v.to_string())))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
        v.parse().map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ByteSizeVisitor)
    }
}

/// `diskSize`: computed from the closure (`"auto"`) or fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskSize {
    /// Computed from the closure, contents and additionalSpace.
    #[default]
    Auto,
    /// Exactly this many bytes.
    Fixed(ByteSize),
}

impl Serialize for DiskSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            DiskSize::Auto => serializer.serialize_str("auto"),
            DiskSize::Fixed(size) => size.serialize(serializer),
        }
    }
}

impl FromStr for DiskSize {
    type Err = SizeError;

    fn from_str(text: &str) -> Result<Self, SizeError> {
        if text.trim() == "auto" {
            Ok(DiskSize::Auto)
        } else {
            text.parse().map(DiskSize::Fixed)
        }
    }
}

impl<'de> Deserialize<'de> for DiskSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DiskSizeVisitor;
        impl Visitor<'_> for DiskSizeVisitor {
            type Value = DiskSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"auto\", a whole number of MiB, or a size string such as \"8G\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DiskSize, E> {
                ByteSizeVisitor.visit_u64(v).map(DiskSize::Fixed)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DiskSize, E> {
                ByteSizeVisitor.visit_i64(v).map(DiskSize::Fixed)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<DiskSize, E> {
                ByteSizeVisitor.visit_f64(v).map(DiskSize::Fixed)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DiskSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(DiskSizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("512M".parse(), Ok(ByteSize::mib(512)));
        assert_eq!("2G".parse(), Ok(ByteSize::mib(2048)));
        assert_eq!("2GiB".parse(), Ok(ByteSize::mib(2048)));
        assert_eq!("4096K".parse(), Ok(ByteSize::mib(4)));
        assert_eq!("100".parse(), Ok(ByteSize::mib(100)));
        assert_eq!("0".parse(), Ok(ByteSize(0)));
    }

    #[test]
    fn refuses_bad_sizes() {
        assert!(matches!(
            "-1G".parse::<ByteSize>(),
            Err(SizeError::Negative(_))
        ));
        assert!(matches!(
            "1.5G".parse::<ByteSize>(),
            Err(SizeError::Malformed(_))
        ));
        assert!(matches!(
            "G".parse::<ByteSize>(),
            Err(SizeError::Malformed(_))
        ));
        assert!(matches!(
            "12Q".parse::<ByteSize>(),
            Err(SizeError::Malformed(_))
        ));
        assert!(matches!(
            "99999999999999T".parse::<ByteSize>(),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn json_numbers_are_mib() {
        let size: ByteSize = serde_json::from_str("300").unwrap();
        assert_eq!(size, ByteSize::mib(300));
        let disk: DiskSize = serde_json::from_str("\"auto\"").unwrap();
        assert_eq!(disk, DiskSize::Auto);
        assert!(serde_json::from_str::<ByteSize>("-5").is_err());
    }

    #[test]
    fn displays_round_trip() {
        for text in ["512M", "2G", "4097K", "1000B", "3T"] {
            let size: ByteSize = text.parse().unwrap();
            assert_eq!(size.to_string(), text);
        }
    }
}
