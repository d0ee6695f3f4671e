//! CHAP authentication in the login's security stage (RFC 7143 §12.1.3, RFC 1994), target side.
//!
//! The exchange, after both sides settled `AuthMethod=CHAP`:
//!
//! ```text
//! I->T  CHAP_A=<A1,A2,...>
//! T->I  CHAP_A=<A>  CHAP_I=<I>  CHAP_C=<C>
//! I->T  CHAP_N=<N>  CHAP_R=<R>  [CHAP_I=<I'>  CHAP_C=<C'>]     (the bracket: mutual CHAP)
//! T->I  [CHAP_N=<N'>  CHAP_R=<R'>]
//! ```
//!
//! where `R = H(I || secret || C)` with H the chosen digest. Like the rest of the core this is
//! sans-IO: the identifier and the challenge come from a [`RandomSource`] the transport injects
//! through [`super::CoreConfig::random`] (the server uses the operating system's CSPRNG; tests use
//! a fixed pattern), so every exchange can be replayed deterministically in tests.

use std::fmt;

use base64::Engine as _;
use sha2::Digest;
use subtle::ConstantTimeEq;

use super::text::KeyValue;

/// Largest challenge we accept from an initiator, in bytes: Linux's target refuses larger ones
/// ("CHAP_C exceeds maximum binary size of 1024 bytes", drivers/target/iscsi/iscsi_target_auth.c).
const MAX_INITIATOR_CHALLENGE: usize = 1024;

/// A CHAP secret. Its `Debug` never shows the bytes, so a secret cannot reach a log through a
/// `{:?}` of a configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps the secret's bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    /// Length in bytes (for the weak-secret warning).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty secret.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// One side's CHAP name and secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The CHAP name (`CHAP_N`); not the iSCSI name.
    pub username: String,
    pub secret: Secret,
}

/// What a login must prove: the initiator's credentials, and optionally the target's own for
/// mutual CHAP (used only when the initiator asks for it by sending `CHAP_I`/`CHAP_C`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authentication {
    /// The initiator proves itself with these.
    pub chap: Credentials,
    /// The target proves itself back with these, when the initiator asks.
    pub mutual_chap: Option<Credentials>,
}

pub use crate::random::{no_random_source, RandomSource, RandomUnavailable};

/// The digests CHAP may use over iSCSI, by their `CHAP_A` numbers: MD5 (RFC 1994), SHA-1,
/// SHA-256 and SHA3-256 (the IANA "PPP Authentication Algorithms" registry values that Linux's
/// target, drivers/target/iscsi/iscsi_target_auth.c, and open-iscsi, usr/auth.c, accept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Algorithm {
    Md5 = 5,
    Sha1 = 6,
    Sha256 = 7,
    Sha3_256 = 8,
}

impl Algorithm {
    fn from_number(n: u64) -> Option<Self> {
        Some(match n {
            5 => Algorithm::Md5,
            6 => Algorithm::Sha1,
            7 => Algorithm::Sha256,
            8 => Algorithm::Sha3_256,
            _ => return None,
        })
    }

    /// Digest size in bytes.
    pub fn digest_size(self) -> usize {
        match self {
            Algorithm::Md5 => 16,
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 | Algorithm::Sha3_256 => 32,
        }
    }

    /// Length of the challenge we send: the digest size, as Linux's target does ("Tie the
    /// challenge length to the digest size", chap_server_open in
    /// drivers/target/iscsi/iscsi_target_auth.c), which is LIO's 16 bytes for MD5.
    fn challenge_len(self) -> usize {
        self.digest_size()
    }

    /// `H(identifier || secret || challenge)` (RFC 1994 §4.1).
    pub fn response(self, identifier: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        fn run<D: Digest>(identifier: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
            let mut d = D::new();
            d.update([identifier]);
            d.update(secret);
            d.update(challenge);
            d.finalize().to_vec()
        }
        match self {
            Algorithm::Md5 => run::<md5::Md5>(identifier, secret, challenge),
            Algorithm::Sha1 => run::<sha1::Sha1>(identifier, secret, challenge),
            Algorithm::Sha256 => run::<sha2::Sha256>(identifier, secret, challenge),
            Algorithm::Sha3_256 => run::<sha3::Sha3_256>(identifier, secret, challenge),
        }
    }
}

/// Why a CHAP exchange failed. Every variant but [`ChapError::Random`] is an authentication
/// failure (login status 0x0201), as Linux's target answers every CHAP failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChapError {
    #[error("CHAP_A offers no algorithm we support (5 MD5, 6 SHA-1, 7 SHA-256, 8 SHA3-256)")]
    NoAlgorithm,
    #[error("{0} is not expected at this step of the CHAP exchange")]
    Unexpected(&'static str),
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{0} sent twice")]
    Duplicate(&'static str),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("CHAP_N names a user we do not know")]
    WrongName,
    #[error("CHAP_R is wrong")]
    WrongResponse,
    #[error("the initiator asks for mutual CHAP but the target has no mutual credentials")]
    MutualNotConfigured,
    #[error("the initiator's CHAP_C reflects the target's challenge")]
    ReflectedChallenge,
    #[error(transparent)]
    Random(#[from] RandomUnavailable),
}

/// The CHAP keys of one Login Request, collected in any order.
#[derive(Debug, Default)]
pub(crate) struct ChapKeys {
    a: Option<String>,
    n: Option<String>,
    r: Option<String>,
    i: Option<String>,
    c: Option<String>,
}

impl ChapKeys {
    /// Takes `key=value` if it is a CHAP key (`Ok(true)`); `Ok(false)` for any other key.
    pub(crate) fn take(&mut self, key: &str, value: &str) -> Result<bool, ChapError> {
        let (slot, name) = match key {
            "CHAP_A" => (&mut self.a, "CHAP_A"),
            "CHAP_N" => (&mut self.n, "CHAP_N"),
            "CHAP_R" => (&mut self.r, "CHAP_R"),
            "CHAP_I" => (&mut self.i, "CHAP_I"),
            "CHAP_C" => (&mut self.c, "CHAP_C"),
            _ if key.starts_with("CHAP_") => {
                return Err(ChapError::Unexpected("an unknown CHAP key"))
            }
            _ => return Ok(false),
        };
        if slot.replace(value.to_string()).is_some() {
            return Err(ChapError::Duplicate(name));
        }
        Ok(true)
    }

    /// No CHAP key was sent.
    pub(crate) fn is_empty(&self) -> bool {
        self.a.is_none()
            && self.n.is_none()
            && self.r.is_none()
            && self.i.is_none()
            && self.c.is_none()
    }
}

/// Where the exchange stands.
#[derive(Debug)]
enum Step {
    /// `AuthMethod=CHAP` settled; the initiator's `CHAP_A` comes next.
    AwaitAlgorithm,
    /// Our challenge is out; `CHAP_N`/`CHAP_R` come next.
    AwaitResponse {
        algorithm: Algorithm,
        identifier: u8,
        challenge: Vec<u8>,
    },
    /// The initiator proved itself (and we did, if asked).
    Authenticated,
}

/// One login's CHAP exchange, target side.
#[derive(Debug)]
pub(crate) struct ChapExchange {
    auth: Authentication,
    step: Step,
}

impl ChapExchange {
    /// Starts an exchange once `AuthMethod=CHAP` is agreed.
    pub(crate) fn new(auth: Authentication) -> Self {
        ChapExchange {
            auth,
            step: Step::AwaitAlgorithm,
        }
    }

    /// The initiator has proved itself: the login may leave the security stage.
    pub(crate) fn is_authenticated(&self) -> bool {
        matches!(self.step, Step::Authenticated)
    }

    /// Processes the CHAP keys of one Login Request and returns the keys to answer with.
    pub(crate) fn step(
        &mut self,
        keys: ChapKeys,
        random: RandomSource,
    ) -> Result<Vec<KeyValue>, ChapError> {
        match &self.step {
            Step::AwaitAlgorithm => {
                if keys.is_empty() {
                    // A request without CHAP keys (for example the rest of a text that had the
                    // C bit) moves nothing.
                    return Ok(Vec::new());
                }
                for (present, name) in [
                    (keys.n.is_some(), "CHAP_N"),
                    (keys.r.is_some(), "CHAP_R"),
                    (keys.i.is_some(), "CHAP_I"),
                    (keys.c.is_some(), "CHAP_C"),
                ] {
                    if present {
                        return Err(ChapError::Unexpected(name));
                    }
                }
                let offered = keys.a.ok_or(ChapError::Missing("CHAP_A"))?;
                let algorithm = choose_algorithm(&offered)?;
                let mut identifier = [0u8; 1];
                random(&mut identifier)?;
                let mut challenge = vec![0u8; algorithm.challenge_len()];
                random(&mut challenge)?;
                let answer = vec![
                    ("CHAP_A".to_string(), (algorithm as u8).to_string()),
                    // Decimal: libiscsi reads CHAP_I with atoi() (lib/login.c).
                    ("CHAP_I".to_string(), identifier[0].to_string()),
                    ("CHAP_C".to_string(), encode_hex(&challenge)),
                ];
                self.step = Step::AwaitResponse {
                    algorithm,
                    identifier: identifier[0],
                    challenge,
                };
                Ok(answer)
            }
            Step::AwaitResponse {
                algorithm,
                identifier,
                challenge,
            } => {
                if keys.a.is_some() {
                    return Err(ChapError::Unexpected("CHAP_A"));
                }
                let (algorithm, identifier) = (*algorithm, *identifier);
                let name = keys.n.ok_or(ChapError::Missing("CHAP_N"))?;
                let response = keys.r.ok_or(ChapError::Missing("CHAP_R"))?;
                let response = decode_binary(&response).ok_or(ChapError::Malformed("CHAP_R"))?;
                // CHAP names are compared exactly, as Linux's target does (strncmp including
                // the terminator, chap_server_compute_hash).
                let name_ok = name == self.auth.chap.username;
                let expected =
                    algorithm.response(identifier, self.auth.chap.secret.bytes(), challenge);
                let response_ok =
                    response.len() == expected.len() && bool::from(response.ct_eq(&expected));
                if !name_ok {
                    return Err(ChapError::WrongName);
                }
                if !response_ok {
                    return Err(ChapError::WrongResponse);
                }
                let answer = match (keys.i, keys.c) {
                    (None, None) => Vec::new(),
                    (Some(_), None) => return Err(ChapError::Missing("CHAP_C")),
                    (None, Some(_)) => return Err(ChapError::Missing("CHAP_I")),
                    (Some(i), Some(c)) => {
                        let mutual = self
                            .auth
                            .mutual_chap
                            .as_ref()
                            .ok_or(ChapError::MutualNotConfigured)?;
                        let their_id =
                            parse_identifier(&i).ok_or(ChapError::Malformed("CHAP_I"))?;
                        let their_challenge = decode_binary(&c)
                            .filter(|c| !c.is_empty() && c.len() <= MAX_INITIATOR_CHALLENGE)
                            .ok_or(ChapError::Malformed("CHAP_C"))?;
                        // RFC 7143 §12.1.3: the target must refuse a challenge equal to the one it
                        // sent, or a reflection attack could make it answer its own challenge.
                        if their_challenge == *challenge {
                            return Err(ChapError::ReflectedChallenge);
                        }
                        let ours =
                            algorithm.response(their_id, mutual.secret.bytes(), &their_challenge);
                        vec![
                            ("CHAP_N".to_string(), mutual.username.clone()),
                            ("CHAP_R".to_string(), encode_hex(&ours)),
                        ]
                    }
                };
                log::info!(
                    "CHAP: {} authenticated with {algorithm:?}{}",
                    self.auth.chap.username,
                    if answer.is_empty() {
                        ""
                    } else {
                        ", target authenticated back (mutual)"
                    }
                );
                self.step = Step::Authenticated;
                Ok(answer)
            }
            Step::Authenticated => {
                if keys.is_empty() {
                    Ok(Vec::new())
                } else {
                    Err(ChapError::Unexpected("a CHAP key after authentication"))
                }
            }
        }
    }
}

/// The strongest algorithm of the offered list (SHA3-256 > SHA-256 > SHA-1 > MD5), the order
/// open-iscsi's iscsid.conf suggests for `node.session.auth.chap_algs` (its built-in default is
/// MD5 only, usr/idbm.c). Unknown numbers are
/// skipped, as Linux's target does (chap_check_algorithm); values that are not numbers, and an
/// empty list, are malformed.
fn choose_algorithm(offered: &str) -> Result<Algorithm, ChapError> {
    let mut best = None;
    for item in offered.split(',') {
        let n = parse_number(item).ok_or(ChapError::Malformed("CHAP_A"))?;
        if let Some(a) = Algorithm::from_number(n) {
            best = best.max(Some(a));
        }
    }
    best.ok_or(ChapError::NoAlgorithm)
}

/// A decimal or `0x` hex number (RFC 7143 §6.1 numerical values).
fn parse_number(text: &str) -> Option<u64> {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()
    } else if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

/// `CHAP_I`: a number 0..=255 (RFC 1994: one octet). Linux's target takes it in decimal or hex.
fn parse_identifier(text: &str) -> Option<u8> {
    parse_number(text).and_then(|n| u8::try_from(n).ok())
}

/// A binary value (RFC 7143 §6.1): `0x`/`0X` and hex digits, or `0b`/`0B` and base64.
pub fn decode_binary(text: &str) -> Option<Vec<u8>> {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        decode_hex(hex)
    } else if let Some(b64) = text.strip_prefix("0b").or_else(|| text.strip_prefix("0B")) {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .filter(|bytes| !bytes.is_empty())
    } else {
        None
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() || hex.len() % 2 != 0 {
        return None;
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(text, 16).ok()
        })
        .collect()
}

/// `0x` and lowercase hex, the form every initiator reads (libiscsi only parses `CHAP_C=0x` and
/// `CHAP_R=0x`, lib/login.c).
pub fn encode_hex(bytes: &[u8]) -> String {
    format!("0x{}", crate::hex(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1994_md5_response() {
        // MD5(0x01 || "secret" || 16 zero bytes), computed independently with
        // `(printf '\x01secret'; head -c16 /dev/zero) | md5sum`.
        let r = Algorithm::Md5.response(1, b"secret", &[0; 16]);
        assert_eq!(encode_hex(&r), "0x7570c653cdf4755ccffcaa80f29268d1");
    }

    #[test]
    fn digest_sizes() {
        for a in [
            Algorithm::Md5,
            Algorithm::Sha1,
            Algorithm::Sha256,
            Algorithm::Sha3_256,
        ] {
            assert_eq!(a.response(0, b"s", b"c").len(), a.digest_size());
        }
    }

    #[test]
    fn binary_values() {
        assert_eq!(decode_binary("0x00ff"), Some(vec![0, 0xff]));
        assert_eq!(decode_binary("0XAB"), Some(vec![0xab]));
        assert_eq!(decode_binary("0bAP8="), Some(vec![0, 0xff]));
        assert_eq!(
            decode_binary("0B3q2+7w=="),
            Some(vec![0xde, 0xad, 0xbe, 0xef])
        );
        for bad in ["", "0x", "0xabc", "0xzz", "00ff", "0b!!", "0b", "abc"] {
            assert_eq!(decode_binary(bad), None, "{bad}");
        }
    }

    #[test]
    fn algorithm_choice() {
        assert_eq!(choose_algorithm("5"), Ok(Algorithm::Md5));
        assert_eq!(choose_algorithm("5,6,7,8"), Ok(Algorithm::Sha3_256));
        assert_eq!(choose_algorithm("8,7,6,5"), Ok(Algorithm::Sha3_256));
        assert_eq!(choose_algorithm("7,5,99"), Ok(Algorithm::Sha256));
        assert_eq!(choose_algorithm("0x6"), Ok(Algorithm::Sha1));
        assert_eq!(choose_algorithm("56"), Err(ChapError::NoAlgorithm));
        assert_eq!(choose_algorithm(""), Err(ChapError::Malformed("CHAP_A")));
        assert_eq!(
            choose_algorithm("5,,6"),
            Err(ChapError::Malformed("CHAP_A"))
        );
        assert_eq!(choose_algorithm("MD5"), Err(ChapError::Malformed("CHAP_A")));
    }

    #[test]
    fn secrets_are_redacted() {
        let c = Credentials {
            username: "alice".into(),
            secret: Secret::new("hunter2hunter2"),
        };
        let shown = format!("{c:?}");
        assert!(
            shown.contains("alice") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
