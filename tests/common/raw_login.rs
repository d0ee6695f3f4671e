//! Logins written by hand over a `TcpStream`, with the crate's own PDU codec
//! (`iser_target::iscsi::{pdu, framing, text}`), for what libiscsi's tools
//! cannot do: hold a session open and idle, log in from a chosen source
//! address, stop half-way through a login.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use iser_target::iscsi::framing::{self, FrameSettings, PduReader};
use iser_target::iscsi::pdu::{Header, LoginRequest, LoginResponse, Pdu, Stage};
use iser_target::iscsi::text;

/// How long to wait for one response from the target.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP connection to 127.0.0.1:`port` from `source` (any address of
/// 127.0.0.0/8 is local on Linux): the socket is bound before connecting.
pub fn connect_from(source: Ipv4Addr, port: u16) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::V4(SocketAddrV4::new(source, 0)).into())
        .unwrap_or_else(|e| panic!("bind {source}: {e}"));
    socket
        .connect(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())
        .unwrap_or_else(|e| panic!("connect from {source} to port {port}: {e}"));
    socket.into()
}

/// What a peer does on a connection we stopped talking on.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerState {
    /// The target closed the connection (EOF or reset).
    Closed,
    /// Nothing arrived within the wait.
    Open,
}

/// Waits up to `wait` for the target to close `stream`; data it sends
/// meanwhile is discarded.
pub fn wait_for_close(stream: &mut TcpStream, wait: Duration) -> PeerState {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return PeerState::Open;
        }
        stream
            .set_read_timeout(Some(left))
            .expect("set_read_timeout");
        match stream.read(&mut buf) {
            Ok(0) => return PeerState::Closed,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return PeerState::Closed,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return PeerState::Open
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// An ISID of the random format (RFC 7143 §11.12.5, type 10b) ending in `n`.
pub fn isid(n: u16) -> [u8; 6] {
    let [hi, lo] = n.to_be_bytes();
    [0x80, 0x12, 0x34, 0x00, hi, lo]
}

/// A Login Request with the fields a first request carries.
pub fn login_request(
    isid: [u8; 6],
    current_stage: Stage,
    next_stage: Stage,
    transit: bool,
) -> LoginRequest {
    LoginRequest {
        transit,
        continue_flag: false,
        current_stage,
        next_stage,
        version_max: 0,
        version_min: 0,
        isid,
        tsih: 0,
        itt: 1,
        cid: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
    }
}

/// Sends one Login Request carrying `keys` and returns the response with its keys.
pub fn exchange(
    stream: &mut TcpStream,
    request: LoginRequest,
    keys: &[(&str, &str)],
) -> io::Result<(LoginResponse, Vec<(String, String)>)> {
    let pairs: Vec<(String, String)> = keys
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let pdu = Pdu::with_data(Header::LoginRequest(request), text::encode(&pairs));
    stream.write_all(&framing::encode(&pdu, &FrameSettings::default()))?;
    let response = read_pdu(stream)?;
    match response.header {
        Header::LoginResponse(header) => {
            let keys = text::parse(&response.data).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("response keys: {e:?}"))
            })?;
            Ok((header, keys))
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected a Login Response, got {other:?}"),
        )),
    }
}

/// Reads one PDU (login-phase framing: no digests).
pub fn read_pdu(stream: &mut TcpStream) -> io::Result<Pdu> {
    let settings = FrameSettings::default();
    let mut reader = PduReader::new();
    let mut buf = [0u8; 4096];
    stream.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
    loop {
        if let Some(pdu) = reader
            .next_pdu(&settings)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
        {
            return Ok(pdu);
        }
        match stream.read(&mut buf)? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "target closed the connection",
                ))
            }
            n => reader.push(&buf[..n]),
        }
    }
}

/// Which session a [`login`] asks for.
pub enum SessionType<'a> {
    Discovery,
    Normal { target: &'a str },
}

/// A whole login in two requests: security stage (names, AuthMethod=None),
/// then operational stage (no digests). Returns the final response: status 0
/// and NSG FullFeature on success, the target's status class and detail
/// otherwise (from whichever request failed).
pub fn login(
    stream: &mut TcpStream,
    initiator: &str,
    isid: [u8; 6],
    session: SessionType,
) -> io::Result<LoginResponse> {
    let mut keys = vec![("InitiatorName", initiator), ("AuthMethod", "None")];
    match session {
        SessionType::Discovery => keys.push(("SessionType", "Discovery")),
        SessionType::Normal { target } => {
            keys.push(("SessionType", "Normal"));
            keys.push(("TargetName", target));
        }
    }
    let request = login_request(isid, Stage::Security, Stage::Operational, true);
    let (first, _) = exchange(stream, request, &keys)?;
    if first.status_class != 0 || !first.transit {
        return Ok(first);
    }
    let mut request = login_request(isid, Stage::Operational, Stage::FullFeature, true);
    request.cmd_sn = first.exp_cmd_sn;
    request.exp_stat_sn = first.stat_sn.wrapping_add(1);
    let (last, _) = exchange(
        stream,
        request,
        &[("HeaderDigest", "None"), ("DataDigest", "None")],
    )?;
    Ok(last)
}
