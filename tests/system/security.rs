//! Who may connect and what they may do: the TLS matrix, the ACL, private key
//! permissions, and the plaintext escape hatch.

use crate::harness::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

const PREFIX: &str = "building/floor1/room101";

fn sensord_with(broker_port: u16, pki: &Pki) -> (ConfigFile, Proc) {
    let config = write_config(&sensord_yaml_on(
        broker_port,
        pki,
        "room101",
        PREFIX,
        &[("t", "temperature", "1s", 0)],
        "",
    ));
    let proc = start_daemon(SENSORD, &config.path);
    (config, proc)
}

#[test]
fn an_expired_client_certificate_is_refused() {
    let pki = Pki::new(&["room101"]);
    let broker = Broker::start(&pki);
    // Same CA, but a room101 certificate that expired yesterday.
    pki.renew("room101", &[("PKI_DAYS", "-1")]);
    let (_config, sensord) = sensord_with(broker.port, &pki);
    let line = sensord.log.wait_for(&["MQTT connection failed"]);
    assert!(
        line.contains("CertificateExpired"),
        "our side says why: {line}"
    );
    broker.proc.log.wait_for(&["certificate verify failed"]);
    let connected = sensord.log.contains(&["connected broker="]);
    assert!(!connected);
    record(
        "tls_expired_client",
        "Client certificate from our CA, expired yesterday",
        serde_json::json!({ "connected": connected, "our_log": line }),
    );
}

#[test]
fn a_broker_certificate_for_another_name_is_refused_by_us() {
    let pki = Pki::with_env(&["room101"], &[("BROKER_NAMES", "DNS:elsewhere.example")]);
    let broker = Broker::start(&pki);
    let (_config, sensord) = sensord_with(broker.port, &pki);
    let line = sensord.log.wait_for(&["MQTT connection failed"]);
    assert!(
        line.contains("certificate not valid for name \"localhost\""),
        "our side says why: {line}"
    );
    let connected = sensord.log.contains(&["connected broker="]);
    assert!(!connected);
    record(
        "tls_wrong_server_name",
        "Broker certificate issued for another name",
        serde_json::json!({ "connected": connected, "our_log": line }),
    );
}

#[test]
fn the_acl_keeps_each_client_in_its_place() {
    let pki = Pki::new(&["room101", "observer", "aggregatord"]);
    let broker = Broker::start(&pki);
    let all = Watcher::connect(&broker, &pki, "aggregatord");
    all.subscribe("building/#", 1);
    let room101 = Watcher::connect(&broker, &pki, "room101");
    let observer = Watcher::connect(&broker, &pki, "observer");
    let forbidden = [
        (
            &room101,
            "building/floor1/room102/temperature/temp_001",
            "room101 writing as room102",
        ),
        (
            &room101,
            "building/floor1/room101/alerts/too_hot",
            "room101 forging an alert",
        ),
        (
            &room101,
            "building/floor1/room101/x/status",
            "room101 forging a status on a sub-prefix",
        ),
        (
            &room101,
            "building/floor1/room101/x/alerts/too_hot",
            "room101 forging an alert on a sub-prefix",
        ),
        (
            &room101,
            "building/floor1/room101/x/temperature/temp_001",
            "room101 inventing a room under its own",
        ),
        (
            &room101,
            "building/floor1/room101/temperature/status",
            "room101 publishing a reading with the reserved id status",
        ),
        (
            &observer,
            "building/floor1/room101/temperature/temp_001",
            "observer publishing a reading",
        ),
        (
            &observer,
            "building/floor1/observer/temperature/t",
            "observer under its own name",
        ),
    ];
    for (i, (client, topic, _)) in forbidden.iter().enumerate() {
        client.publish(topic, b"{}", 1);
        // Mosquitto acknowledges a refused QoS 1 publish too, after dropping it.
        client.wait_confirmed(
            1 + forbidden
                .iter()
                .take(i)
                .filter(|(c, ..)| std::ptr::eq(*c, *client))
                .count(),
        );
    }
    // A permitted message after all of them: once it is here, they would be too.
    room101.publish(&format!("{PREFIX}/temperature/marker"), b"{}", 1);
    all.wait_for(&format!("{PREFIX}/temperature/marker"), |_| true);
    let seen = all.messages();
    let through: Vec<&str> = forbidden
        .iter()
        .filter(|(_, topic, _)| seen.iter().any(|s| s.topic == *topic))
        .map(|(_, _, what)| *what)
        .collect();
    record(
        "acl",
        "room101 writing as room102, forging an alert, a status or an alert on a sub-prefix, a room under its own, the reserved id status; observer publishing (twice)",
        serde_json::json!({ "attempts": forbidden.len(), "delivered": through.len() }),
    );
    assert!(through.is_empty(), "got through: {through:?}");
}

#[test]
fn a_private_key_readable_by_others_is_refused_like_ssh_does() {
    let pki = Pki::new(&["room101"]);
    let key = pki.path("room101.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let broker = Broker::start(&pki);
    let (_config, mut sensord) = sensord_with(broker.port, &pki);
    let status = sensord.wait();
    // Waited for, not read at once: the exit can overtake the log reader.
    let err = sensord.log.wait_for(&["readable by group or others"]);
    record(
        "key_permissions",
        "Client private key left mode 0644",
        serde_json::json!({ "exit_status": status.code(), "says_how_to_fix": err.contains("chmod 600") }),
    );
    assert_eq!(status.code(), Some(78), "a config problem: exit 78");
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn plaintext_only_when_asked_only_on_loopback_and_never_quietly() {
    require_mosquitto();
    let pki = Pki::new(&["room101"]);
    let base = sensord_yaml_on(
        1883,
        &pki,
        "room101",
        PREFIX,
        &[("t", "temperature", "100ms", 0)],
        "",
    );
    let tls_line = base
        .lines()
        .find(|l| l.trim_start().starts_with("tls:"))
        .unwrap()
        .to_owned();
    // A plaintext listener for this test only (the deploy config has none).
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("plain.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
    )
    .unwrap();
    let _plain = Proc::spawn(
        "mosquitto-plain",
        Command::new("mosquitto").arg("-c").arg(&conf),
    );
    wait_listening(port);

    let plain = base
        .replace(&tls_line, "  insecure_plaintext: true")
        .replace("port: 1883", &format!("port: {port}"));
    let config = write_config(&plain);
    let sensord = start_daemon(SENSORD, &config.path);
    sensord.log.wait_for(&["WITHOUT TLS"]);
    sensord.log.wait_for(&["connected broker="]);

    // Not for another host, and not without saying so.
    let remote = write_config(&plain.replace("host: localhost", "host: broker.example"));
    let out = Command::new(SENSORD)
        .arg("--check-config")
        .arg("--config")
        .arg(&remote.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broker.insecure_plaintext"));
    let neither = write_config(&base.replace(&tls_line, ""));
    let out = Command::new(SENSORD)
        .arg("--check-config")
        .arg("--config")
        .arg(&neither.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broker.tls: required"));
}

/// The operator's CA tool on a test PKI (its development layout).
fn pki_tool(pki: &Pki, args: &[&str]) -> String {
    let dir = pki.dir.path().to_str().expect("utf-8 temp path");
    stdout_of(
        Command::new(format!("{REPO}/deploy/pki/roomsense-pki"))
            .args(["--flat", "--no-restart", "--ca", dir, "--pki", dir])
            .args(["--broker-dir", ""])
            .args(args),
    )
}

#[test]
fn a_revoked_node_is_refused_at_its_next_connect() {
    let pki = Pki::new(&["room101"]);
    let mut broker = Broker::start(&pki);
    let (_config, sensord) = sensord_with(broker.port, &pki);
    sensord.log.wait_for(&["connected broker="]);
    let said = pki_tool(&pki, &["revoke", "room101"]);
    assert!(said.contains("revoked room101"), "{said}");
    // What roomsense-pki does with systemd: a restart drops the open connection
    // (a SIGHUP would reread the CRL but keep it).
    broker.restart(&pki, true);
    // Refused twice: sensord tried again after its backoff and was refused again.
    broker
        .proc
        .log
        .wait_for_nth(&["certificate verify failed"], 2);
    let line = sensord
        .log
        .wait_for(&["MQTT connection failed", "CertificateRevoked"]);
    assert!(line.contains("retrying with backoff"), "{line}");
    assert_eq!(sensord.log.count(&["connected broker="]), 1);
    let listed = pki_tool(&pki, &["list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("REVOKED") && l.ends_with(" room101")),
        "{listed}"
    );
}

#[test]
fn a_certificate_renewed_in_place_is_used_at_the_next_reconnect_without_a_signal() {
    let pki = Pki::new(&["room101"]);
    let mut broker = Broker::start(&pki);
    let (_config, sensord) = sensord_with(broker.port, &pki);
    sensord.log.wait_for(&["connected broker="]);
    pki.renew("room101", &[]);
    // The old certificate is of no use any more: only the renewed files on
    // disk can get sensord back in.
    pki_tool(&pki, &["revoke", "room101", "--old"]);
    broker.restart(&pki, true);
    sensord.log.wait_for_nth(&["connected broker="], 2);
    assert!(!sensord.log.contains(&["configuration reloaded"]));
}
