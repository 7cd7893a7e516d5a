//! The client plane's callers: who they are (an API key or a client
//! certificate → a [`Principal`]) and what their [`Role`] lets them call.
//!
//! An API key is `{id}.{secret}`, sent as `authorization: Bearer {key}`. The
//! config keeps, per key id, the principal, the role and an Argon2id hash of
//! the whole key (a PHC string), never the key. Checking a hash costs
//! milliseconds of CPU, so a key that checked out is remembered by its
//! SHA-256 (at most [`VERIFIED_MAX`] keys), and at most
//! [`VERIFYING_MAX`] hashes are checked at once; a caller waiting longer
//! than [`VERIFY_WAIT`] for its turn gets `UNAVAILABLE` / `OVERLOADED`.
//! Wrong and unknown keys get the same answer, `INVALID_CREDENTIALS` (key
//! ids are not secret: a wrong secret for a known id costs a check, an
//! unknown id none). The client listener authenticates in a layer
//! ([`AuthenticateLayer`]), from the headers, before a call's body is read.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tonic::{Code, Request, Status};

use super::CertIdentity;
use crate::server::status::status_with_info;

/// Most API keys in one config.
pub const API_KEYS_MAX: usize = 1_024;
/// Longest principal name, in bytes.
pub const PRINCIPAL_BYTES_MAX: usize = 128;
/// Longest API key id, in bytes.
pub const KEY_ID_BYTES_MAX: usize = 64;
/// Longest `authorization` value considered, in bytes.
pub const KEY_BYTES_MAX: usize = 512;
/// Most verified keys remembered (by SHA-256); past it the memory starts over.
pub const VERIFIED_MAX: usize = 4_096;
/// Most Argon2 checks running at once.
pub const VERIFYING_MAX: usize = 2;
/// Longest wait for a turn to check a key.
pub const VERIFY_WAIT: Duration = Duration::from_secs(2);
/// Calls under this path (`grpc.health.v1.Health`) need no credentials.
pub const HEALTH_PATH: &str = "/grpc.health.v1.Health/";
/// The principal every caller is when the node runs with `insecure = true`.
pub const INSECURE_PRINCIPAL: &str = "anonymous";

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A shop's services: reserve, release, confirm, extend, and read their
    /// own reservations and availability.
    Shop,
    /// An operator: everything a shop may, and stock, audits and status.
    Admin,
    /// Dashboards: reads only (availability, status, own reservations).
    Observer,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Shop, Role::Admin, Role::Observer];

    /// Its name in configs, URIs and `cluster.json`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Shop => "shop",
            Role::Admin => "admin",
            Role::Observer => "observer",
        }
    }

    /// The role named `name`.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Whether this role may do `permission`.
    pub fn allows(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Admin => true,
            Role::Shop => matches!(permission, Write | ReadReservation | ReadAvailability),
            Role::Observer => matches!(permission, ReadReservation | ReadAvailability | ReadStatus),
        }
    }
}

/// What a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Reserve, ReserveBatch, Release, Confirm, Extend.
    Write,
    /// GetReservation (of the caller's own reservations).
    ReadReservation,
    /// GetAvailability.
    ReadAvailability,
    /// GetStatus.
    ReadStatus,
    /// AdjustStock.
    AdjustStock,
    /// Audit.
    Audit,
    /// Operate the cluster: membership, leadership, snapshots, backups.
    Operate,
}

impl Permission {
    /// Its name, in refusals.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Write => "write",
            Permission::ReadReservation => "read_reservation",
            Permission::ReadAvailability => "read_availability",
            Permission::ReadStatus => "read_status",
            Permission::AdjustStock => "adjust_stock",
            Permission::Audit => "audit",
            Permission::Operate => "operate",
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Its name: reservations it makes are its own.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

/// One `[[api_keys]]` entry of a node config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// The key's id: the part of the key before the first `.`.
    pub id: String,
    /// Who the key's holder is.
    pub principal: String,
    /// What the holder may do.
    pub role: Role,
    /// The Argon2id hash of the whole key, as a PHC string.
    pub hash: String,
}

impl ApiKey {
    /// Checks the entry; on error says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        check_key_id(&self.id)?;
        check_principal(&self.principal)?;
        let hash = PasswordHash::new(&self.hash).map_err(|e| format!("key {}: hash: {e}", self.id))?;
        if hash.algorithm.as_str() != "argon2id" {
            return Err(format!("key {}: hash must be argon2id", self.id));
        }
        Ok(())
    }
}

/// A principal name: 1-128 bytes of `[A-Za-z0-9._:@-]`.
pub fn check_principal(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= PRINCIPAL_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "principal {name:?} must be 1-{PRINCIPAL_BYTES_MAX} bytes of [A-Za-z0-9._:@-]"
        ))
    }
}

/// A key id: 1-64 bytes of `[A-Za-z0-9_-]`.
pub fn check_key_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= KEY_ID_BYTES_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "key id {id:?} must be 1-{KEY_ID_BYTES_MAX} bytes of [A-Za-z0-9_-]"
        ))
    }
}

/// Makes a new API key with id `id` and its Argon2id hash (for the config).
pub fn new_api_key(id: &str) -> Result<(String, String), String> {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    check_key_id(id)?;
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let key = format!("{id}.{}", hex(&secret));
    let hash = hash_api_key(&key)?;
    Ok((key, hash))
}

/// An Argon2id hash of `key` with a fresh salt, as a PHC string (what a
/// config's `[[api_keys]] hash` holds).
pub fn hash_api_key(key: &str) -> Result<String, String> {
    use argon2::PasswordHasher;
    use argon2::password_hash::SaltString;
    use argon2::password_hash::rand_core::OsRng;
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(key.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing an API key: {e}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a client call was refused before it ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No API key and no client certificate.
    MissingCredentials,
    /// A key that is malformed, unknown, or does not match its hash.
    InvalidCredentials,
    /// The caller's role does not allow the call.
    RoleNotAllowed {
        /// The caller's role.
        role: Role,
        /// What the call needs.
        permission: Permission,
    },
    /// Too many keys being checked at once.
    Busy,
}

impl Refusal {
    /// The stable `ErrorInfo.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::MissingCredentials => "MISSING_CREDENTIALS",
            Refusal::InvalidCredentials => "INVALID_CREDENTIALS",
            Refusal::RoleNotAllowed { .. } => "ROLE_NOT_ALLOWED",
            Refusal::Busy => "OVERLOADED",
        }
    }

    /// The status the caller receives; counted in
    /// `reservoir_refused_total{plane="client"}`.
    pub fn to_status(&self) -> Status {
        metrics::counter!("reservoir_refused_total", "plane" => "client", "reason" => self.reason())
            .increment(1);
        if tracing::enabled!(tracing::Level::DEBUG) && crate::server::logging::call_line_allowed() {
            tracing::debug!(reason = self.reason(), "client call refused before it ran");
        }
        match self {
            Refusal::MissingCredentials => status_with_info(
                Code::Unauthenticated,
                "no credentials: send `authorization: Bearer <API key>` or a client certificate".into(),
                self.reason(),
                vec![],
            ),
            Refusal::InvalidCredentials => status_with_info(
                Code::Unauthenticated,
                "the API key is not valid".into(),
                self.reason(),
                vec![],
            ),
            Refusal::RoleNotAllowed { role, permission } => status_with_info(
                Code::PermissionDenied,
                format!("role {} may not {}", role.name(), permission.name()),
                self.reason(),
                vec![
                    ("role", role.name().into()),
                    ("permission", permission.name().into()),
                ],
            ),
            Refusal::Busy => status_with_info(
                Code::Unavailable,
                "overloaded: too many API keys being checked; retry".into(),
                self.reason(),
                vec![("queue", "key checks".into())],
            ),
        }
    }
}

/// Authenticates client-plane callers and checks their role.
pub struct Authenticator {
    /// `None`: insecure mode, every caller is [`INSECURE_PRINCIPAL`], an admin.
    keys: Option<BTreeMap<String, ApiKey>>,
    /// SHA-256 of keys that checked out → their key id.
    verified: Mutex<HashMap<[u8; 32], String>>,
    verifying: Arc<Semaphore>,
}

impl Authenticator {
    /// Checks callers against `keys` (and client certificates).
    pub fn new(keys: &[ApiKey]) -> Authenticator {
        Authenticator {
            keys: Some(keys.iter().map(|k| (k.id.clone(), k.clone())).collect()),
            verified: Mutex::new(HashMap::new()),
            verifying: Arc::new(Semaphore::new(VERIFYING_MAX)),
        }
    }

    /// Lets every caller in as an admin (`insecure = true`).
    pub fn insecure() -> Authenticator {
        Authenticator {
            keys: None,
            verified: Mutex::new(HashMap::new()),
            verifying: Arc::new(Semaphore::new(VERIFYING_MAX)),
        }
    }

    /// Who is calling, if they may do `permission`; else the refusal's
    /// status (nothing has run). The principal [`Authenticate`] found is
    /// used when there is one.
    pub async fn check<T>(&self, request: &Request<T>, permission: Permission) -> Result<Principal, Status> {
        let principal = match request.extensions().get::<Principal>() {
            Some(p) => p.clone(),
            None => self.authenticate(request).await.map_err(|r| r.to_status())?,
        };
        if !principal.role.allows(permission) {
            return Err(Refusal::RoleNotAllowed {
                role: principal.role,
                permission,
            }
            .to_status());
        }
        Ok(principal)
    }

    /// Who is calling: an API key if one is sent, else a client certificate.
    pub async fn authenticate<T>(&self, request: &Request<T>) -> Result<Principal, Refusal> {
        self.authenticate_parts(request.metadata().as_ref(), request.extensions())
            .await
    }

    /// [`Authenticator::authenticate`] from a request's headers and
    /// extensions (where the TLS layer keeps the client's certificate).
    pub async fn authenticate_parts(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<Principal, Refusal> {
        let Some(keys) = &self.keys else {
            return Ok(Principal {
                name: INSECURE_PRINCIPAL.into(),
                role: Role::Admin,
            });
        };
        if let Some(value) = headers.get(http::header::AUTHORIZATION) {
            let key = value
                .to_str()
                .ok()
                .filter(|v| v.len() <= KEY_BYTES_MAX)
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or(Refusal::InvalidCredentials)?;
            return self.verify_key(keys, key).await;
        }
        match super::caller_identity(extensions) {
            Some(CertIdentity::Client(principal)) => Ok(principal),
            _ => Err(Refusal::MissingCredentials),
        }
    }

    async fn verify_key(&self, keys: &BTreeMap<String, ApiKey>, key: &str) -> Result<Principal, Refusal> {
        let (id, _) = key.split_once('.').ok_or(Refusal::InvalidCredentials)?;
        let entry = keys.get(id).ok_or(Refusal::InvalidCredentials)?;
        let principal = Principal {
            name: entry.principal.clone(),
            role: entry.role,
        };
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let known = || {
            self.verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&digest)
                == Some(&entry.id)
        };
        if known() {
            return Ok(principal);
        }
        let turn = tokio::time::timeout(VERIFY_WAIT, self.verifying.clone().acquire_owned())
            .await
            .map_err(|_| Refusal::Busy)?
            .map_err(|_| Refusal::Busy)?;
        // Many calls with a new key arrive at once (a client's first burst):
        // the first to get a turn checks it, the others then find it checked.
        if known() {
            return Ok(principal);
        }
        let (hash, candidate) = (entry.hash.clone(), key.to_string());
        // The turn moves into the check: a caller that gives up (a reset
        // stream drops this future) does not free it while the hash runs.
        let ok = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            PasswordHash::new(&hash).is_ok_and(|h| {
                Argon2::default()
                    .verify_password(candidate.as_bytes(), &h)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        if !ok {
            return Err(Refusal::InvalidCredentials);
        }
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_MAX {
            verified.clear();
        }
        verified.insert(digest, entry.id.clone());
        Ok(principal)
    }
}

/// The client listener's layer: authenticates every call from its headers
/// (and TLS certificate) before the service reads a byte of its body; a
/// refused call is answered at once, and an accepted one carries its
/// [`Principal`] in the request's extensions, where the services take it.
#[derive(Clone)]
pub struct AuthenticateLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthenticateLayer {
    /// A layer checking callers with `authenticator`.
    pub fn new(authenticator: Arc<Authenticator>) -> AuthenticateLayer {
        AuthenticateLayer { authenticator }
    }
}

impl<S> tower_layer::Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Authenticate<S> {
        Authenticate {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

/// The service [`AuthenticateLayer`] makes.
#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S, B> tower_service::Service<http::Request<B>> for Authenticate<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was made ready is the one that serves this call.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            // The standard health check is asked by load balancers and
            // probes, which hold no key; it tells nothing but "serving".
            if request.uri().path().starts_with(HEALTH_PATH) {
                return inner.call(request).await;
            }
            match authenticator
                .authenticate_parts(request.headers(), request.extensions())
                .await
            {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
                Err(refusal) => Ok(refusal.to_status().into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_with(key: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(k) = key {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {k}").parse().unwrap());
        }
        r
    }

    /// A key checks out against its hash (twice: the second from memory);
    /// a wrong secret, an unknown id, no key, and a malformed header do not.
    #[tokio::test]
    async fn api_keys_check_against_their_hash() {
        let (key, hash) = new_api_key("shop").unwrap();
        let entry = ApiKey {
            id: "shop".into(),
            principal: "web-shop".into(),
            role: Role::Shop,
            hash,
        };
        entry.check().unwrap();
        let auth = Authenticator::new(&[entry]);
        for _ in 0..2 {
            let p = auth.authenticate(&request_with(Some(&key))).await.unwrap();
            assert_eq!(
                p,
                Principal {
                    name: "web-shop".into(),
                    role: Role::Shop
                }
            );
        }
        let wrong = format!("{}0", &key[..key.len() - 1]);
        let wrong = if wrong == key {
            format!("{}1", &key[..key.len() - 1])
        } else {
            wrong
        };
        assert_eq!(
            auth.authenticate(&request_with(Some(&wrong))).await,
            Err(Refusal::InvalidCredentials)
        );
        let other = key.replacen("shop.", "admin.", 1);
        assert_eq!(
            auth.authenticate(&request_with(Some(&other))).await,
            Err(Refusal::InvalidCredentials)
        );
        assert_eq!(
            auth.authenticate(&request_with(None)).await,
            Err(Refusal::MissingCredentials)
        );
        let mut r = Request::new(());
        r.metadata_mut()
            .insert("authorization", format!("Basic {key}").parse().unwrap());
        assert_eq!(auth.authenticate(&r).await, Err(Refusal::InvalidCredentials));
    }

    /// Roles allow what the API documents, and nothing more.
    #[test]
    fn roles_allow_what_they_say() {
        use Permission::*;
        let all = [
            Write,
            ReadReservation,
            ReadAvailability,
            ReadStatus,
            AdjustStock,
            Audit,
        ];
        let allowed = |role: Role| {
            all.iter()
                .filter(|p| role.allows(**p))
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(allowed(Role::Admin), all.to_vec());
        assert_eq!(
            allowed(Role::Shop),
            vec![Write, ReadReservation, ReadAvailability]
        );
        assert_eq!(
            allowed(Role::Observer),
            vec![ReadReservation, ReadAvailability, ReadStatus]
        );
    }

    /// Config entries with a bad id, principal or hash are refused.
    #[test]
    fn bad_key_entries_are_refused() {
        let (_, hash) = new_api_key("k").unwrap();
        let good = ApiKey {
            id: "k".into(),
            principal: "p".into(),
            role: Role::Admin,
            hash,
        };
        good.check().unwrap();
        let bad = |f: fn(&mut ApiKey)| {
            let mut k = good.clone();
            f(&mut k);
            k.check().is_err()
        };
        assert!(bad(|k| k.id = "a.b".into()));
        assert!(bad(|k| k.id = String::new()));
        assert!(bad(|k| k.principal = "has space".into()));
        assert!(bad(|k| k.hash = "plaintext".into()));
    }
}
