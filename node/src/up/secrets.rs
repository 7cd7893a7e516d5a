//! The trust `reservoir up` makes in its DIR (unless started with
//! `--insecure`), and `reservoir deploy init` in its output folder:
//!
//! - `tls/ca.pem`, `tls/ca.key`: a CA (made once per DIR, never replaced:
//!   a DIR that has one keeps it);
//! - `tls/node-{id}.pem`, `tls/node-{id}.key`: each node's certificate from
//!   that CA, naming the node (`spiffe://reservoir/node/{id}/{region}`) and
//!   the hosts it is reached by (`localhost` and `127.0.0.1`, and each DNS
//!   name or IP it advertises), for both listeners and for calling peers;
//!   a certificate that already names the node and those hosts is kept;
//! - `credentials/{role}.key`: one API key per role (`shop`, `admin`,
//!   `observer`; the principal is named after the role), whose Argon2id
//!   hashes go into every node's config;
//! - `control.token`: the token the control API asks for (made for every
//!   three-region cluster, `--insecure` or not).
//!
//! [`client_certificate`] issues a client certificate from the same CA (a
//! client may present one instead of an API key).
//!
//! Private keys and tokens are written with mode 0600. A DIR reused by a
//! later run keeps its files (and its configs name them). The CA key never
//! leaves DIR: a node needs only `ca.pem` and its own certificate and key.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use reservoir_client::TlsInfo;

use super::UpError;
use crate::server::security::clients::{ApiKey, Role, hash_api_key, new_api_key};
use crate::server::security::{CertIdentity, PeerNode, TlsFiles, node_uri, pem_identity};

/// DIR's folder of certificates and keys.
pub const TLS_DIR: &str = "tls";
/// DIR's folder of API keys, one file per role.
pub const CREDENTIALS_DIR: &str = "credentials";
/// DIR's file holding the control API's token.
pub const CONTROL_TOKEN_FILE: &str = "control.token";

/// The `[tls]` section of node `id`'s config in `dir`.
pub fn tls_files(dir: &Path, id: u64) -> TlsFiles {
    let tls = dir.join(TLS_DIR);
    TlsFiles {
        ca_file: tls.join("ca.pem"),
        cert_file: tls.join(format!("node-{id}.pem")),
        key_file: tls.join(format!("node-{id}.key")),
    }
}

/// What `cluster.json` says about trust: the CA file and the key file of
/// each role, relative to DIR.
pub fn cluster_trust() -> (TlsInfo, BTreeMap<String, PathBuf>) {
    let credentials = Role::ALL
        .iter()
        .map(|r| {
            (
                r.name().to_string(),
                Path::new(CREDENTIALS_DIR).join(format!("{}.key", r.name())),
            )
        })
        .collect();
    (
        TlsInfo {
            ca_file: Path::new(TLS_DIR).join("ca.pem"),
        },
        credentials,
    )
}

/// The CA `reservoir up` makes.
pub const UP_CA_NAME: &str = "Reservoir development CA (reservoir up)";
/// The hosts every node certificate names, so a program on the node's own
/// host can reach it as `localhost`.
pub const LOOPBACK_HOSTS: [&str; 2] = ["localhost", "127.0.0.1"];

/// A node certificate to make: the node, and every host (DNS name or IP
/// literal) it is reached by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCert {
    /// Its node id.
    pub id: u64,
    /// Its region (its group's name).
    pub region: String,
    /// The names the certificate carries, besides [`LOOPBACK_HOSTS`].
    pub hosts: Vec<String>,
}

impl NodeCert {
    /// Every name the certificate carries: [`LOOPBACK_HOSTS`] and `hosts`,
    /// each once.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = LOOPBACK_HOSTS.iter().map(|h| h.to_string()).collect();
        for host in &self.hosts {
            if !names.contains(host) {
                names.push(host.clone());
            }
        }
        names
    }
}

/// What [`make`] did.
#[derive(Clone, Debug)]
pub struct Made {
    /// The API keys' config entries, one per role.
    pub api_keys: Vec<ApiKey>,
    /// True when the CA was made now (false: DIR's was kept).
    pub ca_made: bool,
    /// The nodes whose certificates were made now (the others' were kept).
    pub certs_made: Vec<u64>,
}

/// Makes (or, for a DIR that has them, keeps) the CA named `ca_name`, a
/// certificate for each of `nodes`, one API key per role and nothing else;
/// returns the keys' config entries and what was made. A DIR's CA is never
/// replaced: with `ca.pem` but no `ca.key`, only certificates that already
/// fit are kept, and one that must be made is refused; a `ca.key` without
/// its `ca.pem`, or that does not match it, is refused.
pub fn make(dir: &Path, ca_name: &str, nodes: &[NodeCert]) -> Result<Made, UpError> {
    let tls = dir.join(TLS_DIR);
    std::fs::create_dir_all(&tls).map_err(UpError::io(format!("creating {}", tls.display())))?;
    let fail = |what: &str| {
        let what = what.to_string();
        move |e: rcgen::Error| UpError::Usage(format!("{what}: {e}"))
    };
    let (ca_pem_path, ca_key_path) = (tls.join("ca.pem"), tls.join("ca.key"));
    let ca_made = !ca_pem_path.exists() && !ca_key_path.exists();
    if ca_made {
        let key = KeyPair::generate().map_err(fail("making the CA's key"))?;
        let cert = ca_params(ca_name)
            .self_signed(&key)
            .map_err(fail("making the CA"))?;
        write_private(&ca_key_path, key.serialize_pem().as_bytes())?;
        write_public(&ca_pem_path, cert.pem().as_bytes())?;
    }
    let ca_pem = std::fs::read(&ca_pem_path).map_err(UpError::io(format!(
        "reading {} (a ca.key without its ca.pem is not used)",
        ca_pem_path.display()
    )))?;
    // The CA's key, read only when a certificate must be signed.
    let mut issuer: Option<Issuer<'static, KeyPair>> = None;
    let mut certs_made = Vec::new();
    for node in nodes {
        let files = tls_files(dir, node.id);
        let names = node.names();
        if cert_fits(&files, node, &names, &ca_pem) {
            continue;
        }
        if issuer.is_none() {
            issuer = Some(load_issuer(&ca_pem_path, &ca_key_path, &ca_pem)?);
        }
        let issuer = issuer.as_ref().expect("just loaded");
        let (id, region) = (node.id, &node.region);
        let mut params = CertificateParams::new(names).map_err(fail("node certificate names"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("reservoir node {id} ({region})"));
        let uri = node_uri(id, region)
            .try_into()
            .map_err(fail("node identity URI"))?;
        params.subject_alt_names.push(SanType::URI(uri));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().map_err(fail("making a node key"))?;
        let cert = params
            .signed_by(&key, issuer)
            .map_err(fail("signing a node certificate"))?;
        write_private(&files.key_file, key.serialize_pem().as_bytes())?;
        write_public(&files.cert_file, cert.pem().as_bytes())?;
        certs_made.push(id);
    }
    Ok(Made {
        api_keys: api_keys(dir)?,
        ca_made,
        certs_made,
    })
}

/// True when node `node`'s certificate in DIR is there with its key,
/// names the node and every one of `names`, and was issued by the CA of
/// `ca_pem` (by name: a certificate of another CA is made again).
fn cert_fits(files: &TlsFiles, node: &NodeCert, names: &[String], ca_pem: &[u8]) -> bool {
    let Ok(pem) = std::fs::read(&files.cert_file) else {
        return false;
    };
    let me = Some(CertIdentity::Node(PeerNode {
        id: node.id,
        region: node.region.clone(),
    }));
    let issued = |pem: &[u8], issuer: bool| {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
        let cert = pem.parse_x509().ok()?;
        let name = if issuer { cert.issuer() } else { cert.subject() };
        Some(name.to_string())
    };
    let carried = pem_names(&pem);
    pem_identity(&pem) == me
        && files.key_file.exists()
        && names.iter().all(|n| carried.contains(n))
        && issued(&pem, true).is_some()
        && issued(&pem, true) == issued(ca_pem, false)
}

/// The DNS names and IP addresses the first certificate of a PEM file
/// carries in its subject alternative names.
pub fn pem_names(pem: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(pem) else {
        return Vec::new();
    };
    let Ok(cert) = pem.parse_x509() else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_string()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The CA that signs DIR's node certificates: its key, checked against
/// its certificate, and the certificate's own name.
fn load_issuer(
    ca_pem_path: &Path,
    ca_key_path: &Path,
    ca_pem: &[u8],
) -> Result<Issuer<'static, KeyPair>, UpError> {
    let pem = std::fs::read_to_string(ca_key_path).map_err(|e| {
        UpError::Usage(format!(
            "a node certificate must be made, but the CA's key {} cannot be read ({e}); \
             the CA is never replaced: put its key back, or use another directory",
            ca_key_path.display()
        ))
    })?;
    let key =
        KeyPair::from_pem(&pem).map_err(|e| UpError::Usage(format!("{}: {e}", ca_key_path.display())))?;
    let bad = |why: &str| UpError::Usage(format!("{}: {why}", ca_pem_path.display()));
    let (_, parsed) = x509_parser::pem::parse_x509_pem(ca_pem).map_err(|_| bad("not a PEM certificate"))?;
    let cert = parsed.parse_x509().map_err(|_| bad("not a certificate"))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(UpError::Usage(format!(
            "{} is not the key of {}; the CA is never replaced",
            ca_key_path.display(),
            ca_pem_path.display()
        )));
    }
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| bad("the CA certificate has no common name"))?
        .to_string();
    Ok(Issuer::new(ca_params(&name), key))
}

/// A client certificate from DIR's development CA for `principal` with
/// `role` (PEM certificate and key): a client may present it on the client
/// plane instead of an API key.
pub fn client_certificate(dir: &Path, role: Role, principal: &str) -> Result<(String, String), String> {
    crate::server::security::clients::check_principal(principal)?;
    let (ca_pem_path, ca_key_path) = (dir.join(TLS_DIR).join("ca.pem"), dir.join(TLS_DIR).join("ca.key"));
    let ca_pem = std::fs::read(&ca_pem_path).map_err(|e| format!("{}: {e}", ca_pem_path.display()))?;
    let issuer = load_issuer(&ca_pem_path, &ca_key_path, &ca_pem).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("reservoir client {principal} ({})", role.name()),
    );
    let uri = crate::server::security::client_uri(role, principal)
        .try_into()
        .map_err(|e: rcgen::Error| e.to_string())?;
    params.subject_alt_names.push(SanType::URI(uri));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A CA's parameters, named `name` (the same each time for a name, so a
/// kept key signs certificates that chain to the `ca.pem` already written).
fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// One key per role (made once per DIR; the hash is made again from the key
/// kept in DIR), and the control token.
fn api_keys(dir: &Path) -> Result<Vec<ApiKey>, UpError> {
    let creds = dir.join(CREDENTIALS_DIR);
    std::fs::create_dir_all(&creds).map_err(UpError::io(format!("creating {}", creds.display())))?;
    let mut keys = Vec::new();
    for role in Role::ALL {
        let path = creds.join(format!("{}.key", role.name()));
        let hash = if path.exists() {
            let key = reservoir_client::credentials::read_key(&path).map_err(UpError::Usage)?;
            hash_api_key(&key).map_err(UpError::Usage)?
        } else {
            let (key, hash) = new_api_key(role.name()).map_err(UpError::Usage)?;
            write_private(&path, format!("{key}\n").as_bytes())?;
            hash
        };
        keys.push(ApiKey {
            id: role.name().to_string(),
            principal: format!("dev-{}", role.name()),
            role,
            hash,
        });
    }
    Ok(keys)
}

/// The control API's token, from DIR (made if DIR has none).
pub fn ensure_control_token(dir: &Path) -> Result<String, UpError> {
    let path = dir.join(CONTROL_TOKEN_FILE);
    if !path.exists() {
        let (token, _) = new_api_key("control").map_err(UpError::Usage)?;
        write_private(&path, format!("{token}\n").as_bytes())?;
    }
    reservoir_client::credentials::read_key(&path).map_err(UpError::Usage)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), UpError> {
    write_mode(path, bytes, 0o600)
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<(), UpError> {
    write_mode(path, bytes, 0o644)
}

fn write_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), UpError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(UpError::io(format!("writing {}", path.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(UpError::io(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, hosts: &[&str]) -> NodeCert {
        NodeCert {
            id,
            region: "us-east".into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        }
    }

    /// A second run keeps the CA and every certificate that still fits;
    /// a node reached by a new host gets a new certificate naming it.
    #[test]
    fn a_second_run_keeps_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = make(
            dir.path(),
            "test CA",
            &[node(1, &["us-east-1"]), node(2, &["us-east-2"])],
        )
        .unwrap();
        assert!(first.ca_made);
        assert_eq!(first.certs_made, vec![1, 2]);
        let ca = std::fs::read(dir.path().join("tls/ca.pem")).unwrap();
        let cert = std::fs::read(dir.path().join("tls/node-1.pem")).unwrap();
        assert_eq!(
            pem_names(&cert),
            vec!["localhost".to_string(), "127.0.0.1".into(), "us-east-1".into()]
        );
        let again = make(
            dir.path(),
            "test CA",
            &[node(1, &["us-east-1"]), node(2, &["us-east-2", "10.0.0.2"])],
        )
        .unwrap();
        assert!(!again.ca_made);
        assert_eq!(again.certs_made, vec![2]);
        assert_eq!(std::fs::read(dir.path().join("tls/ca.pem")).unwrap(), ca);
        assert_eq!(std::fs::read(dir.path().join("tls/node-1.pem")).unwrap(), cert);
        let two = std::fs::read(dir.path().join("tls/node-2.pem")).unwrap();
        assert!(pem_names(&two).contains(&"10.0.0.2".to_string()));
        for (a, b) in first.api_keys.iter().zip(&again.api_keys) {
            assert_eq!((&a.id, &a.role), (&b.id, &b.role), "the same keys");
        }
    }

    /// Without its key the CA still vouches for the certificates it made,
    /// but a new one is refused rather than signed by a new CA; a key that
    /// is not the CA's is refused.
    #[test]
    fn the_ca_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        make(dir.path(), "test CA", &[node(1, &["a"])]).unwrap();
        let key = dir.path().join("tls/ca.key");
        let saved = std::fs::read(&key).unwrap();
        std::fs::remove_file(&key).unwrap();
        let kept = make(dir.path(), "test CA", &[node(1, &["a"])]).unwrap();
        assert!(!kept.ca_made && kept.certs_made.is_empty());
        let e = make(dir.path(), "test CA", &[node(1, &["a"]), node(2, &["b"])]).unwrap_err();
        assert!(e.to_string().contains("never replaced"), "{e}");
        let other = tempfile::tempdir().unwrap();
        make(other.path(), "test CA", &[node(1, &["a"])]).unwrap();
        std::fs::copy(other.path().join("tls/ca.key"), &key).unwrap();
        let e = make(dir.path(), "test CA", &[node(2, &["b"])]).unwrap_err();
        assert!(e.to_string().contains("is not the key of"), "{e}");
        std::fs::write(&key, saved).unwrap();
        assert_eq!(
            make(dir.path(), "test CA", &[node(2, &["b"])])
                .unwrap()
                .certs_made,
            vec![2]
        );
    }
}
