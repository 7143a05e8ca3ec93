//! Native device codes → MDC terms (the `Native` section of the terminology).
//!
//! Owns: the per-driver tables `device-drivers/terminology/native-<driver>.tsv` (columns
//! `driver native_code mdc_code ucum scale note`, found by header name), embedded with
//! `include_str!` and loaded by [`Terminology::builtin`].
//!
//! Guarantees:
//! - Every row names an MDC code that exists in `terminology.tsv`, a UCUM unit that is either the
//!   term's default unit or a unit of `units.tsv`, and a finite non-zero `scale`; otherwise the
//!   load fails with an error naming the file and the line.
//! - A `(driver, native_code)` pair appears once.
//! - The unit is the one the device sends (e.g. MEDIBUS pressures stay in `mbar`, MDC unit
//!   266098): values are never converted here, only multiplied by `scale` (1 for every row today).
//!   The MDC unit code of a row is the term's default unit when the UCUM codes agree, else the
//!   unit of `units.tsv` with that UCUM code.

use super::{Table, Terminology, TerminologyError};

/// The embedded Masimo ASCII table.
pub const BUILTIN_NATIVE_MASIMO_TSV: &str = include_str!("../../terminology/native-masimo.tsv");
/// The embedded Dräger MEDIBUS table.
pub const BUILTIN_NATIVE_MEDIBUS_TSV: &str = include_str!("../../terminology/native-medibus.tsv");

/// The embedded native tables, as `(file name, text)`.
pub const BUILTIN_NATIVE_TSV: [(&str, &str); 2] = [
    ("native-masimo.tsv", BUILTIN_NATIVE_MASIMO_TSV),
    ("native-medibus.tsv", BUILTIN_NATIVE_MEDIBUS_TSV),
];

/// One device-native code and the MDC term it reports.
#[derive(Debug, Clone, PartialEq)]
pub struct NativeTerm {
    /// Driver name, e.g. `masimo` or `medibus`.
    pub driver: String,
    /// The code as the device sends it, e.g. `SPO2` (Masimo key) or `7D` (MEDIBUS hex code).
    pub native_code: String,
    pub mdc_code: u32,
    /// The UCUM unit of the device value (after `scale`).
    pub ucum: String,
    /// MDC unit code of `ucum` (see module docs); 0 when none is known.
    pub unit_mdc_code: u32,
    /// Multiplies the device value.
    pub scale: f64,
}

impl Terminology {
    /// The MDC term a driver's native code maps to, e.g. `native("masimo", "SPO2")`.
    pub fn native(&self, driver: &str, native_code: &str) -> Option<&NativeTerm> {
        self.native
            .get(driver)
            .and_then(|codes| codes.get(native_code))
    }

    /// All native codes of a driver, in no particular order.
    pub fn native_terms<'a>(&'a self, driver: &str) -> impl Iterator<Item = &'a NativeTerm> {
        self.native.get(driver).into_iter().flat_map(|m| m.values())
    }

    /// Adds the rows of one native-code table (format as `native-<driver>.tsv`). `file` names the
    /// file in errors. Rows are checked against the parameter and unit tables already loaded.
    pub fn load_native(&mut self, file: &'static str, text: &str) -> Result<(), TerminologyError> {
        let columns = ["driver", "native_code", "mdc_code", "ucum", "scale"];
        for row in Table::parse(file, text, &columns)? {
            let row = row?;
            let driver = row.required("driver")?.to_owned();
            let native_code = row.required("native_code")?.to_owned();
            let mdc_code = row.number("mdc_code")?;
            let ucum = row.required("ucum")?.to_owned();
            let scale_text = row.required("scale")?;
            let scale = scale_text
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s != 0.0)
                .ok_or_else(|| TerminologyError::BadScale {
                    file,
                    line: row.line,
                    value: scale_text.to_owned(),
                })?;
            let Some(term) = self.terms.get(&mdc_code) else {
                return Err(TerminologyError::UnknownMdc {
                    file,
                    line: row.line,
                    code: mdc_code,
                });
            };
            let unit_mdc_code = if term.ucum == ucum {
                term.unit_mdc_code
            } else {
                let mut units = self.units.values().filter(|u| u.ucum == ucum);
                match (units.next(), units.next()) {
                    (Some(unit), None) => unit.unit_mdc_code,
                    (Some(_), Some(_)) => 0,
                    (None, _) => {
                        return Err(TerminologyError::UnknownUcum {
                            file,
                            line: row.line,
                            ucum,
                        })
                    }
                }
            };
            let codes = self.native.entry(driver.clone()).or_default();
            if codes.contains_key(&native_code) {
                return Err(TerminologyError::DuplicateNative {
                    file,
                    line: row.line,
                    driver,
                    native_code,
                });
            }
            codes.insert(
                native_code.clone(),
                NativeTerm {
                    driver,
                    native_code,
                    mdc_code,
                    ucum,
                    unit_mdc_code,
                    scale,
                },
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNITS: &str = "unit_mdc_code\trefid\tucum\n262688\tMDC_DIM_PERCENT\t%\n\
        266098\tMDC_DIM_MILLI_BAR\tmbar\n266048\tMDC_DIM_CM_H2O\tcm[H2O]\n";
    const TERMS: &str = "mdc_code\tmdc_refid\tdisplay\tunit_mdc_code\tucum\tloinc\tloinc_display\n\
        150456\tMDC_PULS_OXIM_SAT_O2\tSpO2\t262688\t%\t59408-5\t\n\
        151976\tMDC_VENT_PRESS_AWAY_END_EXP_POS\tPEEP\t266048\tcm[H2O]\t76248-4\t\n";
    const HEADER: &str = "driver\tnative_code\tmdc_code\tucum\tscale\tnote\n";

    fn base() -> Terminology {
        Terminology::from_tsv(TERMS, UNITS).unwrap()
    }

    #[test]
    fn builtin_native_tables_load_and_map_the_brief_codes() {
        let t = Terminology::builtin();
        let spo2 = t.native("masimo", "SPO2").unwrap();
        assert_eq!((spo2.mdc_code, spo2.ucum.as_str()), (150456, "%"));
        assert_eq!(spo2.unit_mdc_code, 262688);
        assert_eq!(t.native("masimo", "BPM").unwrap().mdc_code, 149530);
        assert_eq!(t.native("masimo", "BPM").unwrap().ucum, "/min");
        assert_eq!(t.native("masimo", "PI").unwrap().mdc_code, 150448);
        assert!(
            t.native("masimo", "SPCO").is_none(),
            "no MDC code in protocols.md"
        );
        let peep = t.native("medibus", "78").unwrap();
        assert_eq!((peep.mdc_code, peep.ucum.as_str()), (151976, "mbar"));
        assert_eq!(
            peep.unit_mdc_code, 266098,
            "device unit kept, not converted"
        );
        assert_eq!(t.native("medibus", "EB").unwrap().mdc_code, 150456);
        assert_eq!(t.native("medibus", "E3").unwrap().unit_mdc_code, 265987);
        assert_eq!(t.native("medibus", "D6").unwrap().unit_mdc_code, 264928);
        assert!(t.native("medibus", "SPO2").is_none());
        assert!(t.native_terms("medibus").count() >= 17);
        for n in t.native_terms("medibus").chain(t.native_terms("masimo")) {
            assert_eq!(n.scale, 1.0);
            assert_ne!(n.unit_mdc_code, 0, "{} has a unit code", n.native_code);
        }
    }

    #[test]
    fn builtin_without_native_rows_behaves_as_before() {
        let t = base();
        assert!(t.native("masimo", "SPO2").is_none());
        assert_eq!(t.by_mdc(150456).unwrap().ucum, "%");
    }

    #[test]
    fn unknown_mdc_code_names_file_and_line() {
        let mut t = base();
        let text = format!("{HEADER}masimo\tSPO2\t150456\t%\t1\t\n\nmasimo\tX\t999\t%\t1\t\n");
        let err = t.load_native("native-masimo.tsv", &text).unwrap_err();
        assert_eq!(
            err,
            TerminologyError::UnknownMdc {
                file: "native-masimo.tsv",
                line: 4,
                code: 999
            }
        );
        assert_eq!(
            err.to_string(),
            "native-masimo.tsv line 4: MDC code 999 is not in terminology.tsv; add the term there first"
        );
    }

    #[test]
    fn bad_rows_are_refused() {
        let cases = [
            ("masimo\tSPO2\t150456\t%\tx\t\n", "scale"),
            ("masimo\tSPO2\t150456\t%\t0\t\n", "scale"),
            ("masimo\tSPO2\t150456\tfoo\t1\t\n", "foo"),
            ("masimo\t\t150456\t%\t1\t\n", "native_code"),
            ("masimo\tSPO2\tabc\t%\t1\t\n", "whole number"),
            ("masimo\tSPO2\t150456\t%\t1\n", "columns"),
            (
                "masimo\tSPO2\t150456\t%\t1\t\nmasimo\tSPO2\t150456\t%\t1\t\n",
                "defined twice",
            ),
        ];
        for (rows, needle) in cases {
            let mut t = base();
            let err = t
                .load_native("native-masimo.tsv", &format!("{HEADER}{rows}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
            assert!(err.starts_with("native-masimo.tsv"), "{err}");
        }
        let mut t = base();
        let err = t
            .load_native("native-x.tsv", "driver\tnative_code\tmdc_code\tucum\n")
            .unwrap_err();
        assert_eq!(
            err,
            TerminologyError::MissingColumn {
                file: "native-x.tsv",
                column: "scale"
            }
        );
    }

    #[test]
    fn device_unit_other_than_the_terms_default_is_looked_up() {
        let mut t = base();
        let text = format!("{HEADER}medibus\t78\t151976\tmbar\t1\tPEEP\n");
        t.load_native("native-medibus.tsv", &text).unwrap();
        let n = t.native("medibus", "78").unwrap();
        assert_eq!(n.unit_mdc_code, 266098);
        assert_eq!(n.driver, "medibus");
    }
}
