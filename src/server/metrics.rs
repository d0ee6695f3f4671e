//! Prometheus metrics over HTTP (`metrics: ADDRESS:PORT`): `GET /metrics` answers the status
//! report ([`crate::status::StatusReport::to_prometheus`]) in the text exposition format, made
//! when the scrape arrives. One thread serves one request at a time and closes each
//! connection; a client gets a few seconds to send its request line. There is no
//! authentication: the metrics name the initiators and hosts connected, so bind it to an
//! address only the monitoring system reaches.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::control::{answer_one_at_a_time, StatusSource};

/// How long a client may take to send its request or read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a request read: its head (what a scraper sends fits easily).
const MAX_REQUEST_HEAD: usize = 8192;

/// Binds `addr` and serves scrapes until `stop` is set.
pub(super) fn spawn(
    addr: SocketAddr,
    source: Arc<StatusSource>,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    if addr.ip().is_unspecified() {
        log::warn!(
            "metrics on {bound}: anyone who reaches this port reads the initiators and hosts \
             connected (bind metrics: to an address only monitoring reaches)"
        );
    }
    log::info!("metrics: http://{bound}/metrics");
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || serve(&listener, &source, &stop))
}

fn serve(listener: &TcpListener, source: &StatusSource, stop: &AtomicBool) {
    answer_one_at_a_time(
        "metrics",
        listener,
        || listener.accept(),
        |(stream, peer)| {
            answer(stream, source).map_err(|e| io::Error::new(e.kind(), format!("{peer}: {e}")))
        },
        stop,
    );
}

/// How a request is answered, from its request line.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// `GET /metrics` (or `HEAD`): the exposition; `true` with its body.
    Metrics { body: bool },
    /// Another path.
    NotFound,
    /// Another method.
    MethodNotAllowed,
    /// Not an HTTP request line.
    BadRequest,
}

/// Reads the request line of an HTTP/1.x request (RFC 9112 §3).
fn parse(head: &[u8]) -> Answer {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Answer::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Answer::BadRequest;
    }
    let body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => return Answer::MethodNotAllowed,
    };
    // The path alone: a scraper may add a query string.
    match target.split('?').next() {
        Some("/metrics") => Answer::Metrics { body },
        _ => Answer::NotFound,
    }
}

/// Reads the request head and answers it; the connection closes after.
fn answer(mut stream: TcpStream, source: &StatusSource) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while head.len() < MAX_REQUEST_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let (status, body, send_body) = match parse(&head) {
        Answer::Metrics { body } => ("200 OK", source.report().to_prometheus(), body),
        Answer::NotFound => ("404 Not Found", "only /metrics is served\n".into(), true),
        Answer::MethodNotAllowed => ("405 Method Not Allowed", String::new(), true),
        Answer::BadRequest => ("400 Bad Request", String::new(), true),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if send_body {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_or_head_of_metrics_is_served() {
        let get = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse(get), Answer::Metrics { body: true });
        assert_eq!(
            parse(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Answer::Metrics { body: false }
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Answer::NotFound);
        assert_eq!(
            parse(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Answer::MethodNotAllowed
        );
        for bad in [
            &b""[..],
            b"GET /metrics\r\n",
            b"GET /metrics SPDY/3\r\n",
            b"\xff\xfe",
        ] {
            assert_eq!(parse(bad), Answer::BadRequest, "{bad:?}");
        }
    }
}
