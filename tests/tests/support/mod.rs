//! The end-to-end tests' helpers, kept in the harness crate (`icu-tests`, `tests/src/`) that the
//! benches use too; this file only re-exports them, so each test keeps `mod support;`.
#![allow(unused_imports)]

pub use icu_tests::gateway::{config_text, keygen, Endpoints, GatewayProc, Launch, SPO2_LOW_ALARM};
pub use icu_tests::http::{http_get_json, http_post_json, http_put_json, http_send_json};
pub use icu_tests::mllp::Sender;
pub use icu_tests::mosquitto::mqtt_alarms;
pub use icu_tests::sim::{run_sim, run_sim_with, SimProc, SimRun};
