//! Who may call a node, over real sockets against clusters `reservoir up`
//! starts: the client plane's credentials and roles, reservations only
//! their owner can touch, internal services only on the peer plane, and the
//! peer plane's mutual TLS and per-message authorization. Every scenario
//! ends with the books checked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reservoir_client::{ClusterFile, Credentials, NodeStatus, reason_of};
use reservoir_node::server::control::pb::ControlMessage;
use reservoir_node::server::control::pb::control_client::ControlClient;
use reservoir_node::server::control::{LedgerCall, RegionCall, encode};
use reservoir_proto::v1;
use reservoir_proto::v1::admin_client::AdminClient;
use reservoir_proto::v1::inventory_client::InventoryClient;
use reservoir_raft::network::pb::RaftMessage;
use reservoir_raft::network::pb::raft_client::RaftClient;
use reservoir_tokens::RegionOp;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

const RESERVOIR: &str = env!("CARGO_BIN_EXE_reservoir");
/// How long `up` may take to write `cluster.json` (debug build, loaded machine).
const UP_DEADLINE: Duration = Duration::from_secs(120);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A cluster `reservoir up` runs in a fresh directory; stopped on drop.
struct Up {
    child: Child,
    dir: PathBuf,
    file: ClusterFile,
}

impl Up {
    fn start(name: &str, args: &[&str]) -> Up {
        let dir = std::env::temp_dir().join(format!("reservoir-security-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("up.log")).unwrap();
        let child = Command::new(RESERVOIR)
            .arg("up")
            .arg("--dir")
            .arg(&dir)
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("reservoir up starts");
        let mut up = Up {
            child,
            dir: dir.clone(),
            file: ClusterFile {
                architecture: None,
                endpoints: None,
                nodes: Vec::new(),
                control: None,
                ledger: None,
                tls: None,
                credentials: Default::default(),
                control_token_file: None,
            },
        };
        let deadline = Instant::now() + UP_DEADLINE;
        let path = dir.join("cluster.json");
        loop {
            if let Ok(file) = ClusterFile::load(&path) {
                up.file = file;
                return up;
            }
            if let Ok(Some(status)) = up.child.try_wait() {
                panic!("up exited with {status}: {}", up.log());
            }
            assert!(
                Instant::now() < deadline,
                "up not ready in {UP_DEADLINE:?}: {}",
                up.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("up.log")).unwrap_or_default()
    }

    fn cluster_json(&self) -> PathBuf {
        self.dir.join("cluster.json")
    }

    fn credentials(&self, role: &str) -> Credentials {
        Credentials::for_cluster(&self.file, &self.cluster_json(), role)
            .expect("credentials from cluster.json")
    }

    fn ca(&self) -> Vec<u8> {
        std::fs::read(
            self.dir
                .join(&self.file.tls.as_ref().expect("a secure cluster").ca_file),
        )
        .unwrap()
    }

    fn node_ids(&self, region: &str) -> Vec<u64> {
        self.file
            .nodes
            .iter()
            .filter(|n| n.region == region)
            .map(|n| n.id)
            .collect()
    }

    fn grpc(&self, id: u64) -> String {
        self.node(id).grpc.to_string()
    }

    fn peer(&self, id: u64) -> SocketAddr {
        self.node(id)
            .peer
            .as_ref()
            .and_then(reservoir_client::HostPort::socket_addr)
            .expect("up writes peer addresses, IP literals")
    }

    fn node(&self, id: u64) -> &reservoir_client::ClusterNode {
        self.file
            .nodes
            .iter()
            .find(|n| n.id == id)
            .expect("a node of the cluster")
    }

    /// A node's identity files (certificate, key) in DIR.
    fn node_identity(&self, id: u64) -> Identity {
        let tls = self.dir.join("tls");
        Identity::from_pem(
            std::fs::read(tls.join(format!("node-{id}.pem"))).unwrap(),
            std::fs::read(tls.join(format!("node-{id}.key"))).unwrap(),
        )
    }

    async fn status(&self, id: u64) -> NodeStatus {
        let http = self.node(id).http.clone().expect("up writes http addresses");
        let (code, body) = reservoir_client::http::get(http, "/status", CALL_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn metrics(&self, id: u64) -> String {
        let http = self.node(id).http.clone().expect("up writes http addresses");
        reservoir_client::http::get(http, "/metrics", CALL_TIMEOUT)
            .await
            .unwrap()
            .1
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // SIGTERM: `up` stops its nodes; then wait, bounded.
        send_signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
    }
}

fn send_signal(pid: u32, signal: libc::c_int) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

fn reason(status: &Status) -> String {
    reason_of(status).unwrap_or_default()
}

fn refused<T: std::fmt::Debug>(result: Result<T, Status>) -> (Code, String) {
    let status = result.expect_err("refused");
    (status.code(), reason(&status))
}

fn reserve_request(request_id: &str, sku: &str, quantity: u64) -> v1::ReserveRequest {
    v1::ReserveRequest {
        request_id: request_id.into(),
        lines: vec![v1::Line {
            sku: sku.into(),
            quantity,
        }],
        ..Default::default()
    }
}

/// Retries a call that may meet an election (UNAVAILABLE) until a deadline.
async fn settled<T, F, Fut>(mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match call().await {
            Err(s) if reservoir_client::is_retryable(&s) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// The services a node's reflection lists.
async fn listed_services(channel: reservoir_client::ClientChannel) -> Result<Vec<String>, Status> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::once(request))
        .await?
        .into_inner();
    match answers.message().await?.and_then(|a| a.message_response) {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => Err(Status::internal(format!(
            "unexpected reflection answer {other:?}"
        ))),
    }
}

async fn available(shop: &Credentials, addr: &str, sku: &str) -> u64 {
    let mut client = InventoryClient::new(shop.channel(addr).unwrap());
    client
        .get_availability(v1::GetAvailabilityRequest { sku: sku.into() })
        .await
        .expect("availability")
        .into_inner()
        .local_available
}

/// The client plane of a standalone region: credentials and roles are
/// checked before anything runs; a reservation is its maker's alone; a
/// client cannot pass a call off as forwarded; the internal services are
/// not there at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_plane_checks_who_calls_and_what_they_may_do() {
    let up = Up::start("client-plane", &["--standalone"]);
    let ids = up.node_ids("us-east");
    let any = up.grpc(ids[0]);
    let (admin, shop, observer) = (
        up.credentials("admin"),
        up.credentials("shop"),
        up.credentials("observer"),
    );
    let sku = "SEC-1";
    let stock = AdminClient::new(admin.channel(&any).unwrap());
    settled(|| {
        let mut c = stock.clone();
        async move {
            c.adjust_stock(v1::AdjustStockRequest {
                request_id: "stock-1".into(),
                sku: sku.into(),
                delta: 10,
            })
            .await
        }
    })
    .await
    .expect("the admin stocks the SKU");
    assert_eq!(available(&shop, &any, sku).await, 10);

    // No key, a wrong key, an unknown key id: UNAUTHENTICATED, nothing runs.
    let ca = up.dir.join("tls/ca.pem");
    let nobody = Credentials::new(Some(&ca), None).unwrap();
    let wrong = Credentials::new(Some(&ca), Some(format!("shop.{}", "0".repeat(64)))).unwrap();
    let unknown = Credentials::new(Some(&ca), Some("root.secret".into())).unwrap();
    for (who, creds, expected) in [
        ("no key", &nobody, "MISSING_CREDENTIALS"),
        ("a wrong key", &wrong, "INVALID_CREDENTIALS"),
        ("an unknown key", &unknown, "INVALID_CREDENTIALS"),
    ] {
        let mut c = InventoryClient::new(creds.channel(&any).unwrap());
        let answer = c.reserve(reserve_request("r-anon", sku, 1)).await;
        assert_eq!(
            refused(answer),
            (Code::Unauthenticated, expected.to_string()),
            "{who}"
        );
        let mut a = AdminClient::new(creds.channel(&any).unwrap());
        let answer = a
            .adjust_stock(v1::AdjustStockRequest {
                request_id: "stock-anon".into(),
                sku: sku.into(),
                delta: 1_000,
            })
            .await;
        assert_eq!(refused(answer).0, Code::Unauthenticated, "{who}");
    }
    // The standard health check needs no key; reflection lists the public
    // API, and only to a caller with a key.
    let mut health = tonic_health::pb::health_client::HealthClient::new(nobody.channel(&any).unwrap());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "reservoir.v1.Inventory".into(),
        })
        .await
        .expect("health without a key")
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    assert_eq!(
        listed_services(nobody.channel(&any).unwrap())
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let services = listed_services(shop.channel(&any).unwrap())
        .await
        .expect("reflection with a key");
    for name in [
        "reservoir.v1.Inventory",
        "reservoir.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(services.iter().any(|s| s == name), "{name} in {services:?}");
    }
    assert!(!services.iter().any(|s| s.contains("internal")), "{services:?}");
    // The wrong role: PERMISSION_DENIED.
    let mut as_shop = AdminClient::new(shop.channel(&any).unwrap());
    let answer = as_shop
        .adjust_stock(v1::AdjustStockRequest {
            request_id: "stock-shop".into(),
            sku: sku.into(),
            delta: 1_000,
        })
        .await;
    assert_eq!(
        refused(answer),
        (Code::PermissionDenied, "ROLE_NOT_ALLOWED".into())
    );
    assert_eq!(
        refused(as_shop.audit(v1::AuditRequest {}).await),
        (Code::PermissionDenied, "ROLE_NOT_ALLOWED".into())
    );
    let mut as_observer = InventoryClient::new(observer.channel(&any).unwrap());
    assert_eq!(
        refused(as_observer.reserve(reserve_request("r-obs", sku, 1)).await),
        (Code::PermissionDenied, "ROLE_NOT_ALLOWED".into())
    );
    // A client certificate from the cluster's CA naming a shop principal
    // is a credential too; the same certificate cannot pass for an admin.
    let (cert, key) = reservoir_node::up::secrets::client_certificate(
        &up.dir,
        reservoir_node::server::security::Role::Shop,
        "cert-shop",
    )
    .unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(up.ca()))
        .identity(Identity::from_pem(cert, key));
    let by_cert = Endpoint::from_shared(format!("https://{any}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .timeout(CALL_TIMEOUT)
        .connect_lazy();
    let mut c = InventoryClient::new(by_cert.clone());
    let held_by_cert = c
        .reserve(reserve_request("r-cert", sku, 1))
        .await
        .expect("a shop certificate reserves")
        .into_inner()
        .reservation
        .unwrap();
    c.release(v1::ReleaseRequest {
        reservation_id: held_by_cert.reservation_id,
    })
    .await
    .expect("and releases its own hold");
    let answer = AdminClient::new(by_cert).audit(v1::AuditRequest {}).await;
    assert_eq!(
        refused(answer),
        (Code::PermissionDenied, "ROLE_NOT_ALLOWED".into())
    );
    // Plaintext to the TLS client listener does not get an answer (and a
    // client never sends a key in plaintext: `Credentials` refuses one
    // without a CA).
    assert!(Credentials::new(None, Some("shop.secret".into())).is_err());
    let mut c = InventoryClient::new(Credentials::plaintext().channel(&any).unwrap());
    assert!(c.reserve(reserve_request("r-plain", sku, 1)).await.is_err());
    assert_eq!(
        available(&shop, &any, sku).await,
        10,
        "no refused call changed the books"
    );

    // Reservations belong to their principal: the admin (another
    // principal) cannot touch the shop's hold, nor learn it exists.
    let mut mine = InventoryClient::new(shop.channel(&any).unwrap());
    let mut theirs = InventoryClient::new(admin.channel(&any).unwrap());
    let held = settled(|| {
        let mut c = mine.clone();
        async move { c.reserve(reserve_request("cart-1", sku, 2)).await }
    })
    .await
    .expect("the shop reserves")
    .into_inner()
    .reservation
    .unwrap();
    let id = held.reservation_id.clone();
    let not_found = (Code::NotFound, "RESERVATION_NOT_FOUND".to_string());
    let answer = theirs
        .release(v1::ReleaseRequest {
            reservation_id: id.clone(),
        })
        .await;
    assert_eq!(refused(answer), not_found, "another principal's release");
    let answer = theirs
        .confirm(v1::ConfirmRequest {
            reservation_id: id.clone(),
            order_id: "order-theirs".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(refused(answer), not_found, "another principal's confirm");
    let answer = theirs
        .extend(v1::ExtendRequest {
            reservation_id: id.clone(),
            ttl_ms: 60_000,
        })
        .await;
    assert_eq!(refused(answer), not_found, "another principal's extend");
    let answer = theirs
        .get_reservation(v1::GetReservationRequest {
            reservation_id: id.clone(),
        })
        .await;
    assert_eq!(refused(answer), not_found, "another principal's read");
    // The same request id from another principal is another reservation.
    let other = theirs
        .reserve(reserve_request("cart-1", sku, 1))
        .await
        .expect("another principal's own reserve")
        .into_inner()
        .reservation
        .unwrap();
    assert_ne!(other.reservation_id, id);
    // The owner's hold is intact, and the owner confirms it.
    let got = mine
        .get_reservation(v1::GetReservationRequest {
            reservation_id: id.clone(),
        })
        .await
        .expect("the owner reads its hold")
        .into_inner();
    assert_eq!((got.state, got.expires_at_ms), (held.state, held.expires_at_ms));
    let confirmed = mine
        .confirm(v1::ConfirmRequest {
            reservation_id: id.clone(),
            order_id: "order-1".into(),
            ..Default::default()
        })
        .await
        .expect("the owner confirms")
        .into_inner()
        .reservation
        .unwrap();
    assert_eq!(confirmed.state, v1::ReservationState::Confirmed as i32);
    assert_eq!(available(&shop, &any, sku).await, 10 - 2 - 1);

    // A client-set forwarding mark (and a principal of its choosing) on a
    // follower changes nothing: the call is authenticated, forwarded to the
    // leader as usual, and made for the caller.
    let mut follower = None;
    for id in &ids {
        if up.status(*id).await.role == reservoir_client::Role::Follower {
            follower = Some(*id);
        }
    }
    let follower = up.grpc(follower.expect("a 3-node region has a follower"));
    let mut request = tonic::Request::new(reserve_request("cart-spoof", sku, 1));
    request
        .metadata_mut()
        .insert("x-reservoir-forwarded", "1".parse().unwrap());
    request
        .metadata_mut()
        .insert("x-reservoir-principal", "dev-admin".parse().unwrap());
    let mut c = InventoryClient::new(shop.channel(&follower).unwrap());
    let spoofed = c
        .reserve(request)
        .await
        .expect("forwarded to the leader as any call is")
        .into_inner()
        .reservation
        .unwrap();
    let answer = theirs
        .get_reservation(v1::GetReservationRequest {
            reservation_id: spoofed.reservation_id.clone(),
        })
        .await;
    assert_eq!(
        refused(answer),
        not_found,
        "the hold is the caller's, not the named principal's"
    );
    mine.get_reservation(v1::GetReservationRequest {
        reservation_id: spoofed.reservation_id,
    })
    .await
    .expect("the caller owns it");

    // The internal services are not served on the client listener.
    let channel = admin.channel(&any).unwrap();
    let mut raft = RaftClient::new(channel.clone());
    let answer = raft
        .append_entries(RaftMessage {
            group: "us-east".into(),
            from: 99,
            to: ids[0],
            payload: vec![],
        })
        .await;
    assert_eq!(refused(answer).0, Code::Unimplemented);
    let mut control = ControlClient::new(channel);
    let grant = RegionCall::Apply(RegionOp::Grant {
        transfer_id: 1 << 40,
        sku: sku.into(),
        units: 1_000_000,
        done_below: 1 << 40,
    });
    let answer = control
        .region(ControlMessage {
            region: "us-east".into(),
            forwarded: false,
            payload: encode(&grant).unwrap(),
        })
        .await;
    assert_eq!(refused(answer).0, Code::Unimplemented);

    // The books: every unit accounted for, nothing minted.
    assert_eq!(available(&shop, &any, sku).await, 10 - 2 - 1 - 1);
    let mut a = AdminClient::new(admin.channel(&any).unwrap());
    let audit = a.audit(v1::AuditRequest {}).await.expect("audit").into_inner();
    assert!(audit.balanced, "{audit:#?}");
    let sheet = audit
        .skus
        .iter()
        .find(|s| s.sku == sku)
        .expect("the SKU is audited");
    assert_eq!((sheet.stocked_total, sheet.drift), (10, 0), "{sheet:#?}");
}

/// TLS settings for calling a node's peer plane as `identity` (or as
/// nobody), trusting `ca`.
fn peer_channel(addr: SocketAddr, ca: &[u8], identity: Option<Identity>) -> Channel {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(CALL_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect_lazy()
}

/// A certificate from a CA that is not the cluster's, naming node `id` of
/// `region` as the cluster's own certificates do.
fn foreign_identity(id: u64, region: &str) -> Identity {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params.subject_alt_names.push(SanType::URI(
        reservoir_node::server::security::node_uri(id, region)
            .try_into()
            .unwrap(),
    ));
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    Identity::from_pem(cert.pem(), key.serialize_pem())
}

fn control_message(region: &str, forwarded: bool, call: &RegionCall) -> ControlMessage {
    ControlMessage {
        region: region.into(),
        forwarded,
        payload: encode(call).unwrap(),
    }
}

/// The peer plane of a three-region cluster: only nodes with a certificate
/// of the cluster's CA get through the handshake, and each may send only
/// what its place in the cluster allows; oversized and flood traffic from
/// unauthenticated connections is dropped before the node spends on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_plane_takes_only_what_each_node_may_send() {
    let up = Up::start(
        "peer-plane",
        &["--nodes-per-region", "1", "--wan", "none", "--no-demo"],
    );
    let (east, west) = (up.node_ids("us-east")[0], up.node_ids("eu-west")[0]);
    let ca = up.ca();
    let admin = up.credentials("admin");
    let east_client = up.grpc(east);
    // Stock one SKU so the books have something to balance.
    let stock = AdminClient::new(admin.channel(&east_client).unwrap());
    settled(|| {
        let mut c = stock.clone();
        async move {
            c.adjust_stock(v1::AdjustStockRequest {
                request_id: "stock-peer".into(),
                sku: "SEC-2".into(),
                delta: 30,
            })
            .await
        }
    })
    .await
    .expect("stock enters the ledger");

    let forged = "FORGED-1";
    let grant = RegionCall::Apply(RegionOp::Grant {
        transfer_id: 1 << 40,
        sku: forged.into(),
        units: 1_000_000,
        done_below: 1 << 40,
    });
    // No certificate, a certificate from another CA: the handshake fails.
    for (who, identity) in [
        ("no certificate", None),
        (
            "another CA's certificate",
            Some(foreign_identity(west, "eu-west")),
        ),
    ] {
        let mut c = ControlClient::new(peer_channel(up.peer(east), &ca, identity));
        let answer = c.region(control_message("us-east", false, &grant)).await;
        let status = answer.expect_err(who);
        assert!(
            matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled),
            "{who}: {status:?}"
        );
    }
    // Plaintext on the peer plane: no answer either.
    let plain = Endpoint::from_shared(format!("http://{}", up.peer(east)))
        .unwrap()
        .timeout(CALL_TIMEOUT)
        .connect_lazy();
    assert!(
        ControlClient::new(plain)
            .region(control_message("us-east", false, &grant))
            .await
            .is_err()
    );

    // A real eu-west node may not send what only the ledger, or us-east's
    // own nodes, may send.
    let as_west = peer_channel(up.peer(east), &ca, Some(up.node_identity(west)));
    let mut control = ControlClient::new(as_west.clone());
    let denied = (Code::PermissionDenied, "PEER_NOT_ALLOWED".to_string());
    for (what, message) in [
        ("a grant", control_message("us-east", false, &grant)),
        (
            "a settlement",
            control_message(
                "us-east",
                false,
                &RegionCall::Apply(RegionOp::Settled { up_to_seq: 1 << 40 }),
            ),
        ),
        ("a forwarded grant", control_message("us-east", true, &grant)),
    ] {
        assert_eq!(refused(control.region(message).await), denied, "{what}");
    }
    let top_up = LedgerCall::TopUp {
        region: "us-east".into(),
        sku: "SEC-2".into(),
    };
    let answer = control
        .ledger(ControlMessage {
            region: String::new(),
            forwarded: false,
            payload: encode(&top_up).unwrap(),
        })
        .await;
    assert_eq!(refused(answer), denied, "a top-up for another region");
    // Raft: a non-member may not append, as itself or as a member.
    let mut raft = RaftClient::new(as_west);
    for from in [west, east] {
        let answer = raft
            .append_entries(RaftMessage {
                group: "us-east".into(),
                from,
                to: east,
                payload: vec![1, 2, 3],
            })
            .await;
        assert_eq!(refused(answer), denied, "AppendEntries claiming node {from}");
    }
    let metrics = up.metrics(east).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("reservoir_refused_total") && l.contains("PEER_NOT_ALLOWED")),
        "refusals are counted"
    );

    // Flood: past the per-address bound, connections are closed at once
    // (opened together, and looked at well within the 5 s a TLS handshake
    // may take, after which the node closes idle ones anyway).
    let mut open = Vec::new();
    for _ in 0..80 {
        open.push(tokio::net::TcpStream::connect(up.peer(east)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut byte = [0u8; 1];
    let closed = open
        .iter()
        .filter(|s| match s.try_read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        })
        .count();
    assert!(
        (80 - 64..80).contains(&closed),
        "64 connections from one address stay open, the rest are closed ({closed} closed)"
    );
    drop(open);
    // Oversized: 64 MiB of garbage on an unauthenticated connection is cut
    // off at the handshake; the node's memory does not grow by it.
    let rss_before = up.status(east).await.rss_bytes.unwrap_or(0);
    let mut s = tokio::net::TcpStream::connect(up.peer(east)).await.unwrap();
    let junk = vec![0x16u8; 1024 * 1024];
    let mut sent = 0usize;
    for _ in 0..64 {
        match tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncWriteExt::write_all(&mut s, &junk),
        )
        .await
        {
            Ok(Ok(())) => sent += junk.len(),
            _ => break,
        }
    }
    assert!(
        sent < 64 * 1024 * 1024,
        "the node stopped reading an unauthenticated connection"
    );
    let rss_after = up.status(east).await.rss_bytes.unwrap_or(0);
    assert!(
        rss_after < rss_before + 32 * 1024 * 1024,
        "rss {rss_before} -> {rss_after}"
    );

    // The books: the forged grant minted nothing; zero drift everywhere.
    let shop = up.credentials("shop");
    assert_eq!(available(&shop, &east_client, forged).await, 0);
    let mut a = AdminClient::new(admin.channel(&east_client).unwrap());
    let audit = settled(|| {
        let mut a = a.clone();
        async move { a.audit(v1::AuditRequest {}).await }
    })
    .await
    .expect("audit")
    .into_inner();
    assert!(audit.balanced, "{audit:#?}");
    assert!(
        audit.skus.iter().all(|s| s.drift == 0 && s.ledger_drift == 0),
        "{audit:#?}"
    );
    assert!(audit.skus.iter().all(|s| s.sku != forged), "{audit:#?}");
    let _ = a
        .get_status(v1::GetStatusRequest {})
        .await
        .expect("the cluster still serves");
}
