//! The loopback half: the real `Server` on 127.0.0.1 with a RAM LUN, reached over a
//! `std::net::TcpStream` by the benchmark's initiator.

use std::io::{Read, Write};
use std::net::TcpStream;

use iser_target::config::Config;
use iser_target::server::Server;

use crate::initiator::Wire;

/// Starts the server of `config` with its (single, TCP) portal on a port the OS picks.
pub fn start_server(mut config: Config) -> Server {
    // The configuration wants a real port; 0 after validation lets the OS pick a free one.
    config.portals[0].port = 0;
    Server::start(&config).expect("start the target")
}

/// A TCP connection to the target.
pub struct TcpWire {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl TcpWire {
    /// Connects to the first portal of `server`.
    pub fn connect(server: &Server) -> TcpWire {
        let stream = TcpStream::connect(server.local_addrs()[0]).expect("connect to the target");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        TcpWire {
            stream,
            buffer: vec![0; 256 << 10],
        }
    }
}

impl Wire for TcpWire {
    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send to the target");
    }

    fn receive(&mut self) -> &[u8] {
        loop {
            match self.stream.read(&mut self.buffer) {
                Ok(0) => panic!("the target closed the connection"),
                Ok(n) => return &self.buffer[..n],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("receive from the target: {e}"),
            }
        }
    }
}
