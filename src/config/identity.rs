//! A LUN's unit serial number and NAA identifier: configured, or derived stably from the
//! target name and LUN id.

use serde_yaml::Value;

use super::error::{err, CResult};
use super::values::describe_value;

/// FNV-1a, 64-bit: tiny, fixed and platform-independent, so derived serials and
/// identifiers are the same on every machine and every release.
pub(super) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Default serial and identifier for a LUN, derived from the target name
/// (ASCII-lowercased) and LUN id. The hash input is `"<name>\0<id in decimal>"`.
/// The serial is the hash as 16 lowercase hex digits; the identifier is an NAA
/// "locally assigned" designator (NAA = 3h, SPC-4 7.8.6.6.3) holding the top
/// 60 bits of the hash, so no IEEE OUI is claimed.
pub fn derived_serial_and_identifier(target_name: &str, lun_id: u64) -> (String, u64) {
    let input = format!("{}\0{lun_id}", target_name.to_ascii_lowercase());
    let h = fnv1a64(input.as_bytes());
    (format!("{h:016x}"), (0x3u64 << 60) | (h >> 4))
}

pub(super) fn parse_serial(field: &str, v: &Value) -> CResult<String> {
    let Value::String(s) = v else {
        return err(
            field,
            format!(
                "{} is not a string; quote the serial (e.g. serial: \"0042\") so YAML keeps it as text",
                describe_value(v)
            ),
        );
    };
    if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return err(
            field,
            format!("\"{s}\" is not allowed; use 1 to 32 printable ASCII characters"),
        );
    }
    Ok(s.clone())
}

pub(super) fn parse_identifier(field: &str, v: &Value) -> CResult<u64> {
    let Value::String(s) = v else {
        return err(
            field,
            format!(
                "{} is not a string; quote the identifier (e.g. identifier: \"3000000000000001\") so YAML keeps it as 16 hex digits",
                describe_value(v)
            ),
        );
    };
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return err(
            field,
            format!("\"{s}\" is not an identifier; use exactly 16 hex digits, e.g. \"3000000000000001\""),
        );
    }
    let id = u64::from_str_radix(s, 16)
        .or_else(|_| err(field, format!("\"{s}\" is not 16 hex digits")))?;
    if !matches!(id >> 60, 2 | 3 | 5) {
        log::warn!(
            "{field}: {s} does not start with 2, 3 or 5, so it is not a well-formed 8-byte NAA designator"
        );
    }
    Ok(id)
}
