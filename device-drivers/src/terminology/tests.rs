use super::*;

const UNITS: &str = "unit_mdc_code\trefid\tucum\n262688\tMDC_DIM_PERCENT\t%\n";
const HEADER: &str = "mdc_code\tmdc_refid\tdisplay\tunit_mdc_code\tucum\tloinc\tloinc_display\n";

#[test]
fn builtin_tables_load_and_cover_the_required_codes() {
    let t = Terminology::builtin();
    let required = [
        147842, 149514, 149530, 150456, 150448, 150488, 151562, 151578, 151594, 151570, 150301,
        150302, 150303, 150021, 150022, 150023, 150037, 150038, 150039, 150033, 150034, 150035,
        150017, 150018, 150019, 150084, 150087, 150045, 150046, 150047, 150364, 150368, 150344,
        151728, 151708, 151976, 151808, 151817, 151819, 152424, 151868, 151880, 151884, 151888,
        152196, 160920, 151908, 151720, 151586, 151688, 151692, 151696, 151840, 151832, 157784,
        158014, 157864, 157884, 157872, 157924, 157760, 68063, 68060,
    ];
    for code in required {
        let term = t
            .by_mdc(code)
            .unwrap_or_else(|| panic!("missing MDC code {code}"));
        assert!(term.refid.starts_with("MDC_"), "{code}: {}", term.refid);
        assert!(!term.ucum.is_empty(), "{code} has no default unit");
    }
    // Parsed once: the same Arc comes back.
    assert!(Arc::ptr_eq(&t, &Terminology::builtin()));
}

#[test]
fn builtin_rows_match_protocols_md() {
    let t = Terminology::builtin();
    let hr = t.by_mdc(147842).unwrap();
    assert_eq!(hr.refid, "MDC_ECG_HEART_RATE");
    assert_eq!((hr.unit_mdc_code, hr.ucum.as_str()), (264864, "/min"));
    assert_eq!(hr.loinc.as_deref(), Some("8867-4"));
    let spo2 = t.by_mdc(150456).unwrap();
    assert_eq!((spo2.unit_mdc_code, spo2.ucum.as_str()), (262688, "%"));
    assert_eq!(spo2.loinc.as_deref(), Some("59408-5"));
    let nibp = t.by_mdc(150301).unwrap();
    assert_eq!(nibp.ucum, "mm[Hg]");
    assert_eq!(nibp.loinc.as_deref(), Some("8480-6"));
    assert_eq!(t.by_mdc(151808).unwrap().loinc, None);
    assert_eq!(t.by_mdc(68060).unwrap().ucum, "cm");
    assert_eq!(t.by_mdc(68060).unwrap().unit_mdc_code, 0);
    assert_eq!(t.ucum_for_unit(266048), Some("cm[H2O]"));
    assert_eq!(t.ucum_for_unit(265619), Some("ug/kg/min"));
    assert_eq!(t.ucum_for_unit(268192), Some("Cel"));
    assert_eq!(t.unit(266016).unwrap().refid, "MDC_DIM_MMHG");
    assert_eq!(t.ucum_for_unit(1), None);
    assert_eq!(t.by_mdc(1), None);
    assert!(t.terms().count() >= 63);
}

#[test]
fn unknown_columns_are_ignored_and_missing_optional_cells_are_none() {
    let terms =
        "mdc_code\tmedibus_code\tmdc_refid\tdisplay\tunit_mdc_code\tucum\tloinc\tloinc_display\n\
                 150456\t0x18\tMDC_PULS_OXIM_SAT_O2\tSpO2\t262688\t%\t\t\n";
    let t = Terminology::from_tsv(terms, UNITS).unwrap();
    let term = t.by_mdc(150456).unwrap();
    assert_eq!(term.loinc, None);
    assert_eq!(term.loinc_display, None);
}

#[test]
fn errors_name_file_line_and_column() {
    let bad_number = format!("{HEADER}\n15045x\tMDC_X\tX\t262688\t%\t\t\n");
    let err = Terminology::from_tsv(&bad_number, UNITS).unwrap_err();
    assert_eq!(
        err,
        TerminologyError::BadNumber {
            file: "terminology.tsv",
            line: 3,
            column: "mdc_code",
            value: "15045x".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "terminology.tsv line 3: column 'mdc_code' must be a whole number, found '15045x'"
    );

    let dup = format!("{HEADER}1\tMDC_A\tA\t\t\t\t\n1\tMDC_B\tB\t\t\t\t\n");
    assert!(matches!(
        Terminology::from_tsv(&dup, UNITS),
        Err(TerminologyError::Duplicate {
            line: 3,
            code: 1,
            first_line: 2,
            ..
        })
    ));

    let short = format!("{HEADER}1\tMDC_A\n");
    assert!(matches!(
        Terminology::from_tsv(&short, UNITS),
        Err(TerminologyError::ColumnCount {
            line: 2,
            expected: 7,
            found: 2,
            ..
        })
    ));

    let unknown_unit = format!("{HEADER}1\tMDC_A\tA\t999\tx\t\t\n");
    assert!(matches!(
        Terminology::from_tsv(&unknown_unit, UNITS),
        Err(TerminologyError::UnknownUnit { unit: 999, .. })
    ));

    let mismatch = format!("{HEADER}1\tMDC_A\tA\t262688\t/min\t\t\n");
    let err = Terminology::from_tsv(&mismatch, UNITS).unwrap_err();
    assert!(
        err.to_string().contains("disagrees with units.tsv"),
        "{err}"
    );

    let no_refid = format!("{HEADER}1\t\tA\t\t\t\t\n");
    assert!(matches!(
        Terminology::from_tsv(&no_refid, UNITS),
        Err(TerminologyError::Required {
            column: "mdc_refid",
            ..
        })
    ));

    assert_eq!(
        Terminology::from_tsv("", UNITS).unwrap_err(),
        TerminologyError::Empty {
            file: "terminology.tsv"
        }
    );
    assert_eq!(
        Terminology::from_tsv(HEADER, "unit_mdc_code\tucum\n").unwrap_err(),
        TerminologyError::MissingColumn {
            file: "units.tsv",
            column: "refid"
        }
    );
}
