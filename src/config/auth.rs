//! CHAP credentials in the configuration: a target's `auth`, the top-level `discovery_auth`, and
//! per-initiator entries of `allowed_initiators`.
//!
//! ```yaml
//! auth:
//!   chap: { username: alice, secret: a-secret-of-12-to-16 }      # the initiator proves itself
//!   mutual_chap: { username: tgt0, secret_file: /etc/iser/tgt0 } # optional: the target proves itself
//! ```
//!
//! Secrets read from `secret_file` are read here, while the configuration is loaded, so a missing
//! file fails `check-config` and start-up alike.

use std::path::Path;

use serde::Deserialize;
use serde_yaml::Value;

use super::error::{err, CResult, ConfigError};
use super::iscsi_name::check_iscsi_name;
use super::values::check_abs_path;
use crate::iscsi::chap::{Authentication, Credentials, Secret};

/// Secrets shorter than this draw a warning: RFC 7143 §9.2.1 says a CHAP secret of fewer than 12
/// random bytes cannot stand an offline dictionary attack on a captured exchange.
pub const MIN_SECRET_LEN: usize = 12;
/// Longest CHAP name or secret we accept (open-iscsi's limit, usr/auth.h AUTH_STR_MAX_LEN, is 256
/// including the terminator).
const MAX_LEN: usize = 255;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    chap: Option<RawCredentials>,
    mutual_chap: Option<RawCredentials>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    username: Option<String>,
    secret: Option<String>,
    secret_file: Option<String>,
}

/// A structured `allowed_initiators` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInitiatorEntry {
    name: Option<String>,
    chap: Option<RawCredentials>,
    mutual_chap: Option<RawCredentials>,
}

impl RawAuth {
    pub(super) fn resolve(self, path: &str) -> CResult<Authentication> {
        resolve_pair(path, self.chap, self.mutual_chap)?.ok_or_else(|| {
            ConfigError::new(
                format!("{path}.chap"),
                "required: `chap: { username: NAME, secret: SECRET }` (or omit the whole key)",
            )
        })
    }
}

/// `chap` and `mutual_chap` of one place: both absent is `None`; `mutual_chap` alone is an error.
fn resolve_pair(
    path: &str,
    chap: Option<RawCredentials>,
    mutual_chap: Option<RawCredentials>,
) -> CResult<Option<Authentication>> {
    let Some(chap) = chap else {
        if mutual_chap.is_some() {
            return err(
                &format!("{path}.mutual_chap"),
                "needs `chap` too: the target proves itself only to an initiator that proved itself",
            );
        }
        return Ok(None);
    };
    let chap = chap.resolve(&format!("{path}.chap"))?;
    let mutual_chap = match mutual_chap {
        Some(m) => {
            let mpath = format!("{path}.mutual_chap");
            let m = m.resolve(&mpath)?;
            // RFC 7143 §12.1.3: a secret used to authenticate initiators must not also
            // authenticate targets, or a reflection attack needs only one of them.
            if m.secret == chap.secret {
                return err(
                    &format!("{mpath}.secret"),
                    format!("is the same as {path}.chap's; RFC 7143 §12.1.3 forbids one secret for both directions"),
                );
            }
            Some(m)
        }
        None => None,
    };
    Ok(Some(Authentication { chap, mutual_chap }))
}

impl RawCredentials {
    fn resolve(self, path: &str) -> CResult<Credentials> {
        let upath = format!("{path}.username");
        let Some(username) = self.username else {
            return err(&upath, "required: the CHAP name (CHAP_N), e.g. alice");
        };
        if username.is_empty() || username.len() > MAX_LEN || username.contains('\0') {
            return err(
                &upath,
                format!("must be 1 to {MAX_LEN} bytes without NUL characters"),
            );
        }
        let secret = match (self.secret, self.secret_file) {
            (Some(_), Some(_)) => {
                return err(
                    &format!("{path}.secret_file"),
                    "give either `secret` or `secret_file`, not both",
                )
            }
            (None, None) => {
                return err(
                    &format!("{path}.secret"),
                    "required: `secret: TEXT` or `secret_file: /absolute/path`",
                )
            }
            (Some(text), None) => {
                let secret = Secret::new(text);
                check_secret(&format!("{path}.secret"), &secret)?;
                secret
            }
            (None, Some(file)) => {
                let fpath = format!("{path}.secret_file");
                let file = check_abs_path(&fpath, Some(file), "secret file")?;
                let secret = read_secret_file(&fpath, &file)?;
                check_secret(&fpath, &secret)?;
                secret
            }
        };
        Ok(Credentials { username, secret })
    }
}

/// Reads a secret file; one trailing newline (as `echo` writes) is not part of the secret.
fn read_secret_file(field: &str, file: &Path) -> CResult<Secret> {
    let mut bytes = std::fs::read(file)
        .map_err(|e| ConfigError::new(field, format!("cannot read {}: {e}", file.display())))?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    Ok(Secret::new(bytes))
}

fn check_secret(field: &str, secret: &Secret) -> CResult<()> {
    if secret.is_empty() || secret.len() > MAX_LEN {
        return err(field, format!("the secret must be 1 to {MAX_LEN} bytes"));
    }
    if secret.len() < MIN_SECRET_LEN {
        log::warn!(
            "{field}: the CHAP secret is {} bytes; use at least {MIN_SECRET_LEN} random bytes, \
             shorter ones cannot stand an offline dictionary attack (RFC 7143 §9.2.1)",
            secret.len()
        );
    }
    Ok(())
}

/// One `allowed_initiators` entry: a bare iSCSI name, or `{ name, chap, mutual_chap }`.
pub(super) fn resolve_initiator(
    path: &str,
    value: Value,
) -> CResult<(String, Option<Authentication>)> {
    let entry = match value {
        Value::String(name) => {
            check_iscsi_name(path, &name)?;
            return Ok((name, None));
        }
        Value::Mapping(_) => {
            super::values::from_mapping::<RawInitiatorEntry>(path, value, "RawInitiatorEntry")?
        }
        other => {
            return err(
                path,
                format!(
                    "{} is not an initiator; use an iSCSI name or {{ name: IQN, chap: {{...}} }}",
                    super::values::describe_value(&other)
                ),
            )
        }
    };
    let npath = format!("{path}.name");
    let Some(name) = entry.name else {
        return err(&npath, "required: the initiator's iSCSI name");
    };
    check_iscsi_name(&npath, &name)?;
    let auth = resolve_pair(path, entry.chap, entry.mutual_chap)?;
    Ok((name, auth))
}
