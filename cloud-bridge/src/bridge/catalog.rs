//! The bridge's knowledge of each device for `icu.devices` (see `devices.rs`): its
//! description and what of it was delivered. A module of its own so that the worker's state
//! and the delivery code import it, not each other.

use std::collections::HashMap;

use crate::fhir::DeviceDescription;

/// One device's description, and the version last delivered.
#[derive(Debug, Default)]
pub(super) struct DeviceEntry {
    pub(super) description: DeviceDescription,
    pub(super) bed: String,
    /// The receive time of the newest reading that changed the description.
    pub(super) changed_us: i64,
    /// The description's version, computed when it changes.
    pub(super) version: String,
    pub(super) delivered_version: Option<String>,
}

/// What the bridge knows of every device (see the module docs).
pub(super) type DeviceCatalog = HashMap<String, DeviceEntry>;
