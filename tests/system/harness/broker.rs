//! A real Mosquitto with the deploy config, on a free loopback port.

use super::*;
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

/// Mosquitto on a free loopback port, configured from deploy/mosquitto.
pub struct Broker {
    pub port: u16,
    pub proc: Proc,
    data: tempfile::TempDir,
    /// Logs every packet (`log_type all`): a broker-side observer of acks.
    verbose: bool,
}

impl Broker {
    pub fn start(pki: &Pki) -> Broker {
        Self::start_on(pki, free_port())
    }

    /// Starts on a given port: for tests where clients are waiting for it.
    pub fn start_on(pki: &Pki, port: u16) -> Broker {
        require("mosquitto", "mosquitto");
        let data = tempfile::tempdir().expect("tempdir");
        Self::start_in(pki, data, port, false)
    }

    /// Logs every packet it receives and sends (`Received PUBACK from …`), so a
    /// test can see what a client acknowledged, and when.
    pub fn start_logging_packets(pki: &Pki) -> Broker {
        require("mosquitto", "mosquitto");
        let data = tempfile::tempdir().expect("tempdir");
        Self::start_in(pki, data, free_port(), true)
    }

    /// With `extra` lines after the shipped ACL (more identities, e.g. a
    /// second aggregatord instance).
    pub fn start_with_acl(pki: &Pki, extra: &str) -> Broker {
        require("mosquitto", "mosquitto");
        let data = tempfile::tempdir().expect("tempdir");
        let shipped = std::fs::read_to_string(format!("{REPO}/deploy/mosquitto/acl")).expect("acl");
        std::fs::write(data.path().join("acl"), format!("{shipped}\n{extra}\n")).expect("acl");
        Self::start_in(pki, data, free_port(), false)
    }

    /// With `extra` lines after the rendered mosquitto.conf (a bridge), kept
    /// across a restart like [`Broker::start_with_acl`]'s ACL.
    pub fn start_with_conf(pki: &Pki, extra: &str) -> Broker {
        require("mosquitto", "mosquitto");
        let data = tempfile::tempdir().expect("tempdir");
        std::fs::write(data.path().join("extra.conf"), extra).expect("extra.conf");
        Self::start_in(pki, data, free_port(), false)
    }

    fn start_in(pki: &Pki, data: tempfile::TempDir, port: u16, verbose: bool) -> Broker {
        let conf = data.path().join("mosquitto.conf");
        let rendered = Command::new(format!("{REPO}/deploy/mosquitto/render-conf"))
            .arg(pki.dir.path())
            .arg(data.path())
            .arg(port.to_string())
            .output()
            .expect("run render-conf");
        assert!(
            rendered.status.success(),
            "render-conf: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        let mut rendered = rendered.stdout;
        // Broker::start_with_acl's own ACL (kept across a restart: same folder).
        let own_acl = data.path().join("acl");
        if own_acl.exists() {
            let text = String::from_utf8_lossy(&rendered)
                .lines()
                .map(|l| {
                    if l.starts_with("acl_file ") {
                        format!("acl_file {}", own_acl.display())
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            rendered = format!("{text}\n").into_bytes();
        }
        if let Ok(extra) = std::fs::read(data.path().join("extra.conf")) {
            rendered.extend_from_slice(&extra);
        }
        if verbose || std::env::var_os("ROOMSENSE_BROKER_DEBUG").is_some() {
            rendered.extend_from_slice(b"log_type all\n");
        }
        std::fs::write(&conf, &rendered).expect("write mosquitto.conf");
        // As installed: through run-broker, which keeps ACL denials in the log.
        let mut cmd = Command::new(format!("{REPO}/deploy/mosquitto/run-broker"));
        cmd.arg("-c").arg(&conf);
        if verbose {
            cmd.env("ROOMSENSE_BROKER_DEBUG", "1");
        }
        let mut proc = Proc::spawn("mosquitto", &mut cmd);
        // Ready means accepting connections: try to connect until it does (or dies).
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = proc.try_status() {
                panic!(
                    "mosquitto exited ({status}) during start-up:\n{}",
                    proc.log.text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto not listening within {PATIENCE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker {
            port,
            proc,
            data,
            verbose,
        }
    }

    /// Stops Mosquitto (SIGTERM: it saves its state). [`Stopped::start`] brings it
    /// back on the same port with that state.
    pub fn stop(mut self) -> Stopped {
        assert!(self.proc.terminate().success(), "mosquitto exit status");
        self.into_stopped()
    }

    /// What a restart needs of a broker that has exited: its port and saved state.
    fn into_stopped(mut self) -> Stopped {
        let fresh = tempfile::tempdir().expect("tempdir");
        Stopped {
            verbose: self.verbose,
            port: self.port,
            data: std::mem::replace(&mut self.data, fresh),
        }
    }

    /// Makes Mosquitto write its state to disk now (SIGUSR1), and waits until it has.
    pub fn save(&self) {
        let saves = |l: &str| l.contains("Saving in-memory database");
        let before = self.proc.log.count_where(saves);
        signal(self.proc.pid(), libc::SIGUSR1);
        self.proc
            .log
            .wait_for_nth_where(saves, before + 1, "a save");
    }

    /// Kills Mosquitto (kill -9): what it held in memory since its last save
    /// ([`Broker::save`], or its autosave) is gone. [`Stopped::start`] brings it
    /// back on the same port with the saved state.
    pub fn crash(mut self) -> Stopped {
        self.proc.kill9();
        self.into_stopped()
    }

    /// Stops Mosquitto (SIGTERM: it saves its state) and starts it again on the same
    /// port, with that state or, if `keep_state` is false, with none: every
    /// session, queued message and retained message forgotten.
    pub fn restart(&mut self, pki: &Pki, keep_state: bool) {
        assert!(self.proc.terminate().success(), "mosquitto exit status");
        let fresh = tempfile::tempdir().expect("tempdir");
        let data = if keep_state {
            std::mem::replace(&mut self.data, fresh)
        } else {
            fresh
        };
        *self = Broker::start_in(pki, data, self.port, self.verbose);
    }

    /// The `broker:` block of a roomsense config for client `name`.
    pub fn yaml(&self, pki: &Pki, name: &str) -> String {
        broker_yaml(self.port, pki, name)
    }
}

/// A broker that was stopped; its port and saved state are kept for a restart.
pub struct Stopped {
    pub port: u16,
    verbose: bool,
    data: tempfile::TempDir,
}

impl Stopped {
    pub fn start(self, pki: &Pki) -> Broker {
        Broker::start_in(pki, self.data, self.port, self.verbose)
    }
}

/// The `broker:` block of a roomsense config for client `name`, broker at `port`.
pub fn broker_yaml(port: u16, pki: &Pki, name: &str) -> String {
    format!(
        "broker:\n  host: localhost\n  port: {port}\n  keep_alive: 5s\n  tls: {}\n  reconnect: {{ initial_delay: 100ms, max_delay: 400ms }}\n",
        pki.tls_yaml(name)
    )
}

pub fn require_mosquitto() {
    require("mosquitto", "mosquitto");
}

/// Waits until something accepts connections on loopback `port`.
pub fn wait_listening(port: u16) {
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listening on {port} within {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn free_port() -> u16 {
    // The kernel picks a free port; there is a small window before Mosquitto binds it.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}
