//! iSCSI names (RFC 3720 3.2.6 / RFC 7143 4.2.7): the `iqn.`, `eui.` and `naa.` forms.

use super::error::{err, CResult};

const NAME_HELP: &str = "use iqn.YYYY-MM.reversed.domain[:suffix] (lowercase a-z 0-9 - . :), eui. + 16 hex digits, or naa. + 16 or 32 hex digits";

/// Check an iSCSI name: `iqn.YYYY-MM.reversed.domain[:anything]` (lowercase,
/// characters a-z 0-9 `-` `.` `:`), `eui.` + 16 hex digits, or `naa.` + 16 or
/// 32 hex digits; at most 223 bytes. Returns a human-readable reason on failure.
pub fn validate_iscsi_name(name: &str) -> Result<(), String> {
    if name.len() > 223 {
        return Err(format!(
            "is {} bytes long; iSCSI names are at most 223",
            name.len()
        ));
    }
    if let Some(hex) = name.strip_prefix("eui.") {
        return if hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err("eui. must be followed by exactly 16 hex digits".to_string())
        };
    }
    if let Some(hex) = name.strip_prefix("naa.") {
        return if (hex.len() == 16 || hex.len() == 32) && hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            Ok(())
        } else {
            Err("naa. must be followed by exactly 16 or 32 hex digits".to_string())
        };
    }
    let Some(rest) = name.strip_prefix("iqn.") else {
        return Err("must start with iqn., eui. or naa.".to_string());
    };
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | ':')))
    {
        return Err(format!(
            "contains '{bad}'; iqn names use only lowercase a-z, 0-9, '-', '.' and ':'"
        ));
    }
    let b = rest.as_bytes();
    let date_ok = b.len() >= 7
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && matches!(
            &rest[5..7],
            "01" | "02" | "03" | "04" | "05" | "06" | "07" | "08" | "09" | "10" | "11" | "12"
        );
    if !date_ok {
        return Err("iqn. must be followed by a year and month, YYYY-MM".to_string());
    }
    let after_date = &rest[7..];
    let Some(after_dot) = after_date.strip_prefix('.') else {
        return Err("the date must be followed by '.' and a reversed domain name".to_string());
    };
    let (domain, suffix) = match after_dot.split_once(':') {
        Some((d, s)) => (d, Some(s)),
        None => (after_dot, None),
    };
    if domain.is_empty() || domain.split('.').any(str::is_empty) {
        return Err(
            "the reversed domain name (like org.example) must have non-empty labels".to_string(),
        );
    }
    if suffix == Some("") {
        return Err("nothing follows ':'; drop the ':' or add a suffix".to_string());
    }
    Ok(())
}

pub(super) fn check_iscsi_name(field: &str, name: &str) -> CResult<()> {
    validate_iscsi_name(name).or_else(|why| {
        err(
            field,
            format!("\"{name}\" is not an iSCSI name: {why}; {NAME_HELP}"),
        )
    })
}
