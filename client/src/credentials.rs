//! How a program proves itself to a cluster's client plane: TLS trusting the
//! cluster's CA, and an API key sent with every call
//! (`authorization: Bearer {key}`).
//!
//! A program gets them from `cluster.json` (`tls.ca_file`, and
//! `credentials.<role>`: the file holding that role's key, as `reservoir up`
//! writes them), or from flags and the environment: [`TOKEN_ENV`] holds a
//! key, [`CA_FILE_ENV`] the CA file. A cluster started with `--insecure`
//! has neither; its channels are plaintext and send no key.

use std::path::{Path, PathBuf};
use std::task::{Context, Poll};

use http::HeaderValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::cluster_file::ClusterFile;

/// The environment variable holding an API key.
pub const TOKEN_ENV: &str = "RESERVOIR_TOKEN";
/// The environment variable naming the cluster's CA file.
pub const CA_FILE_ENV: &str = "RESERVOIR_CA_FILE";
/// Largest CA or key file read.
pub const CREDENTIAL_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// TLS trust and an API key for a cluster's client plane.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// The cluster's CA (PEM); `None`: plaintext (an insecure cluster).
    ca_pem: Option<Vec<u8>>,
    /// The API key, sent as a bearer token.
    api_key: Option<String>,
}

impl Credentials {
    /// No TLS and no key: an insecure cluster.
    pub fn plaintext() -> Credentials {
        Credentials::default()
    }

    /// TLS trusting the CA in `ca_file` (if any), and `api_key` (if any).
    pub fn new(ca_file: Option<&Path>, api_key: Option<String>) -> Result<Credentials, String> {
        let ca_pem = ca_file.map(|f| read_bounded(f, "CA file")).transpose()?;
        if let Some(key) = &api_key {
            bearer(key)?;
            if ca_pem.is_none() {
                return Err(format!(
                    "an API key is sent only over TLS: give the cluster's CA (--ca-file, {CA_FILE_ENV}, or cluster.json's tls)"
                ));
            }
        }
        Ok(Credentials { ca_pem, api_key })
    }

    /// What `cluster.json` (at `path`) says a client with `role` uses: its
    /// CA file and that role's key file. A file without `tls` is an
    /// insecure cluster. [`TOKEN_ENV`] and [`CA_FILE_ENV`], when set, take
    /// precedence.
    pub fn for_cluster(file: &ClusterFile, path: &Path, role: &str) -> Result<Credentials, String> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let ca_file = match std::env::var_os(CA_FILE_ENV) {
            Some(f) => Some(PathBuf::from(f)),
            None => file.tls.as_ref().map(|t| dir.join(&t.ca_file)),
        };
        let api_key = match std::env::var(TOKEN_ENV) {
            Ok(key) => Some(key),
            Err(_) => match file.credentials.get(role) {
                Some(key_file) => Some(read_key(&dir.join(key_file))?),
                None if file.tls.is_some() => {
                    return Err(format!(
                        "{}: no credentials.{role}; set {TOKEN_ENV} to an API key",
                        path.display()
                    ));
                }
                None => None,
            },
        };
        Credentials::new(ca_file.as_deref(), api_key)
    }

    /// True when calls use TLS.
    pub fn is_tls(&self) -> bool {
        self.ca_pem.is_some()
    }

    /// The TLS settings: trust the cluster's CA only.
    pub fn tls(&self) -> Option<ClientTlsConfig> {
        self.ca_pem
            .as_ref()
            .map(|pem| ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
    }

    /// The endpoint for a node's client address, as
    /// [`crate::connect::endpoint`] makes it, with TLS when the cluster uses it.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, String> {
        Ok(crate::connect::bare_endpoint(addr, self.tls().as_ref())?
            .connect_timeout(crate::connect::CONNECT_TIMEOUT)
            .timeout(crate::connect::CALL_TIMEOUT)
            .tcp_nodelay(true))
    }

    /// A lazily connected channel to `addr` that sends the key with every call.
    pub fn channel(&self, addr: &str) -> Result<ClientChannel, String> {
        Ok(self.wrap(self.endpoint(addr)?.connect_lazy()))
    }

    /// `channel` (made from [`Credentials::endpoint`]) sending the key with
    /// every call.
    pub fn wrap(&self, channel: Channel) -> ClientChannel {
        ClientChannel {
            inner: channel,
            authorization: self.api_key.as_deref().and_then(|k| bearer(k).ok()),
        }
    }
}

/// A channel to a node's client plane that adds the caller's API key to
/// every call. Cheap to clone; use it wherever a tonic `Channel` goes
/// (`InventoryClient::new(channel)`).
#[derive(Clone, Debug)]
pub struct ClientChannel {
    inner: Channel,
    authorization: Option<HeaderValue>,
}

impl ClientChannel {
    /// A channel that sends no key (an insecure cluster, or a test of
    /// what happens without one).
    pub fn bare(inner: Channel) -> ClientChannel {
        ClientChannel {
            inner,
            authorization: None,
        }
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for ClientChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = tonic::transport::channel::ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(value) = &self.authorization {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, value.clone());
        }
        tower_service::Service::call(&mut self.inner, request)
    }
}

fn bearer(key: &str) -> Result<HeaderValue, String> {
    let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
        .map_err(|_| "an API key must be printable ASCII".to_string())?;
    value.set_sensitive(true);
    Ok(value)
}

/// Reads a file of at most [`CREDENTIAL_FILE_BYTES_MAX`] bytes (a CA, a
/// certificate, a key); errors name `what` and the path.
pub fn read_bounded(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let fail = |e: String| format!("{what} {}: {e}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.len() > CREDENTIAL_FILE_BYTES_MAX {
        return Err(fail(format!("larger than {CREDENTIAL_FILE_BYTES_MAX} bytes")));
    }
    std::fs::read(path).map_err(|e| fail(e.to_string()))
}

/// Reads an API key from a file (surrounding whitespace dropped).
pub fn read_key(path: &Path) -> Result<String, String> {
    let bytes = read_bounded(path, "API key file")?;
    String::from_utf8(bytes)
        .map(|s| s.trim().to_string())
        .map_err(|_| format!("API key file {}: not UTF-8", path.display()))
}
