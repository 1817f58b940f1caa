//! Hostile and heavy input from inside the trust boundary: an authorised node
//! certificate, a local user, an HTTP client on loopback. Each test is one way
//! of trying to take aggregatord down or make it lose data.

use crate::harness::*;
use std::process::Command;

struct Agg {
    _pki: Pki,
    _broker: Broker,
    _storage: tempfile::TempDir,
    config: ConfigFile,
    agg: Proc,
    addr: String,
}

fn aggregatord(extra: &str) -> Agg {
    let pki = Pki::new(&["room101", "aggregatord"]);
    let broker = Broker::start(&pki);
    let storage = tempfile::tempdir().unwrap();
    let config = write_config(&aggregatord_yaml_with(
        &broker,
        &pki,
        storage.path(),
        1,
        extra,
    ));
    let agg = start_daemon(AGGREGATORD, &config.path);
    let addr = dashboard_addr(&agg.log);
    agg.log.wait_for(&["subscribed"]);
    Agg {
        _pki: pki,
        _broker: broker,
        _storage: storage,
        config,
        agg,
        addr,
    }
}

#[test]
fn times_from_a_query_string_or_a_command_line_are_refused_never_a_panic() {
    let a = aggregatord("");
    for q in [
        "since=300000y",
        "until=300000y",
        "since=300000y&until=1h",
        "since=9999999999999999999999s",
        "since=0001-01-01T00:00:00Z&until=9999-12-31T23:59:59Z",
        "since=262143-12-31T23:59:59Z",
    ] {
        let path = format!("/api/history?sensor=x&{q}");
        let (status, body) = http_get(&a.addr, &path);
        // 400 with a reason, or an empty history: an answer either way.
        assert!(
            status == 400 && !body.trim().is_empty() || status == 200,
            "{path}: {status} {body:?}"
        );
    }
    assert_eq!(http_get(&a.addr, "/healthz").0, 200);
    assert_eq!(a.agg.log.count(&["panicked"]), 0, "{}", a.agg.log.text());

    // The same text on the command line: a usage error naming it, not exit 101.
    let out = Command::new(AGGREGATORD)
        .arg("--config")
        .arg(&a.config.path)
        .args(["dump", "--since", "300000y"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("too long ago"), "{stderr}");
}
