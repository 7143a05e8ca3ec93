//! Serial line settings (port, baud, data bits, parity, stop bits): each serial protocol's usual
//! line ([`LineDefaults`], e.g. `masimo::LINE`, `medibus::LINE`) and the one check of a line
//! that the gateway's config uses.

/// A serial protocol's usual line settings: what a device ships with, used where the config
/// leaves a setting out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineDefaults {
    pub baud: u32,
    pub data_bits: u8,
    /// `"none"`, `"even"` or `"odd"`.
    pub parity: &'static str,
    pub stop_bits: u8,
    /// The usual baud rate as the baud message names it, e.g. "Masimo: 9600".
    pub usual: &'static str,
}

/// Every problem with these line settings, as `(field, message)`; `usual` names the protocol's
/// usual setting for the baud message, e.g. "Masimo: 9600".
pub fn line_problems(
    port: &str,
    baud: u32,
    data_bits: u8,
    parity: &str,
    stop_bits: u8,
    usual: &str,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if port.trim().is_empty() {
        out.push((
            "port",
            "must name a serial device, e.g. /dev/ttyUSB0".to_owned(),
        ));
    }
    if !(300..=921_600).contains(&baud) {
        out.push((
            "baud",
            format!("{baud} is not a serial baud rate ({usual})"),
        ));
    }
    if !matches!(data_bits, 7 | 8) {
        out.push(("data_bits", format!("must be 7 or 8, found {data_bits}")));
    }
    if !matches!(parity, "none" | "even" | "odd") {
        out.push((
            "parity",
            format!("must be none, even or odd, found '{parity}'"),
        ));
    }
    if !matches!(stop_bits, 1 | 2) {
        out.push(("stop_bits", format!("must be 1 or 2, found {stop_bits}")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_setting_is_named() {
        assert!(line_problems("/dev/ttyUSB0", 9600, 8, "none", 1, "x").is_empty());
        let fields: Vec<&str> = line_problems(" ", 12, 6, "mark", 3, "Masimo: 9600")
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(fields, ["port", "baud", "data_bits", "parity", "stop_bits"]);
    }
}
