//! The saved form of a LU's persistent reservations, for APTPL (SPC-4 5.13.5: with the last
//! valid APTPL bit one, the registrations and the reservation survive power loss). A short
//! text file, one fact per line, so that an operator can read what a restarted target will
//! enforce:
//!
//! ```text
//! # iser-target persistent reservations of one logical unit (SPC-4 APTPL)
//! version 2
//! aptpl 1
//! generation 12
//! registration 00000000000000ab 1 023d00000001 iqn.1993-08.org.debian:01:host1
//! reservation 5 1 023d00000001 iqn.1993-08.org.debian:01:host1
//! ```
//!
//! A `registration` line is a reservation key, then the I_T nexus: the relative target port
//! it came through (the gateway's target port group), the ISID and the initiator name (the
//! initiator port, RFC 7143 §4.2.7.2); an NVMe host's is `hostid-` and its Host Identifier
//! (32 hexadecimal digits) then its host NQN. `reservation` is the type and the nexus that
//! holds it. Name bytes outside printable ASCII, and `%`, are written as `%XX`. Version 1
//! records, written before nexuses had a target port, are read as this gateway's port's.
//! A record with `aptpl 0` (the last REGISTER cleared APTPL) restores nothing from a state
//! directory; a record shared between gateways is the whole state whatever its APTPL.

use std::fmt::Write as _;

use super::super::{InitiatorPort, Nexus};
use super::{valid_type, PrNotice, PrNotices, PrState, Registration, Reservation};

/// The record format written by this version.
const VERSION: u32 = 2;

/// The version whose nexuses have no target port.
const VERSION_WITHOUT_PORTS: u32 = 1;

/// Why a saved record could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct RecordError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong there.
    pub message: String,
}

/// The record of `state`.
pub(super) fn encode(state: &PrState) -> Vec<u8> {
    let mut text =
        String::from("# iser-target persistent reservations of one logical unit (SPC-4 APTPL)\n");
    let _ = writeln!(text, "version {VERSION}");
    let _ = writeln!(text, "aptpl {}", u8::from(state.aptpl));
    let _ = writeln!(text, "generation {}", state.generation);
    for r in &state.regs {
        let _ = writeln!(
            text,
            "registration {:016x} {} {}",
            r.key,
            r.port,
            nexus_field(&r.nexus)
        );
    }
    if let Some(res) = &state.reservation {
        let _ = writeln!(
            text,
            "reservation {} {} {}",
            res.rtype,
            res.port,
            nexus_field(&res.holder)
        );
    }
    text.into_bytes()
}

/// Reads a record back as the state of a LU whose own relative target port is `port`, its
/// APTPL bit as recorded. Whether the LU can persist (PTPL_C) is not in the record: its store
/// decides that.
pub(super) fn decode(bytes: &[u8], port: u16) -> Result<PrState, RecordError> {
    let text = std::str::from_utf8(bytes).map_err(|e| RecordError {
        line: 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
        message: "not UTF-8 text".into(),
    })?;
    let mut state = PrState {
        port,
        ..PrState::default()
    };
    let (mut version, mut aptpl) = (None, None);
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let fail = |message: String| RecordError { line, message };
        let raw = raw.trim_end();
        if raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        let (word, rest) = raw.split_once(' ').unwrap_or((raw, ""));
        if word != "version" && version.is_none() {
            return Err(fail("the record must start with `version`".into()));
        }
        match word {
            "version" => {
                let v: u32 = number(rest).map_err(fail)?;
                if v != VERSION && v != VERSION_WITHOUT_PORTS {
                    return Err(fail(format!(
                        "version {v} is not one this target reads ({VERSION})"
                    )));
                }
                version = Some(v);
            }
            "aptpl" => aptpl = Some(number::<u8>(rest).map_err(fail)? == 1),
            "generation" => state.generation = number(rest).map_err(fail)?,
            "registration" => {
                let (key, nexus_text) = rest.split_once(' ').unwrap_or((rest, ""));
                let key = u64::from_str_radix(key, 16)
                    .ok()
                    .filter(|&k| k != 0)
                    .ok_or_else(|| fail(format!("{key:?} is not a nonzero hexadecimal key")))?;
                let (port, nexus) = parse_it_nexus(nexus_text, version, port).map_err(fail)?;
                if state.key_at(&nexus, port).is_some() {
                    return Err(fail(format!(
                        "{} is registered twice",
                        nexus.initiator_port()
                    )));
                }
                state.regs.push(Registration { nexus, port, key });
            }
            "reservation" => {
                let (rtype, nexus_text) = rest.split_once(' ').unwrap_or((rest, ""));
                let rtype = number::<u8>(rtype)
                    .ok()
                    .filter(|&t| valid_type(t))
                    .ok_or_else(|| fail(format!("{rtype:?} is not a reservation type")))?;
                let (port, holder) = parse_it_nexus(nexus_text, version, port).map_err(fail)?;
                if state.key_at(&holder, port).is_none() || state.reservation.is_some() {
                    return Err(fail(
                        "a reservation must follow its holder's registration, once".into(),
                    ));
                }
                state.reservation = Some(Reservation {
                    holder,
                    port,
                    rtype,
                });
            }
            other => return Err(fail(format!("unknown entry {other:?}"))),
        }
    }
    let missing = |what: &str| RecordError {
        line: text.lines().count().max(1),
        message: format!("no `{what}` line"),
    };
    version.ok_or_else(|| missing("version"))?;
    state.aptpl = aptpl.ok_or_else(|| missing("aptpl"))?;
    Ok(state)
}

/// `<relative target port> <nexus>` (version 2), or a version 1 `<nexus>` through `own_port`.
fn parse_it_nexus(text: &str, version: Option<u32>, own_port: u16) -> Result<(u16, Nexus), String> {
    if version == Some(VERSION_WITHOUT_PORTS) {
        return Ok((own_port, parse_nexus(text)?));
    }
    let (port, nexus) = text
        .split_once(' ')
        .ok_or_else(|| format!("{text:?} is not `<port> <ISID> <initiator name>`"))?;
    let port = number::<u16>(port)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("{port:?} is not a relative target port (1-65535)"))?;
    Ok((port, parse_nexus(nexus)?))
}

/// What an announcement says beside the record: the version it makes, who made it, whether
/// the change preempted and aborted, and the unit attentions it establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Announcement {
    pub version: u64,
    /// The announcing gateway's number for this LU.
    pub origin: u64,
    pub aborts: bool,
    pub notices: PrNotices,
}

/// The message that tells every gateway of a shared LU of a new version of its state,
/// `record`:
///
/// ```text
/// announcement 8
/// from 5f1c0a9e7d3b2468
/// aborts
/// notice 2a05 2 00023d000002 iqn.1993-08.org.debian:01:host2
/// # iser-target persistent reservations of one logical unit (SPC-4 APTPL)
/// version 2
/// ...
/// ```
///
/// `aborts` is there when the change preempted and aborted. A `notice` line is a unit
/// attention's ASC and ASCQ, then the I_T nexus told.
pub(super) fn encode_announcement(announcement: &Announcement, record: &[u8]) -> Vec<u8> {
    let mut text = format!(
        "announcement {}\nfrom {:016x}\n",
        announcement.version, announcement.origin
    );
    if announcement.aborts {
        text.push_str("aborts\n");
    }
    for n in &announcement.notices {
        let (asc, ascq) = n.condition;
        let _ = writeln!(
            text,
            "notice {asc:02x}{ascq:02x} {} {}",
            n.port,
            nexus_field(&n.nexus)
        );
    }
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(record);
    bytes
}

/// Reads an announcement: what it says and the state, for a LU whose own relative target
/// port is `port`.
pub(super) fn decode_announcement(
    bytes: &[u8],
    port: u16,
) -> Result<(Announcement, PrState), RecordError> {
    let mut rest = bytes;
    let mut line = 0;
    let (mut version, mut origin) = (None, None);
    let mut aborts = false;
    let mut notices = PrNotices::new();
    loop {
        line += 1;
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let fail = |message: String| RecordError { line, message };
        let text = std::str::from_utf8(&rest[..end]).map_err(|_| fail("not UTF-8 text".into()))?;
        let (word, field) = text.split_once(' ').unwrap_or((text, ""));
        match (word, version, origin) {
            ("announcement", None, _) => version = Some(number::<u64>(field).map_err(fail)?),
            (_, None, _) => return Err(fail("an announcement starts with `announcement`".into())),
            ("from", _, None) => {
                origin = Some(
                    u64::from_str_radix(field, 16)
                        .map_err(|_| fail(format!("{field:?} is not a gateway number")))?,
                )
            }
            (_, _, None) => return Err(fail("`from` must follow `announcement`".into())),
            ("aborts", ..) => aborts = true,
            ("notice", ..) => {
                let (code, nexus_text) = field.split_once(' ').unwrap_or((field, ""));
                let code = hex_bytes::<2>(code)
                    .ok_or_else(|| fail(format!("{code:?} is not an ASC and ASCQ")))?;
                let (port, nexus) =
                    parse_it_nexus(nexus_text, Some(VERSION), port).map_err(fail)?;
                notices.push(PrNotice {
                    nexus,
                    port,
                    condition: (code[0], code[1]),
                });
            }
            (_, Some(version), Some(origin)) => {
                let state = decode(rest, port).map_err(|e| RecordError {
                    line: line - 1 + e.line,
                    message: e.message,
                })?;
                let announcement = Announcement {
                    version,
                    origin,
                    aborts,
                    notices,
                };
                return Ok((announcement, state));
            }
        }
        rest = rest.get(end + 1..).unwrap_or_default();
    }
}

fn number<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a number here"))
}

/// The prefix of an NVMe Host Identifier where an ISID would stand.
const HOST_ID_PREFIX: &str = "hostid-";

/// `<ISID as 12 hex digits> <initiator name, escaped>`, or for an NVMe host
/// `hostid-<Host Identifier as 32 hex digits> <host NQN, escaped>`.
fn nexus_field(nexus: &Nexus) -> String {
    let mut field = match &nexus.port {
        InitiatorPort::Isid(isid) => crate::hex(isid),
        InitiatorPort::HostId(id) => format!("{HOST_ID_PREFIX}{}", crate::hex(id)),
    };
    field.push(' ');
    for &b in nexus.initiator_name.as_bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            field.push(char::from(b));
        } else {
            let _ = write!(field, "%{b:02X}");
        }
    }
    field
}

/// `N` bytes from exactly `2 * N` hexadecimal digits.
fn hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut bytes = [0u8; N];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(bytes)
}

fn parse_nexus(text: &str) -> Result<Nexus, String> {
    let (port_hex, name) = text
        .split_once(' ')
        .ok_or_else(|| format!("{text:?} is not `<ISID> <initiator name>`"))?;
    let port = match port_hex.strip_prefix(HOST_ID_PREFIX) {
        Some(id) => {
            InitiatorPort::HostId(hex_bytes(id).ok_or_else(|| {
                format!("{id:?} is not a Host Identifier of 32 hexadecimal digits")
            })?)
        }
        None => InitiatorPort::Isid(
            hex_bytes(port_hex)
                .ok_or_else(|| format!("{port_hex:?} is not an ISID of 12 hexadecimal digits"))?,
        ),
    };
    let mut bytes = Vec::with_capacity(name.len());
    let mut rest = name.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = tail
                .get(..2)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad escape in initiator name {name:?}"))?;
            bytes.push(hex);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    let initiator_name =
        String::from_utf8(bytes).map_err(|_| format!("initiator name {name:?} is not UTF-8"))?;
    if initiator_name.is_empty() {
        return Err("empty initiator name".into());
    }
    Ok(Nexus {
        initiator_name,
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::super::super::testutil::Rng;
    use super::*;

    fn nexus(name: &str, last: u8) -> Nexus {
        Nexus::iscsi(name, [0x00, 0x02, 0x3d, 0, 0, last])
    }

    fn sample() -> PrState {
        let holder = nexus("iqn.1993-08.org.debian:01:host1", 1);
        PrState {
            port: 1,
            persistent: true,
            aptpl: true,
            generation: 12,
            regs: vec![
                Registration {
                    nexus: holder.clone(),
                    port: 1,
                    key: 0xAB,
                },
                // Names outside iSCSI's rules still round-trip (an NVMe host NQN may hold
                // anything): spaces, '%', non-ASCII.
                Registration {
                    nexus: nexus("odd name % with ü", 2),
                    port: 2,
                    key: u64::MAX,
                },
                Registration {
                    nexus: Nexus::nvme("nqn.2014-08.org.nvmexpress:uuid:h1", [0xA1; 16]),
                    port: 3,
                    key: 7,
                },
            ],
            reservation: Some(Reservation {
                holder,
                port: 1,
                rtype: super::super::ty::WE_REGISTRANTS_ONLY,
            }),
            spc2: None,
            host_notices: Default::default(),
        }
    }

    /// An announcement of a preempt and abort that told an NVMe host.
    fn sample_announcement() -> Announcement {
        Announcement {
            version: 9,
            origin: 0x5F1C_0A9E_7D3B_2468,
            aborts: true,
            notices: vec![PrNotice {
                nexus: Nexus::nvme("nqn.h", [0xA1; 16]),
                port: 2,
                condition: (0x2A, 0x05),
            }],
        }
    }

    #[test]
    fn a_record_reads_back_as_the_state_it_was_written_from() {
        let state = sample();
        let bytes = encode(&state);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(
            "registration 00000000000000ab 1 00023d000001 iqn.1993-08.org.debian:01:host1\n"
        ));
        assert!(text.contains("reservation 5 1 00023d000001 iqn.1993-08.org.debian:01:host1\n"));
        assert!(text.contains("odd%20name%20%25%20with%20%C3%BC"));
        assert!(text.contains(&format!(
            "registration 0000000000000007 3 hostid-{} nqn.2014-08.org.nvmexpress:uuid:h1\n",
            "a1".repeat(16)
        )));
        let back = decode(&bytes, 1).unwrap();
        assert_eq!(encode(&back), bytes);
        assert_eq!(back.regs, state.regs);
        assert_eq!(back.reservation, state.reservation);
        assert_eq!((back.generation, back.aptpl), (12, true));
    }

    /// Records written before nexuses had a target port hold this gateway's registrations.
    #[test]
    fn a_version_1_record_reads_as_this_ports() {
        let text = "version 1\naptpl 1\ngeneration 3\n\
                    registration 00000000000000ab 00023d000001 iqn.a\n\
                    reservation 5 00023d000001 iqn.a\n";
        let state = decode(text.as_bytes(), 7).unwrap();
        assert_eq!(state.regs[0].port, 7);
        assert_eq!(state.reservation.unwrap().port, 7);
        let bad_port = "version 2\naptpl 1\nregistration 1 0 00023d000001 iqn.a\n";
        let e = decode(bad_port.as_bytes(), 1).unwrap_err();
        assert!(e.to_string().contains("relative target port"), "{e}");
    }

    #[test]
    fn an_announcement_reads_back_with_its_notices() {
        let state = sample();
        let announcement = sample_announcement();
        let message = encode_announcement(&announcement, &encode(&state));
        let (back_announcement, back) = decode_announcement(&message, 1).unwrap();
        assert_eq!(back_announcement, announcement);
        assert_eq!(encode(&back), encode(&state));
        let quiet = Announcement {
            aborts: false,
            notices: Vec::new(),
            ..announcement
        };
        let message = encode_announcement(&quiet, &encode(&state));
        assert_eq!(decode_announcement(&message, 1).unwrap().0, quiet);
        for bad in [
            &b"notice 2a05 1 00023d000001 iqn.a\n"[..],
            b"announcement 9\nnotice 2a05 1 00023d000001 iqn.a\n",
            b"announcement 9\nfrom 1\nnotice 2a 1 00023d000001 iqn.a\n",
            b"announcement 9\nfrom x1\n",
            b"announcement 9\nfrom 1\n",
        ] {
            assert!(decode_announcement(bad, 1).is_err(), "{bad:?}");
        }
        let cut = &message[..message.len() - 20];
        assert!(decode_announcement(cut, 1).is_err());
    }

    #[test]
    fn a_record_with_aptpl_off_restores_nothing() {
        let state = PrState {
            aptpl: false,
            ..sample()
        };
        assert!(!decode(&encode(&state), 1).unwrap().aptpl);
    }

    #[test]
    fn damaged_records_are_refused_with_their_line() {
        let good = String::from_utf8(encode(&sample())).unwrap();
        let cases = [
            ("aptpl 1\n", 1, "must start with `version`"),
            ("version 3\naptpl 1\n", 1, "version 3"),
            ("version 1\n", 1, "no `aptpl` line"),
            ("version 1\naptpl 1\nregistration 0 00023d000001 iqn.a\n", 3, "nonzero"),
            ("version 1\naptpl 1\nregistration 1 00023d0001 iqn.a\n", 3, "12 hexadecimal"),
            ("version 1\naptpl 1\nregistration 1 00023d000001\n", 3, "<ISID>"),
            ("version 1\naptpl 1\nregistration 1 hostid-a1a1 nqn.h\n", 3, "32 hexadecimal"),
            ("version 1\naptpl 1\nregistration 1 00023d000001 a%zz\n", 3, "bad escape"),
            ("version 1\naptpl 1\nreservation 5 00023d000001 iqn.a\n", 3, "follow its holder"),
            ("version 1\naptpl 1\nregistration 1 00023d000001 iqn.a\nreservation 2 00023d000001 iqn.a\n", 4, "not a reservation type"),
            ("version 1\naptpl 1\nkeys 4\n", 3, "unknown entry"),
        ];
        for (text, line, words) in cases {
            let e = decode(text.as_bytes(), 1).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.to_string().contains(words), "{text:?}: {e}");
        }
        let twice = good.replace("reservation 5", "registration 00000000000000ac");
        assert!(decode(twice.as_bytes(), 1)
            .unwrap_err()
            .to_string()
            .contains("registered twice"));
        assert_eq!(decode(b"version 1\n\xff\n", 1).unwrap_err().line, 2);
    }

    /// Announcements come from the cluster: damaged ones are refused or read, never a panic.
    #[test]
    fn corrupted_announcements_never_panic() {
        let good = encode_announcement(&sample_announcement(), &encode(&sample()));
        for bytes in corruptions(&good, 0xA770_C0DE) {
            if let Ok((_, state)) = decode_announcement(&bytes, 1) {
                assert_eq!(state.port, 1);
            }
        }
    }

    /// 20,000 copies of `good`, each with a few bytes changed and cut at a random length.
    fn corruptions(good: &[u8], seed: u64) -> impl Iterator<Item = Vec<u8>> + '_ {
        let mut rng = Rng(seed);
        (0..20_000).map(move |_| {
            let mut bytes = good.to_vec();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() as usize) % bytes.len();
                bytes[at] = rng.next() as u8;
            }
            bytes.truncate((rng.next() as usize) % (bytes.len() + 1));
            bytes
        })
    }

    /// Corrupted records (flipped bytes, cut short) are refused or read, never a panic.
    #[test]
    fn corrupted_records_never_panic() {
        let good = encode(&sample());
        for bytes in corruptions(&good, 0x5EED_AB7B) {
            if let Ok(state) = decode(&bytes, 1) {
                assert_eq!(state.port, 1);
            }
        }
    }
}
