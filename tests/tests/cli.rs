//! The gateway's command line as an engineer uses it: check-config and keygen; and what a
//! production build of it links.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use icu_tests::{bin_path, workspace_root};

#[test]
fn check_config_names_every_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "gateway_id = \"icu north\"\ndata_dir = \"d\"\n[mllp]\nlisten = \"nowhere\"\n\
         [[beds]]\nid = \"bed-1\"\n[[devices]]\nid = \"mon-1\"\nbed = \"bed-9\"\nprotocol = \"pcd01\"\nmatch = \"X\"\n",
    )
    .unwrap();
    let out = Command::new(bin_path("icu-gateway"))
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for field in ["gateway_id:", "mllp.listen:", "devices[0].bed:"] {
        assert!(err.contains(field), "{field} missing in:\n{err}");
    }
}

#[test]
fn mqtt_tls_settings_are_checked_and_an_open_secret_refuses_the_start_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "").unwrap();
    let pass = dir.path().join("mqtt.pass");
    std::fs::write(&pass, "pw\n").unwrap();
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "gateway_id = \"gw\"\ndata_dir = \"{}\"\n[mllp]\nlisten = \"127.0.0.1:0\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n\
             [mqtt]\ntls = \"required\"\nca_file = \"{}\"\nclient_cert_file = \"{}\"\n\
             username = \"gw\"\npassword_file = \"{}\"\n[[beds]]\nid = \"bed-1\"\n",
            dir.path().join("data").display(),
            ca.display(),
            dir.path().join("missing.pem").display(),
            pass.display()
        ),
    )
    .unwrap();
    for command in ["check-config", "run"] {
        let out = Command::new(bin_path("icu-gateway"))
            .args([command, "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{command} accepted it");
        let err = String::from_utf8_lossy(&out.stderr);
        for want in [
            "mqtt.client_cert_file:".to_owned(),
            "missing.pem".to_owned(),
            "mqtt.client_key_file:".to_owned(),
            format!("mqtt.password_file: {}", pass.display()),
            format!("chmod 600 {}", pass.display()),
        ] {
            assert!(err.contains(&want), "{command}: {want} missing in:\n{err}");
        }
    }
}

#[test]
fn example_config_is_valid_apart_from_the_missing_key() {
    let out = Command::new(bin_path("icu-gateway"))
        .args(["check-config", "--config"])
        .arg(workspace_root().join("gateway/gateway.example.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("valid") && stdout.contains("device mon-02 at bed-02"),
        "{stdout}{stderr}"
    );
    // Every kind of device is in the example, each validated.
    for device in [
        "spo2-01 at bed-01 (Masimo, port /dev/serial/by-id/",
        "vent-01 at bed-01 (Medibus, port",
        "pump-01 at bed-02 (Mqtt",
    ] {
        assert!(stdout.contains(device), "{device} missing in:\n{stdout}");
    }
    assert!(stderr.contains("icu-gateway keygen"), "{stderr}");
    // The example documents every section the file may have.
    let text =
        std::fs::read_to_string(workspace_root().join("gateway/gateway.example.toml")).unwrap();
    for section in [
        "[store]",
        "[mllp]",
        "[adt]",
        "[http]",
        "[signing]",
        "[kafka]",
        "[mqtt]",
        "[alarm_manager]",
        "[alarms]",
        "[alarms.device_clock]",
        "[alarms.outputs]",
        "[tracing]",
        "[waveforms]",
        "[[beds]]",
        "[[devices]]",
        "[devices.serial]",
        "adt_location =",
        "allow_from =",
        "topic_observations =",
        "topic_alarms =",
        "topic_adt =",
        "topic_deadletter =",
        "topic_audit =",
        "topic_waveforms =",
    ] {
        assert!(
            text.contains(section),
            "{section} is not in gateway.example.toml"
        );
    }
}

#[test]
fn keygen_writes_a_private_key_only_root_reads_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("gw.key");
    let run = || {
        Command::new(bin_path("icu-gateway"))
            .args(["keygen", "--out"])
            .arg(&key)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let public = std::fs::read_to_string(dir.path().join("gw.pub")).unwrap();
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"), "{public}");
    let first = std::fs::read(&key).unwrap();
    assert!(
        !run().status.success(),
        "a second keygen must refuse to overwrite"
    );
    assert_eq!(std::fs::read(&key).unwrap(), first);
}

/// A production build (`--no-default-features`: no `demo` feature) does not link the simulator;
/// the default build (what `cargo run -p icu-gateway -- demo` uses) does. Reads the lock file
/// only (`cargo tree --offline`), builds nothing.
#[test]
fn the_gateway_without_the_demo_feature_does_not_link_the_simulator() {
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let tree = |extra: &[&str]| {
        let out = Command::new(&cargo)
            .current_dir(workspace_root())
            .args([
                "tree",
                "--offline",
                "-p",
                "icu-gateway",
                "-e",
                "normal",
                "--prefix",
                "none",
            ])
            .args(extra)
            .output()
            .expect("cargo tree runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let production = tree(&["--no-default-features"]);
    assert!(production.contains("icu-cloud-bridge"), "{production}");
    assert!(!production.contains("icu-sim"), "{production}");
    let default = tree(&[]);
    assert!(default.contains("icu-sim"), "{default}");
}
