//! Arbitrary bytes through the TCP framing: whatever decodes must re-encode and decode the same.
#![no_main]

use iser_target::iscsi::framing::{encode, FrameSettings, PduReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, stream)) = data.split_first() else {
        return;
    };
    let settings = FrameSettings {
        header_digest: choice & 1 != 0,
        data_digest: choice & 2 != 0,
        max_data_segment_length: [512, 8192, 65_536, 16_777_215][(choice >> 2) as usize & 3],
    };
    let mut reader = PduReader::new();
    reader.push(stream);
    loop {
        match reader.next_pdu(&settings) {
            Ok(Some(pdu)) => {
                let bytes = encode(&pdu, &settings);
                let mut again = PduReader::new();
                again.push(&bytes);
                let decoded = again
                    .next_pdu(&settings)
                    .expect("re-encoded PDU decodes")
                    .expect("re-encoded PDU is complete");
                assert_eq!(decoded, pdu);
                assert_eq!(again.buffered(), 0);
            }
            Ok(None) => break,
            Err(e) if e.is_fatal() => break,
            Err(_) => {}
        }
    }
});
