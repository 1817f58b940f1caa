//! Config errors: exit status 78, naming file, line and key. No broker needed.

use crate::harness::*;
use std::process::Command;

fn check(bin: &str, path: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(bin)
        .arg("--check-config")
        .arg("--config")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_shipped_example_configs_are_valid() {
    // --check-config reads the certificates and keys the configs name (the
    // demo's var/pki): copies of the configs get a PKI of their own there.
    let pki = Pki::new(&["room101", "room102", "room201", "aggregatord"]);
    let tree = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tree.path().join("config/sensord")).unwrap();
    std::fs::create_dir_all(tree.path().join("var")).unwrap();
    std::os::unix::fs::symlink(pki.path(""), tree.path().join("var/pki")).unwrap();
    let copy = |file: &str| {
        let to = tree.path().join(file);
        std::fs::copy(std::path::Path::new(REPO).join(file), &to).unwrap();
        to
    };
    for file in [
        "config/sensord/room101.yaml",
        "config/sensord/room102.yaml",
        "config/sensord/room201.yaml",
    ] {
        let (code, err) = check(SENSORD, &copy(file));
        assert_eq!(code, Some(0), "{file}: {err}");
    }
    let (code, err) = check(AGGREGATORD, &copy("config/aggregatord.yaml"));
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_bad_config_names_file_line_and_key_and_exits_78() {
    let good = std::fs::read_to_string(format!("{REPO}/config/sensord/room101.yaml")).unwrap();
    let cases = [
        ("qos: 1,", "qos: 3,", "sensors[4].qos", "QoS is 0, 1 or 2"),
        (
            "clear_after: 30s",
            "clear_after: 30",
            "sensors[4].clear_after",
            "invalid duration",
        ),
        (
            "[mon, tue,",
            "[mon, tue, xyz,",
            "room.occupancy.days[2]",
            "weekday names expected",
        ),
        (
            "keep_alive: 30s",
            "keep_alive: soon",
            "broker.keep_alive",
            "invalid duration",
        ),
        (
            "port: 8883",
            "port: 8883\n  colour: blue",
            "broker.colour",
            "unknown field",
        ),
        ("id: room101 ", "id: room/101 ", "node.id", "contains '/'"),
        (
            "id: hum_001, ",
            "id: temp_001,",
            "sensors[1].id",
            "used by an earlier sensor",
        ),
    ];
    for (from, to, key, message) in cases {
        assert!(
            good.contains(from),
            "example config changed; update this test ({from:?})"
        );
        let bad = good.replacen(from, to, 1);
        // The line of the key in question: the last line of the replacement.
        let at = good.find(from).unwrap() + to.rfind('\n').map_or(0, |i| i + 1);
        let line = bad[..at].matches('\n').count() + 1;
        let file = write_config(&bad);
        let (code, err) = check(SENSORD, &file.path);
        assert_eq!(code, Some(78), "{key}: {err}");
        let expect = format!("{}:{line}: {key}: ", file.path.display());
        assert!(err.contains(&expect), "expected {expect:?} in {err:?}");
        assert!(err.contains(message), "expected {message:?} in {err:?}");
    }
    let (code, err) = check(
        AGGREGATORD,
        std::path::Path::new("/nonexistent/aggregatord.yaml"),
    );
    assert_eq!(code, Some(78));
    assert!(
        err.contains("/nonexistent/aggregatord.yaml: cannot read config"),
        "{err}"
    );
}
