//! Schema governance of the protobuf topics: `buf lint` and `buf breaking` (the `buf` CLI from
//! npm, `ICU_BUF_BIN`, installed by `scripts/test`) over `protos/`, against the last released
//! copy in `protos/released/`. A change that would break a consumer fails here, so it fails the
//! test command.

use std::path::{Path, PathBuf};
use std::process::Command;

fn buf() -> Option<PathBuf> {
    icu_tests::tool_from_env("ICU_BUF_BIN")
}

fn protos() -> PathBuf {
    icu_tests::workspace_root().join("protos")
}

fn run(buf: &Path, dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(buf)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run buf");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn the_schemas_lint_clean_and_break_no_consumer_of_the_released_ones() {
    let Some(buf) = buf() else { return };
    let (code, out) = run(&buf, &protos(), &["lint"]);
    assert_eq!(code, 0, "buf lint: {out}");
    let (code, out) = run(&buf, &protos(), &["breaking", "--against", "released"]);
    assert_eq!(code, 0, "buf breaking against protos/released: {out}");
}

#[test]
fn a_renumbered_field_is_a_breaking_change() {
    let Some(buf) = buf() else { return };
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("protos");
    copy_dir(&protos(), &copy);
    let schema = copy.join("schemas/icu.observations.pb.proto");
    let text = std::fs::read_to_string(&schema).unwrap();
    assert!(text.contains("uint32 mdc_code = 3;"));
    std::fs::write(
        &schema,
        text.replace("uint32 mdc_code = 3;", "uint32 mdc_code = 30;"),
    )
    .unwrap();
    let (code, out) = run(&buf, &copy, &["breaking", "--against", "released"]);
    assert_ne!(
        code, 0,
        "buf breaking must refuse a renumbered field: {out}"
    );
    assert!(
        out.contains("\"mdc_code\"") && out.contains("deleted"),
        "names the field: {out}"
    );
    // The same edit in the canonical proto is refused too.
    let canonical = copy.join("proto/icu/v1/icu.proto");
    let text = std::fs::read_to_string(&canonical).unwrap();
    std::fs::write(
        &canonical,
        text.replace(
            "string device_id = 1;\n  // Per-device",
            "int64 device_id = 1;\n  // Per-device",
        ),
    )
    .unwrap();
    let (code, out) = run(&buf, &copy, &["breaking", "--against", "released"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("icu/v1/icu.proto"), "{out}");
}
