//! What an observation code is, for FHIR: its category, the FHIR R4 vital-signs profile it meets
//! (with the LOINC codings that profile requires), and how readings of one blood pressure
//! measurement become the 85354-9 panel.
//!
//! Classification is by the observation's LOINC code (from the message or the terminology
//! table) and MDC reference id, never by the value:
//! - **vital-signs**: heart rate (8867-4; 8889-8 by pulse oximetry also carries 8867-4), oxygen
//!   saturation (2708-6 and 59408-5, both, as the R4 `oxygensat` profile and the pulse-oximetry
//!   code require), respiratory rate (9279-1), body temperature (8310-5; core 8329-5 also
//!   carries 8310-5), body weight (29463-7) and height (8302-2), and the blood pressures
//!   (8480-6, 8462-4, 8478-0, which are members of the vital-signs value set and are profiled by
//!   the base `vitalsigns` profile).
//! - **therapy**: what a device delivers or is set to (infusion rates and volumes, drug dose and
//!   concentration, pump state, ventilator settings: an MDC reference id with `PUMP`, `FLUID`,
//!   `INFUS`, `DRUG` or `SETTING`).
//! - **procedure**: every other device measurement (ventilation mechanics, etCO2, CVP, PAP, ...).

use super::common::profile;

/// `Observation.category` code (observation-category code system) and its display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Category {
    VitalSigns,
    Therapy,
    Procedure,
}

impl Category {
    pub(crate) fn code(self) -> &'static str {
        match self {
            Category::VitalSigns => "vital-signs",
            Category::Therapy => "therapy",
            Category::Procedure => "procedure",
        }
    }

    pub(crate) fn display(self) -> &'static str {
        match self {
            Category::VitalSigns => "Vital Signs",
            Category::Therapy => "Therapy",
            Category::Procedure => "Procedure",
        }
    }
}

/// A reading's place among the vital signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Vital {
    /// The R4 vital-signs profile it meets when it has a patient and an effective time.
    pub(crate) profile: &'static str,
    /// LOINC codings `code` must carry for that profile, `(code, display)`, besides the
    /// reading's own LOINC code (written once when they are the same).
    pub(crate) loinc: &'static [(&'static str, &'static str)],
    /// The UCUM units the profile allows for `valueQuantity`.
    pub(crate) units: &'static [&'static str],
}

const HEART_RATE: Vital = Vital {
    profile: "http://hl7.org/fhir/StructureDefinition/heartrate",
    loinc: &[("8867-4", "Heart rate")],
    units: &["/min"],
};
const OXYGEN_SATURATION: Vital = Vital {
    profile: "http://hl7.org/fhir/StructureDefinition/oxygensat",
    loinc: &[
        ("2708-6", "Oxygen saturation in Arterial blood"),
        (
            "59408-5",
            "Oxygen saturation in Arterial blood by Pulse oximetry",
        ),
    ],
    units: &["%"],
};
const RESPIRATORY_RATE: Vital = Vital {
    profile: "http://hl7.org/fhir/StructureDefinition/resprate",
    loinc: &[("9279-1", "Respiratory rate")],
    units: &["/min"],
};
const BODY_TEMPERATURE: Vital = Vital {
    profile: "http://hl7.org/fhir/StructureDefinition/bodytemp",
    loinc: &[("8310-5", "Body temperature")],
    units: &["Cel", "[degF]"],
};
const BODY_WEIGHT: Vital = Vital {
    profile: "http://hl7.org/fhir/StructureDefinition/bodyweight",
    loinc: &[("29463-7", "Body weight")],
    units: &["kg", "g", "[lb_av]"],
};
const BODY_HEIGHT: Vital = Vital {
    profile: "http://hl7.org/fhir/StructureDefinition/bodyheight",
    loinc: &[("8302-2", "Body height")],
    units: &["cm", "[in_i]"],
};
const BLOOD_PRESSURE_PART: Vital = Vital {
    profile: profile::VITAL_SIGNS,
    loinc: &[],
    units: &["mm[Hg]"],
};

/// LOINC of the blood pressure panel and of its members.
pub(crate) const BP_PANEL: &str = "85354-9";
pub(crate) const BP_PANEL_DISPLAY: &str = "Blood pressure panel with all children optional";
pub(crate) const SYSTOLIC: &str = "8480-6";
pub(crate) const DIASTOLIC: &str = "8462-4";
pub(crate) const MEAN: &str = "8478-0";

/// The vital sign a LOINC code is, if any.
pub(crate) fn vital(loinc: Option<&str>) -> Option<Vital> {
    Some(match loinc? {
        "8867-4" | "8889-8" => HEART_RATE,
        "2708-6" | "59408-5" => OXYGEN_SATURATION,
        "9279-1" => RESPIRATORY_RATE,
        "8310-5" | "8329-5" => BODY_TEMPERATURE,
        "29463-7" => BODY_WEIGHT,
        "8302-2" => BODY_HEIGHT,
        SYSTOLIC | DIASTOLIC | MEAN => BLOOD_PRESSURE_PART,
        _ => return None,
    })
}

/// The category of a reading with this LOINC code and MDC reference id.
pub(crate) fn category(loinc: Option<&str>, refid: Option<&str>) -> Category {
    if vital(loinc).is_some() {
        return Category::VitalSigns;
    }
    let refid = refid.unwrap_or_default();
    if ["PUMP", "FLUID", "INFUS", "DRUG", "SETTING"]
        .iter()
        .any(|part| refid.contains(part))
    {
        Category::Therapy
    } else {
        Category::Procedure
    }
}

/// The blood pressure measurement a reading is part of: the MDC reference id without its
/// `_SYS`/`_DIA`/`_MEAN` suffix (`MDC_PRESS_CUFF`, `MDC_PRESS_BLD_ART_ABP`, ...) and which part
/// it is (a LOINC member code), when the reading is one.
pub(crate) fn bp_part<'a>(
    loinc: Option<&str>,
    refid: Option<&'a str>,
) -> Option<(&'a str, &'static str)> {
    let member = match loinc? {
        SYSTOLIC => SYSTOLIC,
        DIASTOLIC => DIASTOLIC,
        MEAN => MEAN,
        _ => return None,
    };
    let refid = refid?;
    let family = ["_SYS", "_DIA", "_MEAN"]
        .iter()
        .find_map(|suffix| refid.strip_suffix(suffix))?;
    Some((family, member))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_follow_the_code_not_the_device() {
        assert_eq!(
            category(Some("59408-5"), Some("MDC_PULS_OXIM_SAT_O2")),
            Category::VitalSigns
        );
        assert_eq!(
            category(None, Some("MDC_FLOW_FLUID_PUMP")),
            Category::Therapy
        );
        assert_eq!(
            category(Some("20112-9"), Some("MDC_VENT_VOL_TIDAL_SETTING")),
            Category::Therapy
        );
        assert_eq!(
            category(Some("76248-4"), Some("MDC_VENT_PRESS_AWAY_END_EXP_POS")),
            Category::Procedure
        );
        assert_eq!(category(None, None), Category::Procedure);
    }

    #[test]
    fn vital_signs_carry_the_codes_their_profile_requires() {
        let spo2 = vital(Some("59408-5")).unwrap();
        assert!(spo2.loinc.iter().any(|(c, _)| *c == "2708-6"));
        assert!(spo2.loinc.iter().any(|(c, _)| *c == "59408-5"));
        assert_eq!(vital(Some("8889-8")).unwrap().loinc[0].0, "8867-4");
        assert_eq!(vital(Some("8329-5")).unwrap().loinc[0].0, "8310-5");
        assert_eq!(vital(Some("8480-6")).unwrap().profile, profile::VITAL_SIGNS);
        assert!(vital(Some("19891-1")).is_none());
        assert!(vital(None).is_none());
    }

    #[test]
    fn blood_pressure_parts_name_their_measurement() {
        assert_eq!(
            bp_part(Some(SYSTOLIC), Some("MDC_PRESS_CUFF_SYS")),
            Some(("MDC_PRESS_CUFF", SYSTOLIC))
        );
        assert_eq!(
            bp_part(Some(MEAN), Some("MDC_PRESS_BLD_ART_ABP_MEAN")),
            Some(("MDC_PRESS_BLD_ART_ABP", MEAN))
        );
        assert_eq!(bp_part(Some("8867-4"), Some("MDC_ECG_HEART_RATE")), None);
        assert_eq!(bp_part(Some(SYSTOLIC), None), None);
    }
}
