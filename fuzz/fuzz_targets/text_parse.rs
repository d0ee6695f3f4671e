//! Text key parsing and negotiation: parse, re-encode, and offer every key in every phase.
#![no_main]

use iser_target::iscsi::text::{self, KeyPhase, Negotiator, TargetPolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(pairs) = text::parse(data) else {
        return;
    };
    assert_eq!(text::parse(&text::encode(&pairs)).as_ref(), Ok(&pairs));
    let iser = TargetPolicy {
        iser: true,
        digests_allowed: false,
        require_initial_r2t: true,
        ..TargetPolicy::default()
    };
    for policy in [TargetPolicy::default(), iser] {
        for phase in [
            KeyPhase::Security,
            KeyPhase::Operational,
            KeyPhase::FullFeature,
        ] {
            for leading in [true, false] {
                let mut negotiator = Negotiator::new(policy.clone());
                for (key, value) in &pairs {
                    let _ = negotiator.offer(key, value, phase, leading);
                }
                negotiator.declarations();
                let p = negotiator.params();
                assert!(p.first_burst_length <= p.max_burst_length);
                assert!(p.max_burst_length <= policy.max_burst_length);
                assert!(p.max_outstanding_r2t <= policy.max_outstanding_r2t);
                assert!(policy.digests_allowed || !(p.header_digest || p.data_digest));
                negotiator.next_round();
            }
        }
    }
});
