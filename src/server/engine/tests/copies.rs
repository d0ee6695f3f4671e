//! EXTENDED COPY through the engine: copies run on a pool of their own, so copies held up by
//! a slow backend hold up neither the rare commands of other LUNs nor their I/O.

use super::*;
use crate::scsi::testutil::{
    copy_parameter_list, cscd_descriptor, extended_copy_cdb, segment_descriptor, ProbeBackend,
    LIST_ID_NO_HOLD,
};

/// The LU's NAA designator, from VPD page 83h as an initiator learns it.
fn naa_designator(c: &Client) -> Vec<u8> {
    let o = c.exec(vec![0x12, 0x01, 0x83, 0, 255, 0], Vec::new());
    let page = o.data_in.to_vec();
    assert_eq!(
        &page[4..8],
        &[0x01, 0x03, 0x00, 0x08],
        "NAA designator first"
    );
    page[8..16].to_vec()
}

#[test]
fn copies_stuck_on_a_slow_backend_stall_neither_rare_commands_nor_other_luns() {
    let slow = Arc::new(ProbeBackend::gated(1 << 20));
    let lun0 = LogicalUnit::new(params(0, BS as u32), Arc::clone(&slow) as Arc<dyn Backend>);
    let lun1 = LogicalUnit::new(params(1, BS as u32), Arc::new(RamBackend::new(1 << 20)));
    let target = ScsiTarget::new(vec![Arc::new(lun0), Arc::new(lun1)]);
    let engine = Engine::start(vec![Arc::new(target)], 2, IoMode::Auto).unwrap();
    let c = Client::new(&engine);
    // Dropped before the engine, whose shutdown waits for the copies.
    let _unstick = OpenOnDrop(&slow);
    let designator = naa_designator(&c);
    assert_eq!(
        c.exec(write16(0, 8, false), vec![0xC3; 8 * BS]).status,
        status::GOOD
    );

    // As many copies as the copy pool has threads, each waiting in LUN 0's reads. (Their list
    // identifiers differ: two copies running with one are refused, OPERATION IN PROGRESS.)
    let copies: Vec<_> = (0..COPY_THREADS as u64)
        .map(|i| {
            let list = copy_parameter_list(
                i as u8,
                LIST_ID_NO_HOLD,
                &[cscd_descriptor(&designator, BS as u32)],
                &[segment_descriptor(0, 0, 8, 0, 100 + 8 * i)],
            );
            c.submit(0, extended_copy_cdb(list.len()), list)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.waiting.load(Ordering::SeqCst) < copies.len() {
        assert!(
            Instant::now() < deadline,
            "the copies never reached the backend"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    // Meanwhile LUN 1 answers a WRITE SAME with a pattern (a blocking-pool command) and a READ.
    let ws = c.submit(1, cdb16(0x93, 0, 0, 4), vec![0x5A; BS]);
    let (id, o) = c.done.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!((id, o.status), (ws, status::GOOD), "{o:?}");
    let read = c.submit(1, read16(0, 4), Vec::new());
    let (id, o) = c.done.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!((id, o.status), (read, status::GOOD));
    assert_eq!(o.data_in.to_vec(), vec![0x5A; 4 * BS]);

    slow.open();
    for _ in &copies {
        let (id, o) = c.done.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(copies.contains(&id));
        assert_eq!(o.status, status::GOOD, "{o:?}");
    }
    for i in 0..copies.len() as u64 {
        assert_eq!(c.read(100 + 8 * i, 8), vec![0xC3; 8 * BS]);
    }
    c.session.drain();
}
