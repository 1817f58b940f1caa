//! Test harness: a real Mosquitto with the deploy config and a PKI made for the run,
//! the real daemons as child processes, and an MQTT client for watching the wire.
//!
//! Every process started here is killed when its guard drops; a failing test
//! prints the logs of everything it started.

#![allow(dead_code)] // Each test uses a different part of the harness.

use rumqttc::tokio_rustls::rustls;
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");
pub const SENSORD: &str = env!("CARGO_BIN_EXE_sensord");
pub const AGGREGATORD: &str = env!("CARGO_BIN_EXE_aggregatord");
/// Upper bound for anything a test waits on; generous because CI machines are slow.
pub const PATIENCE: Duration = Duration::from_secs(20);
/// aggregatord's ingest connection coming up (it also has one for alerts).
pub const INGEST_CONNECTED: &str = "client_id=aggregatord session_present";

pub fn require(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()));
    assert!(
        found,
        "`{program}` is not on PATH. Install it with: sudo apt-get install -y {package}\n\
         (scripts/test installs everything the tests need)"
    );
}

// ---------------------------------------------------------------- shared state

/// State written by a reader thread and awaited by the test: a value plus a
/// condition variable, so waiting is on the event itself, never a sleep.
pub struct Shared<T>(Arc<(Mutex<T>, Condvar)>);

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared(self.0.clone())
    }
}

impl<T> Shared<T> {
    fn new(value: T) -> Self {
        Shared(Arc::new((Mutex::new(value), Condvar::new())))
    }

    fn update(&self, f: impl FnOnce(&mut T)) {
        f(&mut self.lock());
        self.0 .1.notify_all();
    }

    /// A test that failed while holding the lock poisons it; the data is still
    /// fine for printing the failure report, so ignore the poison.
    fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.0
             .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits up to [`PATIENCE`] for `done`; returns the guard and whether it held.
    fn wait(&self, done: impl Fn(&T) -> bool) -> (std::sync::MutexGuard<'_, T>, bool) {
        self.wait_within(done, PATIENCE)
    }

    fn wait_within(
        &self,
        done: impl Fn(&T) -> bool,
        patience: Duration,
    ) -> (std::sync::MutexGuard<'_, T>, bool) {
        let (guard, timeout) = self
            .0
             .1
            .wait_timeout_while(self.lock(), patience, |v| !done(v))
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (guard, !timeout.timed_out())
    }
}

// ---------------------------------------------------------------- log capture

/// Lines a child wrote to stderr, kept for waiting on and for failure reports.
#[derive(Clone)]
pub struct Log {
    name: String,
    lines: Shared<Vec<String>>,
}

impl Log {
    fn capture(name: &str, stream: impl Read + Send + 'static) -> Log {
        let log = Log {
            name: name.to_owned(),
            lines: Shared::new(Vec::new()),
        };
        let sink = log.lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                sink.update(|lines| lines.push(line));
            }
        });
        log
    }

    /// Waits for a line containing every one of `needles`; returns it.
    pub fn wait_for(&self, needles: &[&str]) -> String {
        self.wait_for_nth(needles, 1)
    }

    /// Waits until `n` lines contain every one of `needles`; returns the n-th.
    pub fn wait_for_nth(&self, needles: &[&str], n: usize) -> String {
        self.wait_for_nth_where(|l| needles.iter().all(|x| l.contains(x)), n, needles)
    }

    /// Waits until `n` lines satisfy `pred` (`what` describes it in a failure).
    /// Each wake-up looks only at the lines added since the last one: a daemon
    /// logging tens of thousands of lines must not make the test rescan them all
    /// per line (that once took a whole core, and the daemon, blocked writing to
    /// a full stderr pipe, missed its keep-alive).
    pub fn wait_for_nth_where(
        &self,
        pred: impl Fn(&str) -> bool,
        n: usize,
        what: impl std::fmt::Debug,
    ) -> String {
        self.wait_for_nth_within(pred, n, what, PATIENCE)
    }

    /// [`Log::wait_for_nth_where`] with its own patience, for a child that keeps
    /// its own, longer deadlines (a browser script): its verdict should end the wait.
    pub fn wait_for_nth_within(
        &self,
        pred: impl Fn(&str) -> bool,
        n: usize,
        what: impl std::fmt::Debug,
        patience: Duration,
    ) -> String {
        let scanned = std::cell::Cell::new(0usize);
        let matched = std::cell::Cell::new(0usize);
        let nth = std::cell::RefCell::new(None::<String>);
        let (lines, _) = self.lines.wait_within(
            |lines| {
                for line in &lines[scanned.get()..] {
                    scanned.set(scanned.get() + 1);
                    if pred(line) {
                        matched.set(matched.get() + 1);
                        if matched.get() == n {
                            *nth.borrow_mut() = Some(line.clone());
                            return true;
                        }
                    }
                }
                false
            },
            patience,
        );
        drop(lines); // Not held while panicking: the failure report needs it.
        nth.into_inner().unwrap_or_else(|| {
            panic!(
                "{}: no log line with {what:?} (wanted {n}, saw {}) within {patience:?}",
                self.name,
                matched.get()
            )
        })
    }

    /// How many lines so far contain every one of `needles`.
    pub fn count(&self, needles: &[&str]) -> usize {
        self.count_where(|l| needles.iter().all(|n| l.contains(n)))
    }

    /// How many lines so far satisfy `pred`.
    pub fn count_where(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.lines.lock().iter().filter(|l| pred(l)).count()
    }

    /// How many lines containing `counted` came before the first line containing
    /// `marker` (all of them if there is none).
    pub fn count_before(&self, counted: &str, marker: &str) -> usize {
        let lines = self.lines.lock();
        lines
            .iter()
            .take_while(|l| !l.contains(marker))
            .filter(|l| l.contains(counted))
            .count()
    }

    pub fn contains(&self, needles: &[&str]) -> bool {
        let lines = self.lines.lock();
        lines.iter().any(|l| needles.iter().all(|n| l.contains(n)))
    }

    pub fn text(&self) -> String {
        self.lines.lock().join("\n")
    }
}

/// A child process that is killed (and its log shown, if the test failed) on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: Log,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        Proc {
            name: name.to_owned(),
            log: Log::capture(name, stderr),
            child,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        signal(self.pid(), libc::SIGTERM);
        self.wait()
    }

    /// SIGHUP: reload the configuration.
    pub fn hup(&self) {
        signal(self.pid(), libc::SIGHUP);
    }

    /// SIGKILL: the process gets no chance to say goodbye.
    pub fn kill9(&mut self) -> ExitStatus {
        signal(self.pid(), libc::SIGKILL);
        self.wait()
    }

    /// The exit status if it has exited, without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waitpid")
    }

    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("waitpid") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {PATIENCE:?}",
                self.name
            );
            // No event to await for a child's exit in std; poll briefly.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a child we own; no memory is shared.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log -----\n{}\n----- end of {} log -----",
                self.name,
                self.log.text(),
                self.name
            );
        }
    }
}

// ---------------------------------------------------------------- PKI and broker

/// A CA and certificates made by deploy/pki/gen-dev-pki.sh in a temporary folder.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new(names: &[&str]) -> Pki {
        Pki::with_env(names, &[])
    }

    /// With settings for gen-dev-pki.sh (`BROKER_NAMES`, `PKI_DAYS`…).
    pub fn with_env(names: &[&str], env: &[(&str, &str)]) -> Pki {
        require("openssl", "openssl");
        let dir = tempfile::tempdir().expect("tempdir");
        // aggregatord comes with the second identity its alert connection uses.
        let mut names = names.to_vec();
        if names.contains(&"aggregatord") && !names.contains(&"aggregatord-alerts") {
            names.push("aggregatord-alerts");
        }
        let out = Command::new(format!("{REPO}/deploy/pki/gen-dev-pki.sh"))
            .arg(dir.path())
            .args(&names)
            .envs(env.iter().copied())
            .output()
            .expect("run gen-dev-pki.sh");
        assert!(
            out.status.success(),
            "gen-dev-pki.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Pki { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A new key and certificate for `name` from the same CA, in place
    /// (gen-dev-pki.sh with `RENEW=1`, and `env` such as `PKI_DAYS`).
    pub fn renew(&self, name: &str, env: &[(&str, &str)]) {
        stdout_of(
            Command::new(format!("{REPO}/deploy/pki/gen-dev-pki.sh"))
                .env("RENEW", "1")
                .envs(env.iter().copied())
                .arg(self.dir.path())
                .arg(name),
        );
    }

    /// The `tls:` block of a roomsense config for client `name`.
    pub fn tls_yaml(&self, name: &str) -> String {
        format!(
            "{{ ca_file: {}, cert_file: {}, key_file: {} }}",
            self.path("ca.crt").display(),
            self.path(&format!("{name}.crt")).display(),
            self.path(&format!("{name}.key")).display()
        )
    }
}

/// Mosquitto on a free loopback port, configured from deploy/mosquitto.
pub struct Broker {
    pub port: u16,
    pub proc: Proc,
    data: tempfile::TempDir,
    conf: PathBuf,
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
            if let Some(status) = proc.child.try_wait().expect("waitpid") {
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
            conf,
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

// ---------------------------------------------------------------- daemons

/// A config file in a temporary folder.
pub struct ConfigFile {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub fn write_config(yaml: &str) -> ConfigFile {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).expect("write config");
    ConfigFile { _dir: dir, path }
}

/// A sensord config with one `(id, type, interval, qos)` per sensor. The room is
/// always occupied and motion clears after one interval, so motion sensors report
/// often whatever the time of day the test runs.
pub fn sensord_yaml(
    broker: &Broker,
    pki: &Pki,
    node: &str,
    prefix: &str,
    sensors: &[(&str, &str, &str, u8)],
) -> String {
    sensord_yaml_on(broker.port, pki, node, prefix, sensors, "")
}

/// The same, for a broker at `port`, with `extra` top-level YAML.
pub fn sensord_yaml_on(
    port: u16,
    pki: &Pki,
    node: &str,
    prefix: &str,
    sensors: &[(&str, &str, &str, u8)],
    extra: &str,
) -> String {
    let mut yaml = format!(
        "node: {{ id: {node}, topic_prefix: {prefix} }}\n{}room: {{ occupancy: always }}\n{extra}sensors:\n",
        broker_yaml(port, pki, node)
    );
    for (id, kind, interval, qos) in sensors {
        let clear = if *kind == "motion" {
            format!(", clear_after: {interval}")
        } else {
            String::new()
        };
        yaml.push_str(&format!(
            "  - {{ id: {id}, type: {kind}, interval: {interval}, qos: {qos}{clear} }}\n"
        ));
    }
    yaml
}

pub fn aggregatord_yaml(broker: &Broker, pki: &Pki, storage: &Path) -> String {
    aggregatord_yaml_with(broker, pki, storage, 1, "")
}

/// With the subscription at `qos` and `extra` top-level YAML.
pub fn aggregatord_yaml_with(
    broker: &Broker,
    pki: &Pki,
    storage: &Path,
    qos: u8,
    extra: &str,
) -> String {
    // Tests run side by side: each dashboard on a port of the kernel's choosing.
    let http = if extra.contains("http:") {
        ""
    } else {
        "http: { listen: \"127.0.0.1:0\" }\n"
    };
    format!(
        "client_id: aggregatord\n{}alert_identity: {{ cert_file: {}, key_file: {} }}\nsubscriptions:\n  - {{ filter: \"building/#\", qos: {qos} }}\nstorage:\n  path: {}\n{extra}{http}",
        broker.yaml(pki, "aggregatord"),
        pki.path("aggregatord-alerts.crt").display(),
        pki.path("aggregatord-alerts.key").display(),
        storage.display()
    )
}

/// A running aggregatord on its own broker, and what a test needs to reach it.
pub struct Agg {
    pub pki: Pki,
    pub broker: Broker,
    pub _storage: tempfile::TempDir,
    pub config: ConfigFile,
    pub agg: Proc,
    pub addr: String,
}

/// A broker with certificates for aggregatord and `nodes`, and aggregatord
/// (with `extra` config) subscribed to it.
pub fn aggregatord_for(nodes: &[&str], extra: &str) -> Agg {
    let mut names = nodes.to_vec();
    names.push("aggregatord");
    let pki = Pki::new(&names);
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
        pki,
        broker,
        _storage: storage,
        config,
        agg,
        addr,
    }
}

/// How many readings a stopped sensord says it published (its last line).
pub fn published(node: &Proc) -> u64 {
    node.log
        .wait_for(&["sensord stopped"])
        .split("published=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("published= in the stop line")
}

pub fn start_daemon(bin: &str, config: &Path) -> Proc {
    start_daemon_with(bin, config, &[])
}

/// With extra environment variables (e.g. `NOTIFY_SOCKET`).
pub fn start_daemon_with(bin: &str, config: &Path, env: &[(&str, &str)]) -> Proc {
    let name = Path::new(bin)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    Proc::spawn(
        &name,
        Command::new(bin)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info,roomsense=debug")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().copied()),
    )
}

/// Runs `aggregatord dump` to completion and returns its stdout.
pub fn dump(config: &Path, args: &[&str]) -> String {
    stdout_of(
        Command::new(AGGREGATORD)
            .arg("--config")
            .arg(config)
            .arg("dump")
            .args(args),
    )
}

/// The `seq` of every stored reading, in dump order (topic, then time).
pub fn stored_seqs(config: &Path) -> Vec<u64> {
    seqs_of(&dump(config, &["--format", "jsonl"]))
}

/// The `seq` of every reading in a `dump --format jsonl`.
pub fn seqs_of(jsonl: &str) -> Vec<u64> {
    jsonl
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("jsonl")["seq"]
                .as_u64()
                .expect("seq")
        })
        .collect()
}

/// A plain HTTP/1.1 GET: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `host:port` of a running aggregatord's dashboard, from its log.
pub fn dashboard_addr(log: &Log) -> String {
    let line = log.wait_for(&["dashboard listening"]);
    let url = line.split("http://").nth(1).expect("url in the log line");
    url.split('/').next().unwrap_or(url).to_owned()
}

/// Runs a command to completion; fails the test (showing stderr) unless it succeeds.
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        output_text(&out)
    );
    String::from_utf8(out.stdout).expect("output is UTF-8")
}

/// A finished command's stdout and stderr, for a failure message.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------- a watching client

/// A valid reading payload for temperature sensor `temp_001`, numbered `seq`,
/// with a distinct timestamp per seq.
pub fn reading_payload(seq: u64) -> Vec<u8> {
    let ts = chrono::DateTime::from_timestamp_millis(1_780_000_000_000 + seq as i64).unwrap();
    format!(
        r#"{{"sensor_id":"temp_001","sensor_type":"temperature","value":{},"unit":"celsius","timestamp":"{}","seq":{seq}}}"#,
        20.0 + (seq % 100) as f64 / 10.0,
        ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    )
    .into_bytes()
}

/// Recorded in place of a message when a SUBACK arrives, so `subscribe` can wait.
const SUBACK: &str = "<suback>";

/// Recorded when the broker confirms one of our QoS 1/2 publishes.
const CONFIRMED: &str = "<confirmed>";

/// Recorded when the broker's CONNACK says it had a session for us.
pub const SESSION_PRESENT: &str = "<session present>";

/// A message as a test client received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

impl Seen {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("payload is JSON")
    }
}

/// An MQTT client (rumqttc, mutual TLS) that records everything it receives.
pub struct Watcher {
    pub client: rumqttc::Client,
    seen: Shared<Vec<Seen>>,
    /// The outcome of the first connection attempt, once known.
    connected: Shared<Option<Result<(), String>>>,
}

pub fn tls(pki: &Pki, name: &str) -> rustls::ClientConfig {
    roomsense::mqtt::tls_client_config(&roomsense::mqtt::TlsFiles {
        ca_file: pki.path("ca.crt"),
        cert_file: pki.path(&format!("{name}.crt")),
        key_file: pki.path(&format!("{name}.key")),
    })
    .expect("client TLS config")
}

impl Watcher {
    /// Connects as certificate `name`; panics if the broker does not accept it.
    pub fn connect(broker: &Broker, pki: &Pki, name: &str) -> Watcher {
        let w = Watcher::try_connect(
            broker,
            tls(pki, name),
            &format!("watcher-{}", fastrand::u32(..)),
        );
        if let Err(e) = w.wait_connected() {
            panic!("watcher could not connect: {e}");
        }
        w
    }

    /// Starts connecting with any TLS config; see [`Watcher::wait_connected`].
    pub fn try_connect(broker: &Broker, tls: rustls::ClientConfig, client_id: &str) -> Watcher {
        Watcher::try_connect_session(broker, tls, client_id, true)
    }

    /// As [`Watcher::try_connect`], asking for a persistent session when
    /// `clean_session` is false; records the CONNACK's session-present flag.
    pub fn try_connect_session(
        broker: &Broker,
        tls: rustls::ClientConfig,
        client_id: &str,
        clean_session: bool,
    ) -> Watcher {
        let mut options = rumqttc::MqttOptions::new(client_id, "localhost", broker.port);
        options
            .set_clean_session(clean_session)
            // Up to the broker's own limit (max_packet_size 65536), not
            // rumqttc's default 10 KiB: tests send oversized payloads on purpose.
            .set_max_packet_size(65_536, 65_536)
            .set_keep_alive(Duration::from_secs(5))
            .set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::new(tls)),
            ));
        let (client, mut connection) = rumqttc::Client::new(options, 100);
        let seen = Shared::new(Vec::new());
        let connected = Shared::new(None);
        let (seen2, connected2) = (seen.clone(), connected.clone());
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => {
                        if ack.session_present {
                            let marker = Seen {
                                topic: SESSION_PRESENT.into(),
                                payload: vec![],
                                qos: 0,
                                retain: false,
                            };
                            seen2.update(|s| s.push(marker));
                        }
                        connected2.update(|c| *c = Some(Ok(())));
                    }
                    Ok(rumqttc::Event::Incoming(
                        rumqttc::Packet::PubAck(_) | rumqttc::Packet::PubComp(_),
                    )) => {
                        let marker = Seen {
                            topic: CONFIRMED.into(),
                            payload: vec![],
                            qos: 0,
                            retain: false,
                        };
                        seen2.update(|s| s.push(marker));
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let marker = Seen {
                            topic: SUBACK.into(),
                            payload: vec![],
                            qos: 0,
                            retain: false,
                        };
                        seen2.update(|s| s.push(marker));
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let seen = Seen {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            qos: p.qos as u8,
                            retain: p.retain,
                        };
                        seen2.update(|s| s.push(seen));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        connected2.update(|c| {
                            c.get_or_insert(Err(e.to_string()));
                        });
                        // A test watcher does not reconnect: it reports and stops.
                        break;
                    }
                }
            }
        });
        Watcher {
            client,
            seen,
            connected,
        }
    }

    /// The outcome of the first connection attempt.
    pub fn wait_connected(&self) -> Result<(), String> {
        let (outcome, _) = self.connected.wait(std::option::Option::is_some);
        outcome
            .clone()
            .unwrap_or_else(|| Err(format!("no CONNACK or error within {PATIENCE:?}")))
    }

    /// Subscribes and waits for the SUBACK.
    pub fn subscribe(&self, filter: &str, qos: u8) {
        let subacks = |all: &[Seen]| all.iter().filter(|s| s.topic == SUBACK).count();
        let before = subacks(&self.seen.lock());
        let qos = match qos {
            0 => rumqttc::QoS::AtMostOnce,
            1 => rumqttc::QoS::AtLeastOnce,
            _ => rumqttc::QoS::ExactlyOnce,
        };
        self.client.subscribe(filter, qos).expect("queue SUBSCRIBE");
        self.wait_until(|all| subacks(all) > before);
    }

    pub fn publish(&self, topic: &str, payload: &[u8], qos: u8) {
        let qos = match qos {
            0 => rumqttc::QoS::AtMostOnce,
            1 => rumqttc::QoS::AtLeastOnce,
            _ => rumqttc::QoS::ExactlyOnce,
        };
        self.client
            .publish(topic, qos, false, payload.to_vec())
            .expect("queue PUBLISH");
    }

    /// Waits until `done` holds for everything received so far.
    pub fn wait_until(&self, done: impl Fn(&[Seen]) -> bool) {
        let (all, ok) = self.seen.wait(|all| done(all));
        let report = if ok {
            String::new()
        } else {
            format!("{:#?}", &*all)
        };
        drop(all); // Not held while panicking: the failure report needs it.
        assert!(
            ok,
            "watcher: condition not met within {PATIENCE:?}; received {report}"
        );
    }

    /// Waits for a message on `topic` matching `pred`; returns it.
    pub fn wait_for(&self, topic: &str, pred: impl Fn(&Seen) -> bool) -> Seen {
        let matches = |s: &Seen| s.topic == topic && pred(s);
        self.wait_until(|all| all.iter().any(matches));
        self.seen
            .lock()
            .iter()
            .find(|s| matches(s))
            .cloned()
            .expect("just matched")
    }

    /// Waits until the broker has confirmed `n` of our QoS 1/2 publishes.
    pub fn wait_confirmed(&self, n: usize) {
        self.wait_until(|all| all.iter().filter(|s| s.topic == CONFIRMED).count() >= n);
    }

    /// Every message received so far (SUBACK markers left out).
    pub fn messages(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .iter()
            .filter(|s| s.topic != SUBACK)
            .cloned()
            .collect()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

// ---------------------------------------------------------------- results for RELIABILITY.md

/// Records what a reliability or security test measured, in
/// target/reliability/<name>.json; scripts/reliability-report makes RELIABILITY.md.
pub fn record(name: &str, what: &str, result: serde_json::Value) {
    let dir = format!("{REPO}/target/reliability");
    std::fs::create_dir_all(&dir).expect("create target/reliability");
    let entry = serde_json::json!({ "test": name, "what": what, "result": result });
    std::fs::write(format!("{dir}/{name}.json"), entry.to_string()).expect("write result");
}

// ---------------------------------------------------------------- a link that can die

/// A TCP relay on loopback that can go silent: after [`Blackhole::cut`] every
/// byte is swallowed, in both directions, with no FIN or RST (a pulled cable, a
/// dead NAT entry). After [`Blackhole::heal`], new connections work again; the
/// old ones stay dead, as they would.
pub struct Blackhole {
    pub port: u16,
    epoch: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

impl Blackhole {
    pub fn to(target: u16) -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let port = listener.local_addr().unwrap().port();
        let epoch = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let (e, c, s) = (epoch.clone(), cut.clone(), streams.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let born = e.load(Ordering::SeqCst);
                let alive = {
                    let (e, c) = (e.clone(), c.clone());
                    move || !c.load(Ordering::SeqCst) && e.load(Ordering::SeqCst) == born
                };
                if !alive() {
                    // Accepted, and then nothing: a blackhole.
                    s.lock().unwrap().push(client.try_clone().unwrap());
                    std::thread::spawn(move || pump(client, None, alive));
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                s.lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let alive2 = alive.clone();
                std::thread::spawn(move || pump(client, Some(server), alive));
                std::thread::spawn(move || pump(s2, Some(c2), alive2));
            }
        });
        Blackhole {
            port,
            epoch,
            cut,
            streams,
        }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` while `alive()`, swallows bytes otherwise.
fn pump(mut from: TcpStream, mut to: Option<TcpStream>, alive: impl Fn() -> bool) {
    use std::io::Write;
    let mut buf = [0u8; 16384];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let (true, Some(out)) = (alive(), to.as_mut()) {
            if out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    }
    if let (true, Some(out)) = (alive(), to) {
        let _ = out.shutdown(std::net::Shutdown::Write);
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        for s in self.streams.lock().unwrap().iter() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// CPU seconds (user + system) a process has used, from /proc.
pub fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

// ---------------------------------------------------------------- a small disk

/// A tmpfs of a fixed size, mounted in a mount namespace of its own (the
/// host's mounts are untouched), for filling a disk for real. A holder
/// process keeps the namespace alive across daemon restarts; everything that
/// should see the disk runs in it through [`SmallDisk::command`].
pub struct SmallDisk {
    /// The mount point, the same path inside the namespace (outside it is an
    /// empty folder).
    pub dir: tempfile::TempDir,
    holder: Proc,
}

impl SmallDisk {
    pub fn new(size: &str) -> SmallDisk {
        require("unshare", "util-linux");
        require("nsenter", "util-linux");
        let dir = tempfile::tempdir().expect("tempdir");
        // Mounted by the holder itself, after unshare: nothing reaches the
        // host's namespace, even if this test dies half-way.
        let holder = Proc::spawn(
            "small-disk",
            Command::new("unshare")
                .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                .arg(format!(
                    "mount -t tmpfs -o size={size},mode=0700 roomsense-test \"$1\" && echo mounted >&2 && exec sleep 3600"
                ))
                .arg("sh")
                .arg(dir.path()),
        );
        holder.log.wait_for(&["mounted"]);
        SmallDisk { dir, holder }
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.holder.pid().to_string())
            .args(["-m", "--", program]);
        cmd
    }

    /// Fills what is left of the disk with one file.
    pub fn fill(&self) {
        let filler = self.dir.path().join("filler");
        // dd stops with "No space left on device" (a failure exit): expected.
        let out = self
            .command("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", filler.display()))
            .arg("bs=64k")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("No space left"),
            "dd did not fill the disk: {said}"
        );
    }

    /// Gives the space back.
    pub fn free(&self) {
        let status = self
            .command("rm")
            .arg(self.dir.path().join("filler"))
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// aggregatord started on this disk, as [`start_daemon`] does.
    pub fn start_aggregatord(&self, config: &Path) -> Proc {
        Proc::spawn(
            "aggregatord",
            self.command(AGGREGATORD)
                .arg("--config")
                .arg(config)
                .env("RUST_LOG", "info,roomsense=debug")
                .env_remove("JOURNAL_STREAM")
                .env_remove("NOTIFY_SOCKET"),
        )
    }

    /// The `seq` of every stored reading, as [`stored_seqs`] reads them.
    pub fn stored_seqs(&self, config: &Path) -> Vec<u64> {
        seqs_of(&stdout_of(
            self.command(AGGREGATORD)
                .arg("--config")
                .arg(config)
                .args(["dump", "--format", "jsonl"]),
        ))
    }
}
