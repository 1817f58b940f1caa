//! The reliability and security proof suite: faults injected on purpose, with the
//! outcome counted. Each test records what it measured in
//! target/reliability/<test>.json; scripts/reliability-report turns those into
//! RELIABILITY.md.

use crate::harness::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const PREFIX: &str = "building/floor1/room101";

/// Records a measured result for RELIABILITY.md.
pub fn record(test: &str, what: &str, result: serde_json::Value) {
    let dir = format!("{REPO}/target/reliability");
    std::fs::create_dir_all(&dir).unwrap();
    let entry = serde_json::json!({ "test": test, "what": what, "result": result });
    std::fs::write(format!("{dir}/{test}.json"), entry.to_string()).unwrap();
}

#[test]
fn a_silently_dead_link_is_noticed_by_keepalive_and_healed_without_busy_looping() {
    let pki = Pki::new(&["room101", "observer"]);
    let broker = Broker::start(&pki);
    let link = Blackhole::to(broker.port);
    let sensors = [("temp_001", "temperature", "200ms", 0)];
    let keep_alive = Duration::from_secs(2);
    let yaml = sensord_yaml_on(link.port, &pki, "room101", PREFIX, &sensors, "")
        .replace("keep_alive: 5s", "keep_alive: 2s");
    let config = write_config(&yaml);
    let sensord = start_daemon(SENSORD, &config.path);
    sensord.log.wait_for(&["connected broker="]);
    let watcher = Watcher::connect(&broker, &pki, "observer");
    watcher.subscribe(&format!("{PREFIX}/#"), 1);
    watcher.wait_for(&format!("{PREFIX}/temperature/temp_001"), |_| true);

    let cpu_before = cpu_seconds(sensord.pid());
    let cut_at = Instant::now();
    link.cut();
    sensord.log.wait_for(&["no answer to keep-alive ping"]);
    let detected = cut_at.elapsed();
    // While cut: connection attempts go into the void and time out; no spinning.
    sensord
        .log
        .wait_for_nth(&["waiting before reconnecting"], 2);
    let cut_for = cut_at.elapsed();
    let cpu_while_cut = cpu_seconds(sensord.pid()) - cpu_before;
    // The broker saw nothing either, and sends the Last Will after 1.5 keep-alives.
    watcher.wait_for(&format!("{PREFIX}/status"), |s| {
        s.json()["status"] == "offline"
    });

    link.heal();
    let healed_at = Instant::now();
    sensord.log.wait_for_nth(&["connected broker="], 2);
    let recovered = healed_at.elapsed();
    watcher.wait_for(&format!("{PREFIX}/status"), |s| {
        s.json()["status"] == "online" && s.retain == false
    });

    // Two keep-alives: one ping unanswered, noticed when the next is due.
    assert!(
        detected < keep_alive * 3,
        "dead link noticed after {detected:?} (keep-alive {keep_alive:?})"
    );
    assert!(
        cpu_while_cut < 0.5,
        "{cpu_while_cut:.3} s of CPU during a {cut_for:?} cut: busy looping?"
    );
    record(
        "network_cut",
        "Relay goes silent (no FIN) under sensord, keep-alive 2 s; then heals",
        serde_json::json!({
            "detected_after_s": detected.as_secs_f64(),
            "cpu_s_while_cut": cpu_while_cut,
            "cut_for_s": cut_for.as_secs_f64(),
            "reconnected_after_heal_s": recovered.as_secs_f64(),
        }),
    );
}
