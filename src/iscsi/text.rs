//! Text keys (RFC 7143 §6.1, §13; RFC 7145 §6): parsing `key=value\0` data segments and the target's
//! side of operational parameter negotiation.
//!
//! The negotiator answers each offered key according to its result function (min, max, AND, OR, list
//! choice) clamped to what this target is willing to do ([`TargetPolicy`]), and records the outcome in
//! [`SessionParams`]. Keys it does not know are answered `NotUnderstood`; keys that are known but
//! illegal where they appear are errors the login layer turns into a login failure.

use std::collections::HashSet;

/// Largest key name allowed (RFC 7143 §6.1: 63 bytes).
const MAX_KEY_LEN: usize = 63;
/// Largest value we accept. RFC 7143 allows 8192 for a few keys, 255 for most; be generous.
const MAX_VALUE_LEN: usize = 8192;

/// What went wrong with text data or a key, as the login and text layers need to report it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// Bytes that are not a sequence of NUL-terminated `key=value` pairs.
    #[error("malformed text data: {0}")]
    Malformed(&'static str),
    /// A key offered twice in one negotiation (RFC 7143 §6.2).
    #[error("key {0} offered twice")]
    Duplicate(String),
    /// A key used in a stage or session where it is not allowed.
    #[error("key {0} is not allowed here")]
    NotAllowedHere(String),
}

/// One `key=value` pair, in order of appearance.
pub type KeyValue = (String, String);

/// Parses a text data segment. Trailing NUL padding is tolerated; a final pair without its NUL is not.
pub fn parse(data: &[u8]) -> Result<Vec<KeyValue>, TextError> {
    let mut pairs = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest[0] == 0 {
            // Padding or an empty string: everything after must be padding too.
            if rest.iter().all(|&b| b == 0) {
                break;
            }
            return Err(TextError::Malformed("empty key=value string"));
        }
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(TextError::Malformed("last key=value is not NUL-terminated"))?;
        let item = std::str::from_utf8(&rest[..end])
            .map_err(|_| TextError::Malformed("text is not UTF-8"))?;
        let (key, value) = item
            .split_once('=')
            .ok_or(TextError::Malformed("missing '=' in key=value"))?;
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(TextError::Malformed("key length"));
        }
        if !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+@".contains(&b))
        {
            return Err(TextError::Malformed("invalid character in key"));
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(TextError::Malformed("value too long"));
        }
        pairs.push((key.to_string(), value.to_string()));
        rest = &rest[end + 1..];
    }
    Ok(pairs)
}

/// Encodes pairs as a text data segment, each `key=value` followed by a NUL.
pub fn encode<'a>(pairs: impl IntoIterator<Item = &'a KeyValue>) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in pairs {
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

/// What the target is willing to negotiate, from the configuration and the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPolicy {
    /// Largest data segment we accept in one PDU (our MaxRecvDataSegmentLength).
    pub max_recv_data_segment_length: u32,
    /// Upper bound for MaxBurstLength.
    pub max_burst_length: u32,
    /// Upper bound for FirstBurstLength.
    pub first_burst_length: u32,
    /// Upper bound for MaxOutstandingR2T.
    pub max_outstanding_r2t: u16,
    /// CRC32C digests may be chosen (TCP). iSER carries no digests.
    pub digests_allowed: bool,
    /// Force InitialR2T=Yes (iSER: libiscsi cannot send unsolicited Data-Out; lib/iser.c
    /// `iser_send_command` posts a Data-Out PDU's headers without its data).
    pub require_initial_r2t: bool,
    /// The connection runs over RDMA: RDMAExtensions=Yes is accepted and iSER keys are understood.
    pub iser: bool,
}

impl Default for TargetPolicy {
    fn default() -> Self {
        TargetPolicy {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            max_outstanding_r2t: 1,
            digests_allowed: true,
            require_initial_r2t: false,
            iser: false,
        }
    }
}

/// Negotiated session and connection parameters. Starts at the RFC 7143 defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    pub header_digest: bool,
    pub data_digest: bool,
    pub max_connections: u16,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// Largest data segment the target accepts (what we declared).
    pub target_max_recv_data_segment_length: u32,
    /// Largest data segment the initiator accepts (what it declared): our Data-In/Text limit.
    pub initiator_max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub max_outstanding_r2t: u16,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u8,
    /// iSER was negotiated (RFC 7145 RDMAExtensions=Yes).
    pub rdma_extensions: bool,
    /// iSER: largest data segment the initiator may send us in one Send.
    pub target_recv_data_segment_length: u32,
    /// iSER: largest data segment we may send the initiator in one Send.
    pub initiator_recv_data_segment_length: u32,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            header_digest: false,
            data_digest: false,
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            target_max_recv_data_segment_length: 8192,
            initiator_max_recv_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            rdma_extensions: false,
            target_recv_data_segment_length: 8192,
            initiator_recv_data_segment_length: 8192,
        }
    }
}

/// Where a key is being negotiated; decides which keys are legal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPhase {
    /// Login, SecurityNegotiation stage: only declarative keys besides authentication.
    Security,
    /// Login, LoginOperationalNegotiation stage.
    Operational,
    /// Text Request in full feature phase.
    FullFeature,
}

/// Target side of operational key negotiation for one connection's login (or one Text exchange).
#[derive(Debug, Clone)]
pub struct Negotiator {
    policy: TargetPolicy,
    params: SessionParams,
    seen: HashSet<String>,
    declared_mrdsl: bool,
}

/// Parses a decimal or 0x-hex number as RFC 7143 §5.1 allows.
fn parse_number(value: &str) -> Option<u64> {
    if let Some(hex) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        u64::from_str_radix(hex, 16).ok()
    } else if value.bytes().all(|b| b.is_ascii_digit()) && !value.is_empty() {
        value.parse().ok()
    } else {
        None
    }
}

fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(v: bool) -> String {
    if v { "Yes" } else { "No" }.to_string()
}

/// How a known key behaves.
enum KeyKind {
    /// Negotiated, session-wide, login only (not in full feature phase).
    SessionLogin,
    /// Negotiated, connection-scoped, login only.
    ConnectionLogin,
    /// Declarative: legal in any login stage and (for MaxRecvDataSegmentLength) in full feature.
    Declarative,
}

fn key_kind(key: &str) -> Option<KeyKind> {
    Some(match key {
        "HeaderDigest" | "DataDigest" | "RDMAExtensions" | "OFMarker" | "IFMarker"
        | "OFMarkInt" | "IFMarkInt" => KeyKind::ConnectionLogin,
        "MaxConnections"
        | "InitialR2T"
        | "ImmediateData"
        | "MaxBurstLength"
        | "FirstBurstLength"
        | "DefaultTime2Wait"
        | "DefaultTime2Retain"
        | "MaxOutstandingR2T"
        | "DataPDUInOrder"
        | "DataSequenceInOrder"
        | "ErrorRecoveryLevel"
        | "TaskReporting"
        | "iSCSIProtocolLevel" => KeyKind::SessionLogin,
        "MaxRecvDataSegmentLength"
        | "TargetRecvDataSegmentLength"
        | "InitiatorRecvDataSegmentLength"
        | "MaxOutstandingUnexpectedPDUs" => KeyKind::Declarative,
        _ => return None,
    })
}

/// The answer to one offered key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAnswer {
    /// Send this `key=value` back.
    Reply(KeyValue),
    /// Declarative key recorded; nothing to answer.
    Accepted,
    /// Not an operational key: the caller (login or text layer) handles it.
    NotOperational,
}

impl Negotiator {
    /// A negotiator for a fresh login, starting from RFC defaults.
    pub fn new(policy: TargetPolicy) -> Self {
        Negotiator {
            policy,
            params: SessionParams::default(),
            seen: HashSet::new(),
            declared_mrdsl: false,
        }
    }

    /// The parameters negotiated so far.
    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    /// The policy this negotiator enforces.
    pub fn policy(&self) -> &TargetPolicy {
        &self.policy
    }

    /// Answers one operational key offered by the initiator.
    ///
    /// `leading` is true for the first connection of a session (session-wide keys are only legal
    /// there); `discovery` relaxes nothing but lets data-movement keys be answered harmlessly.
    pub fn offer(
        &mut self,
        key: &str,
        value: &str,
        phase: KeyPhase,
        leading: bool,
    ) -> Result<KeyAnswer, TextError> {
        let Some(kind) = key_kind(key) else {
            return Ok(KeyAnswer::NotOperational);
        };
        match (&kind, phase) {
            (KeyKind::Declarative, KeyPhase::FullFeature) if key == "MaxRecvDataSegmentLength" => {}
            (KeyKind::Declarative, KeyPhase::FullFeature) => {
                return Err(TextError::NotAllowedHere(key.to_string()))
            }
            (KeyKind::Declarative, _) => {}
            (_, KeyPhase::Operational) => {}
            // Negotiated operational keys belong to LoginOperationalNegotiation only
            // (RFC 7143 §6.3, §13: "nonsecurity and nondeclarative keys ... operational stage only").
            (_, KeyPhase::Security) | (_, KeyPhase::FullFeature) => {
                return Err(TextError::NotAllowedHere(key.to_string()))
            }
        }
        if matches!(kind, KeyKind::SessionLogin) && !leading {
            return Err(TextError::NotAllowedHere(key.to_string()));
        }
        if !self.seen.insert(key.to_string()) {
            return Err(TextError::Duplicate(key.to_string()));
        }
        let reply = |v: String| Ok(KeyAnswer::Reply((key.to_string(), v)));
        let reject = || Ok(KeyAnswer::Reply((key.to_string(), "Reject".to_string())));
        let p = &mut self.params;
        let pol = &self.policy;
        match key {
            "HeaderDigest" | "DataDigest" => {
                let choice = value
                    .split(',')
                    .find(|v| *v == "None" || (*v == "CRC32C" && pol.digests_allowed));
                let Some(choice) = choice else {
                    return reject();
                };
                let on = choice == "CRC32C";
                if key == "HeaderDigest" {
                    p.header_digest = on;
                } else {
                    p.data_digest = on;
                }
                reply(choice.to_string())
            }
            "MaxConnections" => match parse_number(value) {
                Some(1..=65535) => {
                    // We serve one connection per session (ERL 0): min(offered, 1).
                    p.max_connections = 1;
                    reply("1".into())
                }
                _ => reject(),
            },
            "InitialR2T" => match parse_bool(value) {
                // Result function OR.
                Some(v) => {
                    p.initial_r2t = v || pol.require_initial_r2t;
                    reply(yes_no(p.initial_r2t))
                }
                None => reject(),
            },
            "ImmediateData" => match parse_bool(value) {
                // Result function AND; we always accept immediate data.
                Some(v) => {
                    p.immediate_data = v;
                    reply(yes_no(v))
                }
                None => reject(),
            },
            "DataPDUInOrder" | "DataSequenceInOrder" => match parse_bool(value) {
                // OR: we answer Yes, so the result is Yes whatever was offered.
                Some(_) => reply("Yes".into()),
                None => reject(),
            },
            "MaxBurstLength" => match parse_number(value) {
                Some(n @ 512..=16_777_215) => {
                    p.max_burst_length = (n as u32).min(pol.max_burst_length);
                    p.first_burst_length = p.first_burst_length.min(p.max_burst_length);
                    reply(p.max_burst_length.to_string())
                }
                _ => reject(),
            },
            "FirstBurstLength" => match parse_number(value) {
                Some(n @ 512..=16_777_215) => {
                    p.first_burst_length = (n as u32)
                        .min(pol.first_burst_length)
                        .min(p.max_burst_length);
                    reply(p.first_burst_length.to_string())
                }
                _ => reject(),
            },
            "DefaultTime2Wait" => match parse_number(value) {
                // Result function max; we need no wait, so the initiator's value stands.
                Some(n @ 0..=3600) => {
                    p.default_time2wait = n as u16;
                    reply(n.to_string())
                }
                _ => reject(),
            },
            "DefaultTime2Retain" => match parse_number(value) {
                // Result function min; at ERL 0 we keep no task state, so 0.
                Some(0..=3600) => {
                    p.default_time2retain = 0;
                    reply("0".into())
                }
                _ => reject(),
            },
            "MaxOutstandingR2T" => match parse_number(value) {
                Some(n @ 1..=65535) => {
                    p.max_outstanding_r2t = (n as u16).min(pol.max_outstanding_r2t);
                    reply(p.max_outstanding_r2t.to_string())
                }
                _ => reject(),
            },
            "ErrorRecoveryLevel" => match parse_number(value) {
                Some(0..=2) => {
                    p.error_recovery_level = 0;
                    reply("0".into())
                }
                _ => reject(),
            },
            "OFMarker" | "IFMarker" => match parse_bool(value) {
                // RFC 3720 markers (dropped by RFC 7143): AND with our No.
                Some(_) => reply("No".into()),
                None => reject(),
            },
            "OFMarkInt" | "IFMarkInt" => reply("Irrelevant".into()),
            "TaskReporting" => {
                if value.split(',').any(|v| v == "RFC3720") {
                    reply("RFC3720".into())
                } else {
                    reject()
                }
            }
            "iSCSIProtocolLevel" => match parse_number(value) {
                // RFC 7144: min(offered, 1); level 1 is RFC 7143.
                Some(n @ 0..=31) => reply(n.min(1).to_string()),
                _ => reject(),
            },
            "RDMAExtensions" => match parse_bool(value) {
                // AND: Yes only over an RDMA-capable transport.
                Some(v) => {
                    p.rdma_extensions = v && pol.iser;
                    reply(yes_no(p.rdma_extensions))
                }
                None => reject(),
            },
            "MaxRecvDataSegmentLength" => match parse_number(value) {
                Some(n @ 512..=16_777_215) => {
                    p.initiator_max_recv_data_segment_length = n as u32;
                    Ok(KeyAnswer::Accepted)
                }
                _ => reject(),
            },
            // RFC 7145 §6.4-6.5: both negotiated with result function min; only over iSER.
            "InitiatorRecvDataSegmentLength" | "TargetRecvDataSegmentLength" if !pol.iser => {
                reply("Irrelevant".into())
            }
            "InitiatorRecvDataSegmentLength" => match parse_number(value) {
                Some(n @ 512..=16_777_215) => {
                    // What we may send; Linux really takes 128 bytes in full feature phase
                    // whatever is agreed here (drivers/infiniband/ulp/iser/iscsi_iser.h
                    // ISER_RECV_DATA_SEG_LEN), which the core honours.
                    p.initiator_recv_data_segment_length =
                        (n as u32).min(pol.max_recv_data_segment_length);
                    reply(p.initiator_recv_data_segment_length.to_string())
                }
                _ => reject(),
            },
            "TargetRecvDataSegmentLength" => match parse_number(value) {
                // What the initiator may send us: never more than our receive buffers hold
                // (RFC 7145 §6.4).
                Some(n @ 512..=16_777_215) => {
                    p.target_recv_data_segment_length =
                        (n as u32).min(pol.max_recv_data_segment_length);
                    reply(p.target_recv_data_segment_length.to_string())
                }
                _ => reject(),
            },
            "MaxOutstandingUnexpectedPDUs" => match parse_number(value) {
                Some(_) => Ok(KeyAnswer::Accepted),
                None => reject(),
            },
            _ => unreachable!("key_kind covers exactly the keys matched above"),
        }
    }

    /// Keys the target must declare on its own before the login completes: our
    /// MaxRecvDataSegmentLength (declarative, RFC 7143 §13.12) — once, and not over iSER where
    /// libiscsi would adopt it as its send limit (lib/login.c `iscsi_process_login_reply`).
    pub fn declarations(&mut self) -> Vec<KeyValue> {
        let mut out = Vec::new();
        if !self.declared_mrdsl && !self.params.rdma_extensions {
            self.declared_mrdsl = true;
            self.params.target_max_recv_data_segment_length =
                self.policy.max_recv_data_segment_length;
            out.push((
                "MaxRecvDataSegmentLength".to_string(),
                self.policy.max_recv_data_segment_length.to_string(),
            ));
        }
        out
    }

    /// Forgets which keys were seen, for the next Login/Text exchange (each request is a new
    /// negotiation round for duplicate detection purposes).
    pub fn next_round(&mut self) {
        self.seen.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> KeyValue {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn parses_and_encodes() {
        let data = b"InitiatorName=iqn.x\0SessionType=Normal\0\0\0";
        let pairs = parse(data).unwrap();
        assert_eq!(
            pairs,
            vec![kv("InitiatorName", "iqn.x"), kv("SessionType", "Normal")]
        );
        assert_eq!(parse(&encode(&pairs)).unwrap(), pairs);
        // Values may contain '='.
        assert_eq!(parse(b"A=b=c\0").unwrap(), vec![kv("A", "b=c")]);
    }

    #[test]
    fn rejects_malformed_text() {
        assert!(parse(b"NoNul=1").is_err());
        assert!(parse(b"NoEquals\0").is_err());
        assert!(parse(b"=x\0").is_err());
        assert!(parse(b"\0A=1\0").is_err());
        assert!(parse(b"K\xff=1\0").is_err());
        assert!(parse(b"Bad Key=1\0").is_err());
        let long_key = format!("{}=1\0", "K".repeat(64));
        assert!(parse(long_key.as_bytes()).is_err());
    }

    fn offer(n: &mut Negotiator, k: &str, v: &str) -> KeyAnswer {
        n.offer(k, v, KeyPhase::Operational, true).unwrap()
    }

    #[test]
    fn negotiates_with_result_functions() {
        let mut n = Negotiator::new(TargetPolicy::default());
        assert_eq!(
            offer(&mut n, "HeaderDigest", "CRC32C,None"),
            KeyAnswer::Reply(kv("HeaderDigest", "CRC32C"))
        );
        assert_eq!(
            offer(&mut n, "MaxBurstLength", "16776192"),
            KeyAnswer::Reply(kv("MaxBurstLength", "262144"))
        );
        assert_eq!(
            offer(&mut n, "FirstBurstLength", "1048576"),
            KeyAnswer::Reply(kv("FirstBurstLength", "65536"))
        );
        assert_eq!(
            offer(&mut n, "InitialR2T", "No"),
            KeyAnswer::Reply(kv("InitialR2T", "No"))
        );
        assert_eq!(
            offer(&mut n, "ErrorRecoveryLevel", "2"),
            KeyAnswer::Reply(kv("ErrorRecoveryLevel", "0"))
        );
        assert_eq!(
            offer(&mut n, "MaxRecvDataSegmentLength", "65536"),
            KeyAnswer::Accepted
        );
        assert_eq!(
            offer(&mut n, "X-com.example.Foo", "1"),
            KeyAnswer::NotOperational
        );
        let p = n.params();
        assert!(p.header_digest && !p.initial_r2t);
        assert_eq!(p.initiator_max_recv_data_segment_length, 65536);
        assert_eq!(
            n.declarations(),
            vec![kv("MaxRecvDataSegmentLength", "262144")]
        );
        assert!(n.declarations().is_empty());
    }

    #[test]
    fn iser_policy_refuses_digests_and_forces_initial_r2t() {
        let mut n = Negotiator::new(TargetPolicy {
            digests_allowed: false,
            require_initial_r2t: true,
            iser: true,
            max_recv_data_segment_length: 8192,
            ..TargetPolicy::default()
        });
        assert_eq!(
            offer(&mut n, "HeaderDigest", "CRC32C"),
            KeyAnswer::Reply(kv("HeaderDigest", "Reject"))
        );
        assert_eq!(
            offer(&mut n, "InitialR2T", "No"),
            KeyAnswer::Reply(kv("InitialR2T", "Yes"))
        );
        assert_eq!(
            offer(&mut n, "RDMAExtensions", "Yes"),
            KeyAnswer::Reply(kv("RDMAExtensions", "Yes"))
        );
        assert_eq!(
            offer(&mut n, "TargetRecvDataSegmentLength", "262144"),
            KeyAnswer::Reply(kv("TargetRecvDataSegmentLength", "8192"))
        );
        // No MaxRecvDataSegmentLength over iSER.
        assert!(n.declarations().is_empty());
    }

    #[test]
    fn rejects_out_of_range_and_wrong_phase() {
        let mut n = Negotiator::new(TargetPolicy::default());
        assert_eq!(
            offer(&mut n, "MaxBurstLength", "100"),
            KeyAnswer::Reply(kv("MaxBurstLength", "Reject"))
        );
        assert_eq!(
            offer(&mut n, "ImmediateData", "Maybe"),
            KeyAnswer::Reply(kv("ImmediateData", "Reject"))
        );
        assert!(matches!(
            n.offer("InitialR2T", "Yes", KeyPhase::Security, true),
            Err(TextError::NotAllowedHere(_))
        ));
        assert!(matches!(
            n.offer("MaxBurstLength", "512", KeyPhase::FullFeature, true),
            Err(TextError::NotAllowedHere(_))
        ));
        assert!(matches!(
            n.offer("ImmediateData", "Yes", KeyPhase::Operational, false),
            Err(TextError::NotAllowedHere(_))
        ));
        assert_eq!(
            n.offer("MaxRecvDataSegmentLength", "8192", KeyPhase::Security, true),
            Ok(KeyAnswer::Accepted)
        );
        assert!(matches!(
            n.offer(
                "MaxRecvDataSegmentLength",
                "8192",
                KeyPhase::Operational,
                true
            ),
            Err(TextError::Duplicate(_))
        ));
        n.next_round();
        assert_eq!(
            n.offer(
                "MaxRecvDataSegmentLength",
                "4096",
                KeyPhase::FullFeature,
                true
            ),
            Ok(KeyAnswer::Accepted)
        );
    }
}
