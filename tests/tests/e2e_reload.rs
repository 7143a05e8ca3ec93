//! `systemctl reload` (SIGHUP) against the real gateway binary over real sockets: a monitor
//! stays connected through the reload and never sees a disconnect; the added device is taken,
//! the removed one refused, the changed SpO2 limit alarms on that same connection; a config
//! that does not validate changes nothing; both reloads are in the audit trail. A serial
//! oximeter on a real pty keeps its open port through a reload that does not change it, and
//! one moved to another bed reopens its port and its values follow it.

mod support;

use std::time::Duration;

use icu_tests::mllp::{msa_code as msa, spo2_message};
use icu_tests::wait_for;
use support::{config_text, GatewayProc, Sender, SPO2_LOW_ALARM};

/// SpO2 low limit `low`, sustained 2 s, nothing else.
fn alarms(low: u32) -> String {
    SPO2_LOW_ALARM.replace("low = 90.0", &format!("low = {low}.0"))
}

/// A gateway config with beds 1..=3 and the simulated monitors of `monitors` only.
fn config(dir: &std::path::Path, low: u32, monitors: &[usize]) -> String {
    let full = config_text(dir, 3, None, "");
    let (head, blocks) = full.split_at(full.find("[[beds]]").unwrap());
    let mut text = format!("{head}{}\n", alarms(low));
    for block in blocks.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let keep = !block.starts_with("[[devices]]")
            || monitors.iter().any(|m| {
                block.contains(&format!("id = \"{}\"", icu_sim::beds(3)[m - 1].device_id))
            });
        if keep {
            text.push_str(block);
            text.push_str("\n\n");
        }
    }
    text
}

/// A PCD-01 message from bed `bed`'s simulated monitor with one SpO2 reading taken now.
fn spo2_now(bed: usize, control: &str, spo2: u32) -> String {
    spo2_message(bed, control, spo2, chrono::Utc::now())
}

fn spo2_alarm(gw: &GatewayProc, bed: &str) -> Option<serde_json::Value> {
    gw.get_json("/api/alarms")["active"]
        .as_array()?
        .iter()
        .find(|a| a["bed"] == bed && a["source"] == "limit:spo2")
        .cloned()
}

fn device_ids(gw: &GatewayProc) -> Vec<String> {
    let devices = gw.get_json("/api/devices");
    let list = devices
        .as_array()
        .or_else(|| devices["devices"].as_array())
        .cloned()
        .unwrap_or_default();
    let mut ids: Vec<String> = list
        .iter()
        .filter_map(|d| d["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// Writes `config` over the gateway's file and sends SIGHUP.
fn reload_with(gw: &GatewayProc, config: &str) {
    std::fs::write(&gw.config_path, config).unwrap();
    sighup(gw);
}

fn sighup(gw: &GatewayProc) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP");
}

fn reload_entries(config: &std::path::Path) -> Vec<serde_json::Value> {
    let shown = icu_tests::http::gateway_cli(
        &[
            "audit",
            "show",
            "--config",
            config.to_str().unwrap(),
            "--action",
            "config_reload",
            "--json",
        ],
        "",
    )
    .unwrap();
    shown
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_reload_applies_devices_and_limits_without_dropping_a_connected_monitor() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = GatewayProc::start(dir.path(), &config(dir.path(), 90, &[1, 2]));
    let ids = icu_sim::beds(3);
    assert_eq!(
        device_ids(&gw),
        vec![ids[0].device_id.clone(), ids[1].device_id.clone()]
    );

    // Bed 1's monitor connects once and keeps this connection to the end of the test.
    let mut monitor = Sender::connect(gw.endpoints.mllp);
    for i in 0..8 {
        assert_eq!(
            msa(&monitor.send(&spo2_now(1, &format!("B1-{i}"), 93))),
            "AA"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        spo2_alarm(&gw, "bed-01").is_none(),
        "SpO2 93 is above the limit of 90"
    );
    // Bed 3's monitor is not configured yet.
    let refused = Sender::connect(gw.endpoints.mllp).send(&spo2_now(3, "B3-0", 97));
    assert_ne!(
        msa(&refused),
        "AA",
        "an unconfigured monitor is refused: {refused}"
    );

    // The engineer adds bed 3's monitor, removes bed 2's, raises the SpO2 limit to 95.
    let audit_config = dir.path().join("audit-view.toml");
    std::fs::write(&audit_config, config(dir.path(), 95, &[1, 3])).unwrap();
    reload_with(&gw, &config(dir.path(), 95, &[1, 3]));
    wait_for(Duration::from_secs(10), "the reload", || {
        gw.log_text().contains("config reloaded").then_some(())
    })
    .unwrap();
    assert_eq!(
        device_ids(&gw),
        vec![ids[0].device_id.clone(), ids[2].device_id.clone()]
    );

    // The same connection goes on, and the new limit alarms on SpO2 93.
    let alarm = wait_for(
        Duration::from_secs(10),
        "the SpO2 alarm at the new limit",
        || {
            let n = format!("B1-after-{}", chrono::Utc::now().timestamp_micros());
            assert_eq!(msa(&monitor.send(&spo2_now(1, &n, 93))), "AA");
            std::thread::sleep(Duration::from_millis(200));
            spo2_alarm(&gw, "bed-01")
        },
    )
    .unwrap();
    assert!(
        alarm["text"].as_str().unwrap_or_default().ends_with(" 95"),
        "the alarm names the new limit: {alarm}"
    );
    // The added monitor is taken, the removed one refused.
    assert_eq!(
        msa(&Sender::connect(gw.endpoints.mllp).send(&spo2_now(3, "B3-1", 97))),
        "AA"
    );
    assert_ne!(
        msa(&Sender::connect(gw.endpoints.mllp).send(&spo2_now(2, "B2-1", 97))),
        "AA",
        "a removed monitor is refused"
    );

    // A config that does not validate changes nothing.
    reload_with(&gw, "gateway_id = \"test-gw\"\n[[devices]]\nid = 3\n");
    wait_for(Duration::from_secs(10), "the refusal", || {
        gw.log_text()
            .contains("config reload refused")
            .then_some(())
    })
    .unwrap();
    assert!(
        gw.is_running(),
        "a bad config on reload does not stop the gateway"
    );
    assert_eq!(msa(&monitor.send(&spo2_now(1, "B1-last", 93))), "AA");
    assert_eq!(
        msa(&Sender::connect(gw.endpoints.mllp).send(&spo2_now(3, "B3-2", 97))),
        "AA"
    );
    assert_eq!(
        device_ids(&gw),
        vec![ids[0].device_id.clone(), ids[2].device_id.clone()]
    );
    assert!(
        spo2_alarm(&gw, "bed-01").is_some(),
        "the alarm path goes on"
    );

    let entries = reload_entries(&audit_config);
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0]["outcome"], "success", "{}", entries[0]);
    let applied = entries[0]["new_value"].as_str().unwrap_or_default();
    assert!(
        applied.contains(&format!("added: {}", ids[2].device_id))
            && applied.contains(&format!("removed: {}", ids[1].device_id))
            && applied.contains("alarms: changed"),
        "{applied}"
    );
    assert_eq!(entries[1]["outcome"], "denied", "{}", entries[1]);
    gw.stop();
}

/// A gateway with beds 1 and 2, bed 1's monitor over MLLP and a Masimo oximeter on `port` at
/// `oximeter_bed`; `extra_monitor` adds bed 2's monitor.
fn serial_config(
    dir: &std::path::Path,
    port: &std::path::Path,
    oximeter_bed: &str,
    extra_monitor: bool,
) -> String {
    let mut text = format!(
        "gateway_id = \"test-gw\"\ndata_dir = \"{}\"\nclock = \"synced\"\n[mllp]\nlisten = \"127.0.0.1:0\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\n[store]\nsynchronous = \"normal\"\n\
         [[beds]]\nid = \"bed-01\"\n[[beds]]\nid = \"bed-02\"\n\
         [[devices]]\nid = \"mon-01\"\nbed = \"bed-01\"\nprotocol = \"pcd01\"\nmatch = \"0012AB0000000001\"\n\
         [[devices]]\nid = \"spo2-01\"\nbed = \"{oximeter_bed}\"\nprotocol = \"masimo\"\n\
         [devices.serial]\nport = \"{}\"\n",
        dir.display(),
        port.display()
    );
    if extra_monitor {
        text.push_str(
            "[[devices]]\nid = \"mon-02\"\nbed = \"bed-02\"\nprotocol = \"pcd01\"\nmatch = \"0012AB0000000002\"\n",
        );
    }
    text
}

/// Bed `bed`'s values from `device` in the live view.
fn values_from(gw: &GatewayProc, bed: &str, device: &str) -> usize {
    gw.get_json("/api/beds")["beds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["id"] == bed)
        .flat_map(|b| b["values"].as_array().cloned().unwrap_or_default())
        .filter(|v| v["device_id"] == device)
        .count()
}

#[test]
fn an_unchanged_serial_device_keeps_its_port_open_and_a_moved_one_reopens_under_its_new_bed() {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let port = dir.path().join("spo2-01");
    let pty = icu_sim::serial::open_pty(&port).expect("a pty pair");
    let mut gw = GatewayProc::start(
        dir.path(),
        &serial_config(dir.path(), &port, "bed-01", false),
    );

    // The oximeter: a Masimo line every 100 ms while the gateway holds the port open; every
    // time the gateway lets go of the port (the master sees no slave) is counted.
    let stop = Arc::new(AtomicBool::new(false));
    let closes = Arc::new(AtomicU32::new(0));
    let oximeter = {
        let (stop, closes) = (stop.clone(), closes.clone());
        std::thread::spawn(move || {
            let mut pty = pty;
            let mut was_open = false;
            while !stop.load(Ordering::Relaxed) {
                let open = pty.connected();
                if was_open && !open {
                    closes.fetch_add(1, Ordering::Relaxed);
                }
                was_open = open;
                if open {
                    let line = icu_sim::serial::masimo_line(
                        chrono::Utc::now(),
                        "0000012345",
                        Some(97.0),
                        Some(72.0),
                        Some(2.5),
                        0,
                    );
                    let _ = pty.master.write_all(line.as_bytes());
                }
                std::thread::sleep(Duration::from_millis(5));
                // One line per 100 ms, the port watched every 5 ms.
                for _ in 0..19 {
                    let open = pty.connected();
                    if was_open && !open {
                        closes.fetch_add(1, Ordering::Relaxed);
                    }
                    was_open = open;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
    };
    wait_for(Duration::from_secs(20), "oximeter values at bed 1", || {
        (values_from(&gw, "bed-01", "spo2-01") > 0).then_some(())
    })
    .unwrap();

    // A reload that adds bed 2's monitor leaves the oximeter's port alone.
    reload_with(&gw, &serial_config(dir.path(), &port, "bed-01", true));
    wait_for(Duration::from_secs(10), "the first reload", || {
        gw.log_text()
            .contains("devices added: mon-02")
            .then_some(())
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        closes.load(Ordering::Relaxed),
        0,
        "the port was closed by a reload that did not change the device"
    );
    assert_eq!(
        gw.log_text().matches("serial port open").count(),
        1,
        "{}",
        gw.log_tail(30)
    );

    // Moving the oximeter to bed 2 closes and reopens its port; its values follow it.
    reload_with(&gw, &serial_config(dir.path(), &port, "bed-02", true));
    wait_for(Duration::from_secs(15), "oximeter values at bed 2", || {
        (values_from(&gw, "bed-02", "spo2-01") > 0).then_some(())
    })
    .unwrap();
    assert_eq!(
        values_from(&gw, "bed-01", "spo2-01"),
        0,
        "no value of the moved oximeter stays under bed 1"
    );
    assert!(
        gw.log_text().contains("replaced: spo2-01"),
        "{}",
        gw.log_tail(30)
    );
    assert_eq!(
        gw.log_text().matches("serial port open").count(),
        2,
        "{}",
        gw.log_tail(30)
    );

    stop.store(true, Ordering::Relaxed);
    oximeter.join().unwrap();
    gw.stop();
}
