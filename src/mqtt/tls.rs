//! Mutual TLS: trust only our CA, present this node's certificate.
//! It opens no connection and reads no config: three paths in, a rustls config out.

use rumqttc::tokio_rustls::rustls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Mutual TLS: our CA (to check the broker) and this client's certificate and key.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    /// PEM CA certificate(s) the broker's certificate must chain to.
    pub ca_file: PathBuf,
    /// This client's PEM certificate; its CN is the client id (the broker's ACL).
    pub cert_file: PathBuf,
    /// Its private key, readable by its owner only.
    pub key_file: PathBuf,
}

/// A path that starts with this is a systemd credential (`LoadCredential=`),
/// readable only inside the unit.
pub const CREDENTIALS_VAR: &str = "${CREDENTIALS_DIRECTORY}";

/// Why the TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be used: missing, unreadable, no PEM in it, not a usable CA,
    /// or a key that does not match the certificate.
    #[error("{}: {message}", file.display())]
    File {
        /// The file at fault, as its path was given.
        file: PathBuf,
        /// What is wrong, with a hint when a systemd credential is used outside its unit.
        message: String,
    },
    /// Like ssh, a private key that group or others can read is refused.
    #[error(
        "{}: private key is readable by group or others (mode {mode:04o}); run: chmod 600 {}",
        file.display(), file.display()
    )]
    KeyPermissions {
        /// The key file.
        file: PathBuf,
        /// Its permission bits (`mode & 0o777`), shown in octal.
        mode: u32,
    },
    /// rustls could not build the client config (no usable protocol version).
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_error(file: &Path, message: impl std::fmt::Display) -> TlsError {
    let mut message = message.to_string();
    if file.starts_with(CREDENTIALS_VAR) {
        message.push_str(
            " (CREDENTIALS_DIRECTORY is set by systemd for a unit with LoadCredential=; \
             it is not set here)",
        );
    } else if in_dev_pki(file) && !file.exists() {
        // The shipped example configs name the demo's PKI: a fresh clone has none.
        message.push_str(
            " (the example configs use the development PKI in var/pki: run scripts/demo \
             once, or deploy/pki/gen-dev-pki.sh var/pki room101 room102 room201 \
             aggregatord aggregatord-alerts observer)",
        );
    }
    TlsError::File {
        file: file.to_owned(),
        message,
    }
}

/// Whether `file` is in a `var/pki` folder: the development PKI that
/// scripts/demo makes and the example configs name.
fn in_dev_pki(file: &Path) -> bool {
    let parts: Vec<_> = file
        .components()
        .map(std::path::Component::as_os_str)
        .collect();
    parts.windows(2).any(|w| w[0] == "var" && w[1] == "pki")
}

/// The rustls client config for `files`; public so tests and tools can connect the
/// same way the daemons do.
pub fn client_config(files: &TlsFiles) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(&files.ca_file)? {
        roots
            .add(cert)
            .map_err(|e| file_error(&files.ca_file, format!("not a usable CA certificate: {e}")))?;
    }
    let chain = read_certs(&files.cert_file)?;
    let key = read_key(&files.key_file)?;

    // ring rather than the default aws-lc-rs: same protocols, no C toolchain build.
    // TLS 1.2 is the floor (rustls offers nothing older); the server name is always
    // checked against the broker certificate's SAN.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| {
            file_error(
                &files.key_file,
                format!("does not match the certificate: {e}"),
            )
        })?;
    Ok(config)
}

/// What `--check-config` can check of `files`: everything start-up checks
/// (each file readable, the key private, the certificates parse, the key
/// matches the certificate). A key that only systemd supplies
/// (`${CREDENTIALS_DIRECTORY}`, unset outside the unit) cannot be read here:
/// the rest is checked, and the returned note says so.
pub fn check(files: &TlsFiles) -> Result<Option<String>, TlsError> {
    if files.key_file.starts_with(CREDENTIALS_VAR) {
        read_certs(&files.ca_file)?;
        read_certs(&files.cert_file)?;
        return Ok(Some(format!(
            "{}: supplied by systemd (LoadCredential=) when the unit starts; not checked here",
            files.key_file.display()
        )));
    }
    client_config(files)?;
    Ok(None)
}

/// A client certificate as a broker sees it: the subject's common name (the
/// client's identity where the broker takes it from the certificate, as
/// deploy/mosquitto does) and when it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// The subject's CN, if it has one.
    pub common_name: Option<String>,
    /// Valid from, and until: seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
}

/// `files.cert_file`'s identity, as written in it (see [`issued_by_ca`]).
pub fn certificate_identity(files: &TlsFiles) -> Result<CertIdentity, TlsError> {
    let chain = read_certs(&files.cert_file)?;
    let leaf = &chain[0];
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| {
        file_error(
            &files.cert_file,
            format!("not a readable X.509 certificate: {e}"),
        )
    })?;
    let identity = CertIdentity {
        common_name: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    };
    Ok(identity)
}

/// Whether the CA in `files.ca_file` signed `files.cert_file`: the
/// signature alone, judged at a moment inside the certificate's validity
/// period (that is the caller's to judge: a node may start before its
/// clock is set).
pub fn issued_by_ca(files: &TlsFiles, identity: &CertIdentity) -> Result<(), TlsError> {
    let chain = read_certs(&files.cert_file)?;
    let leaf = &chain[0];
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(&files.ca_file)? {
        roots
            .add(ca)
            .map_err(|e| file_error(&files.ca_file, format!("not a usable CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| file_error(&files.ca_file, e))?;
    let inside = u64::try_from(identity.not_before.saturating_add(1)).unwrap_or(0);
    let at = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(inside));
    verifier
        .verify_client_cert(leaf, &chain[1..], at)
        .map_err(|e| {
            file_error(
                &files.cert_file,
                format!(
                    "not issued by the CA in {} ({e}): the broker, which trusts that CA, would refuse it",
                    files.ca_file.display()
                ),
            )
        })?;
    Ok(())
}

/// The three files' contents: a renewed certificate (same path, new bytes) is a
/// change worth reconnecting for.
pub(super) fn fingerprint(files: &TlsFiles) -> Result<Vec<u8>, TlsError> {
    let mut all = Vec::new();
    for f in [&files.ca_file, &files.cert_file, &files.key_file] {
        all.extend(std::fs::read(f).map_err(|e| file_error(f, e))?);
        all.push(0);
    }
    Ok(all)
}

fn read_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| file_error(file, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(file, e))?;
    if certs.is_empty() {
        return Err(file_error(file, "no PEM certificate found"));
    }
    Ok(certs)
}

fn read_key(file: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    check_key_mode(file)?;
    PrivateKeyDer::from_pem_file(file).map_err(|e| file_error(file, e))
}

/// Like ssh: a private key others can read is refused, not used.
fn check_key_mode(file: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).map_err(|e| file_error(file, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyPermissions {
            file: file.to_owned(),
            mode,
        });
    }
    Ok(())
}
