//! A PKI made for the run, through the operator's own tool (deploy/pki).

use super::*;
use std::path::PathBuf;
use std::process::Command;

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
