//! AUTH_Send and AUTH_Receive (NVMe base 2.0 §6.2, §6.3), the fabrics commands that carry a
//! queue's DH-HMAC-CHAP exchange (`auth`), as methods of [`Queue`].

use super::auth::message::{SECURITY_PROTOCOL, SECURITY_PROTOCOL_SPECIFIC};
use super::auth::Received;
use super::command::{Sqe, Status};
use super::queue::{Action, CloseReason, Outcome, Queue};

/// The checks before an AUTH command's data moves, as Linux's nvmet makes them
/// (drivers/nvme/target/fabrics-cmd-auth.c): the DH-HMAC-CHAP security protocol, a non-zero
/// length, and a data transfer of that length.
pub(super) fn check(sqe: &Sqe) -> Result<(), Status> {
    let protocol = (
        SECURITY_PROTOCOL,
        SECURITY_PROTOCOL_SPECIFIC,
        SECURITY_PROTOCOL_SPECIFIC,
    );
    if sqe.auth_protocol() != protocol || sqe.auth_length() == 0 {
        return Err(Status::INVALID_FIELD);
    }
    if sqe.auth_length() != sqe.sgl().length {
        return Err(Status::DATA_SGL_LENGTH_INVALID);
    }
    Ok(())
}

impl Queue {
    /// AUTH_Send: a message of the host's. A failed exchange ends the queue once the command
    /// is answered.
    pub(super) fn auth_send(&mut self, data: &[u8]) -> Outcome {
        let Some(auth) = self.auth.as_mut() else {
            // Nothing to authenticate on this queue.
            return Outcome::status(Status::COMMAND_SEQUENCE_ERROR);
        };
        let was_authenticated = auth.is_authenticated();
        match auth.send(data) {
            Ok(Some(work)) => Outcome::Compute(work),
            Ok(None) => {
                if !was_authenticated && auth.is_authenticated() {
                    self.authenticated();
                }
                Outcome::status(Status::SUCCESS)
            }
            Err(e) => Outcome::Closing(
                Box::new(Outcome::status(Status::SUCCESS)),
                CloseReason::AuthenticationFailed(e.to_string()),
            ),
        }
    }

    /// AUTH_Receive: our next message, in a buffer of the host's allocation length. After a
    /// Failure1 the queue ends.
    pub(super) fn auth_receive(&mut self, sqe: &Sqe) -> Outcome {
        let random = self.config.random;
        let Some(auth) = self.auth.as_mut() else {
            return Outcome::status(Status::COMMAND_SEQUENCE_ERROR);
        };
        let length = sqe.auth_length() as usize;
        let (mut bytes, failed) = match auth.receive(random) {
            Ok(Received::Message(bytes)) => (bytes, None),
            Ok(Received::Failed(bytes, e)) => (bytes, Some(e.to_string())),
            Ok(Received::Compute(work)) => return Outcome::Compute(work),
            // nvmet answers a challenge it cannot make with an internal error.
            Err(_) => return Outcome::status(Status::INTERNAL_ERROR),
        };
        if bytes.len() > length {
            return Outcome::Closing(
                Box::new(Outcome::status(Status::INVALID_FIELD)),
                CloseReason::AuthenticationFailed(format!(
                    "AUTH_Receive's {length} bytes cannot hold a {}-byte message",
                    bytes.len()
                )),
            );
        }
        // The whole allocation goes back, zero-filled past the message, as nvmet sends it.
        bytes.resize(length, 0);
        match failed {
            None => Outcome::Data(bytes),
            Some(why) => Outcome::Closing(
                Box::new(Outcome::Data(bytes)),
                CloseReason::AuthenticationFailed(why),
            ),
        }
    }

    /// The host has authenticated: an admin queue's keep alive starts, an I/O queue's deadline
    /// ends, and the environment hears of it.
    fn authenticated(&mut self) {
        if self.qid == 0 {
            self.keep_alive();
        } else {
            self.set_deadline(None);
        }
        if let Some(done) = self.auth.as_ref().and_then(|a| a.completed()) {
            self.push(Action::Authenticated(done));
        }
    }
}
