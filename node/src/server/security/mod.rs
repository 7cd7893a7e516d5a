//! Who may call a node, and how it knows (docs/architecture.md, "Threat
//! model").
//!
//! A node has two listeners. The **client plane** (`grpc_addr`: `Inventory`,
//! `Admin`) serves TLS with the node's certificate; callers prove who they
//! are with a bearer API key (kept hashed in the config) or a client
//! certificate, and their role decides what they may call
//! ([`clients`]). The **peer plane** (`peer_addr`: Raft, `Control`, and client
//! calls forwarded to the leader) serves mutual TLS only: a caller's
//! certificate, from the cluster's CA, names its node id and region, and
//! every message is checked against what that node may send ([`peers`]).
//!
//! Identities live in a certificate's subject alternative names as URIs:
//! `spiffe://reservoir/node/{id}/{region}` for a node,
//! `spiffe://reservoir/client/{role}/{principal}` for a client. This module
//! reads them ([`identity_of`]) and builds the TLS settings of both planes
//! from the config's files ([`Tls`]).
//!
//! `insecure = true` in the config turns all of this off (plaintext on both
//! planes, every caller an admin): for benchmarks on one machine, never for
//! a network anyone else can reach.

pub mod clients;
pub mod peers;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

pub use clients::{Authenticator, Permission, Principal, Role};
pub use peers::{PeerNode, PeerPolicy};
use serde::{Deserialize, Serialize};

/// The URI prefix of every Reservoir identity.
pub const IDENTITY_PREFIX: &str = "spiffe://reservoir/";
/// How long a TLS handshake may take before the connection is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a certificate says its holder is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertIdentity {
    /// A node of the cluster.
    Node(PeerNode),
    /// A client of the client plane.
    Client(Principal),
}

/// The identity URI of node `id` in `region`.
pub fn node_uri(id: u64, region: &str) -> String {
    format!("{IDENTITY_PREFIX}node/{id}/{region}")
}

/// The identity URI of client `principal` with `role`.
pub fn client_uri(role: Role, principal: &str) -> String {
    format!("{IDENTITY_PREFIX}client/{}/{principal}", role.name())
}

/// Parses an identity URI; `None` if it is not one of ours.
pub fn parse_identity(uri: &str) -> Option<CertIdentity> {
    let rest = uri.strip_prefix(IDENTITY_PREFIX)?;
    let mut parts = rest.split('/');
    let identity = match (parts.next()?, parts.next()?, parts.next()?) {
        ("node", id, region) => {
            let id: u64 = id.parse().ok().filter(|&id| id != 0)?;
            reservoir_tokens::limits::check_region(region).ok()?;
            CertIdentity::Node(PeerNode {
                id,
                region: region.to_string(),
            })
        }
        ("client", role, principal) => {
            let role = Role::from_name(role)?;
            clients::check_principal(principal).ok()?;
            CertIdentity::Client(Principal {
                name: principal.to_string(),
                role,
            })
        }
        _ => return None,
    };
    parts.next().is_none().then_some(identity)
}

/// The Reservoir identity in a DER certificate's subject alternative names:
/// the first URI that parses as one. The certificate's signature, validity
/// and chain were checked by the TLS handshake before this is asked.
pub fn identity_of(der: &[u8]) -> Option<CertIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => parse_identity(uri),
        _ => None,
    })
}

/// The identity in the first certificate of a PEM file.
pub fn pem_identity(pem: &[u8]) -> Option<CertIdentity> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    identity_of(&pem.contents)
}

/// The identity of the caller of a request (its extensions), from the leaf
/// of the certificate chain it presented in the TLS handshake.
///
/// Every Raft message and forwarded call asks this, so the identity of a
/// certificate is remembered ([`IdentityCache`]) rather than parsed again
/// (parsing was about 5 % of a follower's CPU under load).
pub fn caller_identity(extensions: &tonic::Extensions) -> Option<CertIdentity> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    static CACHE: IdentityCache = IdentityCache::new();
    let certs = extensions.get::<TlsConnectInfo<TcpConnectInfo>>()?.peer_certs()?;
    CACHE.identity_of(certs.first()?.as_ref())
}

/// Most certificates whose identity [`IdentityCache`] remembers; past it the
/// oldest is forgotten.
pub const IDENTITY_CACHE_MAX: usize = 64;

/// The identities of the certificates seen last, by their exact DER bytes
/// (equal bytes parse to an equal identity; the TLS handshake has checked
/// the certificate before it is looked up here). A handful of peers is the
/// usual content, so a list compared byte by byte beats hashing a whole
/// certificate.
pub struct IdentityCache {
    entries: std::sync::Mutex<Vec<(Vec<u8>, Option<CertIdentity>)>>,
}

impl IdentityCache {
    /// An empty cache.
    pub const fn new() -> IdentityCache {
        IdentityCache {
            entries: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// [`identity_of`] `der`, remembered.
    pub fn identity_of(&self, der: &[u8]) -> Option<CertIdentity> {
        let lock = || {
            self.entries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some((_, identity)) = lock().iter().find(|(cert, _)| cert.as_slice() == der) {
            return identity.clone();
        }
        let identity = identity_of(der);
        let mut entries = lock();
        if !entries.iter().any(|(cert, _)| cert.as_slice() == der) {
            if entries.len() >= IDENTITY_CACHE_MAX {
                entries.remove(0);
            }
            entries.push((der.to_vec(), identity.clone()));
        }
        identity
    }
}

impl Default for IdentityCache {
    fn default() -> Self {
        IdentityCache::new()
    }
}

/// A node config's `[tls]` section: PEM files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster's CA certificate: peers' and clients' certificates must
    /// chain to it.
    pub ca_file: PathBuf,
    /// This node's certificate (chain), served on both listeners and
    /// presented to peers; its URI names the node (`node_uri`).
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
}

/// The node's TLS material: the cluster's CA and its own certificate.
#[derive(Clone)]
pub struct Tls {
    ca: Certificate,
    identity: Identity,
}

impl Tls {
    /// Reads the files named in the config's `[tls]` section, and checks
    /// that the certificate names this node (`id` in `region`): peers would
    /// refuse it otherwise.
    pub fn load(files: &TlsFiles, id: u64, region: &str) -> Result<Tls, String> {
        let ca = read_pem(&files.ca_file, "tls.ca_file")?;
        let cert = read_pem(&files.cert_file, "tls.cert_file")?;
        let key = read_pem(&files.key_file, "tls.key_file")?;
        let named = pem_identity(&cert);
        let me = CertIdentity::Node(PeerNode {
            id,
            region: region.to_string(),
        });
        if named.as_ref() != Some(&me) {
            return Err(format!(
                "tls.cert_file {}: names {named:?}, not node {id} of {region} ({})",
                files.cert_file.display(),
                node_uri(id, region)
            ));
        }
        Ok(Tls {
            ca: Certificate::from_pem(ca),
            identity: Identity::from_pem(cert, key),
        })
    }

    /// The peer listener's settings: the node's certificate, and a client
    /// certificate from the cluster's CA required of every caller.
    pub fn peer_server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .timeout(TLS_HANDSHAKE_TIMEOUT)
    }

    /// The client listener's settings: the node's certificate; a client
    /// certificate from the cluster's CA is checked when one is presented
    /// (callers may use an API key instead).
    pub fn client_server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .client_auth_optional(true)
            .timeout(TLS_HANDSHAKE_TIMEOUT)
    }

    /// How this node calls its peers: it trusts only the cluster's CA and
    /// presents its own certificate.
    pub fn peer_client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
    }
}

/// Reads a PEM file, bounded as every credential file is
/// ([`reservoir_client::credentials::CREDENTIAL_FILE_BYTES_MAX`]).
fn read_pem(path: &Path, field: &str) -> Result<Vec<u8>, String> {
    let bytes = reservoir_client::credentials::read_bounded(path, field)?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(format!("{field} {}: not a PEM file", path.display()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Identity URIs round-trip; anything else is not an identity.
    #[test]
    fn identity_uris_round_trip() {
        assert_eq!(
            parse_identity(&node_uri(3, "eu-west")),
            Some(CertIdentity::Node(PeerNode {
                id: 3,
                region: "eu-west".into()
            }))
        );
        assert_eq!(
            parse_identity(&client_uri(Role::Shop, "shop-frontend")),
            Some(CertIdentity::Client(Principal {
                name: "shop-frontend".into(),
                role: Role::Shop
            }))
        );
        for bad in [
            "spiffe://reservoir/node/0/us-east",
            "spiffe://reservoir/node/x/us-east",
            "spiffe://reservoir/node/3/US East",
            "spiffe://reservoir/node/3/us-east/extra",
            "spiffe://reservoir/client/root/alice",
            "spiffe://other/node/3/us-east",
            "https://reservoir/node/3/us-east",
        ] {
            assert_eq!(parse_identity(bad), None, "{bad}");
        }
    }

    /// The cache answers what parsing answers, for a certificate seen again
    /// and for one without an identity, and keeps at most its bound.
    #[test]
    fn identity_cache_answers_as_parsing() {
        let cert = |uri: String| {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(uri.try_into().unwrap()));
            let key = rcgen::KeyPair::generate().unwrap();
            params.self_signed(&key).unwrap().der().to_vec()
        };
        let cache = IdentityCache::new();
        let node = cert(node_uri(2, "us-east"));
        let other = cert("https://example.com/".into());
        for _ in 0..2 {
            assert_eq!(cache.identity_of(&node), identity_of(&node));
            assert_eq!(cache.identity_of(&other), None);
        }
        assert!(matches!(cache.identity_of(&node), Some(CertIdentity::Node(n)) if n.id == 2));
        for id in 1..=IDENTITY_CACHE_MAX as u64 + 3 {
            let c = cert(node_uri(id, "eu-west"));
            assert_eq!(cache.identity_of(&c), identity_of(&c));
        }
        assert_eq!(cache.entries.lock().unwrap().len(), IDENTITY_CACHE_MAX);
        assert_eq!(
            cache.identity_of(&node),
            identity_of(&node),
            "forgotten, parsed again"
        );
    }
}
