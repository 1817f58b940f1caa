//! The deployment as users run it: a real systemd (PID 1 in namespaces the test
//! makes, on a copy-on-write view of this machine; see tests/systemd/boot),
//! `scripts/install`, Mosquitto's own Debian unit with our drop-in,
//! `systemctl`, `journalctl`, credentials and the hardened sandbox.

use crate::harness::*;
use crate::machine::Machine;
use std::path::Path;

#[test]
fn installed_units_run_under_a_real_systemd_as_users_run_them() {
    require_mosquitto();
    let Some(m) = Machine::boot() else { return };
    let bin = Path::new(SENSORD).parent().unwrap().display().to_string();

    // Install as the README says (debug binaries instead of a release build).
    m.ok(&format!(
        "env ROOMSENSE_BIN={bin} ROOMSENSE_DEV_PKI=/root/dev-pki {REPO}/scripts/install --dev-pki room101"
    ));
    // Secrets at rest: keys root-only, the CA key nowhere under /etc.
    assert!(!m
        .run("runuser -u roomsense -- cat /etc/roomsense/pki/private/room101.key")
        .status
        .success());
    assert_eq!(m.ok("find /etc -name ca.key"), "");
    // Shorter waits than production so the test takes seconds: a restart after
    // 1 s, and a watchdog of 3 s. Nothing else differs from the installed units.
    m.ok("mkdir -p /etc/systemd/system/sensord@.service.d && printf '[Service]\\nRestartSec=1s\\nWatchdogSec=3s\\n' > /etc/systemd/system/sensord@.service.d/test.conf && systemctl daemon-reload");

    m.ok("systemctl restart mosquitto");
    m.ok("systemctl enable --now aggregatord");
    m.ok("systemctl start sensord@room101");
    let dump =
        "aggregatord --config /etc/roomsense/aggregatord.yaml dump --format jsonl --room room101";
    m.wait_until("readings stored", dump, |t| t.lines().count() >= 3);

    // The node's state directory (its energy meter), the service user's alone.
    assert_eq!(
        m.ok("stat -c '%U %a' /var/lib/roomsense-sensord/room101")
            .trim(),
        "roomsense 700"
    );
    // A publish the ACL refuses shows in the broker's journal (run-broker keeps
    // Mosquitto's debug-level denials and drops its line-per-message debug).
    m.ok("mosquitto_pub -h localhost -p 8883 --cafile /etc/roomsense/pki/ca.crt --cert /root/dev-pki/observer.crt --key /root/dev-pki/observer.key -q 1 -t building/floor1/room101/alerts/forged -m x");
    let denied = m.wait_until(
        "the denial in journalctl -u mosquitto",
        "journalctl --no-pager -u mosquitto",
        |t| t.contains("Denied PUBLISH from observer"),
    );
    assert!(!denied.contains("Received PUBLISH"), "{denied}");

    // systemctl status: the STATUS= line of each daemon.
    let status = m.wait_until(
        "aggregatord's STATUS=",
        "systemctl status aggregatord --no-pager",
        |t| t.contains("Status: \"connected to "),
    );
    assert!(status.contains("Active: active (running)"), "{status}");
    m.wait_until(
        "sensord's STATUS=",
        "systemctl status sensord@room101 --no-pager",
        |t| t.contains("Status: \"connected to "),
    );

    // journalctl -u, plain: the message carries its fields…
    let plain = m.journal("-u sensord@room101");
    assert!(
        plain.contains("connected broker=localhost:8883 client_id=room101"),
        "{plain}"
    );
    // …and -o json keeps them as fields of their own.
    let json = m.journal("-u sensord@room101 -o json");
    let connected: serde_json::Value = json
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| {
            e["MESSAGE"]
                .as_str()
                .is_some_and(|s| s.starts_with("connected "))
        })
        .expect("a `connected` entry");
    assert_eq!(connected["F_BROKER"], "localhost:8883");
    assert_eq!(connected["PRIORITY"], "6");

    // Reload with a good file, then with a bad one: the reason, with file:line: key,
    // in plain journalctl; the daemon carries on.
    let config = "/etc/roomsense/sensord/room101.yaml";
    m.ok(&format!("cp {config} /root/room101.good && sed -i 's/interval: 5s,  qos: 0 }}/interval: 4s,  qos: 0 }}/' {config}"));
    m.ok("systemctl reload sensord@room101");
    m.wait_until(
        "good reload",
        "journalctl --no-pager -u sensord@room101",
        |t| t.contains("configuration reloaded"),
    );
    m.ok(&format!(
        "sed -i 's/interval: 30s, qos: 2 }}/interval: 30s, qos: 7 }}/' {config}"
    ));
    let bad_line = 1 + m
        .ok(&format!("cat {config}"))
        .lines()
        .position(|l| l.contains("qos: 7"))
        .expect("the edited line");
    m.ok("systemctl reload sensord@room101");
    let reason = format!("{config}:{bad_line}: sensors[5].qos");
    let journal = m.wait_until(
        "bad reload in plain journalctl",
        "journalctl --no-pager -u sensord@room101",
        |t| t.contains("reload failed") && t.contains(&reason),
    );
    assert_eq!(
        m.show("sensord@room101.service")["ActiveState"],
        "active",
        "{journal}"
    );
    m.ok(&format!("cp /root/room101.good {config}"));

    // Killed while the broker is away: systemd restarts it, and the QoS 1/2
    // readings its outbox held (in the unit's StateDirectory) are stored once
    // the broker is back.
    m.ok("systemctl stop mosquitto");
    let outbox = "/var/lib/roomsense-sensord/room101/outbox";
    m.wait_until(
        "a reading kept in the outbox",
        &format!("grep -a -c '\"seq\"' {outbox} || true"),
        |t| t.trim().parse::<u32>().unwrap_or(0) >= 1,
    );
    let before = m.show("sensord@room101.service");
    m.ok("systemctl kill -s KILL sensord@room101");
    let kept = readings_in(&std::fs::read(m.path(outbox)).unwrap_or_default());
    assert!(!kept.is_empty());
    m.wait_until(
        "restart after SIGKILL",
        "systemctl show sensord@room101 -p NRestarts -p ActiveState -p SubState",
        |t| t.contains("NRestarts=1") && t.contains("SubState=running"),
    );
    let after_kill = m.show("sensord@room101.service");
    assert_ne!(before["MainPID"], after_kill["MainPID"]);
    m.ok("systemctl start mosquitto");
    m.wait_until("the outbox's readings stored", dump, |stored| {
        kept.iter().all(|(seq, at)| {
            stored.lines().any(|l| {
                l.contains(&format!("\"seq\":{seq},")) || l.contains(&format!("\"seq\":{seq}}}"))
            }) && stored.contains(at.as_str())
        })
    });

    // Frozen (SIGSTOP): the watchdog notices and restarts it.
    m.ok("systemctl kill -s STOP --kill-whom=main sensord@room101");
    m.wait_until(
        "watchdog restart",
        "systemctl show sensord@room101 -p NRestarts -p SubState",
        |t| t.contains("NRestarts=2") && t.contains("SubState=running"),
    );
    let watchdog_logged = m.journal("-u sensord@room101").contains("Watchdog timeout");
    assert!(watchdog_logged, "no watchdog line in the journal");

    // A config error (exit 78) is not restarted: the unit goes straight to failed
    // (a manual restart sets NRestarts back to 0; an automatic one would count).
    m.ok(&format!(
        "sed -i 's/interval: 30s, qos: 2 }}/interval: 30s, qos: 7 }}/' {config}"
    ));
    m.ok("systemctl restart sensord@room101 || true");
    let failed = m.wait_until(
        "exit 78, failed",
        "systemctl show sensord@room101 -p ActiveState -p ExecMainStatus -p NRestarts",
        |t| t.contains("ActiveState=failed"),
    );
    assert!(failed.contains("ExecMainStatus=78"), "{failed}");
    assert!(
        failed.contains("NRestarts=0"),
        "restarted after exit 78: {failed}"
    );

    // Fixed, started again; then a clean stop with its summary in the journal.
    m.ok(&format!("cp /root/room101.good {config} && systemctl reset-failed sensord@room101 && systemctl start sensord@room101"));
    m.ok("systemctl stop sensord@room101 aggregatord");
    let stopped = m.journal("-u aggregatord");
    assert!(
        stopped.contains("aggregatord stopped received="),
        "{stopped}"
    );
    assert_eq!(m.show("aggregatord.service")["ActiveState"], "inactive");
    // The sandbox wrote where it may: the database in /var/lib/roomsense.
    let stored = m
        .ok(&format!("{dump} | wc -l"))
        .trim()
        .parse::<u64>()
        .unwrap_or(0);
    let exposure = m.ok("systemd-analyze security aggregatord.service sensord@room101.service --no-pager | grep 'Overall exposure' || true");

    record(
        "systemd_deployment",
        "scripts/install --dev-pki room101 on a real systemd 252 (PID 1 in namespaces); Debian's mosquitto unit with our drop-in",
        serde_json::json!({
            "readings_stored": stored,
            "restarts_after_sigkill": after_kill["NRestarts"],
            "watchdog_timeout_logged": watchdog_logged,
            "after_exit_78": failed.lines().map(str::trim).collect::<Vec<_>>().join(" "),
            "bad_reload_reason_in_plain_journal": journal.contains(&reason),
            "exposure": exposure.lines().map(str::trim).collect::<Vec<_>>().join("; "),
        }),
    );
}

/// (seq, timestamp) of each reading in an outbox file: its frames' payloads
/// are the readings' JSON.
fn readings_in(bytes: &[u8]) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = bytes[at..].windows(2).position(|w| w == b"{\"") {
        let start = at + i;
        let mut it =
            serde_json::Deserializer::from_slice(&bytes[start..]).into_iter::<serde_json::Value>();
        match it.next() {
            Some(Ok(v)) => {
                if let (Some(seq), Some(ts)) = (v["seq"].as_u64(), v["timestamp"].as_str()) {
                    out.push((seq, ts.to_owned()));
                }
                at = start + it.byte_offset();
            }
            _ => at = start + 1,
        }
    }
    out
}
