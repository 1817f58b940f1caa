//! The retained online/offline status and the Last Will.

use crate::harness::*;

const STATUS: &str = "building/floor1/room101/status";

fn start_sensord(broker: &Broker, pki: &Pki) -> (ConfigFile, Proc) {
    let sensors = [("temp_001", "temperature", "1s", 0)];
    let config = write_config(&sensord_yaml(
        broker,
        pki,
        "room101",
        "building/floor1/room101",
        &sensors,
    ));
    let proc = start_daemon(SENSORD, &config.path);
    (config, proc)
}

/// A broker, a status watcher, and sensord, once its `online` status has been seen.
struct Online {
    pki: Pki,
    broker: Broker,
    watcher: Watcher,
    _config: ConfigFile,
    sensord: Proc,
}

fn online() -> Online {
    let pki = Pki::new(&["room101", "observer"]);
    let broker = Broker::start(&pki);
    let watcher = Watcher::connect(&broker, &pki, "observer");
    watcher.subscribe("building/+/+/status", 1);
    let (config, sensord) = start_sensord(&broker, &pki);
    watcher.wait_for(STATUS, |s| status_is(s, "online"));
    Online {
        pki,
        broker,
        watcher,
        _config: config,
        sensord,
    }
}

fn status_is(s: &Seen, state: &str) -> bool {
    s.json()["status"] == state
}

#[test]
fn a_late_subscriber_gets_the_retained_online_status_at_once() {
    let pki = Pki::new(&["room101", "observer"]);
    let broker = Broker::start(&pki);
    let early = Watcher::connect(&broker, &pki, "observer");
    early.subscribe("building/+/+/status", 1);
    let (_config, _sensord) = start_sensord(&broker, &pki);
    early.wait_for(STATUS, |s| status_is(s, "online"));

    // The course brief's Scenario 2: subscribe after the node started.
    let late = Watcher::connect(&broker, &pki, "observer");
    late.subscribe("building/+/+/status", 1);
    // Retained messages are sent right after the SUBACK; it is already here or arriving.
    let got = late.wait_for(STATUS, |_| true);
    assert!(got.retain, "status must arrive flagged retained");
    let json = got.json();
    assert_eq!(json["status"], "online");
    assert_eq!(json["node"], "room101");
    assert_eq!(json["sensors"][0]["id"], "temp_001");
    assert!(
        json["started_at"].is_string() && json["version"].is_string(),
        "metadata: {json}"
    );
}

#[test]
fn kill_9_makes_the_broker_publish_the_retained_last_will() {
    let Online {
        pki,
        broker,
        watcher,
        _config,
        mut sensord,
    } = online();

    sensord.kill9();
    let will = watcher.wait_for(STATUS, |s| status_is(s, "offline"));
    assert_eq!(
        will.json()["reason"],
        "connection_lost",
        "{:?}",
        will.json()
    );

    let late = Watcher::connect(&broker, &pki, "observer");
    late.subscribe(STATUS, 1);
    let retained = late.wait_for(STATUS, |_| true);
    assert!(retained.retain);
    assert_eq!(retained.json()["status"], "offline");
}

#[test]
fn sigterm_publishes_offline_itself_and_no_last_will() {
    let Online {
        pki: _pki,
        broker,
        watcher,
        _config,
        mut sensord,
    } = online();

    assert!(sensord.terminate().success(), "sensord exits 0 on SIGTERM");
    let offline = watcher.wait_for(STATUS, |s| status_is(s, "offline"));
    assert_eq!(offline.json()["reason"], "shutdown");
    // The broker logs a clean DISCONNECT; a Last Will would follow an unclean one.
    broker.proc.log.wait_for(&["Client room101 disconnected."]);
    assert!(
        !broker
            .proc
            .log
            .contains(&["room101", "closed its connection"]),
        "sensord's connection should end with DISCONNECT"
    );
    let statuses: Vec<Seen> = watcher
        .messages()
        .into_iter()
        .filter(|s| s.topic == STATUS)
        .collect();
    let offline_count = statuses.iter().filter(|s| status_is(s, "offline")).count();
    assert_eq!(
        offline_count, 1,
        "exactly one offline status (no Last Will): {statuses:#?}"
    );
}
