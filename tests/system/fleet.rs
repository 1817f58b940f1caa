//! One server, many nodes, as a building runs them: four machines (each a real
//! systemd with its own host name and network namespace) on a LAN the test
//! makes, the server installed from its Debian package, the nodes from theirs
//! plus the bundles the server's CA issued. The commands are README's "Deploy:
//! one server, many nodes", in its order.

use crate::harness::*;
use crate::machine::{Lan, Machine};
use std::path::Path;
use std::process::Command;

const SERVER_IP: &str = "10.77.0.1";
const NODES: [(&str, &str); 3] = [
    ("room101", "10.77.0.11"),
    ("room102", "10.77.0.12"),
    ("room201", "10.77.0.21"),
];

/// The package for `role` and `arch` built by scripts/package, or a failure
/// that says so.
fn package(role: &str, arch: &str) -> String {
    let dir =
        std::env::var("ROOMSENSE_PACKAGES").unwrap_or_else(|_| format!("{REPO}/target/debian"));
    let found = std::fs::read_dir(&dir).ok().and_then(|entries| {
        entries.filter_map(Result::ok).map(|e| e.path()).find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(&format!("roomsense-{role}_")) && n.ends_with(&format!("_{arch}.deb"))
            })
        })
    });
    match found {
        Some(p) => p.display().to_string(),
        None => panic!(
            "no {arch} roomsense-{role} package in {dir}: run scripts/package {arch} (scripts/test does)"
        ),
    }
}

fn dir_of(path: &str) -> &str {
    path.rsplit_once('/').map_or(".", |(dir, _)| dir)
}

/// `./NAME`, as apt-get wants a local package named.
fn local(path: &str) -> String {
    format!("./{}", path.rsplit_once('/').map_or(path, |(_, name)| name))
}

/// A room's stored readings, counted on the server.
fn stored(server: &Machine, room: &str) -> usize {
    server
        .ok(&format!(
            "aggregatord --config /etc/roomsense/aggregatord.yaml dump --format jsonl --room {room}"
        ))
        .lines()
        .count()
}

/// /api/state as a node sees it, over the LAN, with the token.
fn state_from(node: &Machine, token: &str) -> serde_json::Value {
    let body = node.ok(&format!(
        "curl -sS --fail -H 'Authorization: Bearer {token}' http://server.lan:8080/api/state"
    ));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn room_status(state: &serde_json::Value, room: &str) -> String {
    state["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["node"] == room))
        .map_or_else(
            || "absent".to_owned(),
            |n| n["status"].as_str().unwrap_or("?").to_owned(),
        )
}

#[test]
fn one_server_and_three_nodes_installed_from_packages_and_bundles() {
    require_mosquitto();
    require("curl", "curl");
    let server_deb = package("server", "amd64");
    let node_deb = package("node", "amd64");
    let Some(server) = Machine::boot_as("server") else {
        return;
    };
    let mut lan = Lan::new();
    lan.plug(&server, SERVER_IP);
    let hosts = format!("echo '{SERVER_IP} server.lan server' >> /etc/hosts");
    server.ok(&hosts);

    // --- the server: package, CA, broker, aggregatord, the dashboard on the LAN.
    server.ok(&format!(
        "cd {} && apt-get install -y -q {}",
        dir_of(&server_deb),
        local(&server_deb)
    ));
    let init = server.ok("roomsense-pki init server.lan localhost 127.0.0.1");
    assert!(init.contains("systemctl restart done"), "{init}");
    server.ok("systemctl enable --now aggregatord");
    server.ok("sh -c 'umask 077; openssl rand -hex 32 > /etc/roomsense/dashboard.token; chown roomsense /etc/roomsense/dashboard.token'");
    server.ok(
        "sed -i -e 's|listen: \"127.0.0.1:8080\"|listen: \"0.0.0.0:8080\"|' \
         -e 's|# token_file: /etc/roomsense/dashboard.token.*|token_file: /etc/roomsense/dashboard.token|' \
         /etc/roomsense/aggregatord.yaml",
    );
    server.ok("systemctl restart aggregatord");
    let token = server
        .ok("cat /etc/roomsense/dashboard.token")
        .trim()
        .to_owned();
    // The CA's key stays in /etc/roomsense/ca, root's alone.
    assert_eq!(
        server.ok("stat -c '%U %a' /etc/roomsense/ca/ca.key").trim(),
        "root 600"
    );

    // A node can only be issued for a name the broker's certificate carries;
    // asking for another name reissues it (and says so), never keeps the old.
    let refused = server.run(&format!(
        "roomsense-pki node room101 --broker {SERVER_IP} --out /root/x"
    ));
    assert_eq!(refused.status.code(), Some(65));
    let reissued = server.ok(&format!(
        "roomsense-pki broker server.lan localhost 127.0.0.1 {SERVER_IP}"
    ));
    assert!(reissued.contains("reissuing it for"), "{reissued}");
    let sans = server
        .ok("openssl x509 -in /etc/mosquitto/roomsense/broker.crt -noout -ext subjectAltName");
    assert!(
        sans.contains(SERVER_IP) && sans.contains("server.lan"),
        "{sans}"
    );

    // --- three nodes: package, bundle, enrolled.
    let mut nodes = Vec::new();
    for (room, ip) in NODES {
        let floor = if room.starts_with("room2") {
            "floor2"
        } else {
            "floor1"
        };
        server.ok(&format!(
            "roomsense-pki node {room} --broker server.lan --floor {floor} --out /root/{room}.roomsense"
        ));
        let Some(node) = Machine::boot_as(room) else {
            return;
        };
        lan.plug(&node, ip);
        node.ok(&hosts);
        // The bundle travels as one file (here through the test, as by scp).
        std::fs::copy(
            server.path(&format!("/root/{room}.roomsense")),
            node.path(&format!("/root/{room}.roomsense")),
        )
        .expect("copy the bundle");
        node.ok(&format!(
            "cd {} && apt-get install -y -q {}",
            dir_of(&node_deb),
            local(&node_deb)
        ));
        let enrolled = node.ok(&format!("roomsense-enroll /root/{room}.roomsense"));
        assert!(enrolled.contains("started"), "{enrolled}");
        nodes.push((room, node));
    }

    // Every room's readings reach the server, each node at the broker by name.
    for (room, node) in &nodes {
        server.wait_until(
            &format!("{room}'s readings stored"),
            &format!("aggregatord --config /etc/roomsense/aggregatord.yaml dump --format jsonl --room {room} | wc -l"),
            |n| n.trim().parse::<usize>().unwrap_or(0) >= 3,
        );
        let journal = node.journal(&format!("-u sensord@{room}"));
        assert!(
            journal.contains("connected broker=server.lan:8883"),
            "{journal}"
        );
    }
    // The dashboard, from a node's machine, with the token; without it, 401.
    let (_, room101) = &nodes[0];
    let state = state_from(room101, &token);
    for (room, _) in NODES {
        assert_eq!(room_status(&state, room), "online", "{state}");
    }
    let without =
        room101.ok("curl -s -o /dev/null -w '%{http_code}' http://server.lan:8080/api/state");
    assert_eq!(without, "401");

    // An upgrade (here the same version again) keeps the operator's edits to
    // the conffiles and restarts aggregatord on the new binary.
    let pid = server.show("aggregatord.service")["MainPID"].clone();
    server.ok(&format!(
        "cd {} && apt-get install -y -q --reinstall {}",
        dir_of(&server_deb),
        local(&server_deb)
    ));
    let config = server.ok("cat /etc/roomsense/aggregatord.yaml");
    assert!(
        config.contains("\n  token_file: /etc/roomsense/dashboard.token"),
        "{config}"
    );
    assert_ne!(server.show("aggregatord.service")["MainPID"], pid);
    room101.wait_until(
        "the dashboard back after the upgrade",
        &format!("curl -s -o /dev/null -w '%{{http_code}}' -H 'Authorization: Bearer {token}' http://server.lan:8080/api/state"),
        |code| code == "200",
    );

    // A node's package removed: its room goes offline, said by the node itself.
    let (_, room201) = &nodes[2];
    room201.ok("apt-get remove -y -q roomsense-node");
    assert_eq!(
        room201.show("sensord@room201.service")["ActiveState"],
        "inactive"
    );
    room101.wait_until(
        "room201 offline on the dashboard",
        &format!("curl -sS -H 'Authorization: Bearer {token}' http://server.lan:8080/api/state"),
        |body| {
            serde_json::from_str::<serde_json::Value>(body)
                .is_ok_and(|s| room_status(&s, "room201") == "offline")
        },
    );

    // A revoked node is refused at its next connect; the others carry on.
    let revoked = server.ok("roomsense-pki revoke room102");
    assert!(revoked.contains("revoked room102"), "{revoked}");
    let (_, room102) = &nodes[1];
    room102.wait_until(
        "room102 refused",
        "journalctl --no-pager -u sensord@room102",
        |j| j.contains("CertificateRevoked"),
    );
    server.wait_until(
        "the broker's refusal",
        "journalctl --no-pager -u mosquitto",
        |j| j.contains("certificate verify failed"),
    );
    let before = stored(&server, "room101");
    server.wait_until(
        "room101 still stored after the broker's restart",
        "aggregatord --config /etc/roomsense/aggregatord.yaml dump --format jsonl --room room101 | wc -l",
        |n| n.trim().parse::<usize>().unwrap_or(0) > before,
    );
    let connects = room102
        .journal("-u sensord@room102")
        .matches("connected broker=")
        .count();
    assert_eq!(connects, 1, "room102 connected again after its revocation");

    record(
        "fleet",
        "scripts/package; one server (roomsense-server .deb, roomsense-pki init) and three nodes (roomsense-node .deb + roomsense-enroll BUNDLE), each a systemd machine with its own network namespace",
        serde_json::json!({
            "rooms_stored": NODES.iter().map(|(room, _)| (room.to_string(), stored(&server, room))).collect::<std::collections::BTreeMap<_, _>>(),
            "dashboard_without_token": without,
            "removed_node_status": "offline",
            "revoked_node_connects_after_revocation": connects - 1,
        }),
    );
}

#[test]
fn the_arm64_node_package_runs_under_qemu_against_this_broker() {
    require("qemu-aarch64", "qemu-user");
    require("dpkg-deb", "dpkg");
    assert!(
        Path::new("/usr/aarch64-linux-gnu/lib").exists(),
        "no arm64 C library for qemu-aarch64 -L; install with: apt-get install -y libc6-arm64-cross"
    );
    // The sensord a Raspberry Pi would install, taken out of the package.
    let deb = package("node", "arm64");
    let unpacked = tempfile::tempdir().unwrap();
    stdout_of(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(unpacked.path()),
    );
    let sensord = unpacked.path().join("usr/bin/sensord");
    arm64_session(&sensord, Path::new("/usr/aarch64-linux-gnu"));
}

/// Runs an arm64 `sensord` under qemu-aarch64 with the C library of `sysroot`
/// (`-L`): `--version`, then a short session against this machine's broker
/// whose readings aggregatord stores, and a clean stop.
pub(crate) fn arm64_session(sensord: &Path, sysroot: &Path) {
    let described = stdout_of(Command::new("file").arg(sensord));
    assert!(described.contains("ARM aarch64"), "{described}");
    let qemu = |args: &[&str]| {
        let mut cmd = Command::new("qemu-aarch64");
        cmd.arg("-L").arg(sysroot).arg(sensord).args(args);
        cmd
    };
    let version = stdout_of(&mut qemu(&["--version"]));
    assert!(version.starts_with("sensord "), "{version}");

    let a = aggregatord_for(&["room101"], "");
    let config = write_config(&sensord_yaml(
        &a.broker,
        &a.pki,
        "room101",
        "building/floor1/room101",
        &[
            ("temp_001", "temperature", "200ms", 0),
            ("energy_001", "energy", "200ms", 2),
        ],
    ));
    let mut node = Proc::spawn(
        "sensord-arm64",
        qemu(&["--config"])
            .arg(&config.path)
            .env("RUST_LOG", "info"),
    );
    node.log.wait_for(&["connected broker="]);
    let energy = "building/floor1/room101/energy/energy_001";
    a.agg
        .log
        .wait_for_nth(&["stored reading", &format!("topic={energy} ")], 3);
    assert!(node.terminate().success(), "the arm64 sensord's clean stop");
    let stop = node.log.wait_for(&["sensord stopped"]);
    assert!(stop.contains("lost_at_exit=0"), "{stop}");
    let stored = dump(&a.config.path, &["--format", "jsonl", "--room", "room101"]);
    assert!(stored.lines().count() >= 3, "{stored}");
}
