//! Simulated ICU beds and devices that speak the real protocols over real transports.
//!
//! Owns: plausible, deterministic physiology per simulated patient ([`physiology`]), PCD-01
//! monitor messages built from it ([`pcd01`]), and the runner that sends them over MLLP/TCP and
//! checks every ACK ([`run`]). Guarantees: the same seed gives the same values; every message
//! sent is accounted for in the report as AA, AE, AR or unanswered, and the observations of
//! AA-acknowledged messages are listed exactly, so a test can compare them with what arrived.

pub mod icu;
pub mod pcd01;
pub mod physiology;
pub mod run;
pub mod serial;
pub mod ventilator;
pub mod waveform;

/// One simulated bed with its monitor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SimBed {
    /// 1-based bed number.
    pub index: usize,
    /// Bed id as the gateway config names it, e.g. `bed-01`.
    pub bed_id: String,
    /// Device id the gateway config gives the monitor, e.g. `mon-01`.
    pub device_id: String,
    /// The monitor's EUI-64 (MSH-3.2 and OBX-18), which the gateway matches on.
    pub monitor_eui64: String,
}

/// The beds of a simulated ICU of `n` beds.
pub fn beds(n: usize) -> Vec<SimBed> {
    (1..=n)
        .map(|i| SimBed {
            index: i,
            bed_id: format!("bed-{i:02}"),
            device_id: format!("mon-{i:02}"),
            monitor_eui64: format!("0012AB{i:010X}"),
        })
        .collect()
}

/// The `[[beds]]` and `[[devices]]` config blocks a gateway needs for these beds.
pub fn gateway_config_blocks(beds: &[SimBed]) -> String {
    let mut s = String::new();
    for b in beds {
        s.push_str(&format!(
            "[[beds]]\nid = \"{}\"\nlabel = \"Bed {}\"\n\n",
            b.bed_id, b.index
        ));
    }
    for b in beds {
        s.push_str(&format!(
            "[[devices]]\nid = \"{}\"\nbed = \"{}\"\nprotocol = \"pcd01\"\nmatch = \"{}\"\n\n",
            b.device_id, b.bed_id, b.monitor_eui64
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beds_have_distinct_stable_ids() {
        let b = beds(12);
        assert_eq!(b[0].bed_id, "bed-01");
        assert_eq!(b[11].monitor_eui64, "0012AB000000000C");
        assert_eq!(b[11].monitor_eui64.len(), 16);
        let cfg = gateway_config_blocks(&b[..1]);
        assert!(cfg.contains("match = \"0012AB0000000001\""), "{cfg}");
    }
}
