//! The one validation step from the file as written ([`RawConfig`]) to [`Config`]: every
//! problem at once, each with its field path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::raw::*;
use super::{Bed, ClockPolicy, Config, Device, FieldProblem, Protocol};

/// Parses an allow-list, reporting each bad entry as `field[index]`.
fn allow_list(
    field: &str,
    entries: &[String],
    problem: &mut impl FnMut(&str, String),
) -> crate::allow::AllowList {
    crate::allow::AllowList::parse(entries).unwrap_or_else(|bad| {
        for (j, message) in bad {
            problem(&format!("{field}[{j}]"), message);
        }
        crate::allow::AllowList::default()
    })
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl RawConfig {
    /// Turns the raw file into a [`Config`], or lists every problem with its field path.
    /// Relative `data_dir` is resolved against `base` (the config file's folder).
    pub fn validate(self, base: &Path) -> Result<Config, Vec<FieldProblem>> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| {
            problems.push(FieldProblem {
                field: field.to_owned(),
                message,
            })
        };

        if !valid_id(&self.gateway_id) {
            problem(
                "gateway_id",
                format!(
                    "'{}' must be 1-64 letters, digits, '-', '_' or '.'",
                    self.gateway_id
                ),
            );
        }
        let data_dir = if self.data_dir.is_absolute() {
            self.data_dir.clone()
        } else {
            base.join(&self.data_dir)
        };
        let in_data = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                data_dir.join(p)
            }
        };

        // Each component's own settings type, checked by its own rules.
        for (field, message) in self.store.problems() {
            problem(&format!("store.{field}"), message);
        }
        problems.extend(self.mllp.problems());
        let mut problem = |field: &str, message: String| {
            problems.push(FieldProblem {
                field: field.to_owned(),
                message,
            })
        };

        let mut addr = |field: &str, s: &str| -> SocketAddr {
            match s.parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    problem(
                        field,
                        format!("'{s}' is not an address like 127.0.0.1:2575"),
                    );
                    SocketAddr::from(([127, 0, 0, 1], 0))
                }
            }
        };
        let http_listen = addr("http.listen", &self.http.listen);
        for p in self.http.problems() {
            problem(&p.field, p.message);
        }
        let adt_allow_from = allow_list("adt.allow_from", &self.adt.allow_from, &mut problem);

        // The bridge's own settings type, checked by its own rules (one definition, one
        // validation), reported under the file's names.
        let kafka = self.kafka.as_ref().map(|k| {
            for (field, reason) in k.problems(&self.gateway_id) {
                problem(&format!("kafka.{field}"), reason);
            }
            k.bridge_config(&self.gateway_id)
        });

        // The transport's own settings type, checked by its own rules.
        let mqtt = self.mqtt.clone().map(|m| {
            let (cfg, found) = crate::mqtt::settings(m, &self.gateway_id);
            problems.extend(found);
            cfg
        });

        let alarms = self.alarms.clone().unwrap_or_default();
        if let Some(am) = &self.alarm_manager {
            problems.extend(am.problems());
        }
        problems.extend(alarms.validate("alarms"));
        let mut problem = |field: &str, message: String| {
            problems.push(FieldProblem {
                field: field.to_owned(),
                message,
            })
        };

        let clock = match self.clock.as_str() {
            "auto" => ClockPolicy::Auto,
            "synced" => ClockPolicy::Synced,
            "unsynced" => ClockPolicy::Unsynced,
            other => {
                problem(
                    "clock",
                    format!("'{other}' is not one of \"auto\", \"synced\", \"unsynced\""),
                );
                ClockPolicy::Auto
            }
        };

        let mut beds = Vec::new();
        let mut bed_ids = BTreeMap::new();
        for (i, b) in self.beds.iter().enumerate() {
            if !valid_id(&b.id) {
                problem(
                    &format!("beds[{i}].id"),
                    format!("'{}' must be 1-64 letters, digits, '-', '_' or '.'", b.id),
                );
            }
            if let Some(prev) = bed_ids.insert(b.id.clone(), i) {
                problem(
                    &format!("beds[{i}].id"),
                    format!("'{}' is already used by beds[{prev}]", b.id),
                );
            }
            if let Some(loc) = &b.adt_location {
                if loc.split('^').count() != 3 || loc.split('^').any(str::is_empty) {
                    problem(
                        &format!("beds[{i}].adt_location"),
                        format!("'{loc}' is not PointOfCare^Room^Bed as in PV1-3, e.g. ICU1^101^A"),
                    );
                }
            }
            beds.push(Bed {
                id: b.id.clone(),
                label: b.label.clone().unwrap_or_else(|| b.id.clone()),
                adt_location: b.adt_location.clone(),
            });
        }

        let mut devices = Vec::new();
        let mut device_ids = BTreeMap::new();
        let mut match_ids = BTreeMap::new();
        let mut ports = BTreeMap::new();
        for (i, d) in self.devices.iter().enumerate() {
            if !valid_id(&d.id) {
                problem(
                    &format!("devices[{i}].id"),
                    format!("'{}' must be 1-64 letters, digits, '-', '_' or '.'", d.id),
                );
            }
            if let Some(prev) = device_ids.insert(d.id.clone(), i) {
                problem(
                    &format!("devices[{i}].id"),
                    format!("'{}' is already used by devices[{prev}]", d.id),
                );
            }
            if !bed_ids.contains_key(&d.bed) {
                problem(
                    &format!("devices[{i}].bed"),
                    format!("'{}' is not one of the configured beds", d.bed),
                );
            }
            let protocol = match d.protocol.as_str() {
                "pcd01" => Protocol::Pcd01,
                "masimo" => Protocol::Masimo,
                "medibus" => Protocol::Medibus,
                "mqtt" => Protocol::Mqtt,
                other => {
                    problem(
                        &format!("devices[{i}].protocol"),
                        format!(
                            "'{other}' is not a supported protocol (pcd01, masimo, medibus, mqtt)"
                        ),
                    );
                    Protocol::Pcd01
                }
            };
            let needs_match = protocol == Protocol::Pcd01;
            if protocol == Protocol::Mqtt && self.mqtt.is_none() {
                problem(
                    &format!("devices[{i}].protocol"),
                    "mqtt devices need an [mqtt] section naming the broker".into(),
                );
            }
            match (&d.match_id, protocol.is_serial()) {
                (None, false) if needs_match => problem(
                    &format!("devices[{i}].match"),
                    "is required for pcd01 devices (the EUI-64 or MSH-3.1 that identifies them)"
                        .into(),
                ),
                (None, false) => {}
                (Some(_), false) if !needs_match => problem(
                    &format!("devices[{i}].match"),
                    "is only for pcd01 devices; mqtt devices are identified by their topic".into(),
                ),
                (Some(m), false) if m.trim().is_empty() => {
                    problem(&format!("devices[{i}].match"), "must not be empty".into())
                }
                (Some(m), false) => {
                    if let Some(prev) = match_ids.insert(m.clone(), i) {
                        problem(
                            &format!("devices[{i}].match"),
                            format!("'{m}' already identifies devices[{prev}]"),
                        );
                    }
                }
                (Some(_), true) => problem(
                    &format!("devices[{i}].match"),
                    "is only for pcd01 devices; serial devices are identified by their port".into(),
                ),
                (None, true) => {}
            }
            let realtime = realtime_curves(i, d, protocol, &mut problem);
            let serial = match (&d.serial, protocol.is_serial()) {
                (None, true) => {
                    problem(
                        &format!("devices[{i}].serial"),
                        format!(
                            "is required for {} devices (port and line settings)",
                            d.protocol
                        ),
                    );
                    None
                }
                (Some(_), false) => {
                    problem(
                        &format!("devices[{i}].serial"),
                        "is only for serial devices (masimo, medibus)".into(),
                    );
                    None
                }
                (None, false) => None,
                (Some(sp), true) => {
                    // The protocol's usual line, from its driver.
                    let line = match protocol {
                        Protocol::Medibus => icu_drivers::medibus::LINE,
                        _ => icu_drivers::masimo::LINE,
                    };
                    let parity = sp.parity.clone().unwrap_or_else(|| line.parity.to_owned());
                    let data_bits = sp.data_bits.unwrap_or(line.data_bits);
                    let stop_bits = sp.stop_bits.unwrap_or(line.stop_bits);
                    let baud = sp.baud.unwrap_or(line.baud);
                    let usual = line.usual;
                    for (field, message) in icu_drivers::serial_line::line_problems(
                        &sp.port.to_string_lossy(),
                        baud,
                        data_bits,
                        &parity,
                        stop_bits,
                        usual,
                    ) {
                        problem(&format!("devices[{i}].serial.{field}"), message);
                    }
                    if let Some(prev) = ports.insert(sp.port.clone(), i) {
                        problem(
                            &format!("devices[{i}].serial.port"),
                            format!("{} is already used by devices[{prev}]", sp.port.display()),
                        );
                    }
                    Some(crate::serial::SerialSettings {
                        port: sp.port.clone(),
                        baud,
                        data_bits,
                        parity,
                        stop_bits,
                        realtime: realtime.clone(),
                    })
                }
            };
            if d.silent_after_s == 0 {
                problem(
                    &format!("devices[{i}].silent_after_s"),
                    "must be at least 1".into(),
                );
            }
            if !d.allow_from.is_empty() && protocol != Protocol::Pcd01 {
                problem(
                    &format!("devices[{i}].allow_from"),
                    "is only for pcd01 devices (senders on the MLLP listener)".into(),
                );
            }
            let allow_from = allow_list(
                &format!("devices[{i}].allow_from"),
                &d.allow_from,
                &mut problem,
            );
            devices.push(Device {
                id: d.id.clone(),
                bed: d.bed.clone(),
                protocol,
                match_id: d.match_id.clone(),
                serial,
                silent_after: Duration::from_secs(d.silent_after_s),
                allow_from,
            });
        }

        problems.extend(self.auth.problems());
        problems.extend(self.tracing.problems());
        problems.extend(self.waveforms.problems());
        let tls = self.tls.resolved(&data_dir);
        problems.extend(tls.problems());
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Config {
            gateway_id: self.gateway_id,
            store: self.store.config(in_data(&self.store.file)),
            mllp: self.mllp.config(),
            adt_allow_from,
            adt_cert_names: self.adt.cert_names.clone(),
            http_listen,
            http_limits: self.http.limits(),
            auth: self.auth.clone(),
            tls,
            source_path: std::path::PathBuf::new(),
            source_sha256: String::new(),
            key_file: in_data(&self.signing.key_file),
            kafka,
            mqtt,
            alarms,
            alarm_manager: self.alarm_manager,
            clock,
            tracing: self.tracing,
            waveforms: self.waveforms,
            beds,
            devices,
            data_dir,
        })
    }
}

/// The MEDIBUS realtime curves of `devices[i].realtime` (their Dräger codes, in stream order).
fn realtime_curves(
    i: usize,
    d: &RawDevice,
    protocol: Protocol,
    problem: &mut impl FnMut(&str, String),
) -> Vec<u8> {
    if d.realtime.is_empty() {
        return Vec::new();
    }
    let field = format!("devices[{i}].realtime");
    if protocol != Protocol::Medibus {
        problem(
            &field,
            "is only for medibus devices (Dräger realtime curves)".into(),
        );
        return Vec::new();
    }
    let mut codes: Vec<u8> = Vec::new();
    for (k, entry) in d.realtime.iter().enumerate() {
        match icu_drivers::medibus::curve_named(entry) {
            Some(c) if codes.contains(&c.code) => problem(
                &format!("{field}[{k}]"),
                format!("'{entry}' is listed twice"),
            ),
            Some(c) => codes.push(c.code),
            None => {
                let names: Vec<String> = icu_drivers::medibus::CURVES
                    .iter()
                    .map(|c| format!("{} ({:02X})", c.name, c.code))
                    .collect();
                problem(
                    &format!("{field}[{k}]"),
                    format!("'{entry}' is not a known curve: {}", names.join(", ")),
                );
            }
        }
    }
    codes
}
