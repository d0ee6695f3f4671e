//! The PDU reader against hand-built streams: pieces, digests, malformed headers naming their
//! field, and payloads read straight into their buffers.

use super::*;

const LIMITS: FrameLimits = FrameLimits {
    header_digest: false,
    data_digest: false,
    max_in_capsule: 8192,
    max_h2c_data: 4096,
};

fn ch(pdu_type: u8, flags: u8, hlen: u8, pdo: u8, plen: u32) -> Vec<u8> {
    let mut b = vec![pdu_type, flags, hlen, pdo];
    b.extend_from_slice(&plen.to_le_bytes());
    b
}

fn capsule(data: &[u8], limits: &FrameLimits) -> Vec<u8> {
    let hd = if limits.header_digest { 4 } else { 0 };
    let dd = if limits.data_digest && !data.is_empty() {
        4
    } else {
        0
    };
    let pdo = if data.is_empty() { 0 } else { 72 + hd };
    let plen = 72 + hd + data.len() + dd;
    let f = u8::from(hd > 0) | if dd > 0 { 2 } else { 0 };
    let mut b = ch(4, f, 72, pdo as u8, plen as u32);
    b.resize(72, 0);
    b[8] = 0x02;
    with_digests_and_data(b, data, hd > 0, dd > 0)
}

fn error_of(bytes: &[u8], limits: &FrameLimits) -> (Fes, u32) {
    let mut r = PduReader::new();
    r.push(bytes);
    let e = r.next_pdu(limits).unwrap_err();
    (e.fes, e.fei)
}

#[test]
fn capsule_arrives_in_pieces_with_digests() {
    let limits = FrameLimits {
        header_digest: true,
        data_digest: true,
        ..LIMITS
    };
    let bytes = capsule(&[9u8; 100], &limits);
    let mut r = PduReader::new();
    for b in &bytes[..bytes.len() - 1] {
        r.push(std::slice::from_ref(b));
        assert_eq!(r.next_pdu(&limits).unwrap(), None);
    }
    r.push(&bytes[bytes.len() - 1..]);
    let got = r.next_pdu(&limits).unwrap().unwrap();
    assert!(matches!(got.pdu, HostPdu::CapsuleCmd(ref s) if s.opcode() == 2));
    assert_eq!(&got.data[..], &[9u8; 100][..]);
    assert!(got.data_digest_ok);
    assert_eq!(r.buffered(), 0);
}

#[test]
fn data_digest_mismatch_is_reported_not_fatal() {
    let limits = FrameLimits {
        data_digest: true,
        ..LIMITS
    };
    let mut bytes = capsule(&[1u8; 8], &limits);
    let n = bytes.len();
    bytes[n - 1] ^= 0xFF;
    let mut r = PduReader::new();
    r.push(&bytes);
    assert!(!r.next_pdu(&limits).unwrap().unwrap().data_digest_ok);
}

#[test]
fn header_digest_mismatch_is_fatal() {
    let limits = FrameLimits {
        header_digest: true,
        ..LIMITS
    };
    let mut bytes = capsule(&[], &limits);
    bytes[72] ^= 1;
    assert_eq!(error_of(&bytes, &limits), (Fes::HeaderDigestError, 0));
}

#[test]
fn malformed_common_headers_name_the_field() {
    // A controller-to-host type from the host.
    assert_eq!(
        error_of(&ch(5, 0, 24, 0, 24), &LIMITS),
        (Fes::InvalidHeaderField, 0)
    );
    // Wrong HLEN for a CapsuleCmd.
    assert_eq!(
        error_of(&ch(4, 0, 64, 0, 64), &LIMITS),
        (Fes::InvalidHeaderField, 2)
    );
    // PLEN shorter than the header.
    assert_eq!(
        error_of(&ch(4, 0, 72, 0, 40), &LIMITS),
        (Fes::InvalidHeaderField, 4)
    );
    // PDO inside the header.
    assert_eq!(
        error_of(&ch(4, 0, 72, 8, 200), &LIMITS),
        (Fes::InvalidHeaderField, 3)
    );
    // A header digest flag that was not negotiated.
    assert_eq!(
        error_of(&ch(4, 1, 72, 0, 76), &LIMITS),
        (Fes::InvalidHeaderField, 1)
    );
    // In-capsule data beyond the limit, refused before it is buffered.
    assert_eq!(
        error_of(&ch(4, 0, 72, 72, 72 + 8193), &LIMITS),
        (Fes::InvalidHeaderField, 4)
    );
    // H2CData beyond MAXH2CDATA.
    assert_eq!(
        error_of(&ch(6, 4, 24, 24, 24 + 4097), &LIMITS),
        (Fes::DataLimitExceeded, 4)
    );
    // An ICReq with PDO.
    assert_eq!(
        error_of(&ch(0, 0, 128, 128, 200), &LIMITS),
        (Fes::InvalidHeaderField, 3)
    );
}

#[test]
fn h2c_data_length_must_match_datal() {
    let mut b = ch(6, 4, 24, 24, 24 + 8);
    b.resize(24, 0);
    b[16..20].copy_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&[0u8; 8]);
    assert_eq!(error_of(&b, &LIMITS), (Fes::InvalidHeaderField, 16));
}

/// An H2CData PDU (CCCID 1, TTAG 1, DATAO 0) carrying `data`, LAST_PDU set.
/// Appends the header digest (when `hd`), `data` and its data digest (when `dd`) to `header`.
fn with_digests_and_data(mut header: Vec<u8>, data: &[u8], hd: bool, dd: bool) -> Vec<u8> {
    if hd {
        let d = digest(&header);
        header.extend_from_slice(&d);
    }
    header.extend_from_slice(data);
    if dd {
        header.extend_from_slice(&digest(data));
    }
    header
}

fn h2c_data(data: &[u8], limits: &FrameLimits) -> Vec<u8> {
    let hd = if limits.header_digest { 4 } else { 0 };
    let dd = if limits.data_digest { 4 } else { 0 };
    let pdo = 24 + hd;
    let f = u8::from(hd > 0) | if dd > 0 { 2 } else { 0 } | 4;
    let mut b = ch(6, f, 24, pdo as u8, (pdo + data.len() + dd) as u32);
    b.resize(24, 0);
    b[8..10].copy_from_slice(&1u16.to_le_bytes());
    b[10..12].copy_from_slice(&1u16.to_le_bytes());
    b[16..20].copy_from_slice(&(data.len() as u32).to_le_bytes());
    with_digests_and_data(b, data, hd > 0, dd > 0)
}

/// Feeds `stream` through `read_buffer`/`push_read` as a socket would, `chunk` bytes at
/// most per read; returns the PDUs and the size of every read's room.
fn read_through(
    r: &mut PduReader,
    stream: &[u8],
    chunk: usize,
    limits: &FrameLimits,
) -> (Vec<Received>, Vec<usize>) {
    let (mut got, mut rooms, mut at) = (Vec::new(), Vec::new(), 0);
    while at < stream.len() {
        let room = r.read_buffer(chunk);
        let n = room.len().min(stream.len() - at);
        rooms.push(room.len());
        room[..n].copy_from_slice(&stream[at..at + n]);
        r.push_read(n);
        at += n;
        while let Some(pdu) = r.next_pdu(limits).unwrap() {
            got.push(pdu);
        }
    }
    (got, rooms)
}

#[test]
fn large_h2c_data_is_read_straight_into_its_buffer() {
    for (header_digest, data_digest) in [(false, false), (true, true)] {
        let limits = FrameLimits {
            header_digest,
            data_digest,
            max_h2c_data: 128 * 1024,
            ..LIMITS
        };
        let payload: Vec<u8> = (0..64 * 1024).map(|i| (i * 7) as u8).collect();
        let mut stream = h2c_data(&payload, &limits);
        stream.extend(h2c_data(&payload, &limits));
        stream.extend(capsule(&[3u8; 100], &limits));
        let mut r = PduReader::new();
        let (got, rooms) = read_through(&mut r, &stream, 4096, &limits);
        assert_eq!(got.len(), 3);
        for pdu in &got[..2] {
            assert!(matches!(pdu.pdu, HostPdu::H2CData(ref h) if h.datal == 64 * 1024));
            assert_eq!(&pdu.data[..], &payload[..]);
            assert!(pdu.data_digest_ok);
        }
        assert_eq!(&got[2].data[..], &[3u8; 100][..]);
        assert_eq!(r.buffered(), 0);
        // After the first 4 KiB read, the payload's reads are the payload's rest (at most a
        // chunk each); after it only its data digest and the next header are read.
        let digests = usize::from(header_digest) * 4 + usize::from(data_digest) * 4;
        assert!(rooms.contains(&(hlen::DATA + digests)), "{rooms:?}");
    }
}

/// The transport's vectored reads (`read_buffers`): the read that ends a direct payload
/// takes its data digest and the next H2CData header with it, so a stream of large
/// H2CData PDUs costs one read each and none of their payload is copied; what follows (a
/// command capsule) still arrives whole.
#[test]
fn the_read_that_ends_a_payload_takes_the_next_header() {
    for (header_digest, data_digest) in [(false, false), (true, true), (false, true)] {
        let limits = FrameLimits {
            header_digest,
            data_digest,
            max_h2c_data: 128 * 1024,
            ..LIMITS
        };
        let payload: Vec<u8> = (0..64 * 1024).map(|i| (i * 11) as u8).collect();
        let mut stream = h2c_data(&payload, &limits).repeat(3);
        stream.extend(capsule(&[4u8; 100], &limits));
        let mut r = PduReader::new();
        // The reader learns the header digest setting from the PDUs before (ICReq, Connect).
        assert_eq!(r.next_pdu(&limits), Ok(None));
        r.expect_data(true);
        let (mut got, mut rooms, mut at) = (Vec::new(), Vec::new(), 0);
        let copies = crate::stats::thread_payload_copies();
        while at < stream.len() {
            let (first, second) = r.read_buffers(256 * 1024);
            rooms.push((first.len(), second.len()));
            let mut n = 0;
            for room in [first, second] {
                let k = room.len().min(stream.len() - at - n);
                room[..k].copy_from_slice(&stream[at + n..at + n + k]);
                n += k;
            }
            r.push_read(n);
            at += n;
            while let Some(pdu) = r.next_pdu(&limits).unwrap() {
                got.push(pdu);
            }
        }
        let copied = crate::stats::thread_payload_copies() - copies;
        assert_eq!(got.len(), 4, "{rooms:?}");
        for pdu in &got[..3] {
            assert_eq!(&pdu.data[..], &payload[..]);
            assert!(pdu.data_digest_ok);
        }
        assert_eq!(&got[3].data[..], &[4u8; 100][..]);
        assert_eq!(r.buffered(), 0);
        // A header-sized read, then one read per payload whose second room is its digest
        // and the next H2CData header, then the capsule's rest.
        let hd = usize::from(header_digest) * DIGEST_LEN;
        let trailer = usize::from(data_digest) * DIGEST_LEN + hlen::DATA + hd;
        assert_eq!(rooms.len(), 5, "{rooms:?}");
        assert_eq!(rooms[0], (hlen::DATA + hd, 0));
        assert_eq!(rooms[1..4], [(payload.len(), trailer); 3]);
        // No payload byte came with a header: only the capsule's data is copied.
        assert_eq!(copied.bytes, 100);
    }
}

#[test]
fn a_direct_transfer_gets_the_whole_rest_of_its_payload_in_one_read() {
    let limits = FrameLimits {
        max_h2c_data: 128 * 1024,
        ..LIMITS
    };
    let payload = vec![5u8; 128 * 1024];
    let stream = h2c_data(&payload, &limits);
    let mut r = PduReader::new();
    let (got, rooms) = read_through(&mut r, &stream, 256 * 1024, &limits);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].data[..], &payload[..]);
    // The whole PDU fits the first read: nothing goes direct.
    assert_eq!(rooms, vec![256 * 1024]);
    let mut r = PduReader::new();
    let (got, rooms) = read_through(&mut r, &stream, 1000, &limits);
    assert_eq!(&got[0].data[..], &payload[..]);
    // The first read brings the header and 976 bytes; then the payload's rest 1000 at a time.
    assert_eq!(rooms[1], 1000);
    assert!(rooms.iter().sum::<usize>() >= stream.len());
}

#[test]
fn direct_transfer_digest_mismatch_is_reported_not_fatal() {
    let limits = FrameLimits {
        data_digest: true,
        max_h2c_data: 128 * 1024,
        ..LIMITS
    };
    let mut stream = h2c_data(&[8u8; 32 * 1024], &limits);
    let n = stream.len();
    stream[n - 1] ^= 0xFF;
    stream.extend(capsule(&[], &limits));
    let mut r = PduReader::new();
    let (got, _) = read_through(&mut r, &stream, 512, &limits);
    assert_eq!(got.len(), 2);
    assert!(!got[0].data_digest_ok);
    assert!(matches!(got[1].pdu, HostPdu::CapsuleCmd(_)));
}

#[test]
fn direct_transfer_header_errors_come_with_the_header() {
    let limits = FrameLimits {
        header_digest: true,
        max_h2c_data: 128 * 1024,
        ..LIMITS
    };
    let mut stream = h2c_data(&[1u8; 32 * 1024], &limits);
    stream[24] ^= 1;
    let mut r = PduReader::new();
    r.push(&stream[..100]);
    assert_eq!(r.next_pdu(&limits).unwrap_err().fes, Fes::HeaderDigestError);
}

#[test]
fn an_expected_payload_makes_reads_at_a_boundary_header_sized() {
    let limits = FrameLimits {
        max_h2c_data: 128 * 1024,
        ..LIMITS
    };
    let payload = vec![6u8; 128 * 1024];
    let mut r = PduReader::new();
    assert_eq!(r.read_buffer(256 * 1024).len(), 256 * 1024);
    r.push_read(0);
    r.expect_data(true);
    // At a PDU boundary: a header's worth only, so the payload can go direct.
    assert_eq!(r.read_buffer(256 * 1024).len(), hlen::DATA);
    r.push_read(0);
    let (got, rooms) = read_through(&mut r, &h2c_data(&payload, &limits), 256 * 1024, &limits);
    assert_eq!(&got[0].data[..], &payload[..]);
    assert_eq!(rooms, vec![hlen::DATA, 128 * 1024]);
    r.expect_data(false);
    assert_eq!(
        r.read_buffer(256 * 1024).len(),
        hlen::DATA,
        "right after a direct one"
    );
    r.push_read(0);
}
