//! scripts/demo, stopped the ways people stop it: whatever ends it, every
//! process it started (Mosquitto, aggregatord, three sensord, `mosquitto_sub`)
//! is gone afterwards. The demo uses the fixed port 8883 and ./var, so the
//! cases run one after another in one test.

use crate::harness::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// What the demo's processes have in their command lines.
const LEFTOVERS: &str = "var/demo/room|-c var/mosquitto/mosquitto.conf|--config config/aggregatord.yaml|--cafile var/pki/ca.crt";

fn leftovers() -> String {
    let out = Command::new("pgrep")
        .args(["-af", LEFTOVERS])
        .output()
        .expect("pgrep (apt-get install procps)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until nothing the demo started is left (a parent-death signal or the
/// demo's own stop takes up to a few seconds: the daemons stop cleanly).
fn wait_nothing_left(case: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = leftovers();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{case}: left behind:\n{left}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start(case: &str, shell: Option<&str>) -> Proc {
    let bin = Path::new(SENSORD).parent().unwrap();
    let mut cmd = match shell {
        // In a session of its own, so the test can signal its whole process
        // group, as a terminal's Ctrl-C does.
        Some(line) => {
            let mut c = Command::new("setsid");
            c.args(["bash", "-c", line]);
            c
        }
        None => Command::new(format!("{REPO}/scripts/demo")),
    };
    cmd.current_dir(REPO).env("ROOMSENSE_BIN", bin);
    let demo = Proc::spawn(case, &mut cmd);
    demo.log.wait_for(&["Live stream below"]);
    // All of it running before it is stopped.
    demo.log.wait_for(&["Watch the stream"]);
    demo
}

#[test]
fn however_the_demo_is_stopped_it_leaves_no_process_behind() {
    require_mosquitto();
    assert!(
        leftovers().is_empty(),
        "a demo is already running:\n{}",
        leftovers()
    );
    let mut results = serde_json::Map::new();
    for (case, sig) in [
        ("kill -INT", libc::SIGINT),
        ("kill -TERM", libc::SIGTERM),
        ("kill -9", libc::SIGKILL),
    ] {
        let mut demo = start(case, None);
        signal(demo.pid(), sig);
        let status = demo.wait();
        wait_nothing_left(case);
        results.insert(case.into(), format!("{status}; nothing left").into());
    }
    // `scripts/demo | tee log`, then Ctrl-C: SIGINT to the whole group, tee
    // included, so the demo's output pipe breaks while it stops the others.
    let case = "demo | tee, Ctrl-C";
    let mut demo = start(case, Some("scripts/demo 2>&1 | tee /dev/stderr >/dev/null"));
    signal(-demo.pid(), libc::SIGINT);
    let status = demo.wait();
    wait_nothing_left(case);
    results.insert(case.into(), format!("{status}; nothing left").into());
    record(
        "demo_stop",
        "scripts/demo stopped by kill -INT, kill -TERM, kill -9, and Ctrl-C through a pipe to tee",
        serde_json::Value::Object(results),
    );
}
