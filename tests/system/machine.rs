//! A machine for tests: a real systemd booted as PID 1 in namespaces of its
//! own (tests/systemd/boot), on a copy-on-write view of this machine's root,
//! with its own host name and network namespace. Several make a fleet: give
//! them a [`Lan`].

use crate::harness::*;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// systemd takes a few seconds for some steps (a restart, the watchdog).
const WAIT: Duration = Duration::from_secs(60);

pub struct Machine {
    dir: tempfile::TempDir,
    /// systemd's PID, as seen from the test.
    pub pid: String,
}

impl Machine {
    /// Boots systemd, or says in one line why it cannot here and returns None.
    pub fn boot() -> Option<Machine> {
        Machine::boot_as("roomsense-test")
    }

    /// Boots systemd on a machine called `hostname`.
    pub fn boot_as(hostname: &str) -> Option<Machine> {
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
            .env("ROOMSENSE_BOOT_HOSTNAME", hostname)
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
    pub fn run(&self, cmd: &str) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid, "-a", "sh", "-c", cmd])
            .output()
            .expect("nsenter")
    }

    /// Runs a command that must succeed; its stdout.
    pub fn ok(&self, cmd: &str) -> String {
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
    pub fn wait_until(&self, what: &str, cmd: &str, done: impl Fn(&str) -> bool) -> String {
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

    /// A path inside this machine, as the test sees it (to copy files in and out).
    pub fn path(&self, inside: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/proc/{}/root{inside}", self.pid))
    }

    pub fn journal(&self, args: &str) -> String {
        String::from_utf8_lossy(&self.run(&format!("journalctl --no-pager {args}")).stdout)
            .into_owned()
    }

    /// `systemctl show` properties of a unit, as a map.
    pub fn show(&self, unit: &str) -> std::collections::HashMap<String, String> {
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

/// A LAN for machines: a bridge in a network namespace of its own, made by the
/// test (nothing reaches the host's network), and one veth to each machine.
pub struct Lan {
    netns: String,
    plugged: usize,
}

impl Lan {
    pub fn new() -> Lan {
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let lan = Lan {
            netns: format!("rs-lan-{}-{n}", std::process::id()),
            plugged: 0,
        };
        Lan::ip(&["netns", "add", &lan.netns]);
        Lan::ip(&["-n", &lan.netns, "link", "add", "br0", "type", "bridge"]);
        Lan::ip(&["-n", &lan.netns, "link", "set", "br0", "up"]);
        lan
    }

    fn ip(args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Plugs `m` in: its `eth0` gets `address`/24.
    pub fn plug(&mut self, m: &Machine, address: &str) {
        let port = format!("m{}", self.plugged);
        self.plugged += 1;
        let ns = self.netns.clone();
        Lan::ip(&[
            "-n", &ns, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            &m.pid,
        ]);
        Lan::ip(&["-n", &ns, "link", "set", &port, "master", "br0", "up"]);
        m.ok(&format!(
            "ip addr add {address}/24 dev eth0 && ip link set eth0 up"
        ));
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}
