//! Config errors: exit status 78, naming file, line and key. No broker needed.

use crate::harness::*;
use std::process::Command;

fn check(bin: &str, path: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(bin)
        .arg("--check-config")
        .arg("--config")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_shipped_example_configs_are_valid() {
    // --check-config reads the certificates and keys the configs name (the
    // demo's var/pki): copies of the configs get a PKI of their own there.
    let pki = Pki::new(&["room101", "room102", "room201", "aggregatord"]);
    let tree = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tree.path().join("config/sensord")).unwrap();
    std::fs::create_dir_all(tree.path().join("var")).unwrap();
    std::os::unix::fs::symlink(pki.path(""), tree.path().join("var/pki")).unwrap();
    let copy = |file: &str| {
        let to = tree.path().join(file);
        std::fs::copy(std::path::Path::new(REPO).join(file), &to).unwrap();
        to
    };
    for file in [
        "config/sensord/room101.yaml",
        "config/sensord/room102.yaml",
        "config/sensord/room201.yaml",
    ] {
        let (code, err) = check(SENSORD, &copy(file));
        assert_eq!(code, Some(0), "{file}: {err}");
    }
    let (code, err) = check(AGGREGATORD, &copy("config/aggregatord.yaml"));
    assert_eq!(code, Some(0), "{err}");
}

/// On a fresh clone (issue 27, item 13): the example configs name the
/// demo's PKI, which is not there yet. The error says how to make it.
#[test]
fn the_example_configs_without_the_demo_pki_say_how_to_make_it() {
    let tree = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tree.path().join("config/sensord")).unwrap();
    for file in ["config/sensord/room101.yaml", "config/aggregatord.yaml"] {
        let to = tree.path().join(file);
        std::fs::copy(std::path::Path::new(REPO).join(file), &to).unwrap();
        let bin = if file.contains("sensord") {
            SENSORD
        } else {
            AGGREGATORD
        };
        let (code, err) = check(bin, &to);
        assert_eq!(code, Some(78), "{file}: {err}");
        assert!(
            err.contains("var/pki/ca.crt")
                && err.contains("run scripts/demo")
                && err.contains("deploy/pki/gen-dev-pki.sh var/pki"),
            "{file}: {err}"
        );
    }
}

#[test]
fn a_bad_config_names_file_line_and_key_and_exits_78() {
    let good = std::fs::read_to_string(format!("{REPO}/config/sensord/room101.yaml")).unwrap();
    let cases = [
        ("qos: 1,", "qos: 3,", "sensors[4].qos", "QoS is 0, 1 or 2"),
        (
            "clear_after: 30s",
            "clear_after: 30",
            "sensors[4].clear_after",
            "invalid duration",
        ),
        (
            "[mon, tue,",
            "[mon, tue, xyz,",
            "room.occupancy.days[2]",
            "weekday names expected",
        ),
        (
            "keep_alive: 30s",
            "keep_alive: soon",
            "broker.keep_alive",
            "invalid duration",
        ),
        (
            "port: 8883",
            "port: 8883\n  colour: blue",
            "broker.colour",
            "unknown field",
        ),
        ("id: room101 ", "id: room/101 ", "node.id", "contains '/'"),
        (
            "id: hum_001, ",
            "id: temp_001,",
            "sensors[1].id",
            "used by an earlier sensor",
        ),
    ];
    for (from, to, key, message) in cases {
        assert!(
            good.contains(from),
            "example config changed; update this test ({from:?})"
        );
        let bad = good.replacen(from, to, 1);
        // The line of the key in question: the last line of the replacement.
        let at = good.find(from).unwrap() + to.rfind('\n').map_or(0, |i| i + 1);
        let line = bad[..at].matches('\n').count() + 1;
        let file = write_config(&bad);
        let (code, err) = check(SENSORD, &file.path);
        assert_eq!(code, Some(78), "{key}: {err}");
        let expect = format!("{}:{line}: {key}: ", file.path.display());
        assert!(err.contains(&expect), "expected {expect:?} in {err:?}");
        assert!(err.contains(message), "expected {message:?} in {err:?}");
    }
    let (code, err) = check(
        AGGREGATORD,
        std::path::Path::new("/nonexistent/aggregatord.yaml"),
    );
    assert_eq!(code, Some(78));
    assert!(
        err.contains("/nonexistent/aggregatord.yaml: cannot read config"),
        "{err}"
    );
}

/// A node that is not who its certificate says (another node's certificate,
/// a prefix not ending in its id, a certificate another CA signed): each
/// passed `--check-config` and then lost every reading without a word, the
/// broker dropping what it refused (issue 25). Now refused, by key, exit 78.
#[test]
fn a_node_that_is_not_who_its_certificate_says_is_refused_by_check_config() {
    let pki = Pki::new(&["room101", "room102"]);
    let other_ca = Pki::new(&["room101"]);
    let config = |tls: String, prefix: &str| {
        write_config(&format!(
            "node: {{ id: room101, topic_prefix: {prefix} }}\nbroker: {{ host: localhost, port: 1, tls: {tls} }}\nsensors:\n  - {{ id: temp_001, type: temperature, interval: 1s }}\n"
        ))
    };
    let mixed = |ca: &Pki, cert: &Pki, name: &str| {
        format!(
            "{{ ca_file: {}, cert_file: {}, key_file: {} }}",
            ca.path("ca.crt").display(),
            cert.path(&format!("{name}.crt")).display(),
            cert.path(&format!("{name}.key")).display()
        )
    };
    let good = config(pki.tls_yaml("room101"), "building/floor1/room101");
    let (code, err) = check(SENSORD, &good.path);
    assert_eq!(code, Some(0), "{err}");
    for (tls, prefix, key, says) in [
        (
            pki.tls_yaml("room102"),
            "building/floor1/room101",
            "node.id",
            "CN=room102",
        ),
        (
            pki.tls_yaml("room101"),
            "building/floor1/room-101",
            "node.topic_prefix",
            "ends in room-101",
        ),
        (
            mixed(&pki, &other_ca, "room101"),
            "building/floor1/room101",
            "broker.tls.cert_file",
            "not issued by the CA",
        ),
    ] {
        let bad = config(tls, prefix);
        let (code, err) = check(SENSORD, &bad.path);
        assert_eq!(code, Some(78), "{key}: {err}");
        assert!(
            err.contains(key) && err.contains(says),
            "{key}, {says}: {err}"
        );
    }
}

/// aggregatord with TLS and no `alert_identity`: its two connections took
/// each other's place every second against the shipped broker, and nothing
/// was stored; a certificate of the same CN for both, likewise. Refused.
#[test]
fn aggregatord_without_an_identity_of_its_own_for_alerts_is_refused() {
    let pki = Pki::new(&["aggregatord"]);
    let storage = tempfile::tempdir().unwrap();
    let config = |alerts: &str| {
        write_config(&format!(
            "client_id: aggregatord\nbroker: {{ host: localhost, port: 1, tls: {} }}\n{alerts}subscriptions:\n  - {{ filter: \"building/#\", qos: 1 }}\nstorage:\n  path: {}\n",
            pki.tls_yaml("aggregatord"),
            storage.path().display()
        ))
    };
    let identity = |name: &str| {
        format!(
            "alert_identity: {{ cert_file: {}, key_file: {} }}\n",
            pki.path(&format!("{name}.crt")).display(),
            pki.path(&format!("{name}.key")).display()
        )
    };
    let (code, err) = check(AGGREGATORD, &config(&identity("aggregatord-alerts")).path);
    assert_eq!(code, Some(0), "{err}");
    for (alerts, says) in [
        ("", "required with broker.tls"),
        (&identity("aggregatord")[..], "CN=aggregatord"),
    ] {
        let (code, err) = check(AGGREGATORD, &config(alerts).path);
        assert_eq!(code, Some(78), "{err}");
        assert!(
            err.contains("alert_identity") && err.contains(says),
            "{says}: {err}"
        );
    }
}
