//! Scalar values the sections share: sizes (`1G`, `512MiB`), integers with a range and a
//! default, absolute paths, and how a YAML value is named in an error message.

use std::path::PathBuf;

use serde_yaml::Value;

use super::error::{err, CResult, ConfigError};

/// Apply a default and an inclusive range check, converting to the field's type.
pub(super) fn ranged<T>(
    field: &str,
    value: Option<u64>,
    default: T,
    min: u64,
    max: u64,
) -> CResult<T>
where
    T: TryFrom<u64>,
{
    let Some(v) = value else {
        return Ok(default);
    };
    if v < min || v > max {
        return err(field, format!("{v} is out of range; use {min}..={max}"));
    }
    T::try_from(v).or_else(|_| err(field, format!("{v} is out of range; use {min}..={max}")))
}

pub(super) fn check_abs_path(field: &str, path: Option<String>, kind: &str) -> CResult<PathBuf> {
    let Some(p) = path else {
        return err(field, format!("required for type {kind}: an absolute path"));
    };
    let pb = PathBuf::from(&p);
    if p.is_empty() || !pb.is_absolute() {
        return err(
            field,
            format!("\"{p}\" is not an absolute path; use a path starting with /"),
        );
    }
    Ok(pb)
}

const SIZE_HELP: &str = "use bytes or a suffix K, M, G, T (KiB-based) like 1G, 512MiB";

/// Parse a size: a plain number of bytes, or a number followed by an optional
/// space and a 1024-based suffix `K`, `M`, `G`, `T`, each optionally followed by
/// `B` or `iB` (`1G`, `512MiB`, `10 GiB`, `4096B`). Suffixes are
/// case-insensitive. Returns `None` for malformed text or overflow.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return None;
    }
    let number: u64 = t[..digits_end].parse().ok()?;
    let suffix = t[digits_end..].trim_start().to_ascii_lowercase();
    let shift = match suffix.as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    number.checked_mul(1u64 << shift)
}

pub(super) fn parse_size_value(field: &str, v: &Value) -> CResult<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| ConfigError::new(field, format!("{n} is not a size; {SIZE_HELP}"))),
        Value::String(s) => parse_size(s).ok_or_else(|| {
            if parse_size_overflows(s.trim()) {
                ConfigError::new(
                    field,
                    format!("\"{s}\" is too large; sizes must fit in 64 bits"),
                )
            } else {
                ConfigError::new(field, format!("\"{s}\" is not a size; {SIZE_HELP}"))
            }
        }),
        other => err(
            field,
            format!("{} is not a size; {SIZE_HELP}", describe_value(other)),
        ),
    }
}

/// True when `text` is well-formed (digits, known suffix), so a failed parse
/// can only have been an overflow.
fn parse_size_overflows(text: &str) -> bool {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let suffix = text[digits_end..].trim_start().to_ascii_lowercase();
    let known = matches!(
        suffix.as_str(),
        "" | "b"
            | "k"
            | "kb"
            | "kib"
            | "m"
            | "mb"
            | "mib"
            | "g"
            | "gb"
            | "gib"
            | "t"
            | "tb"
            | "tib"
    );
    digits_end > 0 && known
}

pub(super) fn describe_value(v: &Value) -> String {
    match v {
        Value::Null => "an empty value".to_string(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("{n}"),
        Value::String(s) => format!("\"{s}\""),
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        Value::Tagged(_) => "a tagged value".to_string(),
    }
}

/// A list entry given as a mapping, read into `T` (a `Raw*` struct named `type_name`), with
/// errors located under `path` and naming "a mapping" rather than the struct.
pub(super) fn from_mapping<T: serde::de::DeserializeOwned>(
    path: &str,
    value: Value,
    type_name: &str,
) -> CResult<T> {
    serde_yaml::from_value::<T>(value).map_err(|e| {
        let inner = ConfigError::from_yaml(e);
        let field = if inner.field().is_empty() {
            path.to_string()
        } else {
            format!("{path}.{}", inner.field())
        };
        ConfigError::new(
            field,
            inner
                .message()
                .replace(&format!("struct {type_name}"), "a mapping"),
        )
    })
}
