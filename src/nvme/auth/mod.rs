//! NVMe in-band authentication with DH-HMAC-CHAP (NVMe base 2.0 §8.13), one exchange per queue:
//! a host whose `allowed_hosts` entry has a secret proves, on the admin queue and on each I/O
//! queue, that it holds that secret, and may ask the controller to prove it holds the
//! controller's. Connect tells the host to authenticate (its result's ATR bit); until it has,
//! the queue takes nothing but AUTH_Send and AUTH_Receive.
//!
//! Supported: SHA-256, SHA-384 and SHA-512; the NULL DH group (the challenge is used as it is,
//! Linux's nvmet's default) and RFC 7919's ffdhe2048 to ffdhe8192 (a fresh key pair per
//! exchange, the challenges augmented with the shared secret: [`dh`], whose exponentiations
//! the environment runs off its I/O threads, [`dh::DhWork`]); secrets with and
//! without a transform; unidirectional and bidirectional. Not: secure channel concatenation (a
//! TLS PSK derived from the exchange). The state machine follows Linux's
//! drivers/nvme/target/fabrics-cmd-auth.c: any message out of order, a host's Failure2, or a
//! failed exchange once its Failure1 is read, ends the queue (nvmet raises a fatal controller
//! error there).

pub mod dh;
pub mod message;
pub mod secret;

use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::random::RandomSource;
use dh::{Computed, DhGroup, DhResult, DhWork, KeyPair};
use message::{auth_id, auth_type, failure, Header, Negotiate, Reply};
pub use secret::{DhchapSecret, Exchange, HashFunction, SecretError};

/// A host's secrets: its own, and the controller's for a host that asks the controller to
/// authenticate too (`nvme connect --dhchap-secret` and `--dhchap-ctrl-secret`); and the DH
/// group its exchanges use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSecrets {
    pub host: DhchapSecret,
    pub controller: Option<DhchapSecret>,
    /// The group to use. NULL (the default) takes the NULL group, or the host's first group
    /// when it does not offer NULL; another group must be offered, or the exchange fails.
    pub dh_group: DhGroup,
    /// The hash function to use; it must be offered. `None`: the host's first choice.
    pub hash: Option<HashFunction>,
}

/// How a host authenticated on a queue: DH-HMAC-CHAP with this hash function and DH group, and
/// whether the controller proved itself too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authentication {
    pub hash: HashFunction,
    pub dh_group: DhGroup,
    pub bidirectional: bool,
}

impl std::fmt::Display for Authentication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DH-HMAC-CHAP {}", self.hash)?;
        if self.dh_group != DhGroup::Null {
            write!(f, ", {}", self.dh_group.name())?;
        }
        if self.bidirectional {
            f.write_str(", bidirectional")?;
        }
        Ok(())
    }
}

/// Why an exchange failed, for the log and for the Failure1 explanation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the host's Negotiate offers nothing we can use (explanation {0:#04x})")]
    Negotiation(u8),
    #[error("the host's Reply is malformed or of another transaction")]
    IncorrectPayload,
    #[error("the host's DH value is not one of the group's")]
    InvalidDhValue,
    #[error("the host's response does not match its secret")]
    WrongResponse,
    #[error(
        "the host asked the controller to authenticate, but its entry has no dhchap_ctrl_secret"
    )]
    NoControllerSecret,
    #[error("the host rejected the controller's response (Failure2, explanation {0:#04x})")]
    HostRejected(u8),
    #[error("message {auth_type:#04x}/{auth_id:#04x} out of sequence")]
    OutOfSequence { auth_type: u8, auth_id: u8 },
    #[error("AUTH_Receive with no message to read")]
    NothingToRead,
}

impl AuthError {
    /// The Failure1 reason code explanation for it.
    fn explanation(&self) -> u8 {
        match self {
            AuthError::Negotiation(code) => *code,
            AuthError::IncorrectPayload => failure::INCORRECT_PAYLOAD,
            AuthError::InvalidDhValue => failure::DHGROUP_UNUSABLE,
            AuthError::OutOfSequence { .. } => failure::INCORRECT_MESSAGE,
            _ => failure::FAILED,
        }
    }
}

/// Where an exchange is: which message comes next.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Waiting for the host's Negotiate.
    Negotiate,
    /// The host reads our Challenge next.
    Challenge,
    /// Waiting for the host's Reply.
    Reply,
    /// The host reads our Success1 next.
    Success1,
    /// Waiting for the host's Success2 (it asked us to authenticate).
    Success2,
    /// The exchange failed: the host reads our Failure1 next.
    Failure1(AuthError),
    /// Done; a new Negotiate starts again (re-authentication).
    Done,
}

/// What an AUTH_Receive reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// The next message of the exchange.
    Message(Vec<u8>),
    /// A Failure1: once the host has it, the queue ends.
    Failed(Vec<u8>, AuthError),
    /// The message needs this computation first: hand its result to
    /// [`QueueAuthentication::computed`], then receive again.
    Compute(DhWork),
}

/// The authentication of one queue.
#[derive(Debug)]
pub struct QueueAuthentication {
    secrets: Arc<HostSecrets>,
    host_nqn: String,
    subsystem_nqn: String,
    step: Step,
    transaction: u16,
    hash: HashFunction,
    dh_group: DhGroup,
    /// Our key pair, with a DH group, and the secret shared with the host.
    key_pair: Option<KeyPair>,
    session_key: Option<Vec<u8>>,
    /// A shared secret computed for the host's public value (the first), which the Reply that
    /// carries it takes when sent again.
    shared: Option<(Vec<u8>, Vec<u8>)>,
    /// A [`DhWork`] is out: until its result comes, any message is out of sequence.
    computing: bool,
    /// Our challenge C1 and its sequence number S1.
    challenge: Vec<u8>,
    seqnum: u32,
    /// The host's challenge C2 and S2, when it asked us to authenticate.
    host_challenge: Option<(Vec<u8>, u32)>,
    authenticated: bool,
}

impl QueueAuthentication {
    pub fn new(secrets: Arc<HostSecrets>, host_nqn: &str, subsystem_nqn: &str) -> Self {
        QueueAuthentication {
            secrets,
            host_nqn: host_nqn.to_string(),
            subsystem_nqn: subsystem_nqn.to_string(),
            step: Step::Negotiate,
            transaction: 0,
            hash: HashFunction::Sha256,
            dh_group: DhGroup::Null,
            key_pair: None,
            session_key: None,
            shared: None,
            computing: false,
            challenge: Vec::new(),
            seqnum: 0,
            host_challenge: None,
            authenticated: false,
        }
    }

    /// The host has proven itself (and, when it asked, read our proof and accepted it).
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// How the host authenticated, once it has: the latest exchange's hash function and DH
    /// group, and whether the host asked the controller to authenticate too.
    pub fn completed(&self) -> Option<Authentication> {
        self.authenticated.then(|| Authentication {
            hash: self.hash,
            dh_group: self.dh_group,
            bidirectional: self.host_challenge.is_some(),
        })
    }

    /// An AUTH_Send's message. `Ok(Some(work))`: the message needs this computation first;
    /// hand its result to [`QueueAuthentication::computed`], then send the same message again.
    /// `Err`: the exchange is over and failed; the queue answers the command and ends.
    pub fn send(&mut self, data: &[u8]) -> Result<Option<DhWork>, AuthError> {
        let Some(header) = Header::parse(data) else {
            return Err(AuthError::IncorrectPayload);
        };
        let out_of_sequence = AuthError::OutOfSequence {
            auth_type: header.auth_type,
            auth_id: header.auth_id,
        };
        if self.computing {
            return Err(out_of_sequence);
        }
        match (header.auth_type, header.auth_id) {
            // A Negotiate starts an exchange, or starts it again (nvmet: "Restart
            // negotiation"); it picks the transaction ID.
            (auth_type::COMMON, auth_id::NEGOTIATE) => {
                self.transaction = header.transaction;
                self.host_challenge = None;
                self.key_pair = None;
                self.session_key = None;
                self.shared = None;
                self.step = match self.negotiate(data) {
                    Ok((hash, dh_group)) => {
                        self.hash = hash;
                        self.dh_group = dh_group;
                        Step::Challenge
                    }
                    Err(e) => Step::Failure1(e),
                };
                Ok(None)
            }
            (auth_type::COMMON, auth_id::FAILURE2) => {
                Err(AuthError::HostRejected(message::failure2_explanation(data)))
            }
            (auth_type::DHCHAP, auth_id::REPLY) if self.step == Step::Reply => {
                self.step = match self
                    .check_transaction(header)
                    .and_then(|()| self.reply(data))
                {
                    Ok(Some(work)) => {
                        self.computing = true;
                        return Ok(Some(work));
                    }
                    Ok(None) => Step::Success1,
                    Err(e) => Step::Failure1(e),
                };
                Ok(None)
            }
            (auth_type::DHCHAP, auth_id::SUCCESS2) if self.step == Step::Success2 => {
                self.check_transaction(header)?;
                self.authenticated = true;
                self.step = Step::Done;
                Ok(None)
            }
            _ => Err(out_of_sequence),
        }
    }

    /// What an AUTH_Receive reads next; `Err` when the random source failed.
    pub fn receive(
        &mut self,
        random: RandomSource,
    ) -> Result<Received, crate::random::RandomUnavailable> {
        let transaction = self.transaction;
        if self.computing {
            return Ok(Self::failed(transaction, AuthError::NothingToRead));
        }
        let received = match std::mem::replace(&mut self.step, Step::Done) {
            Step::Challenge if self.dh_group != DhGroup::Null && self.key_pair.is_none() => {
                // Our key pair first, computed off the I/O thread; this message is read again.
                self.step = Step::Challenge;
                let mut private = vec![0; self.dh_group.private_len()];
                random(&mut private)?;
                self.computing = true;
                Received::Compute(DhWork::generate(self.dh_group, private))
            }
            Step::Challenge => {
                let mut challenge = vec![0; self.hash.digest_len()];
                let mut seqnum = [0; 4];
                if let Err(e) = random(&mut challenge).and_then(|()| random(&mut seqnum)) {
                    self.step = Step::Challenge;
                    return Err(e);
                }
                // 0 is not a sequence number (NVMe base 2.0 §8.13.5.3: it says "no
                // authentication" in a Reply).
                self.seqnum = u32::from_le_bytes(seqnum).max(1);
                self.challenge = challenge;
                self.step = Step::Reply;
                Received::Message(message::challenge(
                    transaction,
                    self.hash.id(),
                    self.dh_group.id(),
                    self.seqnum,
                    &self.challenge,
                    self.key_pair.as_ref().map_or(&[], |k| k.public_value()),
                ))
            }
            Step::Success1 => match self.controller_response() {
                Ok(response) => {
                    self.step = if response.is_some() {
                        Step::Success2
                    } else {
                        Step::Done
                    };
                    Received::Message(message::success1(
                        transaction,
                        self.hash.digest_len(),
                        response.as_deref(),
                    ))
                }
                Err(e) => Self::failed(transaction, e),
            },
            Step::Failure1(e) => Self::failed(transaction, e),
            // nvmet answers an AUTH_Receive out of turn with a Failure1 ("unhandled step").
            _ => Self::failed(transaction, AuthError::NothingToRead),
        };
        Ok(received)
    }

    /// The result of the [`DhWork`] that [`QueueAuthentication::send`] or
    /// [`QueueAuthentication::receive`] handed out; the message that asked for it is sent or
    /// received again next.
    pub fn computed(&mut self, result: DhResult) {
        self.computing = false;
        match result.into_computed() {
            Computed::Generated(key_pair) => self.key_pair = Some(key_pair),
            Computed::Shared { peer, secret } => self.shared = Some((peer, secret)),
        }
    }

    fn failed(transaction: u16, e: AuthError) -> Received {
        Received::Failed(message::failure1(transaction, e.explanation()), e)
    }

    fn check_transaction(&self, header: Header) -> Result<(), AuthError> {
        if header.transaction == self.transaction {
            Ok(())
        } else {
            Err(AuthError::IncorrectPayload)
        }
    }

    /// The hash function and DH group for a Negotiate: the host's entry's hash, or the host's
    /// first among ours, the entry's group ([`HostSecrets::dh_group`]), no secure channel
    /// concatenation.
    fn negotiate(&self, data: &[u8]) -> Result<(HashFunction, DhGroup), AuthError> {
        let negotiate = Negotiate::parse(data).map_err(AuthError::Negotiation)?;
        if negotiate.secure_channel() != 0 {
            return Err(AuthError::Negotiation(failure::CONCAT_MISMATCH));
        }
        let hash = match self.secrets.hash {
            Some(hash) => negotiate.hashes().contains(&hash.id()).then_some(hash),
            None => negotiate
                .hashes()
                .iter()
                .find_map(|&id| HashFunction::from_id(id)),
        }
        .ok_or(AuthError::Negotiation(failure::HASH_UNUSABLE))?;
        let offered = |group: DhGroup| negotiate.dh_groups().contains(&group.id());
        let configured = self.secrets.dh_group;
        let dh_group = if offered(configured) {
            configured
        } else if configured == DhGroup::Null {
            negotiate
                .dh_groups()
                .iter()
                .find_map(|&id| DhGroup::from_id(id))
                .ok_or(AuthError::Negotiation(failure::DHGROUP_UNUSABLE))?
        } else {
            return Err(AuthError::Negotiation(failure::DHGROUP_UNUSABLE));
        };
        Ok((hash, dh_group))
    }

    /// Checks the host's response; keeps its challenge when it asks us to authenticate.
    /// `Some(work)`: the secret shared with the host's DH value must be computed first.
    fn reply(&mut self, data: &[u8]) -> Result<Option<DhWork>, AuthError> {
        let reply = Reply::parse(data).map_err(|_| AuthError::IncorrectPayload)?;
        if reply.hash_len() != self.hash.digest_len()
            || reply.dh_value_len() != self.dh_group.value_len()
        {
            return Err(AuthError::IncorrectPayload);
        }
        if let Some(key_pair) = &self.key_pair {
            match self.shared.take() {
                Some((peer, secret)) if peer == reply.dh_value() => self.session_key = Some(secret),
                _ => {
                    return DhWork::shared(key_pair, reply.dh_value())
                        .map(Some)
                        .map_err(|_| AuthError::InvalidDhValue)
                }
            }
        }
        let expected = self
            .exchange(&self.challenge, self.seqnum)
            .host_response(&self.secrets.host);
        if !bool::from(expected.ct_eq(reply.response())) {
            return Err(AuthError::WrongResponse);
        }
        // A challenge with sequence number 0 asks for no controller authentication (NVMe base
        // 2.0 §8.13.5.5; nvmet drops it likewise).
        match reply.challenge().filter(|_| reply.seqnum() != 0) {
            Some(challenge) => self.host_challenge = Some((challenge.to_vec(), reply.seqnum())),
            None => self.authenticated = true,
        }
        Ok(None)
    }

    /// Our response to the host's challenge, if it sent one.
    fn controller_response(&self) -> Result<Option<Vec<u8>>, AuthError> {
        let Some((challenge, seqnum)) = &self.host_challenge else {
            return Ok(None);
        };
        let secret = self
            .secrets
            .controller
            .as_ref()
            .ok_or(AuthError::NoControllerSecret)?;
        Ok(Some(
            self.exchange(challenge, *seqnum)
                .controller_response(secret),
        ))
    }

    fn exchange<'a>(&'a self, challenge: &'a [u8], seqnum: u32) -> Exchange<'a> {
        Exchange {
            hash: self.hash,
            challenge,
            session_key: self.session_key.as_deref(),
            seqnum,
            transaction: self.transaction,
            host_nqn: &self.host_nqn,
            subsystem_nqn: &self.subsystem_nqn,
        }
    }
}

pub mod testing;
#[cfg(test)]
mod tests;
