//! The development trust `reservoir up` makes in its DIR, unless started
//! with `--insecure`:
//!
//! - `tls/ca.pem`, `tls/ca.key`: a development CA (made once per DIR);
//! - `tls/node-{id}.pem`, `tls/node-{id}.key`: each node's certificate from
//!   that CA, naming the node (`spiffe://reservoir/node/{id}/{region}`),
//!   `localhost` and `127.0.0.1`, for both listeners and for calling peers;
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
//! later `up` keeps its files (and its configs name them). This CA is for a
//! machine's loopback: a real deployment brings its own (docs/architecture.md).

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

/// Makes (or, for a DIR that has it, reuses) the CA, a certificate for each
/// of `nodes` (id, region), one API key per role and the control token;
/// returns the keys' config entries.
pub fn make(dir: &Path, nodes: &[(u64, String)]) -> Result<Vec<ApiKey>, UpError> {
    let tls = dir.join(TLS_DIR);
    std::fs::create_dir_all(&tls).map_err(UpError::io(format!("creating {}", tls.display())))?;
    let fail = |what: &str| {
        let what = what.to_string();
        move |e: rcgen::Error| UpError::Usage(format!("{what}: {e}"))
    };
    let ca_params = ca_params();
    let (ca_pem_path, ca_key_path) = (tls.join("ca.pem"), tls.join("ca.key"));
    let ca_key = if ca_key_path.exists() {
        let pem = std::fs::read_to_string(&ca_key_path)
            .map_err(UpError::io(format!("reading {}", ca_key_path.display())))?;
        KeyPair::from_pem(&pem).map_err(fail("the development CA's key"))?
    } else {
        let key = KeyPair::generate().map_err(fail("making the development CA's key"))?;
        let cert = ca_params
            .self_signed(&key)
            .map_err(fail("making the development CA"))?;
        write_private(&ca_key_path, key.serialize_pem().as_bytes())?;
        write_public(&ca_pem_path, cert.pem().as_bytes())?;
        key
    };
    let issuer = Issuer::new(ca_params, ca_key);
    for (id, region) in nodes {
        let files = tls_files(dir, *id);
        let fits = std::fs::read(&files.cert_file)
            .ok()
            .and_then(|pem| pem_identity(&pem))
            == Some(CertIdentity::Node(PeerNode {
                id: *id,
                region: region.clone(),
            }));
        if fits && files.key_file.exists() {
            continue;
        }
        let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(fail("node certificate names"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("reservoir node {id} ({region})"));
        let uri = node_uri(*id, region)
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
            .signed_by(&key, &issuer)
            .map_err(fail("signing a node certificate"))?;
        write_private(&files.key_file, key.serialize_pem().as_bytes())?;
        write_public(&files.cert_file, cert.pem().as_bytes())?;
    }
    api_keys(dir)
}

/// A client certificate from DIR's development CA for `principal` with
/// `role` (PEM certificate and key): a client may present it on the client
/// plane instead of an API key.
pub fn client_certificate(dir: &Path, role: Role, principal: &str) -> Result<(String, String), String> {
    crate::server::security::clients::check_principal(principal)?;
    let ca_key_path = dir.join(TLS_DIR).join("ca.key");
    let pem = std::fs::read_to_string(&ca_key_path).map_err(|e| format!("{}: {e}", ca_key_path.display()))?;
    let ca_key = KeyPair::from_pem(&pem).map_err(|e| format!("{}: {e}", ca_key_path.display()))?;
    let issuer = Issuer::new(ca_params(), ca_key);
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

/// The development CA's parameters (the same each time, so a reused key
/// signs certificates that chain to the `ca.pem` already written).
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "Reservoir development CA (reservoir up)");
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
