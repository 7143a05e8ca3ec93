//! Serial ports: each serial device's port opened with its configured line settings, as the
//! gateway opens it (`serial::port_builder`, shared access), then closed. Nothing is written or
//! read; the line keeps the settings opening gave it, as after the gateway's own open. A port
//! another program holds exclusively is reported busy; the running gateway itself holds its
//! ports shared, so the probe can run beside it.

use std::path::Path;

use super::check::Check;
use crate::domain::{Device, SerialSettings};

/// `9600 8N1`.
pub fn line_text(s: &SerialSettings) -> String {
    s.line_text()
}

/// Opens device `index`'s port (blocking; run it off the async threads).
pub fn probe(index: usize, device: &Device, settings: &SerialSettings) -> Check {
    let port = &settings.port;
    let what = format!(
        "serial port {} ({}, {})",
        port.display(),
        device.id,
        line_text(settings)
    );
    let field = format!("devices[{index}].serial.port");
    if let Err(e) = std::fs::metadata(port) {
        let why = if e.kind() == std::io::ErrorKind::NotFound {
            "does not exist".to_owned()
        } else {
            format!("cannot be read: {e}")
        };
        return Check::fail(
            what,
            why,
            format!(
                "check the cable or USB adapter and {field} (ls -l /dev/serial/by-id/ lists the \
                 adapters plugged in)"
            ),
        );
    }
    if let Some(check) = permission(port, &what) {
        return check;
    }
    // Shared, as the running gateway holds its ports: never exclusive (TIOCEXCL would outlive
    // this open while the gateway keeps the port), so the probe can run beside the gateway.
    match crate::serial::port_builder(settings)
        .exclusive(false)
        .open()
    {
        Ok(opened) => {
            drop(opened);
            Check::ok(what)
        }
        Err(e) if busy(&e.to_string()) => Check::fail(
            what,
            format!("is busy: another program holds it exclusively ({e})"),
            format!(
                "stop that program (fuser -v {} names it), or check that no two devices share \
                 {field}",
                port.display()
            ),
        ),
        Err(e) => Check::fail(
            what,
            format!("cannot be opened with these line settings: {e}"),
            format!(
                "check {field} and the line settings devices[{index}].serial (baud, data_bits, \
                 parity, stop_bits) against the device's COM menu"
            ),
        ),
    }
}

/// A port this user may not read and write: the `dialout` hint.
fn permission(port: &Path, what: &str) -> Option<Check> {
    use nix::unistd::{access, AccessFlags};
    match access(port, AccessFlags::R_OK | AccessFlags::W_OK) {
        Err(nix::errno::Errno::EACCES | nix::errno::Errno::EPERM) => Some(Check::fail(
            what,
            "permission denied: this user may not read and write it",
            format!(
                "add the gateway's user to the group that owns the port (usually dialout: \
                 `usermod -aG dialout icu-gateway`, see ls -l {}), then log in again or \
                 restart the service",
                port.display()
            ),
        )),
        _ => None,
    }
}

/// An open refused because another program holds the port (EBUSY, or its exclusive lock).
fn busy(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("busy") || e.contains("lock")
}
