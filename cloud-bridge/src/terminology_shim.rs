//! Temporary local copy of `icu_drivers::terminology` (removed once icu-drivers compiles).
#![allow(dead_code)]
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub mdc_code: u32,
    pub refid: String,
    pub display: String,
    pub unit_mdc_code: u32,
    pub ucum: String,
    pub loinc: Option<String>,
    pub loinc_display: Option<String>,
}

#[derive(Debug, Default)]
pub struct Terminology {
    terms: HashMap<u32, Term>,
}

impl Terminology {
    pub fn builtin() -> Arc<Terminology> {
        let rows: &[(u32, &str, &str, u32, &str, Option<&str>, Option<&str>)] = &[
            (147842, "MDC_ECG_HEART_RATE", "Heart rate", 264864, "/min", Some("8867-4"), Some("Heart rate")),
            (150456, "MDC_PULS_OXIM_SAT_O2", "SpO2", 262688, "%", Some("59408-5"), Some("Oxygen saturation in Arterial blood by Pulse oximetry")),
            (151562, "MDC_RESP_RATE", "Respiratory rate", 264928, "/min", Some("9279-1"), Some("Respiratory rate")),
            (157784, "MDC_FLOW_FLUID_PUMP", "Infusion rate", 265266, "mL/h", None, None),
        ];
        let terms = rows
            .iter()
            .map(|r| {
                (
                    r.0,
                    Term {
                        mdc_code: r.0,
                        refid: r.1.into(),
                        display: r.2.into(),
                        unit_mdc_code: r.3,
                        ucum: r.4.into(),
                        loinc: r.5.map(Into::into),
                        loinc_display: r.6.map(Into::into),
                    },
                )
            })
            .collect();
        Arc::new(Terminology { terms })
    }

    pub fn by_mdc(&self, code: u32) -> Option<&Term> {
        self.terms.get(&code)
    }
}
