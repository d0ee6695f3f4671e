//! DH-HMAC-CHAP secrets as hosts and targets write them, `DHHC-1:XX:<base64>:` (NVMe base 2.0
//! §8.13.5.8; what `nvme gen-dhchap-key` prints and Linux's nvmet takes in
//! `hosts/<nqn>/dhchap_key`), and the HMACs made with them: the key transform and the two
//! responses of an exchange.

use std::fmt;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha384, Sha512};

/// The hash functions of DH-HMAC-CHAP, by their identifiers (NVMe base 2.0 §8.13.5.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashFunction {
    Sha256 = 1,
    Sha384 = 2,
    Sha512 = 3,
}

impl HashFunction {
    pub const ALL: [HashFunction; 3] = [
        HashFunction::Sha256,
        HashFunction::Sha384,
        HashFunction::Sha512,
    ];

    pub fn from_id(id: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.id() == id)
    }

    pub fn id(self) -> u8 {
        self as u8
    }

    /// Its name in our configuration (`sha256`), Linux's being `hmac(sha256)`.
    pub fn name(self) -> &'static str {
        match self {
            HashFunction::Sha256 => "sha256",
            HashFunction::Sha384 => "sha384",
            HashFunction::Sha512 => "sha512",
        }
    }

    /// The hash named `sha256`, `sha384` or `sha512`, or as Linux's nvmet names it in
    /// `dhchap_hash` (`hmac(sha256)`...).
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name
            .strip_prefix("hmac(")
            .and_then(|n| n.strip_suffix(')'))
            .unwrap_or(name);
        Self::ALL.into_iter().find(|h| h.name() == name)
    }

    /// The digest's length in bytes: also the length of challenges and responses.
    pub fn digest_len(self) -> usize {
        match self {
            HashFunction::Sha256 => 32,
            HashFunction::Sha384 => 48,
            HashFunction::Sha512 => 64,
        }
    }

    /// The plain digest of `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashFunction::Sha256 => Sha256::digest(data).to_vec(),
            HashFunction::Sha384 => Sha384::digest(data).to_vec(),
            HashFunction::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// HMAC with this hash over `parts`, one after the other.
    pub fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
            let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .expect("HMAC takes keys of any length");
            for part in parts {
                mac.update(part);
            }
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            HashFunction::Sha256 => run::<Hmac<Sha256>>(key, parts),
            HashFunction::Sha384 => run::<Hmac<Sha384>>(key, parts),
            HashFunction::Sha512 => run::<Hmac<Sha512>>(key, parts),
        }
    }
}

/// As people write it: `SHA-256`.
impl fmt::Display for HashFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HashFunction::Sha256 => "SHA-256",
            HashFunction::Sha384 => "SHA-384",
            HashFunction::Sha512 => "SHA-512",
        })
    }
}

/// Why a `DHHC-1:` secret is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("it must look like DHHC-1:XX:<base64>: (as `nvme gen-dhchap-key` prints it)")]
    Format,
    #[error("its transform {0:?} is none of 00 (none), 01 (SHA-256), 02 (SHA-384), 03 (SHA-512)")]
    Transform(String),
    #[error("its key is not base64")]
    Base64,
    #[error("its key is {0} bytes; it must be 32, 48 or 64 bytes and a CRC-32")]
    Length(usize),
    #[error("its key is {key} bytes but transform {transform:02} needs {needed}")]
    LengthForTransform {
        key: usize,
        transform: u8,
        needed: usize,
    },
    #[error("its CRC-32 does not match the key (mistyped or truncated?)")]
    Crc,
}

/// A DH-HMAC-CHAP secret: the key, and the hash that transforms it before use (`None`: used as
/// it is).
#[derive(Clone, PartialEq, Eq)]
pub struct DhchapSecret {
    transform: Option<HashFunction>,
    key: Vec<u8>,
}

impl fmt::Debug for DhchapSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DhchapSecret(<redacted>)")
    }
}

impl DhchapSecret {
    /// Parses `DHHC-1:XX:<base64 of the key and its CRC-32, little-endian>:` (the final colon
    /// may be missing), checking what Linux's `nvme_auth_extract_key`
    /// (drivers/nvme/common/auth.c) checks: a key of 32, 48 or 64 bytes, as long as the
    /// transform's digest when there is one, and its CRC-32.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let rest = text
            .trim()
            .strip_prefix("DHHC-1:")
            .ok_or(SecretError::Format)?;
        let (transform, encoded) = rest.split_once(':').ok_or(SecretError::Format)?;
        let transform = match transform {
            "00" => None,
            "01" | "02" | "03" => HashFunction::from_id(transform.as_bytes()[1] - b'0'),
            other => return Err(SecretError::Transform(other.to_string())),
        };
        let encoded = encoded.strip_suffix(':').unwrap_or(encoded);
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::Base64)?;
        if ![36, 52, 68].contains(&bytes.len()) {
            return Err(SecretError::Length(bytes.len().saturating_sub(4)));
        }
        let key_len = bytes.len() - 4;
        if let Some(hash) = transform.filter(|h| h.digest_len() != key_len) {
            return Err(SecretError::LengthForTransform {
                key: key_len,
                transform: hash.id(),
                needed: hash.digest_len(),
            });
        }
        let crc = u32::from_le_bytes(bytes[key_len..].try_into().expect("4 bytes"));
        if crc32(&bytes[..key_len]) != crc {
            return Err(SecretError::Crc);
        }
        bytes.truncate(key_len);
        Ok(DhchapSecret {
            transform,
            key: bytes,
        })
    }

    /// The key the responses of `nqn`'s side are made with: the key transformed as
    /// HMAC(key, NQN || "NVMe-over-Fabrics") with the secret's own hash, or the key itself
    /// (Linux `nvme_auth_transform_key`). The host's key is transformed with the host's NQN,
    /// the controller's with the subsystem's.
    fn transformed(&self, nqn: &str) -> Vec<u8> {
        match self.transform {
            Some(hash) => hash.hmac(&self.key, &[nqn.as_bytes(), b"NVMe-over-Fabrics"]),
            None => self.key.clone(),
        }
    }

    /// `DHHC-1:XX:<base64>:` of a key (for tests and tools that make secrets).
    pub fn encode(transform: Option<HashFunction>, key: &[u8]) -> String {
        let mut bytes = key.to_vec();
        bytes.extend_from_slice(&crc32(key).to_le_bytes());
        format!(
            "DHHC-1:{:02}:{}:",
            transform.map_or(0, HashFunction::id),
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    }
}

/// What a response binds besides the key: the challenge, its sequence number and transaction,
/// the two NQNs, and the Diffie-Hellman shared secret when the group is not NULL.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    pub hash: HashFunction,
    pub challenge: &'a [u8],
    /// g^xy mod p of the exchange's DH group; `None` with the NULL group.
    pub session_key: Option<&'a [u8]>,
    pub seqnum: u32,
    pub transaction: u16,
    pub host_nqn: &'a str,
    pub subsystem_nqn: &'a str,
}

impl Exchange<'_> {
    /// The host's response R1 = HMAC(Kh', C1 || S1 || T_ID || SC_C || "HostHost" || NQNh ||
    /// 00h || NQNs), with no secure channel concatenation (SC_C 0) and C1 augmented with the
    /// session key when there is one (NVMe base 2.0 §8.13.5.5; Linux
    /// drivers/nvme/target/auth.c `nvmet_auth_host_hash`).
    pub fn host_response(&self, host_secret: &DhchapSecret) -> Vec<u8> {
        let key = host_secret.transformed(self.host_nqn);
        self.response(&key, b"HostHost", self.host_nqn, self.subsystem_nqn)
    }

    /// The controller's response R2 = HMAC(Kc', C2 || S2 || T_ID || SC_C || "Controller" ||
    /// NQNs || 00h || NQNh) (Linux `nvmet_auth_ctrl_hash`).
    pub fn controller_response(&self, controller_secret: &DhchapSecret) -> Vec<u8> {
        let key = controller_secret.transformed(self.subsystem_nqn);
        self.response(&key, b"Controller", self.subsystem_nqn, self.host_nqn)
    }

    /// The challenge as the responses use it: with a DH group, Ca = HMAC(H(g^xy mod p), C)
    /// (NVMe base 2.0 §8.13.5.5; Linux drivers/nvme/common/auth.c
    /// `nvme_auth_augmented_challenge`), else the challenge itself.
    fn challenge(&self) -> Vec<u8> {
        match self.session_key {
            Some(key) => self.hash.hmac(&self.hash.digest(key), &[self.challenge]),
            None => self.challenge.to_vec(),
        }
    }

    fn response(&self, key: &[u8], role: &[u8], first: &str, second: &str) -> Vec<u8> {
        self.hash.hmac(
            key,
            &[
                &self.challenge(),
                &self.seqnum.to_le_bytes(),
                &self.transaction.to_le_bytes(),
                &[0],
                role,
                first.as_bytes(),
                &[0],
                second.as_bytes(),
            ],
        )
    }
}

/// CRC-32 (IEEE 802.3, reflected, as Linux's `~crc32(~0, ...)`), for the secret's check value.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                crc >> 1 ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_the_ieee_one() {
        // The standard check value of CRC-32.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn secrets_parse_and_round_trip() {
        for (transform, len) in [
            (None, 32),
            (None, 48),
            (None, 64),
            (Some(HashFunction::Sha256), 32),
            (Some(HashFunction::Sha384), 48),
            (Some(HashFunction::Sha512), 64),
        ] {
            let key: Vec<u8> = (0..len as u8).collect();
            let text = DhchapSecret::encode(transform, &key);
            let secret = DhchapSecret::parse(&text).unwrap();
            assert_eq!((secret.transform, secret.key), (transform, key));
            // Without the final colon, and with spaces around, as a pasted value may be.
            let trimmed = format!(" {} ", text.strip_suffix(':').unwrap());
            assert!(DhchapSecret::parse(&trimmed).is_ok());
        }
    }

    #[test]
    fn secrets_from_nvme_cli_parse() {
        // Printed by nvme-cli 2.4's `nvme gen-dhchap-key -m 1 -n nqn.2026-11.org.example:host1`
        // and `nvme gen-dhchap-key -m 0 -l 48` (libnvme computes the CRC-32 its own way).
        let sha = "DHHC-1:01:vwrbGqSjhSqqA1A6Tt77S25TczwykKkNX9SFPXd8VStD7hJ0:";
        let secret = DhchapSecret::parse(sha).unwrap();
        assert_eq!(
            (secret.transform, secret.key.len()),
            (Some(HashFunction::Sha256), 32)
        );
        let plain =
            "DHHC-1:00:Gur8w85pUTdiTuGJJbeEHuFugAJbogeQdlo0IS1Zi9eBRPrAhV9+RRivYSci0nV9OrR4NA==:";
        let secret = DhchapSecret::parse(plain).unwrap();
        assert_eq!((secret.transform, secret.key.len()), (None, 48));
        assert_eq!(DhchapSecret::encode(None, &secret.key), plain);
    }

    #[test]
    fn bad_secrets_are_refused_with_their_reason() {
        let good = DhchapSecret::encode(Some(HashFunction::Sha256), &[7; 32]);
        assert_eq!(DhchapSecret::parse("secret"), Err(SecretError::Format));
        assert_eq!(
            DhchapSecret::parse(&good.replace(":01:", ":04:")),
            Err(SecretError::Transform("04".into()))
        );
        assert_eq!(
            DhchapSecret::parse("DHHC-1:00:not base64!:"),
            Err(SecretError::Base64)
        );
        assert_eq!(
            DhchapSecret::parse(&DhchapSecret::encode(None, &[1; 20])),
            Err(SecretError::Length(20))
        );
        assert_eq!(
            DhchapSecret::parse(&DhchapSecret::encode(Some(HashFunction::Sha512), &[1; 32])),
            Err(SecretError::LengthForTransform {
                key: 32,
                transform: 3,
                needed: 64
            })
        );
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(good.split(':').nth(2).unwrap())
            .unwrap();
        bytes[0] ^= 1;
        let flipped = format!(
            "DHHC-1:01:{}:",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        );
        assert_eq!(DhchapSecret::parse(&flipped), Err(SecretError::Crc));
    }

    #[test]
    fn hmacs_match_rfc_4231() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?", split in two.
        let parts: [&[u8]; 2] = [b"what do ya want ", b"for nothing?"];
        let hex = |h: HashFunction| crate::hex(&h.hmac(b"Jefe", &parts));
        assert_eq!(
            hex(HashFunction::Sha256),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(HashFunction::Sha384),
            "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e\
             8e2240ca5e69e2c78b3239ecfab21649"
        );
        assert_eq!(
            hex(HashFunction::Sha512),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554\
             9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
    }

    #[test]
    fn the_transform_binds_the_holders_nqn() {
        let key = [9u8; 32];
        let plain = DhchapSecret::parse(&DhchapSecret::encode(None, &key)).unwrap();
        assert_eq!(plain.transformed("nqn.2026-11.org.example:h"), key);
        let sha =
            DhchapSecret::parse(&DhchapSecret::encode(Some(HashFunction::Sha256), &key)).unwrap();
        let t = sha.transformed("nqn.2026-11.org.example:h");
        assert_eq!(
            t,
            HashFunction::Sha256.hmac(&key, &[b"nqn.2026-11.org.example:hNVMe-over-Fabrics"])
        );
        assert_ne!(t, sha.transformed("nqn.2026-11.org.example:other"));
    }

    #[test]
    fn host_and_controller_responses_differ_by_role_and_order() {
        let secret = DhchapSecret::parse(&DhchapSecret::encode(None, &[3; 32])).unwrap();
        let mut exchange = Exchange {
            hash: HashFunction::Sha256,
            challenge: &[0xC1; 32],
            session_key: None,
            seqnum: 0x0102_0304,
            transaction: 0x0506,
            host_nqn: "nqn.h",
            subsystem_nqn: "nqn.s",
        };
        let expected = HashFunction::Sha256.hmac(
            &[3; 32],
            &[
                &[0xC1; 32],
                &[4, 3, 2, 1, 6, 5, 0],
                b"HostHost",
                b"nqn.h\0nqn.s",
            ],
        );
        assert_eq!(exchange.host_response(&secret), expected);
        let expected = HashFunction::Sha256.hmac(
            &[3; 32],
            &[
                &[0xC1; 32],
                &[4, 3, 2, 1, 6, 5, 0],
                b"Controller",
                b"nqn.s\0nqn.h",
            ],
        );
        assert_eq!(exchange.controller_response(&secret), expected);

        // With a DH group the challenge is first augmented: HMAC(SHA-256(g^xy), C).
        exchange.session_key = Some(&[0x5E; 256]);
        let augmented =
            HashFunction::Sha256.hmac(&HashFunction::Sha256.digest(&[0x5E; 256]), &[&[0xC1; 32]]);
        let expected = HashFunction::Sha256.hmac(
            &[3; 32],
            &[
                &augmented,
                &[4, 3, 2, 1, 6, 5, 0],
                b"HostHost",
                b"nqn.h\0nqn.s",
            ],
        );
        assert_eq!(exchange.host_response(&secret), expected);
    }
}
