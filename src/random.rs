//! Where the sans-IO cores get unpredictable bytes (CHAP identifiers and challenges over iSCSI,
//! DH-HMAC-CHAP challenges over NVMe): they have no RNG of their own, the transport injects one
//! (the server passes the operating system's CSPRNG).

/// The random source could not deliver (the operating system's CSPRNG failed, or none was
/// injected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no random bytes for a CHAP challenge: {0}")]
pub struct RandomUnavailable(pub String);

/// Fills a buffer with unpredictable bytes.
pub type RandomSource = fn(&mut [u8]) -> Result<(), RandomUnavailable>;

/// The default [`RandomSource`] of a core configuration built without one: it always fails, so an
/// authentication on such a core fails instead of sending a guessable challenge.
pub fn no_random_source(_: &mut [u8]) -> Result<(), RandomUnavailable> {
    Err(RandomUnavailable("no random source configured".into()))
}
