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

/// A PCD-01 message from the simulated monitor of bed `bed` (its EUI-64 `0012AB<bed>`) with one
/// SpO2 reading taken at `at`.
pub fn spo2_message(
    bed: usize,
    control: &str,
    spo2: u32,
    at: chrono::DateTime<chrono::Utc>,
) -> String {
    let eui = format!("0012AB{bed:010X}");
    let ts = at.format("%Y%m%d%H%M%S+0000");
    [
        format!("MSH|^~\\&|SIM_MON^{eui}^EUI-64|ICU_SIM|ICU_GW|HOSP|{ts}||ORU^R01^ORU_R01|{control}|P|2.6|||AL|NE"),
        format!("PID|||SIM000{bed}^^^HOSP^MR"),
        format!("OBR|1|X|X|182777000^monitoring of patient^SCT|||{ts}"),
        format!("OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||{eui}^^{eui}^EUI-64"),
        format!("OBX|2|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|{spo2}|262688^MDC_DIM_PERCENT^MDC|90-100||||R|||{ts}"),
    ]
    .join("\r")
}

/// MSA-1 of an ACK (`AA`, `AE`, `AR`), empty when it has none.
pub fn msa_code(ack: &str) -> &str {
    ack.split('\r')
        .find(|s| s.starts_with("MSA|"))
        .and_then(|s| s.split('|').nth(1))
        .unwrap_or("")
}
