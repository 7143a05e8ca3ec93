//! The observation topic scheme: `icu/<gateway_id>/bed/<bed_id>/device/<device_id>/obs/<format>`.

use std::fmt;

/// How an observation payload is encoded, chosen by the last topic level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    /// `.../obs/json`: the JSON document described in the module docs.
    Json,
    /// `.../obs/pb`: an encoded [`super::MqttBatch`] (protobuf).
    Protobuf,
}

impl PayloadFormat {
    /// The topic suffix: `json` or `pb`.
    pub fn suffix(self) -> &'static str {
        match self {
            PayloadFormat::Json => "json",
            PayloadFormat::Protobuf => "pb",
        }
    }
}

impl fmt::Display for PayloadFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

/// A parsed observation topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObsTopic {
    pub gateway_id: String,
    pub bed_id: String,
    pub device_id: String,
    pub format: PayloadFormat,
}

/// Why a topic is not an observation topic of this gateway. Each message says what to fix on
/// the publishing device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error(
        "topic '{topic}' is not of the form icu/<gateway_id>/bed/<bed_id>/device/<device_id>/obs/json (or /obs/pb)"
    )]
    Shape { topic: String },
    #[error("topic '{topic}' is for gateway '{found}', this gateway is '{expected}'")]
    OtherGateway {
        topic: String,
        found: String,
        expected: String,
    },
    #[error(
        "topic '{topic}' ends in '{suffix}': the last level must be 'json' or 'pb' (the payload encoding)"
    )]
    UnknownFormat { topic: String, suffix: String },
    #[error(
        "{what} '{value}' cannot be a topic level: it must be non-empty and contain no '/', '+', '#' or NUL"
    )]
    BadLevel { what: &'static str, value: String },
}

/// The subscription filter of a gateway: `icu/<gateway_id>/bed/+/device/+/obs/#`.
pub fn subscription_filter(gateway_id: &str) -> String {
    format!("icu/{gateway_id}/bed/+/device/+/obs/#")
}

/// Whether `value` can be one topic level (and not a wildcard).
pub(crate) fn check_level(what: &'static str, value: &str) -> Result<(), TopicError> {
    if value.is_empty() || value.contains(['/', '+', '#', '\0']) {
        return Err(TopicError::BadLevel {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

impl ObsTopic {
    /// Builds the topic of a device, checking that every id can be a topic level.
    pub fn new(
        gateway_id: &str,
        bed_id: &str,
        device_id: &str,
        format: PayloadFormat,
    ) -> Result<Self, TopicError> {
        check_level("gateway id", gateway_id)?;
        check_level("bed id", bed_id)?;
        check_level("device id", device_id)?;
        Ok(Self {
            gateway_id: gateway_id.to_owned(),
            bed_id: bed_id.to_owned(),
            device_id: device_id.to_owned(),
            format,
        })
    }

    /// Parses `topic` and checks it is for `gateway_id`. Whether the device id is a configured
    /// device (and sits in that bed) is for the caller, which holds the device list.
    pub fn parse(topic: &str, gateway_id: &str) -> Result<Self, TopicError> {
        let shape = || TopicError::Shape {
            topic: topic.to_owned(),
        };
        let levels: Vec<&str> = topic.split('/').collect();
        let [icu, gw, bed, bed_id, device, device_id, obs, suffix] = levels.as_slice() else {
            return Err(shape());
        };
        if *icu != "icu" || *bed != "bed" || *device != "device" || *obs != "obs" {
            return Err(shape());
        }
        if [gw, bed_id, device_id]
            .iter()
            .any(|l| check_level("level", l).is_err())
        {
            return Err(shape());
        }
        if *gw != gateway_id {
            return Err(TopicError::OtherGateway {
                topic: topic.to_owned(),
                found: (*gw).to_owned(),
                expected: gateway_id.to_owned(),
            });
        }
        let format = match *suffix {
            "json" => PayloadFormat::Json,
            "pb" => PayloadFormat::Protobuf,
            other => {
                return Err(TopicError::UnknownFormat {
                    topic: topic.to_owned(),
                    suffix: other.to_owned(),
                })
            }
        };
        Ok(Self {
            gateway_id: (*gw).to_owned(),
            bed_id: (*bed_id).to_owned(),
            device_id: (*device_id).to_owned(),
            format,
        })
    }
}

impl fmt::Display for ObsTopic {
    /// The topic string, `icu/<gw>/bed/<bed>/device/<dev>/obs/<json|pb>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "icu/{}/bed/{}/device/{}/obs/{}",
            self.gateway_id, self.bed_id, self.device_id, self.format
        )
    }
}
