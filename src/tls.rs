//! TLS on both sides of a connection, with rustls: eventgate as the TLS server its Kafka clients
//! connect to ([`Server`]), and as a TLS client of the brokers ([`Upstream`]).
//!
//! ```text
//!  client ══TLS══▶ [Server: certificate, optional client CA] eventgate [Upstream: CA, optional client cert] ══TLS══▶ broker
//! ```
//!
//! The crypto provider is `ring`: it is already in the build (the NATS client uses it), needs no C
//! toolchain or cmake (aws-lc-rs does), and covers the suites Kafka clients offer. Only TLS 1.3 and
//! 1.2 are spoken. Certificates and keys are PEM files (a chain is allowed); the server's files are
//! checked for changes every `tls_reload_ms` and reloaded without a restart: new connections get
//! the new certificate, open ones keep theirs, and a file that does not load leaves the old
//! certificate in force (logged). Handshakes are bounded in time, so a client that opens a TLS
//! connection and stalls costs a socket until [`HANDSHAKE_TIMEOUT`], not more.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Longest a TLS handshake may take, on either side.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether and how clients present certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// A certificate is asked for; a client without one is let in, one with an invalid one is not.
    Requested,
    /// Every client must present a certificate the client CA signed.
    Required,
}

/// The server side's files and policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
    /// How often the files are checked for changes.
    pub reload: Duration,
}

/// The upstream side's trust and identity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamSettings {
    /// CA certificates to trust; `None`: the platform's roots.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (mutual TLS).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name to verify in every broker's certificate instead of the host it is reached at.
    pub server_name: Option<String>,
    /// Verify nothing (for a lab only).
    pub insecure: bool,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {reason}")]
    File { what: &'static str, path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The client side of the mirror's own NATS connection (`tls://` URLs, or a server that requires
/// TLS): the platform's CA certificates (`SSL_CERT_FILE` names another bundle), as `async-nats`
/// checks the rest of eventgate's NATS connections. Built once.
pub fn nats_client_config() -> Result<Arc<ClientConfig>, TlsError> {
    static CONFIG: std::sync::OnceLock<Result<Arc<ClientConfig>, String>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut store = RootCertStore::empty();
            let (added, _) = store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if added == 0 {
                return Err("no platform CA certificates found for NATS over TLS (set SSL_CERT_FILE)".into());
            }
            let config = ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(VERSIONS)
                .map_err(|e| e.to_string())?
                .with_root_certificates(store)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
        .map_err(TlsError::Setup)
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |reason: String| TlsError::File { what, path: path.to_owned(), reason };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what: "private key",
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn roots(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs(what, path)? {
        store.add(c).map_err(|e| TlsError::File { what, path: path.to_owned(), reason: e.to_string() })?;
    }
    Ok(store)
}

fn server_config(s: &ServerSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match (&s.client_ca, s.client_auth) {
        (_, ClientAuth::None) => builder.with_no_client_auth(),
        (None, _) => return Err(TlsError::Setup("client certificates need --tls-client-ca".into())),
        (Some(ca), auth) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots("client CA", ca)?), provider());
            let verifier = if auth == ClientAuth::Requested { verifier.allow_unauthenticated() } else { verifier };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| TlsError::Setup(e.to_string()))?)
        }
    };
    let config = builder
        .with_single_cert(certs("certificate", &s.cert)?, key(&s.key)?)
        .map_err(|e| TlsError::Setup(format!("certificate {} and key {}: {e}", s.cert.display(), s.key.display())))?;
    Ok(Arc::new(config))
}

/// The TLS server side of the Kafka listeners: the configuration in force, replaced when the files
/// change.
pub struct Server {
    settings: ServerSettings,
    current: ArcSwap<ServerConfig>,
    /// Modification times of the files when they were last loaded.
    stamps: Mutex<Vec<Option<SystemTime>>>,
}

fn stamps(s: &ServerSettings) -> Vec<Option<SystemTime>> {
    [Some(&s.cert), Some(&s.key), s.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

impl Server {
    /// Loads the certificate, key and client CA; fails on anything unreadable.
    pub fn load(settings: ServerSettings) -> Result<Arc<Self>, TlsError> {
        let config = server_config(&settings)?;
        Ok(Arc::new(Self { stamps: Mutex::new(stamps(&settings)), current: ArcSwap::new(config), settings }))
    }

    /// An acceptor with the configuration in force now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Re-reads the files if any changed since they were last loaded. `Ok(true)`: reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&self.settings);
        let mut seen = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == now {
            return Ok(false);
        }
        // A file caught half-written fails to load: the old configuration stays, and the next
        // check tries again (the stamps are kept only once a load succeeds).
        self.current.store(server_config(&self.settings)?);
        *seen = now;
        Ok(true)
    }

    /// Checks the files every `reload` until `shutdown`, logging each reload or failure.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.settings.reload) => {}
                _ = shutdown.cancelled() => return,
            }
            match self.reload_if_changed() {
                Ok(true) => tracing::info!(cert = %self.settings.cert.display(), "TLS certificate reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "TLS files changed but do not load; the previous certificate stays in force")
                }
            }
        }
    }
}

/// SNI routing: every broker is served on the bootstrap port under a host name of its own, made
/// from a pattern such as `broker-$(nodeId).gateway.example.com`; the name a client asks for in
/// its TLS handshake says which broker it wants (any other name is the bootstrap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniPattern {
    prefix: String,
    suffix: String,
}

/// The placeholder for the broker's node id in `--sni-host-pattern`.
pub const NODE_ID_PLACEHOLDER: &str = "$(nodeId)";

impl SniPattern {
    /// Reads a pattern: exactly one `$(nodeId)`, and a valid DNS name around it.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let (prefix, suffix) = pattern
            .split_once(NODE_ID_PLACEHOLDER)
            .ok_or_else(|| format!("`{pattern}` has no {NODE_ID_PLACEHOLDER}"))?;
        if suffix.contains(NODE_ID_PLACEHOLDER) {
            return Err(format!("`{pattern}` has {NODE_ID_PLACEHOLDER} more than once"));
        }
        let sample = format!("{prefix}0{suffix}");
        match ServerName::try_from(sample.as_str()) {
            Ok(ServerName::DnsName(_)) => {}
            _ => return Err(format!("`{pattern}` does not make DNS names (e.g. `{sample}`)")),
        }
        Ok(Self { prefix: prefix.to_ascii_lowercase(), suffix: suffix.to_ascii_lowercase() })
    }

    /// The host name of broker `node_id`.
    pub fn host(&self, node_id: i32) -> String {
        format!("{}{node_id}{}", self.prefix, self.suffix)
    }

    /// The broker a TLS server name asks for, if it is one of the pattern's names.
    pub fn node(&self, server_name: &str) -> Option<i32> {
        let name = server_name.to_ascii_lowercase();
        let id = name.strip_prefix(&self.prefix)?.strip_suffix(&self.suffix)?;
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        id.parse().ok()
    }
}

/// The TLS client side toward the brokers.
pub struct Upstream {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
}

/// Accepts any certificate: `--upstream-tls-insecure`.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl Upstream {
    pub fn load(s: &UpstreamSettings) -> Result<Self, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        let builder = if s.insecure {
            tracing::warn!(
                "--upstream-tls-insecure: broker certificates are NOT verified; anyone on the path can read and \
                 change the traffic. Use it in a lab only."
            );
            builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
        } else {
            let store = match &s.ca {
                Some(ca) => roots("upstream CA", ca)?,
                None => {
                    let found = rustls_native_certs::load_native_certs();
                    let mut store = RootCertStore::empty();
                    let (added, _) = store.add_parsable_certificates(found.certs);
                    if added == 0 {
                        return Err(TlsError::Setup("no platform CA certificates found; give --upstream-ca".into()));
                    }
                    store
                }
            };
            builder.with_root_certificates(store)
        };
        let config = match (&s.cert, &s.key) {
            (Some(cert), Some(key_path)) => builder
                .with_client_auth_cert(certs("upstream certificate", cert)?, key(key_path)?)
                .map_err(|e| TlsError::Setup(format!("upstream client certificate: {e}")))?,
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(TlsError::Setup("--upstream-cert and --upstream-key go together".into())),
        };
        let server_name = match &s.server_name {
            Some(n) => Some(
                ServerName::try_from(n.clone())
                    .map_err(|e| TlsError::Setup(format!("--upstream-tls-server-name {n}: {e}")))?,
            ),
            None => None,
        };
        Ok(Self { connector: tokio_rustls::TlsConnector::from(Arc::new(config)), server_name })
    }

    /// Opens TLS over `tcp` to the broker reached at `host`, verifying the configured name or
    /// `host`.
    pub async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())
                .map_err(|e| format!("{host} is not a name TLS can verify: {e}"))?,
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connector.connect(name, tcp)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(format!("TLS handshake with the broker failed: {e}")),
            Err(_) => Err(format!("TLS handshake with the broker took longer than {HANDSHAKE_TIMEOUT:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// A CA and a certificate it signed for 127.0.0.1 and localhost, made with the `openssl`
    /// command (as `deps.sh` installs it); returns (ca.pem, cert.pem, key.pem).
    pub fn issue(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
        let p = |f: &str| dir.join(format!("{name}-{f}"));
        let run = |args: &[&str]| {
            let out = Command::new("openssl").args(args).output().expect("openssl runs");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let s = |p: &PathBuf| p.to_str().expect("utf-8 path").to_owned();
        let (ca_key, ca, key, csr, cert, ext) =
            (p("ca.key"), p("ca.pem"), p("key.pem"), p("csr.pem"), p("cert.pem"), p("ext.cnf"));
        std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("write");
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &s(&ca_key),
            "-out",
            &s(&ca),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}-ca"),
        ]);
        run(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &s(&key), "-out", &s(&csr), "-subj", "/CN=localhost"]);
        run(&[
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(&ca),
            "-CAkey",
            &s(&ca_key),
            "-CAcreateserial",
            "-out",
            &s(&cert),
            "-days",
            "2",
            "-extfile",
            &s(&ext),
        ]);
        (ca, cert, key)
    }

    fn settings(cert: PathBuf, key: PathBuf) -> ServerSettings {
        ServerSettings { cert, key, client_ca: None, client_auth: ClientAuth::None, reload: Duration::from_secs(1) }
    }

    #[test]
    fn an_unreadable_file_fails_the_start_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let (_, cert, _) = issue(dir.path(), "a");
        let missing = dir.path().join("nope.pem");
        let err = Server::load(settings(cert.clone(), missing.clone())).err().expect("refused").to_string();
        assert!(err.contains("private key") && err.contains("nope.pem"), "{err}");
        std::fs::write(&missing, "not pem").unwrap();
        let err = Server::load(settings(missing, cert)).err().expect("refused").to_string();
        assert!(err.contains("certificate"), "{err}");
    }

    #[test]
    fn client_certificates_need_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (_, cert, key) = issue(dir.path(), "a");
        let s = ServerSettings { client_auth: ClientAuth::Required, ..settings(cert, key) };
        assert!(Server::load(s).err().expect("refused").to_string().contains("--tls-client-ca"));
    }

    #[test]
    fn changed_files_are_reloaded_and_broken_ones_leave_the_old_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (_, cert, key) = issue(dir.path(), "a");
        let server = Server::load(settings(cert.clone(), key.clone())).unwrap();
        let first = server.current.load_full();
        assert!(!server.reload_if_changed().unwrap(), "nothing changed");
        // A new certificate and key, from another CA, in place of the old ones.
        let (_, cert_b, key_b) = issue(dir.path(), "b");
        std::fs::copy(&cert_b, &cert).unwrap();
        std::fs::copy(&key_b, &key).unwrap();
        let bump = |p: &Path| {
            let later = SystemTime::now() + Duration::from_secs(5);
            std::fs::File::options().write(true).open(p).unwrap().set_modified(later).unwrap();
        };
        bump(&cert);
        assert!(server.reload_if_changed().unwrap(), "reloaded");
        assert!(!Arc::ptr_eq(&first, &server.current.load_full()));
        // A broken key: the reload fails and the certificate in force stays.
        let in_force = server.current.load_full();
        std::fs::write(&key, "broken").unwrap();
        bump(&key);
        assert!(server.reload_if_changed().is_err());
        assert!(Arc::ptr_eq(&in_force, &server.current.load_full()));
    }

    #[test]
    fn sni_names_map_to_brokers_and_back() {
        let p = SniPattern::parse("broker-$(nodeId).Gateway.example.com").unwrap();
        assert_eq!(p.host(7), "broker-7.gateway.example.com");
        assert_eq!(p.node("BROKER-7.gateway.example.com"), Some(7));
        assert_eq!(p.node("broker-.gateway.example.com"), None);
        assert_eq!(p.node("broker-1x.gateway.example.com"), None);
        assert_eq!(p.node("broker-99999999999.gateway.example.com"), None, "not an i32");
        assert_eq!(p.node("gateway.example.com"), None);
        assert!(SniPattern::parse("no-placeholder.example.com").is_err());
        assert!(SniPattern::parse("$(nodeId).$(nodeId).example.com").is_err());
        assert!(SniPattern::parse("bad name $(nodeId)").is_err());
    }

    #[test]
    fn upstream_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, _) = issue(dir.path(), "a");
        assert!(Upstream::load(&UpstreamSettings { ca: Some(ca.clone()), ..Default::default() }).is_ok());
        let half = UpstreamSettings { ca: Some(ca.clone()), cert: Some(cert), ..Default::default() };
        assert!(Upstream::load(&half).err().expect("refused").to_string().contains("go together"));
        let bad_name = UpstreamSettings { ca: Some(ca), server_name: Some("not a name!".into()), ..Default::default() };
        assert!(Upstream::load(&bad_name).is_err());
        assert!(Upstream::load(&UpstreamSettings { insecure: true, ..Default::default() }).is_ok());
    }
}
