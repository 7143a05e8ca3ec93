//! The alarm manager (`[alarm_manager] mllp`, PCD-04 out): a TCP connection, and with
//! `tls.alarm_manager = "required"` a TLS handshake trusting `tls.ca_file` (presenting the
//! gateway's certificate when it has one), then closed. No message is sent.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::check::Check;
use crate::alarm::pcd04_out::AlarmManagerConfig;
use crate::tls::TlsConfig;

pub async fn probe(am: &AlarmManagerConfig, tls: &TlsConfig, timeout: Duration) -> Check {
    let on = tls.alarm_manager.is_on();
    let what = format!(
        "alarm manager {} ({})",
        am.mllp,
        if on { "mllp over tls" } else { "mllp" }
    );
    let fix_address =
        "check alarm_manager.mllp (host:port), the network, and that the alarm manager listens";
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(&am.mllp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Check::fail(what, format!("cannot connect: {e}"), fix_address),
        Err(_) => {
            return Check::fail(
                what,
                format!("no answer within {} s", timeout.as_secs_f64()),
                fix_address,
            )
        }
    };
    if !on {
        return Check::ok(what);
    }
    let Some(ca) = &tls.ca_file else {
        return Check::fail(what, "tls.ca_file is not set", "set tls.ca_file");
    };
    let identity = tls.cert_file.as_deref().zip(tls.key_file.as_deref());
    let client = match crate::tls::client_config(ca, identity) {
        Ok(c) => Arc::new(c),
        Err(e) => return Check::fail(what, e.to_string(), "fix the files of [tls]"),
    };
    let host = am
        .mllp
        .rsplit_once(':')
        .map_or(am.mllp.as_str(), |(h, _)| h);
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let name = match rustls::pki_types::ServerName::try_from(host.clone()) {
        Ok(n) => n,
        Err(e) => return Check::fail(what, format!("{host}: {e}"), "fix alarm_manager.mllp"),
    };
    let connector = tokio_rustls::TlsConnector::from(client);
    match tokio::time::timeout(timeout, connector.connect(name, stream)).await {
        Ok(Ok(_)) => Check::ok(what),
        Ok(Err(e)) => Check::fail(
            what,
            format!("TLS handshake: {e}"),
            format!(
                "tls.ca_file must hold the CA of the alarm manager's certificate, which must \
                 name {host}"
            ),
        ),
        Err(_) => Check::fail(
            what,
            format!("no TLS answer within {} s", timeout.as_secs_f64()),
            "check that the alarm manager speaks TLS on that port",
        ),
    }
}
