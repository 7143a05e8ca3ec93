//! An MLLP client for the tests: one TCP connection, one framed ACK read per message.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::time::Duration;

/// A sender on one TCP connection that reads one MLLP-framed ACK per request.
pub struct Sender {
    s: std::net::TcpStream,
    buf: Vec<u8>,
}

impl Sender {
    pub fn connect(addr: SocketAddr) -> Self {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        Self { s, buf: Vec::new() }
    }

    /// A sender on a stream connected already (e.g. from a chosen local address).
    pub fn from_stream(s: std::net::TcpStream) -> Self {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        Self { s, buf: Vec::new() }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> String {
        self.s.write_all(bytes).unwrap();
        self.read_ack()
    }

    pub fn send(&mut self, msg: &str) -> String {
        self.send_raw(&icu_drivers::mllp::encode_frame(msg.as_bytes()))
    }

    pub fn read_ack(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == [0x1C, 0x0D]) {
                let frame: Vec<u8> = self.buf.drain(..end + 2).collect();
                let start = frame
                    .iter()
                    .position(|b| *b == 0x0B)
                    .expect("ACK starts with 0x0B");
                return String::from_utf8(frame[start + 1..frame.len() - 2].to_vec()).unwrap();
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).expect("reading the ACK");
            assert!(n > 0, "connection closed without an ACK");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
