//! FHIR R4 Device and DeviceMetric resources of a device, as the PoCD guide models a
//! point-of-care device (for `icu.devices`): what the Observations' `device` and (when
//! unassociated) `subject` references point to.
//!
//! A [`DeviceDescription`] is learned from the device's observations (the bridge keeps one per
//! device, see `bridge/devices.rs`); [`devices_bundle`] writes it as one `collection` Bundle:
//! - the **MDS** Device `Device/<gateway>-<device>` (profile MdsDevice): identifiers the
//!   gateway's device id and, when the device sent one (OBX-18 / MSH-3), its EUI-64 under the
//!   IEEE 11073 system `urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680` (an equipment id that is
//!   no EUI-64, a serial device's serial number, is `serialNumber` and an identifier under the
//!   gateway's system); the device name; the MDS
//!   type when the device reported an `MDC_DEV_*_MDS` code, else the type's text;
//! - a **VMD** Device per `MDS.VMD` prefix of the containment ids and a **channel** Device per
//!   `MDS.VMD.CHAN` prefix (profiles VmdDevice, ChannelDevice), each with its `parent`;
//! - a **DeviceMetric** per metric (containment id and MDC code; profile NumericDeviceMetric):
//!   `type` (MDC), `unit` (UCUM), `source` the MDS, `parent` its channel (or the MDS),
//!   `category` measurement, and the device's current alarm limits in the extension
//!   `alarm-limits` (a Range; R4's DeviceMetric has no reference range).
//!
//! Deterministic: the same description gives the same bytes; `meta.versionId` is the
//! description's version ([`DeviceDescription::version`]), so a consumer keeps the newest.

use std::collections::{BTreeMap, BTreeSet};

use icu_protos::v1::Observation;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::common::{fhir_id, instant_from_us, non_empty, FhirContext, MDC_SYSTEM, UCUM_SYSTEM};
use crate::error::BridgeError;
use crate::Terminology;

/// IEEE 11073 system of EUI-64 device identifiers (as the PoCD guide's examples use it).
pub const EUI64_SYSTEM: &str = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680";

const MDS_PROFILE: &str = "http://hl7.org/fhir/uv/pocd/StructureDefinition/MdsDevice";
const VMD_PROFILE: &str = "http://hl7.org/fhir/uv/pocd/StructureDefinition/VmdDevice";
const CHANNEL_PROFILE: &str = "http://hl7.org/fhir/uv/pocd/StructureDefinition/ChannelDevice";
const METRIC_PROFILE: &str = "http://hl7.org/fhir/uv/pocd/StructureDefinition/NumericDeviceMetric";

/// What one metric of a device is, as last reported.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricInfo {
    pub refid: String,
    pub ucum: String,
    pub limit_low: Option<f64>,
    pub limit_high: Option<f64>,
}

/// What the gateway knows of one device's structure, from its observations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceDescription {
    /// The EUI-64 (or other equipment id) the device last sent; empty when none.
    pub equipment_id: String,
    /// The MDS type, when the device reported an `MDC_DEV_*_MDS` code.
    pub mds_type: Option<(u32, String)>,
    /// By containment id, then MDC code.
    pub metrics: BTreeMap<String, BTreeMap<u32, MetricInfo>>,
}

impl DeviceDescription {
    /// Takes in what `obs` says about the device; true when the description changed.
    pub fn observe(&mut self, obs: &Observation, terminology: &Terminology) -> bool {
        let term = terminology.by_mdc(obs.mdc_code);
        let refid = non_empty(&obs.mdc_refid)
            .or_else(|| term.map(|t| t.refid.as_str()).and_then(non_empty))
            .unwrap_or_default();
        let mut changed = false;
        if let Some(eui) = non_empty(&obs.equipment_id) {
            if eui != self.equipment_id {
                self.equipment_id = eui.to_owned();
                changed = true;
            }
        }
        if refid.starts_with("MDC_DEV_") && refid.ends_with("_MDS") {
            let mds = Some((obs.mdc_code, refid.to_owned()));
            if self.mds_type != mds {
                self.mds_type = mds;
                changed = true;
            }
            return changed;
        }
        let ucum = non_empty(&obs.unit_ucum)
            .or_else(|| term.map(|t| t.ucum.as_str()).and_then(non_empty))
            .unwrap_or_default();
        let (low, high) = (
            obs.limit_low.filter(|v| v.is_finite()),
            obs.limit_high.filter(|v| v.is_finite()),
        );
        // The hot path (nothing changed) allocates nothing.
        let containment = obs.containment_id.trim();
        let same = self
            .metrics
            .get(containment)
            .and_then(|m| m.get(&obs.mdc_code))
            .is_some_and(|old| {
                old.refid == refid
                    && old.ucum == ucum
                    && old.limit_low == low
                    && old.limit_high == high
            });
        if same {
            return changed;
        }
        self.metrics
            .entry(containment.to_owned())
            .or_default()
            .insert(
                obs.mdc_code,
                MetricInfo {
                    refid: refid.to_owned(),
                    ucum: ucum.to_owned(),
                    limit_low: low,
                    limit_high: high,
                },
            );
        true
    }

    /// Every metric as ((containment id, MDC code), what it is), in order.
    pub fn each_metric(&self) -> impl Iterator<Item = ((&str, u32), &MetricInfo)> {
        self.metrics.iter().flat_map(|(c, m)| {
            m.iter()
                .map(move |(code, info)| ((c.as_str(), *code), info))
        })
    }

    /// A short, stable version of the description (hex of its SHA-256): equal descriptions
    /// have equal versions.
    pub fn version(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.equipment_id.as_bytes());
        h.update([0]);
        if let Some((code, refid)) = &self.mds_type {
            h.update(code.to_be_bytes());
            h.update(refid.as_bytes());
        }
        h.update([0]);
        for ((containment, code), m) in self.each_metric() {
            h.update(containment.as_bytes());
            h.update([0]);
            h.update(code.to_be_bytes());
            h.update(m.refid.as_bytes());
            h.update([0]);
            h.update(m.ucum.as_bytes());
            h.update([0]);
            for limit in [m.limit_low, m.limit_high] {
                match limit {
                    Some(v) => h.update(v.to_be_bytes()),
                    None => h.update([0xff; 8]),
                }
            }
        }
        h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The id of the DeviceMetric of metric `mdc_code` at `containment` of `device_id`.
pub fn device_metric_id(
    cx: &FhirContext,
    device_id: &str,
    containment: &str,
    mdc_code: u32,
) -> String {
    fhir_id(&[
        &cx.gateway_id,
        device_id,
        "metric",
        containment.trim(),
        &mdc_code.to_string(),
    ])
}

fn device_ref(id: &str) -> Value {
    json!({ "reference": format!("Device/{id}") })
}

/// The `Device` ids of the VMD and the channel of a containment id `MDS.VMD.CHAN.METRIC`.
fn vmd_and_channel(containment: &str) -> (Option<String>, Option<String>) {
    let parts: Vec<&str> = containment.trim().split('.').collect();
    let vmd = (parts.len() >= 2 && parts[..2].iter().all(|p| !p.is_empty()))
        .then(|| parts[..2].join("."));
    let chan = (parts.len() >= 3 && parts[..3].iter().all(|p| !p.is_empty()))
        .then(|| parts[..3].join("."));
    (vmd, chan)
}

/// The Bundle (type `collection`, JSON bytes) of `device_id`'s Device and DeviceMetric
/// resources as `description` has them, at `time_us` (the receive time of the newest reading
/// that changed it).
pub fn devices_bundle(
    cx: &FhirContext,
    device_id: &str,
    description: &DeviceDescription,
    time_us: i64,
) -> Result<Vec<u8>, BridgeError> {
    let fail = |reason: String| BridgeError::FhirMapping {
        device_id: device_id.to_owned(),
        seq: 0,
        reason,
    };
    let time = instant_from_us(time_us)
        .ok_or_else(|| fail(format!("time {time_us} us is out of range")))?;
    let time = serde_json::to_value(time).map_err(|e| fail(e.to_string()))?;
    let version = description.version();
    let gateway_id = cx.gateway_id.as_str();
    let mds_id = fhir_id(&[gateway_id, device_id]);
    let meta =
        |profile: &str| json!({"versionId": version, "lastUpdated": time, "profile": [profile]});
    let mut entries = Vec::new();
    let mut push = |resource: Value| {
        let kind = resource["resourceType"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let id = resource["id"].as_str().unwrap_or_default().to_owned();
        entries.push(json!({
            "fullUrl": format!("urn:uuid:{}", super::common::uuid_from(&["device", gateway_id, &kind, &id])),
            "resource": resource,
        }));
    };

    let mut identifiers = vec![json!({
        "system": format!("urn:icu-gateway:{gateway_id}:device-id"),
        "value": device_id,
    })];
    let eui = &description.equipment_id;
    let is_eui64 = eui.len() == 16 && eui.bytes().all(|b| b.is_ascii_hexdigit());
    if is_eui64 {
        identifiers.push(json!({
            "type": {"text": "EUI-64"},
            "system": EUI64_SYSTEM,
            "value": eui,
        }));
    } else if !eui.is_empty() {
        // Not an EUI-64 (a serial device's serial number, say): the gateway's own system.
        identifiers.push(json!({
            "system": format!("urn:icu-gateway:{gateway_id}:equipment-id"),
            "value": eui,
        }));
    }
    let mds_type = match &description.mds_type {
        Some((code, refid)) => json!({
            "coding": [{"system": MDC_SYSTEM, "code": code.to_string(), "display": refid}],
        }),
        None => json!({"text": "medical device system"}),
    };
    let mut mds = json!({
        "resourceType": "Device",
        "id": mds_id,
        "meta": meta(MDS_PROFILE),
        "identifier": identifiers,
        "status": "active",
        "deviceName": [{"name": device_id, "type": "user-friendly-name"}],
        "type": mds_type,
    });
    if !eui.is_empty() && !is_eui64 {
        mds["serialNumber"] = json!(eui);
    }
    push(mds);

    let mut vmds = BTreeSet::new();
    let mut channels = BTreeSet::new();
    for containment in description.metrics.keys() {
        let (vmd, chan) = vmd_and_channel(containment);
        if let Some(v) = vmd {
            vmds.insert(v);
        }
        if let Some(c) = chan {
            channels.insert(c);
        }
    }
    let vmd_id = |v: &str| fhir_id(&[gateway_id, device_id, "vmd", v]);
    let chan_id = |c: &str| fhir_id(&[gateway_id, device_id, "chan", c]);
    for v in &vmds {
        push(json!({
            "resourceType": "Device",
            "id": vmd_id(v),
            "meta": meta(VMD_PROFILE),
            "identifier": [{"system": format!("urn:icu-gateway:{gateway_id}:{device_id}:containment"), "value": v}],
            "status": "active",
            "type": {"text": format!("VMD {v}")},
            "parent": device_ref(&mds_id),
        }));
    }
    for c in &channels {
        let (vmd, _) = vmd_and_channel(c);
        let parent = vmd.map(|v| vmd_id(&v)).unwrap_or_else(|| mds_id.clone());
        push(json!({
            "resourceType": "Device",
            "id": chan_id(c),
            "meta": meta(CHANNEL_PROFILE),
            "identifier": [{"system": format!("urn:icu-gateway:{gateway_id}:{device_id}:containment"), "value": c}],
            "status": "active",
            "type": {"text": format!("channel {c}")},
            "parent": device_ref(&parent),
        }));
    }
    for ((containment, code), m) in description.each_metric() {
        let mut metric = Map::new();
        metric.insert("resourceType".into(), json!("DeviceMetric"));
        metric.insert(
            "id".into(),
            json!(device_metric_id(cx, device_id, containment, code)),
        );
        metric.insert("meta".into(), meta(METRIC_PROFILE));
        if m.limit_low.is_some() || m.limit_high.is_some() {
            let quantity = |v: f64| {
                let mut q = json!({"value": v});
                if !m.ucum.is_empty() {
                    q["unit"] = json!(m.ucum);
                    q["system"] = json!(UCUM_SYSTEM);
                    q["code"] = json!(m.ucum);
                }
                q
            };
            let mut range = Map::new();
            if let Some(low) = m.limit_low {
                range.insert("low".into(), quantity(low));
            }
            if let Some(high) = m.limit_high {
                range.insert("high".into(), quantity(high));
            }
            metric.insert(
                "extension".into(),
                json!([{"url": cx.extension_url("alarm-limits"), "valueRange": range}]),
            );
        }
        if !containment.is_empty() {
            metric.insert(
                "identifier".into(),
                json!([{"system": format!("urn:icu-gateway:{gateway_id}:{device_id}:containment"), "value": containment}]),
            );
        }
        let mut coding = json!({"system": MDC_SYSTEM, "code": code.to_string()});
        if !m.refid.is_empty() {
            coding["display"] = json!(m.refid);
        }
        metric.insert("type".into(), json!({"coding": [coding]}));
        if !m.ucum.is_empty() {
            metric.insert(
                "unit".into(),
                json!({"coding": [{"system": UCUM_SYSTEM, "code": m.ucum}]}),
            );
        }
        metric.insert("source".into(), device_ref(&mds_id));
        let (_, chan) = vmd_and_channel(containment);
        let parent = chan.map(|c| chan_id(&c)).unwrap_or_else(|| mds_id.clone());
        metric.insert("parent".into(), device_ref(&parent));
        metric.insert("operationalStatus".into(), json!("on"));
        metric.insert("category".into(), json!("measurement"));
        push(Value::Object(metric));
    }

    let bundle = json!({
        "resourceType": "Bundle",
        "id": fhir_id(&[gateway_id, device_id, "devices", &version]),
        "identifier": {"system": format!("urn:icu-gateway:{gateway_id}:{device_id}:devices"), "value": version},
        "type": "collection",
        "timestamp": time,
        "entry": entries,
    });
    serde_json::to_vec(&bundle).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(mdc: u32, containment: &str, low: Option<f64>) -> Observation {
        Observation {
            device_id: "mon-01".into(),
            mdc_code: mdc,
            containment_id: containment.into(),
            equipment_id: "0012AB0000000001".into(),
            limit_low: low,
            limit_high: Some(100.0),
            ..Default::default()
        }
    }

    #[test]
    fn a_description_changes_only_when_the_device_does() {
        let t = Terminology::builtin();
        let mut d = DeviceDescription::default();
        assert!(d.observe(&reading(150456, "1.2.1.1", Some(90.0)), &t));
        let v1 = d.version();
        assert!(
            !d.observe(&reading(150456, "1.2.1.1", Some(90.0)), &t),
            "same again"
        );
        assert_eq!(d.version(), v1);
        assert!(
            d.observe(&reading(150456, "1.2.1.1", Some(88.0)), &t),
            "limit changed"
        );
        assert!(
            d.observe(&reading(147842, "1.1.1.1", None), &t),
            "a new metric"
        );
        assert_ne!(d.version(), v1);
        assert_eq!(d.each_metric().count(), 2);
    }

    #[test]
    fn the_bundle_has_the_mds_vmds_channels_and_metrics_with_their_links() {
        let t = Terminology::builtin();
        let cx = FhirContext::with_default_base("icu-north");
        let mut d = DeviceDescription::default();
        d.observe(&reading(150456, "1.2.1.1", Some(90.0)), &t);
        d.observe(&reading(147842, "1.1.1.1", None), &t);
        let bytes = devices_bundle(&cx, "mon-01", &d, 1_700_000_000_000_000).unwrap();
        assert_eq!(
            bytes,
            devices_bundle(&cx, "mon-01", &d, 1_700_000_000_000_000).unwrap()
        );
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let resources: Vec<&Value> = v["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["resource"])
            .collect();
        let ids: Vec<&str> = resources
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            [
                "icu-north-mon-01",
                "icu-north-mon-01-vmd-1.1",
                "icu-north-mon-01-vmd-1.2",
                "icu-north-mon-01-chan-1.1.1",
                "icu-north-mon-01-chan-1.2.1",
                "icu-north-mon-01-metric-1.1.1.1-147842",
                "icu-north-mon-01-metric-1.2.1.1-150456",
            ]
        );
        let mds = resources[0];
        assert_eq!(mds["identifier"][1]["system"], EUI64_SYSTEM);
        assert_eq!(mds["identifier"][1]["value"], "0012AB0000000001");
        assert_eq!(
            resources[3]["parent"]["reference"],
            "Device/icu-north-mon-01-vmd-1.1"
        );
        let spo2 = resources[6];
        assert_eq!(spo2["type"]["coding"][0]["code"], "150456");
        assert_eq!(spo2["unit"]["coding"][0]["code"], "%");
        assert_eq!(
            spo2["parent"]["reference"],
            "Device/icu-north-mon-01-chan-1.2.1"
        );
        assert_eq!(spo2["source"]["reference"], "Device/icu-north-mon-01");
        assert_eq!(spo2["extension"][0]["valueRange"]["low"]["value"], 90.0);
        assert_eq!(
            spo2["id"],
            device_metric_id(&cx, "mon-01", "1.2.1.1", 150456).as_str()
        );
    }
}
