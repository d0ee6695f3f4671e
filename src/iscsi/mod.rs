//! The sans-IO iSCSI core: no sockets, no threads, no clock. Transports feed received PDUs and
//! completions in through `handle_*` methods and carry out the [`connection::Action`]s that come out.
//!
//! With ErrorRecoveryLevel 0 and MaxConnections 1 a session has exactly one connection, so the whole
//! session state (CmdSN window, StatSN, tasks) lives in [`connection::Connection`]; what spans
//! connections (TSIH allocation, reinstatement) is asked of the transport through
//! [`connection::Action::BindSession`].

pub mod bytes;
pub mod chap;
mod commands;
pub mod connection;
pub mod framing;
pub mod iser;
mod login;
pub mod pdu;
mod tasks;
pub mod tcp;
pub mod text;

pub use connection::{
    Action, BindRequest, CloseReason, Connection, CoreConfig, LoginRefusal, LoginStatus, Residual,
    ScsiTask, SequenceNumbers, TargetDescriptor, TaskId, TaskKind, TaskRef,
};

#[cfg(test)]
mod tests;
