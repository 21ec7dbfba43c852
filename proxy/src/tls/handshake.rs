//! A TLS listener's handshakes. The first byte of a connection tells what the client speaks:
//! a TLS record (`0x16`) gets the handshake; a plain HTTP request (a method's first letter)
//! gets `400` and a close, as nginx answers; anything else a close. Each outcome is counted
//! (`edgeward_tls_handshakes_total`), and each connection that got through by TLS version
//! and whether it resumed a session (`edgeward_tls_connections_total`).
//!
//! The caller bounds the whole of it with the connection's header deadline: a client that
//! stops in the middle of its ClientHello is dropped there, and counted with [`Acceptor::timed_out`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora::protocols::Stream;
use prometheus::IntCounter;
use rustls::server::{ServerConfig, ServerSessionMemoryCache};
use rustls::{AlertDescription, PeerIncompatible, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{ListenerTls, TlsVersion};
use crate::metrics;
use crate::tls::certificate::provider;
use crate::tls::store::{CertificateStore, LiveStore};
use crate::tls::stream::{version_name, TlsStream};

/// Sessions each listener remembers for clients that resume by session id (TLS 1.2 without
/// tickets); tickets need no memory on the server.
const SESSION_CACHE: usize = 4096;

/// What a client speaking plain HTTP to a TLS listener is told.
const PLAIN_HTTP_BODY: &str = r#"{"error":"plaintext_http","status":400,"message":"The plain HTTP request was sent to HTTPS port"}"#;

/// How long, and for how many bytes, a plain-HTTP client is read after its `400` before the
/// connection closes, so that its request does not turn the close into a reset (which would
/// lose the answer).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 << 10;

/// Why a TLS listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS on listener {listener}")]
    Setup {
        listener: SocketAddr,
        source: rustls::Error,
    },
}

/// How a handshake ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    /// No certificate for the client's SNI (or none sent), and the listener rejects those.
    NoCertificate,
    /// The client offered only TLS versions the listener does not accept.
    ProtocolVersion,
    /// The client refused the certificate (an alert such as `unknown_ca` or `bad_certificate`).
    CertificateRejected,
    PlaintextHttp,
    NotTls,
    Timeout,
    /// Anything else: a malformed handshake, no common cipher or ALPN protocol, a connection
    /// lost in the middle.
    Error,
}

impl Outcome {
    const ALL: [Outcome; 8] = [
        Outcome::Ok,
        Outcome::NoCertificate,
        Outcome::ProtocolVersion,
        Outcome::CertificateRejected,
        Outcome::PlaintextHttp,
        Outcome::NotTls,
        Outcome::Timeout,
        Outcome::Error,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NoCertificate => "no_certificate",
            Outcome::ProtocolVersion => "protocol_version",
            Outcome::CertificateRejected => "certificate_rejected",
            Outcome::PlaintextHttp => "plaintext_http",
            Outcome::NotTls => "not_tls",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        }
    }

    /// What a failed handshake's error means.
    pub(crate) fn of_error(error: &std::io::Error) -> Outcome {
        let Some(tls) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return Outcome::Error;
        };
        match tls {
            // A ClientHello without signature algorithms comes from TLS 1.1 or older: TLS 1.2
            // clients send them, 1.3 ones must.
            rustls::Error::PeerIncompatible(
                PeerIncompatible::SignatureAlgorithmsExtensionRequired
                | PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled
                | PeerIncompatible::SupportedVersionsExtensionRequired
                | PeerIncompatible::ServerDoesNotSupportTls12Or13,
            ) => Outcome::ProtocolVersion,
            // What rustls says when the certificate store has nothing for the client.
            rustls::Error::General(message) if message.contains("no server certificate") => {
                Outcome::NoCertificate
            }
            rustls::Error::AlertReceived(
                AlertDescription::BadCertificate
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnknownCA,
            ) => Outcome::CertificateRejected,
            _ => Outcome::Error,
        }
    }
}

/// A listener's counters, resolved once: counting a handshake looks nothing up.
struct Counters {
    outcomes: [IntCounter; Outcome::ALL.len()],
    /// TLS 1.2 and 1.3, each full and resumed.
    connections: [[IntCounter; 2]; 2],
}

impl Counters {
    fn new(listener: &str) -> Self {
        let metrics = metrics::global();
        let outcome = |o: Outcome| {
            metrics
                .tls_handshakes
                .with_label_values(&[listener, o.label()])
        };
        let connections = |version: &str| {
            ["full", "resumed"].map(|kind| {
                metrics
                    .tls_connections
                    .with_label_values(&[listener, version, kind])
            })
        };
        Counters {
            outcomes: Outcome::ALL.map(outcome),
            connections: [connections("TLSv1.2"), connections("TLSv1.3")],
        }
    }

    fn count(&self, outcome: Outcome) {
        if let Some(counter) = Outcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .and_then(|i| self.outcomes.get(i))
        {
            counter.inc();
        }
    }
}

/// A TLS listener's handshakes: its rustls configuration (certificates by SNI, versions,
/// ALPN, session resumption) and its counters.
pub(crate) struct Acceptor {
    listener: Arc<str>,
    acceptor: tokio_rustls::TlsAcceptor,
    /// What the configuration's resolver asks: a rotation replaces it.
    certificates: Arc<LiveStore>,
    counters: Counters,
}

impl Acceptor {
    pub(crate) fn new(
        address: SocketAddr,
        name: Arc<str>,
        tls: &ListenerTls,
    ) -> Result<Acceptor, TlsError> {
        let setup = |source| TlsError::Setup {
            listener: address,
            source,
        };
        let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let certificates = Arc::new(LiveStore::new(CertificateStore::new(tls)));
        let mut config = ServerConfig::builder_with_provider(provider().clone())
            .with_protocol_versions(versions)
            .map_err(setup)?
            .with_no_client_auth()
            .with_cert_resolver(certificates.clone());
        config.alpn_protocols = tls.alpn.iter().map(|p| p.id().to_vec()).collect();
        // Resumption: stateless tickets (their key rotates every 6 hours; a ticket lives 12),
        // and a session cache for TLS 1.2 clients that resume by id. No 0-RTT data: it could
        // be replayed.
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(setup)?;
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        config.max_early_data_size = 0;
        let metrics = metrics::global();
        for certificate in &tls.certificates {
            metrics
                .tls_certificate_expiry
                .with_label_values(&[&certificate.name])
                .set(certificate.loaded.not_after);
        }
        Ok(Acceptor {
            counters: Counters::new(&name),
            listener: name,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            certificates,
        })
    }

    /// The listener's certificates, for the rotation to replace.
    pub(crate) fn certificates(&self) -> &Arc<LiveStore> {
        &self.certificates
    }

    /// The handshake of a new connection: its TLS stream, or `None` when the connection is
    /// done (it was answered or refused, and counted).
    pub(crate) async fn accept(&self, mut stream: Stream) -> Option<TlsStream> {
        let mut first = [0u8; 1];
        match stream.try_peek(&mut first).await {
            Ok(true) => {}
            // Peeking unsupported (not so for TCP): straight to the handshake.
            Ok(false) => first[0] = 0x16,
            // Closed before a byte arrived, as TCP health checks do: no handshake to count.
            Err(_) => return None,
        }
        let outcome = match first[0] {
            0x16 => match self.acceptor.accept(stream).await {
                Ok(tls) => {
                    let tls = TlsStream::new(tls);
                    self.connected(&tls);
                    return Some(tls);
                }
                Err(e) => {
                    let outcome = Outcome::of_error(&e);
                    log::debug!(
                        "TLS handshake on {} failed ({}): {e}",
                        self.listener,
                        outcome.label()
                    );
                    outcome
                }
            },
            b'A'..=b'Z' => {
                answer_plain_http(stream).await;
                Outcome::PlaintextHttp
            }
            _ => Outcome::NotTls,
        };
        self.counters.count(outcome);
        None
    }

    /// The connection's deadline passed during the handshake.
    pub(crate) fn timed_out(&self) {
        self.counters.count(Outcome::Timeout);
    }

    fn connected(&self, tls: &TlsStream) {
        self.counters.count(Outcome::Ok);
        let version = match tls.connection().protocol_version() {
            Some(ProtocolVersion::TLSv1_2) => 0,
            _ => 1,
        };
        if let Some(counter) = self
            .counters
            .connections
            .get(version)
            .and_then(|kinds| kinds.get(usize::from(tls.resumed())))
        {
            counter.inc();
        }
        log::trace!(
            "TLS on {}: {}, {}",
            self.listener,
            version_name(tls.connection().protocol_version()),
            if tls.resumed() { "resumed" } else { "full" }
        );
    }
}

/// `400` for a plain HTTP request on a TLS listener; then the connection closes, once the
/// client had a moment to take the answer.
async fn answer_plain_http(mut stream: Stream) {
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncache-control: \
         no-store\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{PLAIN_HTTP_BODY}",
        PLAIN_HTTP_BODY.len()
    );
    if stream.write_all(answer.as_bytes()).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    AsyncWriteExt::shutdown(&mut stream).await.ok();
    let _ = tokio::time::timeout(LINGER, async {
        let mut buf = [0u8; 4096];
        let mut read = 0;
        while read < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Alpn, TlsDefault};
    use crate::tls::certificate::testing::certificate;

    /// Accepts any certificate: these tests look at the server's side.
    #[derive(Debug)]
    struct AnyCertificate;

    impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }

        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// One handshake against `acceptor` in memory by a client asking for `sni`: whether the
    /// server's side got through.
    async fn handshake(acceptor: &Acceptor, sni: &str) -> bool {
        let (client_io, server_io) = tokio::io::duplex(64 << 10);
        let config = rustls::ClientConfig::builder_with_provider(provider().clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate))
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let (server, _client) = tokio::join!(
            acceptor.accept(Box::new(server_io)),
            connector.connect(name, client_io)
        );
        server.is_some()
    }

    fn count(listener: &str, outcome: Outcome) -> u64 {
        metrics::global()
            .tls_handshakes
            .with_label_values(&[listener, outcome.label()])
            .get()
    }

    #[tokio::test]
    async fn an_unknown_name_on_a_rejecting_listener_is_counted_as_no_certificate() {
        let tls = ListenerTls {
            certificates: vec![certificate("a", &["a.test"])],
            default: TlsDefault::Reject,
            min_version: TlsVersion::Tls12,
            alpn: vec![Alpn::H2, Alpn::Http11],
            reload_interval: Duration::from_secs(5),
        };
        let name = "unit-test-reject";
        let acceptor = Acceptor::new(([127, 0, 0, 1], 1).into(), Arc::from(name), &tls).unwrap();
        assert!(handshake(&acceptor, "a.test").await);
        assert!(!handshake(&acceptor, "b.test").await);
        assert_eq!(count(name, Outcome::Ok), 1);
        assert_eq!(count(name, Outcome::NoCertificate), 1);
        assert_eq!(count(name, Outcome::Error), 0);
    }

    #[test]
    fn handshake_errors_are_classified() {
        let tls = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        assert_eq!(
            Outcome::of_error(&tls(PeerIncompatible::Tls12NotOffered.into())),
            Outcome::ProtocolVersion
        );
        assert_eq!(
            Outcome::of_error(&tls(rustls::Error::AlertReceived(
                AlertDescription::UnknownCA
            ))),
            Outcome::CertificateRejected
        );
        assert_eq!(
            Outcome::of_error(&std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            Outcome::Error
        );
    }
}
