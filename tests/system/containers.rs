//! The containers as users run them: the image built from the Dockerfile as
//! shipped, `deploy/compose-setup`, the compose stack (broker, aggregatord,
//! three nodes) under podman-compose with a real engine (podman + runc).
//! No registry is reachable here, so the base images are local stand-ins with
//! the official names (tests/containers/images says which).

use crate::harness::*;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Building the image the first time takes minutes; what is waited for after
/// it (readings stored, a stop) takes seconds.
const WAIT: Duration = Duration::from_secs(120);

/// podman with the test's own settings (tests/containers/containers.conf).
fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.env(
        "CONTAINERS_CONF",
        format!("{REPO}/tests/containers/containers.conf"),
    );
    cmd
}

/// One compose project, taken down (volumes too) when dropped.
struct Stack {
    dir: tempfile::TempDir,
    project: String,
    mqtt_port: u16,
    http_port: u16,
}

impl Stack {
    fn compose(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("podman-compose");
        cmd.env(
            "CONTAINERS_CONF",
            format!("{REPO}/tests/containers/containers.conf"),
        )
        .env("ROOMSENSE_MQTT_PORT", self.mqtt_port.to_string())
        .env("ROOMSENSE_HTTP_PORT", self.http_port.to_string())
        .args(["-p", &self.project, "-f"])
        .arg(self.dir.path().join("deploy/compose.yaml"))
        .args(args);
        cmd
    }

    /// podman-compose's name for a service's container.
    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.project)
    }

    fn exec(&self, service: &str, args: &[&str]) -> Output {
        podman()
            .args(["exec", &self.container(service)])
            .args(args)
            .output()
            .expect("podman exec")
    }

    fn stored(&self) -> Vec<serde_json::Value> {
        let out = self.exec(
            "aggregatord",
            &[
                "aggregatord",
                "--config",
                "/etc/roomsense/aggregatord.yaml",
                "dump",
                "--format",
                "jsonl",
            ],
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Polls `what` every 500 ms: a container's state is seen only by asking.
    fn wait_until<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = probe() {
                return v;
            }
            if Instant::now() > deadline {
                let logs = output_text(&self.compose(&["logs"]).output().expect("logs"));
                panic!("{what}: not within {WAIT:?}; logs:\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn logs(&self, service: &str) -> String {
        output_text(
            &podman()
                .args(["logs", &self.container(service)])
                .output()
                .expect("podman logs"),
        )
    }

    fn exit_code(&self, service: &str) -> String {
        stdout_of(podman().args([
            "inspect",
            "-f",
            "{{.State.ExitCode}}",
            &self.container(service),
        ]))
        .trim()
        .to_owned()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "-t", "15"]).output();
    }
}

/// Whether podman can run containers here; if it cannot, says why in one
/// line. The tools themselves must be installed (scripts/test does).
fn engine_ready() -> bool {
    require("podman", "podman runc");
    require("podman-compose", "podman-compose");
    require("debootstrap", "debootstrap");
    require("curl", "curl");
    let info = podman().arg("info").output().expect("podman info");
    if !info.status.success() {
        eprintln!(
            "SKIPPED container test: podman cannot run containers here: {}",
            output_text(&info).lines().last().unwrap_or_default()
        );
        return false;
    }
    // The official base images, or local stand-ins with their names.
    stdout_of(&mut Command::new(format!("{REPO}/tests/containers/images")));
    true
}

/// `podman build` of the Dockerfile with `args`. The build may fetch crates
/// through a proxy the host trusts: it borrows the host's CA bundle. Docker's
/// image format: podman's default (OCI) drops HEALTHCHECK.
fn build(args: &[&str]) {
    stdout_of(
        podman()
            .args(["build", "-q", "--format", "docker", "--network", "host"])
            .args([
                "-v",
                "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro",
            ])
            .args(args)
            .arg(REPO),
    );
}

fn http_code(port: u16, token: Option<&str>) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    stdout_of(cmd.arg(format!("http://127.0.0.1:{port}/api/state")))
}

#[test]
fn the_image_and_the_compose_stack_run_as_users_run_them() {
    if !engine_ready() {
        return;
    }
    // The image, from the Dockerfile as shipped. The build may fetch crates
    // through a proxy the host trusts: it borrows the host's CA bundle.
    // Docker's image format: podman's default (OCI) drops HEALTHCHECK.
    stdout_of(
        podman()
            .args(["build", "-q", "--format", "docker", "--network", "host"])
            .args([
                "-v",
                "/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro",
            ])
            .args(["-t", "roomsense:latest", REPO]),
    );

    // compose-setup's folders beside a copy of compose.yaml (it mounts ../var/compose).
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("deploy")).unwrap();
    std::fs::copy(
        format!("{REPO}/deploy/compose.yaml"),
        dir.path().join("deploy/compose.yaml"),
    )
    .unwrap();
    stdout_of(
        Command::new(format!("{REPO}/deploy/compose-setup")).arg(dir.path().join("var/compose")),
    );
    let token = std::fs::read_to_string(dir.path().join("var/compose/aggregatord/dashboard.token"))
        .unwrap()
        .trim()
        .to_owned();
    let stack = Stack {
        dir,
        project: format!("rstest{}", std::process::id()),
        mqtt_port: free_port(),
        http_port: free_port(),
    };
    stdout_of(&mut stack.compose(&["up", "-d"]));

    let rooms = ["room101", "room102", "room201"];
    let stored = stack.wait_until("readings from every room stored", || {
        let all = stack.stored();
        rooms
            .iter()
            .all(|r| {
                all.iter()
                    .any(|v| v["topic"].as_str().is_some_and(|t| t.contains(r)))
            })
            .then_some(all.len())
    });

    // A node's container holds its own key and no other identity's.
    let listed =
        String::from_utf8_lossy(&stack.exec("room101", &["ls", "/etc/roomsense/pki"]).stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>();
    assert_eq!(listed, ["ca.crt", "room101.crt", "room101.key"]);
    for other in ["aggregatord-alerts.key", "aggregatord.key", "room102.key"] {
        let read = stack.exec("room101", &["cat", &format!("/etc/roomsense/pki/{other}")]);
        assert!(!read.status.success(), "room101's container reads {other}");
    }
    // The dashboard on the host's loopback, with the token; aggregatord healthy.
    assert_eq!(http_code(stack.http_port, None), "401");
    assert_eq!(http_code(stack.http_port, Some(&token)), "200");
    stdout_of(podman().args(["healthcheck", "run", &stack.container("aggregatord")]));

    // A stop: every daemon says its clean stop line and exits 0.
    stdout_of(&mut stack.compose(&["stop", "-t", "15"]));
    for service in ["aggregatord", "room101", "room102", "room201"] {
        let logs = stack.logs(service);
        let line = if service == "aggregatord" {
            "aggregatord stopped"
        } else {
            "sensord stopped"
        };
        assert!(logs.contains(line), "{service}: no `{line}`:\n{logs}");
        assert_eq!(stack.exit_code(service), "0", "{service}:\n{logs}");
    }
    // Started again: the history is still there (the volume), and grows.
    stdout_of(&mut stack.compose(&["start"]));
    let after = stack.wait_until("history kept and growing after the restart", || {
        let n = stack.stored().len();
        (n > stored).then_some(n)
    });
    let size =
        stdout_of(podman().args(["image", "inspect", "-f", "{{.Size}}", "roomsense:latest"]));
    record(
        "containers",
        "Dockerfile built with podman (stand-in base images), deploy/compose.yaml under podman-compose: broker, aggregatord, three nodes",
        serde_json::json!({
            "stored_before_stop": stored,
            "stored_after_restart": after,
            "image_bytes": size.trim().parse::<u64>().unwrap_or(0),
            "node_sees_keys": listed,
        }),
    );
}

/// The Dockerfile's builder cross-compiles for arm64 (what `docker build
/// --platform linux/arm64` runs, natively on the build machine). podman 4.3's
/// buildah ignores `FROM --platform=$BUILDPLATFORM`, so here the build stage
/// runs alone with `TARGETARCH=arm64`; its sensord then runs under qemu with
/// the C library of the arm64 runtime base, against this machine's broker.
#[test]
fn the_dockerfile_builds_arm64_binaries_that_run_on_the_arm64_base() {
    if !engine_ready() {
        return;
    }
    require("qemu-aarch64", "qemu-user");
    build(&[
        "--target",
        "build",
        "--build-arg",
        "TARGETARCH=arm64",
        "-t",
        "roomsense-build:arm64",
    ]);
    let out = tempfile::tempdir().unwrap();
    let container = stdout_of(podman().args(["create", "roomsense-build:arm64", "true"]))
        .trim()
        .to_owned();
    let copied = podman()
        .args(["cp", &format!("{container}:/out/bin/sensord")])
        .arg(out.path())
        .output()
        .expect("podman cp");
    let _ = podman().args(["rm", &container]).output();
    assert!(copied.status.success(), "{}", output_text(&copied));
    // The runtime base's own C library (arm64), where the image would run it.
    let base = "localhost/debian-arm64:bookworm-slim";
    let root = stdout_of(podman().args(["image", "mount", base]))
        .trim()
        .to_owned();
    struct Unmount(&'static str);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = podman().args(["image", "unmount", self.0]).output();
        }
    }
    let _unmount = Unmount(base);
    crate::fleet::arm64_session(&out.path().join("sensord"), std::path::Path::new(&root));
}
