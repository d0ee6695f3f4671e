#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target to fuzz/corpus/<target>/seed-*.

The seeds are valid sessions in each target's input format (see the doc comment at the top of
each fuzz_targets/*.rs), so fuzzing starts from full-feature traffic instead of having to find
a login and a well-formed SCSI Command by chance. The PDUs are encoded here, independently of
the crate's own codec (RFC 7143 §11 byte layouts). Run again after changing an input format:

    python3 fuzz/seeds.py
"""

import os
import struct

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
TARGET = "iqn.2026-01.fuzz:disk"
RESERVED = 0xFFFFFFFF


def pad(data):
    return data + b"\0" * (-len(data) % 4)


def bhs(opcode, flags, itt, field20, cmd_sn, exp_stat_sn, data, lun=b"\0" * 8, tail=b"", byte2=b"\0\0"):
    """A 48-byte BHS: opcode/flags, TotalAHSLength 0, DataSegmentLength, bytes 8-15, ITT, 20-23,
    24-27, 28-31, then `tail` (bytes 32-47) zero-filled."""
    head = struct.pack(">BB2sB", opcode, flags, byte2, 0) + len(data).to_bytes(3, "big")
    body = lun + struct.pack(">IIII", itt, field20, cmd_sn, exp_stat_sn)
    return head + body + tail.ljust(16, b"\0")


def pdu(header, data=b""):
    return header + pad(data)


def keys(pairs):
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)


def login(pairs, csg=1, nsg=3, transit=True, itt=0, cmd_sn=0, isid=b"\x80\0\0\0\0\1"):
    data = keys(pairs)
    flags = (0x80 if transit else 0) | csg << 2 | nsg
    lun = isid + b"\0\0"  # ISID, TSIH 0
    head = bhs(0x43, flags, itt, 0, cmd_sn, 0, data, lun=lun)
    return pdu(head, data)


def scsi_command(itt, cmd_sn, cdb, edtl, read=False, write=False, data=b"", final=True, attr=1, immediate=False):
    flags = (0x80 if final else 0) | (0x40 if read else 0) | (0x20 if write else 0) | attr
    op = 0x01 | (0x40 if immediate else 0)
    return pdu(bhs(op, flags, itt, edtl, cmd_sn, 0, data, tail=cdb), data)


def read10(lba, blocks):
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)


def write10(lba, blocks):
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)


def data_out(itt, ttt, data_sn, offset, data, final=True):
    tail = struct.pack(">III", 0, data_sn, offset)
    return pdu(bhs(0x05, 0x80 if final else 0, itt, ttt, 0, 0, data, tail=tail), data)


def nop_out(itt, cmd_sn, data=b"", immediate=True, ttt=RESERVED):
    return pdu(bhs(0x00 | (0x40 if immediate else 0), 0x80, itt, ttt, cmd_sn, 0, data), data)


def tmf(function, itt, ref_itt, cmd_sn, ref_cmd_sn, immediate=True):
    tail = struct.pack(">II", ref_cmd_sn, 0)
    return pdu(bhs(0x02 | (0x40 if immediate else 0), 0x80 | function, itt, ref_itt, cmd_sn, 0, b"", tail=tail))


def text_request(itt, cmd_sn, pairs, immediate=False):
    data = keys(pairs)
    return pdu(bhs(0x04 | (0x40 if immediate else 0), 0x80, itt, RESERVED, cmd_sn, 0, data), data)


def logout(itt, cmd_sn, reason=0):
    return pdu(bhs(0x46, 0x80 | reason, itt, 0, cmd_sn, 0, b""))


def write(target, name, data):
    directory = os.path.join(CORPUS, target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"seed-{name}"), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- iSER framing

ISER_CTRL = 0x10
ISER_WSV = 0x08
ISER_RSV = 0x04


def iser(pdu_bytes, flags=ISER_CTRL, write_stag=0, write_va=0, read_stag=0, read_va=0):
    return struct.pack(">B3xIQIQ", flags, write_stag, write_va, read_stag, read_va) + pdu_bytes


def record(kind, payload=b""):
    return struct.pack(">BH", kind, len(payload)) + payload


def send(message):
    return record(0, message)


IB_ISER_LOGIN = [
    ("InitiatorName", "iqn.2026-01.fuzz:host"),
    ("TargetName", TARGET),
    ("SessionType", "Normal"),
    ("InitialR2T", "No"),
    ("ImmediateData", "Yes"),
    ("MaxBurstLength", "16776192"),
    ("FirstBurstLength", "262144"),
    ("MaxOutstandingR2T", "1"),
    ("ErrorRecoveryLevel", "0"),
    ("RDMAExtensions", "Yes"),
    ("InitiatorRecvDataSegmentLength", "262144"),
    ("TargetRecvDataSegmentLength", "8192"),
]


def iser_full_feature(first_cmd_sn):
    """Commands of a logged-in iSER session: a read, a write with immediate data whose rest is
    RDMA Read, an abort racing a write, a ping, a text request and a logout."""
    sn = first_cmd_sn
    out = []
    out.append(send(iser(scsi_command(0x10, sn, read10(0, 8), 4096, read=True), ISER_CTRL | ISER_RSV, read_stag=0xA1, read_va=0x7000_0000)))
    sn += 1
    out.append(send(iser(
        scsi_command(0x11, sn, write10(8, 16), 8192, write=True, data=b"\x11" * 512),
        ISER_CTRL | ISER_WSV, write_stag=0xB1, write_va=0x9000_0200)))
    sn += 1
    out.append(record(3, b"\0"))  # the RDMA Read of the rest
    out.append(send(iser(scsi_command(0x12, sn, write10(24, 8), 4096, write=True), ISER_CTRL | ISER_WSV, write_stag=0xB2, write_va=0x9100_0000)))
    sn += 1
    out.append(send(iser(tmf(1, 0x13, 0x12, sn, sn - 1))))
    out.append(record(3, b"\0"))
    out.append(send(iser(nop_out(0x14, sn, data=b"ping"))))
    out.append(send(iser(text_request(0x15, sn, [("SendTargets", "")]))))
    sn += 1
    out.append(record(5, b"\0\1"))
    out.append(record(6, b"\x10"))  # 16 s idle: a NOP-In ping
    out.append(send(iser(logout(0x16, sn))))
    return b"".join(out)


def iser_seeds():
    # Scripted login (control bit 1), steering (bit 2), Send-with-Invalidate (bit 0).
    write("iser", "scripted-login", bytes([0b0111]) + iser_full_feature(0))
    # The same with commands held in the backend until a record completes them (bit 3).
    write("iser", "scripted-login-deferred", bytes([0b1110]) + iser_full_feature(0)
          + record(5, b"\0\2") + record(5, b"\0\3") + record(7, b"\1"))
    # Login in the input: one operational-stage request as ib_iser sends.
    write("iser", "ib-iser-login", bytes([0b0101]) + send(iser(login(IB_ISER_LOGIN, cmd_sn=1))) + iser_full_feature(1))
    # Security stage first (AuthMethod=None), then the operational stage, as libiscsi does.
    security = [("InitiatorName", "iqn.2026-01.fuzz:host"), ("TargetName", TARGET), ("SessionType", "Normal"), ("AuthMethod", "None")]
    operational = [kv for kv in IB_ISER_LOGIN if kv[0] not in ("InitiatorName", "TargetName", "SessionType")]
    write("iser", "libiscsi-login", bytes([0b0100])
          + send(iser(login(security, csg=0, nsg=1)))
          + send(iser(login(operational, csg=1, nsg=3)))
          + iser_full_feature(0))
    # A discovery session.
    discovery = [("InitiatorName", "iqn.2026-01.fuzz:host"), ("SessionType", "Discovery"), ("RDMAExtensions", "Yes")]
    write("iser", "discovery", bytes([0b0100])
          + send(iser(login(discovery)))
          + send(iser(text_request(1, 0, [("SendTargets", "All")])))
          + send(iser(logout(2, 1))))
    # A login the transport refuses to bind (bit 4).
    write("iser", "refused-binding", bytes([0b10100]) + send(iser(login(IB_ISER_LOGIN))))


# ---------------------------------------------------------------- TCP connection

def connection_stream():
    """Full-feature TCP traffic after the target's own login (InitialR2T=No, ImmediateData=Yes,
    MaxOutstandingR2T=4): read, write with immediate + unsolicited + solicited data, abort,
    ping, text, logout."""
    out = []
    out.append(scsi_command(0x10, 0, read10(0, 8), 4096, read=True))
    # 1 KiB immediate, 1 KiB unsolicited Data-Out, the rest answers the R2T with TTT 1.
    out.append(scsi_command(0x11, 1, write10(8, 8), 4096, write=True, data=b"\x11" * 1024, final=False))
    out.append(data_out(0x11, RESERVED, 0, 1024, b"\x22" * 1024))
    out.append(data_out(0x11, 1, 0, 2048, b"\x33" * 2048))
    out.append(scsi_command(0x12, 2, write10(16, 8), 4096, write=True))
    out.append(tmf(1, 0x13, 0x12, 3, 2))
    out.append(nop_out(0x14, 3, data=b"ping"))
    out.append(text_request(0x15, 3, [("SendTargets", "")]))
    out.append(tmf(5, 0x16, 0, 4, 0))
    out.append(logout(0x17, 4))
    return b"".join(out)


def connection_seeds():
    # Control: bit 0 defers commands, bit 1 digests (seeds carry none), bit 2 steers CmdSN,
    # bits 3.. pick the chunk size (1 + n·7 bytes).
    stream = connection_stream()
    write("connection", "in-order", bytes([0b0000 | 9 << 3]) + stream)
    write("connection", "steered-deferred", bytes([0b0101 | 30 << 3]) + stream)
    write("connection", "byte-at-a-time", bytes([0b0100]) + stream)


# ---------------------------------------------------------------- codec and text

def pdu_decode_seeds():
    stream = connection_stream() + login(IB_ISER_LOGIN)
    # Choice byte: bit 0 header digest, bit 1 data digest, bits 2-3 MaxRecvDataSegmentLength.
    write("pdu_decode", "no-digests", bytes([0b1000]) + stream)


def text_parse_seeds():
    write("text_parse", "ib-iser-login", keys(IB_ISER_LOGIN))
    write("text_parse", "tcp-login", keys([
        ("InitiatorName", "iqn.2026-01.fuzz:host"), ("TargetName", TARGET),
        ("HeaderDigest", "CRC32C,None"), ("DataDigest", "None"), ("MaxRecvDataSegmentLength", "262144"),
        ("MaxConnections", "1"), ("DefaultTime2Wait", "2"), ("DefaultTime2Retain", "0"),
        ("IFMarker", "No"), ("OFMarker", "No"), ("DataPDUInOrder", "Yes"), ("DataSequenceInOrder", "Yes"),
        ("AuthMethod", "CHAP,None"), ("X-com.example.vendor", "1"),
    ]))


def chap_seeds():
    """Login Requests in the chap target's format: requests separated by 0xff, each a flags
    byte (bit 0 T, bit 1 CSG operational, bit 2 NSG full feature, bit 4 prepend the identity
    keys, bit 7 of the very first byte: mutual credentials) and its text; "@" as CHAP_R is the
    right response to the target's challenge, "@" as CHAP_C a reflection of it."""
    def exchange(first_flags, answer):
        return b"\xff".join([
            bytes([first_flags]),                        # identity + AuthMethod=CHAP,None
            b"\x00" + keys([("CHAP_A", "5,6,7,8")]),    # the target answers with its challenge
            b"\x01" + keys(answer),                     # response, T=1: on to the operational stage
            b"\x07" + keys([("HeaderDigest", "None"), ("DataDigest", "None")]),
        ])
    write("chap", "one-way", exchange(0x10, [("CHAP_N", "alice"), ("CHAP_R", "@")]))
    write("chap", "mutual", exchange(0x90, [
        ("CHAP_N", "alice"), ("CHAP_R", "@"), ("CHAP_I", "7"), ("CHAP_C", "0x" + "5a" * 16),
    ]))
    write("chap", "reflected", exchange(0x90, [
        ("CHAP_N", "alice"), ("CHAP_R", "@"), ("CHAP_I", "7"), ("CHAP_C", "@"),
    ]))


if __name__ == "__main__":
    chap_seeds()
    iser_seeds()
    connection_seeds()
    pdu_decode_seeds()
    text_parse_seeds()
