//! `reservoir node --check-config`: what can be checked of a config without
//! starting the node, beyond its fields ([`NodeConfig::validate`]): the TLS
//! files and the data directory. Nothing here binds a port or opens the
//! database.
//!
//! The TLS check is the one a peer and a client will make: the node's
//! certificate is verified with rustls's own verifiers against the
//! config's CA, as a server for each host the node advertises (a client
//! connecting to `grpc_advertise`, a peer to `peer_advertise`) and as a
//! client (the node calling its peers); it must name the node's identity
//! URI, and the private key must match it.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::server::config::NodeConfig;
use crate::server::security::{CertIdentity, PeerNode, TlsFiles, node_uri};

/// Most certificates read from one PEM file (a CA bundle, a chain).
pub const PEM_CERTIFICATES_MAX: usize = 16;

/// A failed check: the field it concerns, and what is wrong.
pub type CheckError = (&'static str, String);

/// Checks what the fields cannot say: the TLS files (unless insecure) and
/// the data directory. `config` has been validated.
pub fn check(config: &NodeConfig) -> Result<(), CheckError> {
    if let (Some(files), false) = (&config.tls, config.insecure) {
        check_tls(files, config.node_id, &config.region, &config.advertised_hosts())?;
    }
    check_data_dir(&config.data_dir)
}

/// The one line `--check-config` prints for a good config.
pub fn summary(config: &NodeConfig) -> String {
    format!(
        "config OK: node {} ({}), client {}, peer {}, http {}{}",
        config.node_id,
        match &config.location {
            Some(location) => format!("region {}, in {location}", config.region),
            None => format!("region {}", config.region),
        },
        config.grpc_advertised(),
        config.peer_advertised(),
        config.http_addr,
        if config.insecure {
            " (INSECURE: plaintext, no authentication)"
        } else {
            ""
        }
    )
}

/// The CA, the node's certificate and key: each file readable and PEM;
/// the certificate chains to the CA as a server for every host in `hosts`
/// and as a client, names node `id` of `region`, and matches the key.
pub fn check_tls(files: &TlsFiles, id: u64, region: &str, hosts: &[String]) -> Result<(), CheckError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca = certificates(&files.ca_file, "tls.ca_file")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca {
        roots
            .add(cert)
            .map_err(|e| ("tls.ca_file", format!("{}: {e}", files.ca_file.display())))?;
    }
    let roots = Arc::new(roots);
    let chain = certificates(&files.cert_file, "tls.cert_file")?;
    let cert_error = |what: String| ("tls.cert_file", format!("{}: {what}", files.cert_file.display()));
    let (leaf, intermediates) = chain.split_first().expect("certificates() returns at least one");
    let key_bytes = reservoir_client::credentials::read_bounded(&files.key_file, "reading")
        .map_err(|e| ("tls.key_file", e))?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
        (
            "tls.key_file",
            format!("{}: no private key in it ({e})", files.key_file.display()),
        )
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| ("tls.key_file", format!("{}: {e}", files.key_file.display())))?;
    rustls::sign::CertifiedKey::new(chain.clone(), signing)
        .keys_match()
        .map_err(|e| {
            (
                "tls.key_file",
                format!(
                    "{}: does not belong to {} ({e})",
                    files.key_file.display(),
                    files.cert_file.display()
                ),
            )
        })?;
    let me = CertIdentity::Node(PeerNode {
        id,
        region: region.to_string(),
    });
    let named = crate::server::security::identity_of(leaf);
    if named.as_ref() != Some(&me) {
        return Err(cert_error(format!(
            "names {named:?}, not this node ({})",
            node_uri(id, region)
        )));
    }
    let now = UnixTime::now();
    let server = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| ("tls.ca_file", format!("{}: {e}", files.ca_file.display())))?;
    for host in hosts {
        let name = ServerName::try_from(host.as_str())
            .map_err(|e| cert_error(format!("{host} is no TLS server name: {e}")))?;
        server
            .verify_server_cert(leaf, intermediates, &name, &[], now)
            .map_err(|e| {
                cert_error(format!(
                    "not valid for {host} (an advertised host) from {}: {e}",
                    files.ca_file.display()
                ))
            })?;
    }
    let client = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| ("tls.ca_file", format!("{}: {e}", files.ca_file.display())))?;
    client.verify_client_cert(leaf, intermediates, now).map_err(|e| {
        cert_error(format!(
            "not valid as a client certificate (calling peers) from {}: {e}",
            files.ca_file.display()
        ))
    })?;
    Ok(())
}

/// The certificates of a PEM file (1-[`PEM_CERTIFICATES_MAX`]).
fn certificates(path: &Path, field: &'static str) -> Result<Vec<CertificateDer<'static>>, CheckError> {
    let bytes = reservoir_client::credentials::read_bounded(path, "reading").map_err(|e| (field, e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .take(PEM_CERTIFICATES_MAX + 1)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| (field, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err((field, format!("{}: no certificate in it", path.display())));
    }
    if certs.len() > PEM_CERTIFICATES_MAX {
        return Err((
            field,
            format!(
                "{}: more than {PEM_CERTIFICATES_MAX} certificates",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

/// The data directory: an existing directory this process may write, or
/// one it may create (its nearest existing ancestor is a writable
/// directory).
pub fn check_data_dir(dir: &Path) -> Result<(), CheckError> {
    let field = "data_dir";
    let mut at = dir;
    loop {
        match std::fs::metadata(at) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => {
                return Err((
                    field,
                    format!("{}: {} is not a directory", dir.display(), at.display()),
                ));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                match at.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => at = parent,
                    // A relative path whose first component is missing: the
                    // working directory is its parent.
                    _ => {
                        at = Path::new(".");
                        break;
                    }
                }
            }
            Err(e) => return Err((field, format!("{}: {e}", at.display()))),
        }
    }
    if !writable(at) {
        let what = if at == dir {
            "is not writable".to_string()
        } else {
            format!("cannot be created: {} is not writable", at.display())
        };
        return Err((field, format!("{} {what}", dir.display())));
    }
    Ok(())
}

/// Whether this process may create entries in directory `dir`.
#[allow(unsafe_code)] // libc::access; the block says why it is sound
fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `path` is a NUL-terminated string that outlives the call;
    // access(2) only reads it.
    unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data dir that exists, or whose parent does, passes; one under a
    /// file, or under a directory this process cannot write, is refused.
    #[test]
    fn data_dir_must_be_creatable() {
        let dir = tempfile::tempdir().unwrap();
        check_data_dir(dir.path()).unwrap();
        check_data_dir(&dir.path().join("a/b/c")).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(check_data_dir(&file).unwrap_err().0, "data_dir");
        assert!(
            check_data_dir(&file.join("data"))
                .unwrap_err()
                .1
                .contains("not a directory")
        );
        check_data_dir(Path::new("relative-data-dir-that-is-not-there")).unwrap();
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;
    use crate::up::secrets::{self, NodeCert};

    /// A certificate from the CA naming the node and its advertised hosts
    /// passes; a host it does not name, another node's identity, another
    /// CA, and a key that is not the certificate's are each refused,
    /// naming the field.
    #[test]
    fn tls_files_are_verified_as_peers_will() {
        let dir = tempfile::tempdir().unwrap();
        let certs: Vec<NodeCert> = (1..=2)
            .map(|id| NodeCert {
                id,
                region: "us-east".into(),
                hosts: vec![format!("us-east-{id}")],
            })
            .collect();
        secrets::make(dir.path(), "test CA", &certs).unwrap();
        let files = secrets::tls_files(dir.path(), 1);
        check_tls(&files, 1, "us-east", &["us-east-1".into(), "127.0.0.1".into()]).unwrap();
        let (field, message) = check_tls(&files, 1, "us-east", &["us-east-9".into()]).unwrap_err();
        assert_eq!(field, "tls.cert_file");
        assert!(message.contains("us-east-9"), "{message}");
        let (field, message) = check_tls(&files, 2, "us-east", &["us-east-1".into()]).unwrap_err();
        assert_eq!(field, "tls.cert_file");
        assert!(message.contains("spiffe://reservoir/node/2/us-east"), "{message}");
        let mut wrong_key = files.clone();
        wrong_key.key_file = secrets::tls_files(dir.path(), 2).key_file;
        assert_eq!(
            check_tls(&wrong_key, 1, "us-east", &["us-east-1".into()])
                .unwrap_err()
                .0,
            "tls.key_file"
        );
        let other = tempfile::tempdir().unwrap();
        secrets::make(other.path(), "test CA", &certs[..1]).unwrap();
        let mut wrong_ca = files.clone();
        wrong_ca.ca_file = secrets::tls_files(other.path(), 1).ca_file;
        assert_eq!(
            check_tls(&wrong_ca, 1, "us-east", &["us-east-1".into()])
                .unwrap_err()
                .0,
            "tls.cert_file"
        );
        let mut missing = files.clone();
        missing.ca_file = dir.path().join("none.pem");
        assert_eq!(
            check_tls(&missing, 1, "us-east", &[]).unwrap_err().0,
            "tls.ca_file"
        );
        std::fs::write(dir.path().join("junk.pem"), "-----BEGIN CERTIFICATE-----\nnope\n").unwrap();
        missing.ca_file = dir.path().join("junk.pem");
        assert_eq!(
            check_tls(&missing, 1, "us-east", &[]).unwrap_err().0,
            "tls.ca_file"
        );
    }
}
