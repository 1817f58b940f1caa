//! Mutual TLS: the broker admits only clients with a certificate from our CA.

use crate::harness::*;
use rumqttc::tokio_rustls::rustls;
use std::sync::Arc;

fn roots(pki: &Pki) -> rustls::RootCertStore {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.path("ca.crt")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

#[test]
fn a_client_with_our_certificate_connects() {
    // The control for the refusals below: same rig, right certificate.
    let pki = Pki::new(&["observer"]);
    let broker = Broker::start(&pki);
    let w = Watcher::try_connect(&broker, tls(&pki, "observer"), "control");
    assert_eq!(w.wait_connected(), Ok(()));
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let pki = Pki::new(&["observer"]);
    let broker = Broker::start(&pki);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(&pki))
        .with_no_client_auth();
    let w = Watcher::try_connect(&broker, config, "no-cert");
    let err = w
        .wait_connected()
        .expect_err("connected without a client certificate");
    assert!(!err.is_empty());
    let broker_log = broker
        .proc
        .log
        .wait_for(&["peer did not return a certificate"]);
    record(
        "tls_no_client_certificate",
        "Client without a certificate",
        serde_json::json!({ "our_error": err, "broker_log": broker_log }),
    );
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let pki = Pki::new(&["observer"]);
    let other = Pki::new(&["observer"]);
    let broker = Broker::start(&pki);
    // Trusts our broker, but presents a certificate signed by a stranger.
    let stranger = roomsense::mqtt::TlsFiles {
        ca_file: pki.path("ca.crt"),
        cert_file: other.path("observer.crt"),
        key_file: other.path("observer.key"),
    };
    let w = Watcher::try_connect(
        &broker,
        roomsense::mqtt::tls_client_config(&stranger).unwrap(),
        "stranger",
    );
    let err = w
        .wait_connected()
        .expect_err("connected with another CA's certificate");
    assert!(err.contains("UnknownCA"), "{err}");
    // Mosquitto words this two ways depending on when the handshake fails.
    let broker_log = broker.proc.log.wait_for(&["certificate verify failed"]);
    record(
        "tls_other_ca",
        "Client certificate from another CA",
        serde_json::json!({ "our_error": err, "broker_log": broker_log }),
    );
}

#[test]
fn sensord_with_a_foreign_certificate_keeps_retrying_and_says_why() {
    let pki = Pki::new(&["room101"]);
    let other = Pki::new(&["room101"]);
    let broker = Broker::start(&pki);
    let yaml = sensord_yaml(
        &broker,
        &pki,
        "room101",
        "building/floor1/room101",
        &[("t", "temperature", "1s", 0)],
    )
    .replace(
        &format!("cert_file: {}", pki.path("room101.crt").display()),
        &format!("cert_file: {}", other.path("room101.crt").display()),
    )
    .replace(
        &format!("key_file: {}", pki.path("room101.key").display()),
        &format!("key_file: {}", other.path("room101.key").display()),
    );
    let config = write_config(&yaml);
    let sensord = start_daemon(SENSORD, &config.path);
    // Our side says what went wrong, in words an operator can search for.
    let line = sensord.log.wait_for(&["MQTT connection failed"]);
    assert!(line.contains("UnknownCA"), "{line}");
    // It retries with backoff rather than giving up: a second attempt reaches the broker.
    broker
        .proc
        .log
        .wait_for_nth(&["certificate verify failed"], 2);
    assert!(!sensord.log.contains(&["INFO", "connected broker="]));
}
