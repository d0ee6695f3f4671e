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


# ---------------------------------------------------------------- NVMe/TCP queue

def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = CRC32C_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return struct.pack("<I", c ^ 0xFFFFFFFF)


def nvme_pdu(header, data=b"", hdgst=False, ddgst=False):
    """An NVMe/TCP PDU (NVMe/TCP 1.0 §3.6.1): `header` is CH + PSH with PDO/PLEN left zero."""
    hd = 4 if hdgst else 0
    dd = 4 if ddgst and data else 0
    hlen = len(header)
    pdo = hlen + hd if data else 0
    plen = hlen + hd + len(data) + dd
    flags = header[1] | (1 if hd else 0) | (2 if dd else 0)
    h = bytes([header[0], flags, header[2], pdo]) + struct.pack("<I", plen) + header[8:]
    out = h + (crc32c(h) if hd else b"") + data
    return out + (crc32c(data) if dd else b"")


def sqe(opcode, cid, nsid=0, cdw=None, sgl_len=0, in_capsule=False):
    """A 64-byte SQE: `cdw` maps dword numbers 10-15 to values; SGL1 of `sgl_len` bytes."""
    b = bytearray(64)
    b[0] = opcode
    b[1] = 0x40
    struct.pack_into("<HI", b, 2, cid, nsid)
    struct.pack_into("<I", b, 32, sgl_len)
    b[39] = 0x01 if in_capsule else 0x5A
    for n, v in (cdw or {}).items():
        struct.pack_into("<I", b, n * 4, v)
    return bytes(b)


def fabrics(fctype, cid, cdw=None):
    """A fabrics command SQE (opcode 7Fh, command type in byte 4)."""
    b = bytearray(sqe(0x7F, cid, 0, cdw))
    b[4] = fctype
    return bytes(b)


def capsule(cmd, data=b"", **digests):
    return nvme_pdu(bytes([4, 0, 72]) + b"\0" * 5 + cmd, data, **digests)


def h2c_data(cid, ttag, offset, data, last=True, **digests):
    header = bytes([6, 4 if last else 0, 24]) + b"\0" * 5 + struct.pack("<HHII4x", cid, ttag, offset, len(data))
    return nvme_pdu(header, data, **digests)


def nvme_admin_stream():
    """What Linux's host and nvme-cli send on an enabled admin queue."""
    numd = lambda n: (n // 4 - 1) << 16
    return b"".join([
        capsule(sqe(0x06, 1, 0, {10: 1}, 4096)),                     # Identify Controller
        capsule(sqe(0x06, 2, 0, {10: 2}, 4096)),                     # active namespaces
        capsule(sqe(0x06, 3, 1, {10: 0}, 4096)),                     # Identify Namespace 1
        capsule(sqe(0x06, 4, 1, {10: 3}, 4096)),                     # descriptors
        capsule(sqe(0x06, 5, 0, {10: 6}, 4096)),                     # NVM controller (CSI 0)
        capsule(sqe(0x09, 6, 0, {10: 0x0B, 11: 1 << 8})),            # async event config
        capsule(sqe(0x0C, 7)),                                       # Asynchronous Event Request
        capsule(sqe(0x02, 8, 0xFFFFFFFF, {10: 2 | numd(512)}, 512)),  # SMART
        capsule(sqe(0x02, 9, 0, {10: 1 | numd(64)}, 64)),            # error log
        capsule(sqe(0x02, 10, 0, {10: 3 | numd(512)}, 512)),         # firmware slot
        capsule(sqe(0x02, 11, 0, {10: 5 | numd(4096)}, 4096)),       # command effects
        capsule(sqe(0x02, 12, 0, {10: 4 | numd(4096)}, 4096)),       # changed namespaces
        capsule(sqe(0x0A, 13, 0, {10: 0x0F})),                       # Get Features KATO
        capsule(sqe(0x0A, 14, 0, {10: 0x06})),                       # Get Features VWC
        capsule(sqe(0x18, 15)),                                      # Keep Alive
        capsule(sqe(0x08, 16, 0, {10: 1 | 3 << 16})),                # Abort
        capsule(fabrics(0x04, 17, {11: 0x1C})),                      # Property Get CSTS
        capsule(sqe(0x02, 18, 0xFFFFFFFF, {10: 0x80 | numd(64)}, 64)),  # reservation log
        capsule(sqe(0x0A, 19, 0, {10: 0x81, 11: 1}, 16)),            # Host Identifier
        capsule(sqe(0x0A, 20, 1, {10: 0x82})),                       # notification mask
        capsule(sqe(0x0A, 21, 1, {10: 0x83})),                       # persistence
    ])


def nvme_io_stream(**d):
    """I/O on queue 1: in-capsule write, a write by R2T (TTAG = CID) in two H2CData PDUs, read,
    flush, Write Zeroes, Dataset Management, Compare, the reservation commands, Disconnect."""
    out = [
        capsule(sqe(0x01, 1, 1, {12: 7}, 4096, True), b"\x11" * 4096, **d),
        capsule(sqe(0x01, 2, 1, {10: 8, 12: 31}, 16384), **d),
        h2c_data(2, 2, 0, b"\x22" * 4096, last=False, **d),
        h2c_data(2, 2, 4096, b"\x33" * 4096, **d),
        h2c_data(2, 2, 8192, b"\x44" * 8192, **d),
        capsule(sqe(0x02, 3, 1, {12: 15}, 8192), **d),
        capsule(sqe(0x00, 4, 1), **d),
        capsule(sqe(0x08, 5, 1, {10: 40, 12: 7 | 1 << 25}), **d),
        capsule(sqe(0x09, 6, 1, {10: 0, 11: 4}, 16, True), struct.pack("<IIQ", 0, 8, 48), **d),
        capsule(sqe(0x05, 7, 1, {12: 0}, 512, True), b"\x11" * 512, **d),
        capsule(sqe(0x02, 8, 2, {12: 0}, 4096), **d),
        # Reservations as Linux's host sends them (16 bytes of data each, Release too).
        capsule(sqe(0x0D, 10, 1, {10: 3 << 30}, 16, True), struct.pack("<QQ", 0, 0xA), **d),
        capsule(sqe(0x11, 11, 1, {10: 1 << 8}, 16, True), struct.pack("<QQ", 0xA, 0), **d),
        capsule(sqe(0x0E, 12, 1, {10: 1023, 11: 1}, 4096), **d),
        capsule(sqe(0x15, 13, 1, {10: 1 << 8}, 16, True), struct.pack("<QQ", 0xA, 0), **d),
        capsule(fabrics(0x08, 9), **d),                              # Disconnect
    ]
    return b"".join(out)


def nvme_pdu_seeds():
    # Control: bit 0 header digest, bit 1 data digest, bit 2 I/O queue, bit 3 defer I/O,
    # bit 4 SQ flow control disabled, bits 5-7 chunk size (1 + n·13 bytes).
    write("nvme_pdu", "admin", bytes([7 << 5]) + nvme_admin_stream())
    write("nvme_pdu", "io", bytes([0b00100 | 7 << 5]) + nvme_io_stream())
    write("nvme_pdu", "io-digests-deferred", bytes([0b11111 | 2 << 5]) + nvme_io_stream(hdgst=True, ddgst=True))
    # A connected I/O queue run through the SCSI lowering: control bits 0-1 digests, 2 CATTR,
    # 5-7 chunk size.
    write("nvme_queue", "io-with-reservations", bytes([7 << 5]) + nvme_io_stream())


def nvme_auth_seeds():
    """Operations in the nvme_auth target's format (see the top of fuzz_targets/nvme_auth.rs):
    a control byte (bit 0 bidirectional, 1-2 digests, 3 SQ flow control disabled, 4 the I/O
    queue), then operations, each an opcode byte and its arguments."""
    def negotiate_linux(transaction):
        return bytes([1]) + struct.pack("<H", transaction)

    def negotiate(transaction, hashes, groups, sc_c=0):
        return (bytes([0]) + struct.pack("<H", transaction) + bytes([len(hashes)]) + bytes(hashes)
                + bytes([len(groups)]) + bytes(groups) + bytes([sc_c]))

    def right_reply(host_challenge=None):
        # flags bit 0: a host challenge (S2, the byte C2 is filled with).
        s2, fill = host_challenge or (0, 0)
        return bytes([2, 1 if host_challenge else 0]) + struct.pack("<I", s2) + bytes([fill])

    def fuzzed_reply(hl, response, cvalid=0, seqnum=0):
        # Transaction XOR the latest (0: the right one), HL, CVALID, DHVLEN, SEQNUM, values.
        values = response + b"\0" * hl
        return (bytes([3]) + struct.pack("<HBBHI", 0, hl, cvalid, 0, seqnum)
                + bytes([len(values)]) + values)

    success2 = bytes([4, 0, 0])
    receive = bytes([7, 0, 0, 0])  # AL 4096

    def probes(*selectors):
        return b"".join(bytes([8, s]) for s in selectors)

    def wait(quarter_seconds):
        return bytes([9, quarter_seconds])

    one_way = negotiate_linux(1) + receive + right_reply() + receive
    write("nvme_auth", "one-way", bytes([0]) + probes(0) + one_way + probes(0, 1, 2) + wait(200))
    write("nvme_auth", "bidirectional", bytes([1]) + negotiate_linux(3) + receive
          + right_reply((1234, 0x5C)) + probes(0) + receive + success2 + probes(0, 1, 2))
    write("nvme_auth", "wrong-reply", bytes([0]) + negotiate_linux(1) + receive
          + fuzzed_reply(32, b"\x42" * 32) + probes(0) + receive)
    write("nvme_auth", "host-challenge-without-controller-secret", bytes([0]) + negotiate_linux(2)
          + receive + right_reply((7, 1)) + receive)
    write("nvme_auth", "host-rejects-controller", bytes([1]) + negotiate_linux(4) + receive
          + right_reply((9, 2)) + receive + bytes([5, 0, 0, 1]))
    # SHA-512 only, then re-authentication with SHA-384 once authenticated.
    write("nvme_auth", "sha512-then-reauthenticate", bytes([1])
          + negotiate(5, [3], [0, 1]) + receive + right_reply() + receive + probes(0)
          + negotiate(6, [2, 1], [0]) + receive + right_reply((77, 3)) + receive + success2
          + probes(1, 2))
    write("nvme_auth", "connect-timeout", bytes([0]) + negotiate_linux(1) + receive + wait(40)
          + probes(0) + wait(21))
    # I/O queue 1 with digests and SQ flow control disabled: reads and a flush.
    write("nvme_auth", "io-queue", bytes([0b11110]) + probes(0) + one_way + probes(0, 1) + wait(255))
    write("nvme_auth", "io-queue-bidirectional", bytes([0b10001]) + negotiate_linux(8) + receive
          + right_reply((5, 0xA5)) + receive + success2 + probes(0, 1))


if __name__ == "__main__":
    chap_seeds()
    iser_seeds()
    connection_seeds()
    pdu_decode_seeds()
    text_parse_seeds()
    nvme_pdu_seeds()
    nvme_auth_seeds()
