//! The sans-IO NVMe/TCP target core: no sockets, no threads, no clock. One [`Queue`] per TCP
//! connection (each connection is one queue of a controller, NVMe/TCP 1.0 §2.1): bytes in
//! through [`Queue::handle_bytes`], [`Action`]s out. What spans connections (controller IDs,
//! which I/O queues belong to which controller) is asked of the environment with
//! [`Action::CreateController`] and [`Action::JoinController`], which it answers from a
//! [`ControllerRegistry`]. I/O commands become [`IoCommand`]s, block operations on a namespace
//! that the LUN backends run ([`IoCommand::block_request`] maps them onto the SCSI layer's
//! [`crate::scsi::BlockRequest`]).
//!
//! Layers: [`pdu`] (PDU headers and encoders), [`framing`] (stream → validated PDUs),
//! [`command`] (SQE/CQE, status codes), `queue` (phases, data movement), `admin` (fabrics and
//! admin commands), [`io`] (I/O commands), [`identify`] and [`logs`] (data structures),
//! [`controller`] (registers, features, shared counters), `reservations` (a controller's
//! reservation notices and features), [`registry`], [`auth`] (in-band authentication,
//! DH-HMAC-CHAP).

mod admin;
pub mod auth;
pub mod command;
pub mod config;
pub mod controller;
mod fabrics_auth;
pub mod framing;
pub mod identify;
pub mod io;
pub mod logs;
pub mod pdu;
mod queue;
pub mod registry;
mod reservations;
pub mod scsi;

pub use admin::DISCOVERY_SUBSYSTEM;
pub use auth::Authentication;
pub use config::{
    AddressFamily, AllowedHost, AnaGroup, AnaState, DiscoveryEntry, NamespaceCapacity,
    NamespaceDescriptor, NamespaceReservations, NvmeConfig, SubsystemDescriptor, DISCOVERY_NQN,
};
pub use controller::ControllerShared;
pub use io::{IoCommand, IoId, IoOp};
pub use queue::{
    Action, CloseReason, ConnectRefusal, ControllerState, CreateRequest, JoinRequest, Queue,
};
pub use registry::ControllerRegistry;

#[cfg(test)]
mod tests;
