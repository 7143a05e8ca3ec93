//! `icu.devices`: the FHIR Device and DeviceMetric resources of every device (PoCD), so the
//! Observations' `device` (a DeviceMetric) and unassociated `subject` (the MDS Device)
//! references resolve on a FHIR server.
//!
//! Guarantees:
//! - **Learned from what was delivered.** A device's description ([`DeviceDescription`]: its
//!   EUI-64, MDS type, metrics with unit and alarm limits) is updated from each observation
//!   bundle once that bundle's FHIR record is delivered, so a description never names a reading
//!   the backbone does not have.
//! - **Sent when new and when changed.** A description whose version differs from the last one
//!   delivered for the device is sent (key: the device id; signed like every record; headers
//!   `icu-stream: devices`, `ce_type: org.icu-gateway.devices.v1`); a failed delivery is
//!   retried every cycle until it goes through. After a restart each device's description is
//!   sent once more (the same resource ids: an update, never a duplicate resource).
//! - **Bounded.** One description per configured device that has sent readings (the devices
//!   are the config's), each bounded by the device's metrics.

use futures::future::join_all;
use icu_outbox::Stream;
use rdkafka::producer::FutureRecord;
use tracing::{debug, warn};

use super::catalog::DeviceEntry;
use super::mapper::{DeliveryError, SignedRecord};
use super::plan::PlannedBundle;
use super::{owned_headers, Worker};
use crate::fhir::devices_bundle;
use crate::headers;

impl Worker {
    /// Learns from the delivered observation bundles, then sends every description that
    /// changed since it was last delivered.
    pub(super) async fn deliver_devices(
        &mut self,
        bundles: &[PlannedBundle],
        delivered: &[Result<(), DeliveryError>],
    ) {
        for (bundle, ok) in bundles.iter().zip(delivered) {
            if ok.is_err() || bundle.stream != Stream::Observations {
                continue;
            }
            let entry = self.devices.entry(bundle.device_id.clone()).or_default();
            entry.bed.clone_from(&bundle.bed);
            let mut changed = false;
            for obs in &bundle.observations {
                if entry.description.observe(obs, &self.mapper.terminology) {
                    entry.changed_us = entry.changed_us.max(obs.receive_time_us);
                    changed = true;
                }
            }
            if changed {
                entry.version = entry.description.version();
            }
        }
        let mut records: Vec<(String, String, SignedRecord)> = Vec::new();
        for (device_id, entry) in &self.devices {
            if entry.version.is_empty()
                || entry.delivered_version.as_deref() == Some(entry.version.as_str())
            {
                continue;
            }
            match self.devices_record(device_id, entry, &entry.version) {
                Ok(record) => records.push((device_id.clone(), entry.version.clone(), record)),
                Err(e) => {
                    warn!(%device_id, error = %e, "cannot map the device's FHIR Device resources")
                }
            }
        }
        if records.is_empty() {
            return;
        }
        let topic = self.config.topic_devices.clone();
        let sends = records.iter().map(|(_, _, r)| {
            let record_headers = owned_headers(&r.headers);
            let record = FutureRecord::to(&topic)
                .key(r.key.as_str())
                .payload(r.value.as_slice())
                .headers(record_headers);
            let sent = self.producer.send_result(record).map_err(|(e, _)| e);
            async move {
                match sent {
                    Err(e) => Err(e.to_string()),
                    Ok(future) => match future.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((e, _))) => Err(e.to_string()),
                        Err(_) => Err("delivery report lost".to_owned()),
                    },
                }
            }
        });
        let results = join_all(sends).await;
        for ((device_id, version, _), result) in records.into_iter().zip(results) {
            match result {
                Ok(()) => {
                    debug!(%device_id, %version, "device resources delivered");
                    if let Some(entry) = self.devices.get_mut(&device_id) {
                        entry.delivered_version = Some(version);
                    }
                }
                Err(e) => {
                    warn!(%device_id, %topic, error = %e, "device resources not delivered; sent again next cycle")
                }
            }
        }
    }

    fn devices_record(
        &self,
        device_id: &str,
        entry: &DeviceEntry,
        version: &str,
    ) -> Result<SignedRecord, crate::error::BridgeError> {
        let cx = &self.mapper.fhir;
        let value = devices_bundle(cx, device_id, &entry.description, entry.changed_us)?;
        let key = self.mapper.key.active();
        let gateway_id = cx.gateway_id.clone();
        let mut record_headers = vec![
            (headers::STREAM, "devices".to_owned()),
            (
                headers::CONTENT_TYPE,
                headers::CONTENT_TYPE_FHIR_JSON.to_owned(),
            ),
            (headers::SCHEMA_VERSION, headers::SCHEMA_FHIR_V2.to_owned()),
            (headers::GATEWAY_ID, gateway_id.clone()),
            (headers::DEVICE_ID, device_id.to_owned()),
            (headers::BED, entry.bed.clone()),
            (headers::KEY_ID, key.key_id().to_owned()),
            (
                headers::CE_SPECVERSION,
                headers::CE_SPECVERSION_1_0.to_owned(),
            ),
            (
                headers::CE_ID,
                format!("{gateway_id}:devices:{device_id}:{version}"),
            ),
            (
                headers::CE_SOURCE,
                format!("urn:icu-gateway:{gateway_id}:{device_id}"),
            ),
            (headers::CE_TYPE, "org.icu-gateway.devices.v1".to_owned()),
        ];
        if let Some(t) = chrono::DateTime::from_timestamp_micros(entry.changed_us) {
            record_headers.push((
                headers::CE_TIME,
                t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            ));
        }
        Ok(self.mapper.seal(&key, device_id, record_headers, value))
    }
}
