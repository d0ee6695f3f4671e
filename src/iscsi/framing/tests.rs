use super::*;
use crate::iscsi::pdu::{Header, NopOut, TextRequest};

fn sample() -> Pdu {
    Pdu::with_data(
        Header::TextRequest(TextRequest {
            final_flag: true,
            itt: 9,
            ttt: pdu::RESERVED_TAG,
            ..Default::default()
        }),
        b"SendTargets=All\0".to_vec(),
    )
}

/// Bytes handed over one at a time (a peer trickling its PDUs) are gathered into few chunks.
#[test]
fn trickled_buffers_are_coalesced() {
    let settings = FrameSettings::default();
    let mut big = sample();
    big.data = vec![7; 6000];
    let bytes = [encode(&big, &settings), encode(&sample(), &settings)].concat();
    let mut reader = PduReader::new();
    let mut got = Vec::new();
    for b in bytes {
        reader.push_owned(vec![b]);
        assert!(reader.chunks.len() <= 1, "{} chunks", reader.chunks.len());
        while let Some(p) = reader.next_pdu(&settings).unwrap() {
            got.push(p);
        }
    }
    assert_eq!(got, vec![big, sample()]);
    assert_eq!(reader.buffered(), 0);
}

/// Reads `stream` into `reader` through its own buffers, `step` bytes per read at most.
fn read_in(reader: &mut PduReader, mut stream: &[u8], step: usize, size: usize) {
    while !stream.is_empty() {
        let room = reader.read_buffer(size);
        let n = room.len().min(step).min(stream.len());
        room[..n].copy_from_slice(&stream[..n]);
        reader.push_read(n);
        stream = &stream[n..];
    }
}

/// PDUs read straight into the reader's buffers decode whatever the reads' sizes, and a
/// buffer whose bytes are consumed serves the next read: receiving allocates nothing in
/// steady state, and the reader keeps one spare buffer at most.
#[test]
fn read_buffers_are_filled_then_reused() {
    let settings = FrameSettings::default();
    let mut big = sample();
    big.data = vec![7; 6000];
    let bytes = [encode(&big, &settings), encode(&sample(), &settings)].concat();
    for step in [1, 3, 100, 4095, 4096, 5000, bytes.len()] {
        let mut reader = PduReader::new();
        let mut got = Vec::new();
        for round in 0..3 {
            read_in(&mut reader, &bytes, step, 16 << 10);
            // Trickled bytes fill the free end of one buffer rather than start new ones.
            assert_eq!(reader.chunks.len(), 1, "step {step}");
            let buffer = reader.chunks[0].bytes.as_ptr();
            while let Some(p) = reader.next_pdu(&settings).unwrap() {
                got.push(p);
            }
            assert_eq!(reader.buffered(), 0);
            assert!(reader.chunks.is_empty());
            let spare = reader.spare.as_ref().expect("the consumed buffer is kept");
            assert_eq!(spare.as_ptr(), buffer, "step {step} round {round}");
            // The next read goes into the same buffer.
            assert_eq!(reader.read_buffer(16 << 10).as_ptr(), buffer);
            reader.push_read(0);
            assert!(reader.chunks.is_empty() && reader.spare.is_some());
        }
        let expected: Vec<Pdu> = (0..3).flat_map(|_| [big.clone(), sample()]).collect();
        assert_eq!(got, expected, "step {step}");
    }
}

/// A PDU larger than a read buffer spans several; all but the last are dropped once
/// consumed, the last one kept.
#[test]
fn a_pdu_spanning_read_buffers() {
    let settings = FrameSettings {
        max_data_segment_length: 1 << 20,
        ..FrameSettings::default()
    };
    let mut big = sample();
    big.data = (0..100_000u32).map(|i| i as u8).collect();
    let bytes = encode(&big, &settings);
    let mut reader = PduReader::new();
    read_in(&mut reader, &bytes, usize::MAX, 16 << 10);
    assert_eq!(reader.chunks.len(), bytes.len().div_ceil(16 << 10));
    let frame = reader.next_frame(&settings).unwrap().unwrap();
    let mut out = mem_ffi::pool::global().with_capacity(big.data.len());
    reader.take_data_into(&frame, &mut out).unwrap();
    assert_eq!(&out[..], &big.data[..]);
    assert!(reader.chunks.is_empty());
    assert_eq!(reader.spare.as_ref().map(Vec::len), Some(16 << 10));
    // A kept buffer smaller than asked for is replaced.
    assert_eq!(reader.read_buffer(64 << 10).len(), 64 << 10);
}

#[test]
fn frame_parts_around_the_data_are_the_encoded_frame() {
    for (hd, dd) in [(false, false), (true, false), (false, true), (true, true)] {
        let settings = FrameSettings {
            header_digest: hd,
            data_digest: dd,
            max_data_segment_length: 8192,
        };
        for extra in 0..4 {
            let mut pdu = sample();
            pdu.data.extend(std::iter::repeat(b'x').take(extra));
            let parts = frame_parts(&pdu.header, &pdu.data, &settings);
            let mut joined = parts.head.to_vec();
            joined.extend_from_slice(&pdu.data);
            joined.extend_from_slice(parts.tail());
            assert_eq!(joined, encode(&pdu, &settings), "hd {hd} dd {dd} +{extra}");
        }
    }
}

#[test]
fn round_trips_with_and_without_digests_byte_by_byte() {
    for (hd, dd) in [(false, false), (true, false), (false, true), (true, true)] {
        let settings = FrameSettings {
            header_digest: hd,
            data_digest: dd,
            max_data_segment_length: 8192,
        };
        let mut odd = sample();
        odd.data.push(b'x'); // force padding
        let bytes = [encode(&sample(), &settings), encode(&odd, &settings)].concat();
        let mut reader = PduReader::new();
        let mut got = Vec::new();
        for b in bytes {
            reader.push(&[b]);
            while let Some(p) = reader.next_pdu(&settings).unwrap() {
                got.push(p);
            }
        }
        assert_eq!(got, vec![sample(), odd]);
        assert_eq!(reader.buffered(), 0);
    }
}

#[test]
fn a_data_segment_is_copied_once_out_of_the_reader() {
    use crate::stats::{thread_payload_copies, CopyCounts};
    let settings = FrameSettings::default();
    let pdu = Pdu::with_data(
        Header::NopOut(NopOut {
            itt: 1,
            ttt: pdu::RESERVED_TAG,
            ..Default::default()
        }),
        vec![0x5a; 4096],
    );
    let before = thread_payload_copies();
    let bytes = encode(&pdu, &settings);
    let mut reader = PduReader::new();
    reader.push(&bytes);
    assert_eq!(reader.next_pdu(&settings).unwrap(), Some(pdu));
    // encode; then push, and the data copied out of the reader's chunks.
    assert_eq!(
        thread_payload_copies() - before,
        CopyCounts {
            copies: 3,
            bytes: 3 * 4096
        }
    );
    // A buffer the transport read into is not copied again: the data is copied once.
    let before = thread_payload_copies();
    reader.push_owned(bytes);
    let frame = reader.next_frame(&settings).unwrap().unwrap();
    let mut task_buffer = vec![1u8; 10];
    reader.take_data_into(&frame, &mut task_buffer).unwrap();
    assert_eq!(&task_buffer[10..], &[0x5a; 4096][..]);
    assert_eq!(
        thread_payload_copies() - before,
        CopyCounts {
            copies: 1,
            bytes: 4096
        }
    );
}

#[test]
fn crc32c_matches_rfc_3720_test_vector() {
    // RFC 3720 B.4: 32 bytes of zeroes give CRC 0x8a9136aa (sent as aa 36 91 8a).
    assert_eq!(digest(&[0u8; 32]), [0xaa, 0x36, 0x91, 0x8a]);
}

#[test]
fn digest_errors() {
    let settings = FrameSettings {
        header_digest: true,
        data_digest: true,
        max_data_segment_length: 8192,
    };
    let good = encode(&sample(), &settings);
    let mut bad_data = good.clone();
    bad_data[BHS_LEN + 4] ^= 1;
    let mut reader = PduReader::new();
    reader.push(&bad_data);
    assert!(matches!(
        reader.next_pdu(&settings),
        Err(FrameError::DataDigest { .. })
    ));
    assert_eq!(
        reader.buffered(),
        0,
        "a bad data digest drops just that PDU"
    );
    let mut bad_header = good;
    bad_header[20] ^= 1;
    reader.push(&bad_header);
    let err = reader.next_pdu(&settings).unwrap_err();
    assert!(err.is_fatal());
}

#[test]
fn oversized_and_malformed() {
    let settings = FrameSettings::default();
    let mut pdu = encode(&Pdu::new(Header::NopOut(NopOut::default())), &settings);
    pdu[5..8].copy_from_slice(&[0x01, 0, 1]);
    let mut reader = PduReader::new();
    reader.push(&pdu);
    assert!(reader.next_pdu(&settings).unwrap_err().is_fatal());

    let mut unknown = encode(&Pdu::new(Header::NopOut(NopOut::default())), &settings);
    unknown[0] = 0x1d;
    let mut reader = PduReader::new();
    reader.push(&unknown);
    reader.push(&encode(&sample(), &settings));
    let err = reader.next_pdu(&settings).unwrap_err();
    assert!(!err.is_fatal());
    assert_eq!(reader.next_pdu(&settings).unwrap(), Some(sample()));
}
