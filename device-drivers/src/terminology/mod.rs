//! IEEE 11073-10101 (MDC) ↔ UCUM ↔ LOINC terminology.
//!
//! Owns: the parameter table `device-drivers/terminology/terminology.tsv` and the unit table
//! `device-drivers/terminology/units.tsv` (both under version control, filled from
//! protocols.md §5.2–5.3), embedded in the binary with `include_str!`, and their loader; plus
//! the per-driver native-code tables `native-<driver>.tsv` (MEDIBUS data codes, Masimo keys →
//! MDC code and device unit), see [`Terminology::native`] and the `native` module.
//!
//! Guarantees:
//! - [`Terminology::builtin`] parses the embedded files once per process; a unit test proves they
//!   load, so it cannot fail at run time.
//! - [`Terminology::from_tsv`] either returns a consistent table or an error naming the file, the
//!   line and the column: every MDC code appears once, numbers are numbers, and every parameter's
//!   default unit exists in the unit table with the same UCUM code.
//! - Only codes with a numeric MDC code in protocols.md are listed (and the units of waveform
//!   channels and sample rates, with their sources in `hl7/waveform.rs`). LOINC codes marked "?" or
//!   UNCONFIRMED there are left empty; the `source` column keeps the confidence tag of each row.
//!
//! File format: tab-separated, first line is the header. Columns are found by header name, so
//! new columns (e.g. native MEDIBUS or Masimo codes) can be added to the file and read with
//! [`Row::optional`] without touching existing callers; unknown columns are ignored.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

mod native;

pub use native::{
    NativeTerm, BUILTIN_NATIVE_MASIMO_TSV, BUILTIN_NATIVE_MEDIBUS_TSV, BUILTIN_NATIVE_TSV,
};

/// The embedded parameter table.
pub const BUILTIN_TERMS_TSV: &str = include_str!("../../terminology/terminology.tsv");
/// The embedded unit table.
pub const BUILTIN_UNITS_TSV: &str = include_str!("../../terminology/units.tsv");

const TERMS_FILE: &str = "terminology.tsv";
const UNITS_FILE: &str = "units.tsv";

/// One parameter: an MDC metric (or device/alert) code with its default unit and LOINC code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub mdc_code: u32,
    pub refid: String,
    pub display: String,
    /// Default MDC unit code; 0 when the sources give none.
    pub unit_mdc_code: u32,
    /// Default UCUM unit; empty when none.
    pub ucum: String,
    pub loinc: Option<String>,
    pub loinc_display: Option<String>,
}

/// One MDC unit (MDC_DIM_*) with its UCUM equivalent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub unit_mdc_code: u32,
    pub refid: String,
    pub ucum: String,
}

/// Why a terminology file was refused. Every variant names the file (and line) to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TerminologyError {
    #[error("{file}: the file is empty; the first line must be the tab-separated header")]
    Empty { file: &'static str },
    #[error("{file}: the header line has no column '{column}'")]
    MissingColumn {
        file: &'static str,
        column: &'static str,
    },
    #[error("{file} line {line}: expected {expected} tab-separated columns, found {found}")]
    ColumnCount {
        file: &'static str,
        line: usize,
        expected: usize,
        found: usize,
    },
    #[error("{file} line {line}: column '{column}' must be a whole number, found '{value}'")]
    BadNumber {
        file: &'static str,
        line: usize,
        column: &'static str,
        value: String,
    },
    #[error("{file} line {line}: column '{column}' must not be empty")]
    Required {
        file: &'static str,
        line: usize,
        column: &'static str,
    },
    #[error("{file} line {line}: code {code} is already defined on line {first_line}")]
    Duplicate {
        file: &'static str,
        line: usize,
        code: u32,
        first_line: usize,
    },
    #[error("{file} line {line}: unit code {unit} is not in {UNITS_FILE}; add it there first")]
    UnknownUnit {
        file: &'static str,
        line: usize,
        unit: u32,
    },
    #[error(
        "{file} line {line}: ucum '{ucum}' disagrees with {UNITS_FILE}, which maps unit {unit} to '{expected}'"
    )]
    UnitMismatch {
        file: &'static str,
        line: usize,
        unit: u32,
        ucum: String,
        expected: String,
    },
    #[error(
        "{file} line {line}: MDC code {code} is not in {TERMS_FILE}; add the term there first"
    )]
    UnknownMdc {
        file: &'static str,
        line: usize,
        code: u32,
    },
    #[error(
        "{file} line {line}: ucum '{ucum}' is neither the term's default unit nor in {UNITS_FILE}"
    )]
    UnknownUcum {
        file: &'static str,
        line: usize,
        ucum: String,
    },
    #[error(
        "{file} line {line}: column 'scale' must be a finite non-zero number, found '{value}'"
    )]
    BadScale {
        file: &'static str,
        line: usize,
        value: String,
    },
    #[error(
        "{file} line {line}: native code '{native_code}' of driver '{driver}' is defined twice"
    )]
    DuplicateNative {
        file: &'static str,
        line: usize,
        driver: String,
        native_code: String,
    },
}

/// The lookup tables. Cheap to share: use [`Terminology::builtin`] for the embedded one.
#[derive(Debug, Clone, Default)]
pub struct Terminology {
    terms: HashMap<u32, Term>,
    units: HashMap<u32, Unit>,
    /// Native device codes by driver, then by native code (see [`NativeTerm`]).
    native: HashMap<String, HashMap<String, NativeTerm>>,
}

impl Terminology {
    /// The embedded tables (parameters, units and the native-code tables of every driver, see
    /// [`Terminology::native`]), parsed once per process.
    pub fn builtin() -> Arc<Terminology> {
        static BUILTIN: OnceLock<Arc<Terminology>> = OnceLock::new();
        BUILTIN
            .get_or_init(|| {
                // The embedded files are fixed at compile time and checked by a unit test.
                let mut t = Terminology::from_tsv(BUILTIN_TERMS_TSV, BUILTIN_UNITS_TSV)
                    .expect("embedded terminology files are valid (see terminology tests)");
                for (file, text) in BUILTIN_NATIVE_TSV {
                    t.load_native(file, text)
                        .expect("embedded native-code files are valid (see native tests)");
                }
                Arc::new(t)
            })
            .clone()
    }

    /// Parses a parameter table and a unit table (formats as the embedded files).
    pub fn from_tsv(terms: &str, units: &str) -> Result<Self, TerminologyError> {
        let mut unit_map: HashMap<u32, (Unit, usize)> = HashMap::new();
        for row in Table::parse(UNITS_FILE, units, &["unit_mdc_code", "refid", "ucum"])? {
            let row = row?;
            let unit = Unit {
                unit_mdc_code: row.number("unit_mdc_code")?,
                refid: row.required("refid")?.to_owned(),
                ucum: row.required("ucum")?.to_owned(),
            };
            if let Some((_, first_line)) = unit_map.get(&unit.unit_mdc_code) {
                return Err(TerminologyError::Duplicate {
                    file: UNITS_FILE,
                    line: row.line,
                    code: unit.unit_mdc_code,
                    first_line: *first_line,
                });
            }
            unit_map.insert(unit.unit_mdc_code, (unit, row.line));
        }

        let mut term_map: HashMap<u32, (Term, usize)> = HashMap::new();
        let columns = [
            "mdc_code",
            "mdc_refid",
            "display",
            "unit_mdc_code",
            "ucum",
            "loinc",
            "loinc_display",
        ];
        for row in Table::parse(TERMS_FILE, terms, &columns)? {
            let row = row?;
            let term = Term {
                mdc_code: row.number("mdc_code")?,
                refid: row.required("mdc_refid")?.to_owned(),
                display: row.get("display").to_owned(),
                unit_mdc_code: row.number_or_zero("unit_mdc_code")?,
                ucum: row.get("ucum").to_owned(),
                loinc: row.optional("loinc").map(str::to_owned),
                loinc_display: row.optional("loinc_display").map(str::to_owned),
            };
            if term.unit_mdc_code != 0 {
                let Some((unit, _)) = unit_map.get(&term.unit_mdc_code) else {
                    return Err(TerminologyError::UnknownUnit {
                        file: TERMS_FILE,
                        line: row.line,
                        unit: term.unit_mdc_code,
                    });
                };
                if unit.ucum != term.ucum {
                    return Err(TerminologyError::UnitMismatch {
                        file: TERMS_FILE,
                        line: row.line,
                        unit: term.unit_mdc_code,
                        ucum: term.ucum,
                        expected: unit.ucum.clone(),
                    });
                }
            }
            if let Some((_, first_line)) = term_map.get(&term.mdc_code) {
                return Err(TerminologyError::Duplicate {
                    file: TERMS_FILE,
                    line: row.line,
                    code: term.mdc_code,
                    first_line: *first_line,
                });
            }
            term_map.insert(term.mdc_code, (term, row.line));
        }

        Ok(Self {
            terms: term_map.into_iter().map(|(k, (t, _))| (k, t)).collect(),
            units: unit_map.into_iter().map(|(k, (u, _))| (k, u)).collect(),
            native: HashMap::new(),
        })
    }

    /// The parameter with this MDC code.
    pub fn by_mdc(&self, code: u32) -> Option<&Term> {
        self.terms.get(&code)
    }

    /// The UCUM code of an MDC unit code (e.g. 262688 → `%`).
    pub fn ucum_for_unit(&self, unit_mdc_code: u32) -> Option<&str> {
        self.units.get(&unit_mdc_code).map(|u| u.ucum.as_str())
    }

    /// The MDC unit with this code.
    pub fn unit(&self, unit_mdc_code: u32) -> Option<&Unit> {
        self.units.get(&unit_mdc_code)
    }

    /// All parameters, in no particular order.
    pub fn terms(&self) -> impl Iterator<Item = &Term> {
        self.terms.values()
    }
}

/// A parsed tab-separated file: header columns by name, then rows.
struct Table<'a> {
    file: &'static str,
    columns: HashMap<&'a str, usize>,
    width: usize,
    lines: std::iter::Enumerate<std::str::Lines<'a>>,
}

impl<'a> Table<'a> {
    fn parse(
        file: &'static str,
        text: &'a str,
        required: &[&'static str],
    ) -> Result<Self, TerminologyError> {
        let mut lines = text.lines().enumerate();
        let header = lines
            .by_ref()
            .map(|(_, l)| l)
            .find(|l| !l.trim().is_empty())
            .ok_or(TerminologyError::Empty { file })?;
        let names: Vec<&str> = header.split('\t').map(str::trim).collect();
        let columns: HashMap<&str, usize> =
            names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        if let Some(column) = required.iter().find(|c| !columns.contains_key(**c)) {
            return Err(TerminologyError::MissingColumn { file, column });
        }
        Ok(Self {
            file,
            columns,
            width: names.len(),
            lines,
        })
    }
}

impl<'a> Iterator for Table<'a> {
    type Item = Result<Row<'a>, TerminologyError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (index, line) = self.lines.by_ref().find(|(_, l)| !l.trim().is_empty())?;
        let cells: Vec<&'a str> = line.split('\t').map(str::trim).collect();
        let line = index + 1;
        if cells.len() != self.width {
            return Some(Err(TerminologyError::ColumnCount {
                file: self.file,
                line,
                expected: self.width,
                found: cells.len(),
            }));
        }
        Some(Ok(Row {
            file: self.file,
            line,
            columns: self.columns.clone(),
            cells,
        }))
    }
}

/// One data line of a terminology file, with its 1-based line number.
struct Row<'a> {
    file: &'static str,
    line: usize,
    columns: HashMap<&'a str, usize>,
    cells: Vec<&'a str>,
}

impl<'a> Row<'a> {
    /// The cell of a column ("" when the column does not exist in this file).
    fn get(&self, column: &str) -> &'a str {
        self.columns
            .get(column)
            .and_then(|&i| self.cells.get(i).copied())
            .unwrap_or("")
    }

    /// The cell, or `None` when empty or when the column does not exist.
    fn optional(&self, column: &str) -> Option<&'a str> {
        Some(self.get(column)).filter(|v| !v.is_empty())
    }

    fn required(&self, column: &'static str) -> Result<&'a str, TerminologyError> {
        self.optional(column).ok_or(TerminologyError::Required {
            file: self.file,
            line: self.line,
            column,
        })
    }

    fn number(&self, column: &'static str) -> Result<u32, TerminologyError> {
        let value = self.required(column)?;
        value.parse().map_err(|_| TerminologyError::BadNumber {
            file: self.file,
            line: self.line,
            column,
            value: value.to_owned(),
        })
    }

    fn number_or_zero(&self, column: &'static str) -> Result<u32, TerminologyError> {
        match self.optional(column) {
            None => Ok(0),
            Some(_) => self.number(column),
        }
    }
}

#[cfg(test)]
mod tests;
