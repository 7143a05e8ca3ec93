//! Every fuzz target's corpus, replayed as a regression test on the stable toolchain.
//!
//! For each target of [`icu_drivers::fuzzing::TARGETS`] this runs the target's body (the same
//! function the cargo-fuzz binary calls) on every file of `device-drivers/fuzz/corpus/<target>/`
//! (the committed `seed-*` files, plus whatever a local fuzzing run added) and of
//! `device-drivers/fuzz/artifacts/<target>/` when present (crashes a local run found: a crash
//! input is fixed, then committed to the corpus as `seed-crash-*`). It fails when a target has
//! no corpus folder or no seed, or when the fuzz crate and the target list disagree.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use icu_drivers::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("reading a corpus folder").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_replays_its_corpus_and_artifacts() {
    let mut replayed = 0;
    for (name, body) in TARGETS {
        let corpus = fuzz_dir().join("corpus").join(name);
        assert!(
            corpus.is_dir(),
            "fuzz target {name} has no corpus folder {}",
            corpus.display()
        );
        let seeds = files(&corpus)
            .iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
            })
            .count();
        assert!(
            seeds > 0,
            "fuzz target {name} has no committed seed-* input"
        );
        let artifacts = files(&fuzz_dir().join("artifacts").join(name));
        for input in files(&corpus).into_iter().chain(artifacts) {
            let data = std::fs::read(&input).expect("reading a corpus file");
            // A panic names the input, so it can be replayed with `cargo fuzz run <name> <file>`.
            let outcome = std::panic::catch_unwind(|| body(&data));
            assert!(
                outcome.is_ok(),
                "fuzz target {name} panicked on {}",
                input.display()
            );
            replayed += 1;
        }
    }
    assert!(replayed >= TARGETS.len());
}

#[test]
fn the_fuzz_crate_builds_exactly_the_listed_targets() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml"))
        .expect("device-drivers/fuzz/Cargo.toml");
    let bins: BTreeSet<&str> = manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| *n != "icu-drivers-fuzz")
        .collect();
    let listed: BTreeSet<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        bins, listed,
        "[[bin]] targets of fuzz/Cargo.toml vs fuzzing::TARGETS"
    );
    for name in &listed {
        let src = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let text = std::fs::read_to_string(&src).expect("a fuzz target source");
        assert!(
            text.contains(&format!("icu_drivers::fuzzing::{name}(")),
            "{} must call icu_drivers::fuzzing::{name}",
            src.display()
        );
    }
}
