//! The deployment as users run it: a real systemd (PID 1 in namespaces the test
//! makes, on a copy-on-write view of this machine; see tests/systemd/boot),
//! `scripts/install`, Mosquitto's own Debian unit with our drop-in,
//! `systemctl`, `journalctl`, credentials and the hardened sandbox.

use crate::harness::*;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// systemd takes a few seconds for some steps (a restart, the watchdog).
const WAIT: Duration = Duration::from_secs(60);

struct Machine {
    dir: tempfile::TempDir,
    pid: String,
}

impl Machine {
    /// Boots systemd, or says in one line why it cannot here and returns None.
    fn boot() -> Option<Machine> {
        let root = stdout_of(Command::new("id").arg("-u")).trim() == "0";
        let namespaces = root
            && Command::new("unshare")
                .args(["--pid", "--fork", "--mount", "--net", "--cgroup", "true"])
                .status()
                .is_ok_and(|s| s.success());
        if !namespaces {
            eprintln!("SKIPPED real-systemd test: it needs root and namespaces (unshare), which this machine does not allow");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = Path::new(SENSORD).parent().expect("binary folder");
        let out = Command::new(format!("{REPO}/tests/systemd/boot"))
            .arg(dir.path())
            .env("ROOMSENSE_BOOT_BIND", format!("{REPO}:{}", bin.display()))
            .output()
            .expect("run tests/systemd/boot");
        let pid = std::fs::read_to_string(dir.path().join("pid")).unwrap_or_default();
        let machine = Machine {
            pid: pid.trim().to_owned(),
            dir,
        };
        assert!(
            out.status.success(),
            "systemd did not boot: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(machine)
    }

    /// Runs a shell command inside, as root.
    fn run(&self, cmd: &str) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid, "-a", "sh", "-c", cmd])
            .output()
            .expect("nsenter")
    }

    /// Runs a command that must succeed; its stdout.
    fn ok(&self, cmd: &str) -> String {
        let out = self.run(cmd);
        assert!(
            out.status.success(),
            "`{cmd}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls `cmd` until its output satisfies `done`. systemd offers no event
    /// for "the unit restarted" or "the readings are stored" that a shell
    /// command can wait on, so this asks again every 100 ms, up to [`WAIT`].
    fn wait_until(&self, what: &str, cmd: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = self.run(cmd);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if done(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {WAIT:?}; last `{cmd}`:\n{text}{}\njournal:\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.journal("")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn journal(&self, args: &str) -> String {
        String::from_utf8_lossy(&self.run(&format!("journalctl --no-pager {args}")).stdout)
            .into_owned()
    }

    /// `systemctl show` properties of a unit, as a map.
    fn show(&self, unit: &str) -> std::collections::HashMap<String, String> {
        self.ok(&format!(
            "systemctl show {unit} -p ActiveState -p SubState -p NRestarts -p MainPID -p ExecMainStatus -p Result"
        ))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}

impl Drop for Machine {
    /// Powers it off (SIGRTMIN+4 is systemd's "poweroff"); if it does not go,
    /// kills it: unshare --kill-child takes every process inside with it.
    fn drop(&mut self) {
        let unshare = std::fs::read_to_string(self.dir.path().join("unshare.pid"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        if !self.pid.is_empty() {
            let _ = Command::new("kill")
                .args(["-s", "SIGRTMIN+4", &self.pid])
                .status();
        }
        let gone = |pid: &str| !Path::new(&format!("/proc/{pid}")).exists();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !unshare.is_empty() && !gone(&unshare) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if !unshare.is_empty() && !gone(&unshare) {
            let _ = Command::new("kill").args(["-KILL", &unshare]).status();
        }
        if std::thread::panicking() {
            let console =
                std::fs::read_to_string(self.dir.path().join("console")).unwrap_or_default();
            let tail: Vec<&str> = console.lines().rev().take(40).collect();
            eprintln!("----- systemd console (last lines) -----");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        // The cgroup it ran in, deepest folders first.
        if let Ok(cg) = std::fs::read_to_string(self.dir.path().join("cgroup")) {
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "find {} -depth -type d -exec rmdir {{}} + 2>/dev/null",
                    cg.trim()
                ))
                .status();
        }
    }
}

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

    // Killed: systemd restarts it.
    let before = m.show("sensord@room101.service");
    m.ok("systemctl kill -s KILL sensord@room101");
    m.wait_until(
        "restart after SIGKILL",
        "systemctl show sensord@room101 -p NRestarts -p ActiveState -p SubState",
        |t| t.contains("NRestarts=1") && t.contains("SubState=running"),
    );
    let after_kill = m.show("sensord@room101.service");
    assert_ne!(before["MainPID"], after_kill["MainPID"]);

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
