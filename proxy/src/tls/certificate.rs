//! A certificate chain and its private key, read from PEM files and checked: the files are
//! readable and hold PEM, every certificate of the chain parses, the key is one rustls can
//! sign with (RSA, ECDSA P-256/P-384, Ed25519) and belongs to the first certificate. What the
//! certificate says (its DNS names, when it expires) is read once, here.
//!
//! Validation and the server use this alike: what `edgeward validate` accepts is what serves.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// The largest certificate or key file read: a chain of a few certificates is a few KiB.
const MAX_FILE: u64 = 1 << 20;

/// The one crypto provider of edgeward's TLS: *ring*.
pub(crate) fn provider() -> &'static Arc<CryptoProvider> {
    static PROVIDER: LazyLock<Arc<CryptoProvider>> =
        LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));
    &PROVIDER
}

/// Why a certificate or its key cannot be served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertificateError {
    #[error("cannot read `{}`", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{}` is larger than 1 MiB, which no certificate or key file is", path.display())]
    TooLarge { path: PathBuf },
    #[error("`{}` is not valid PEM", path.display())]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("`{}` holds no certificate (no `-----BEGIN CERTIFICATE-----` section)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("`{}`: certificate {number} of the file cannot be parsed", path.display())]
    Parse {
        path: PathBuf,
        /// From 1, in file order.
        number: usize,
        source: x509_parser::error::X509Error,
    },
    #[error(
        "`{}` holds no private key (a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` section)",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("`{}` holds an encrypted private key; edgeward needs it unencrypted", path.display())]
    EncryptedKey { path: PathBuf },
    #[error(
        "`{}`: the private key is not one edgeward can use (RSA, ECDSA P-256 or P-384, Ed25519)",
        path.display()
    )]
    UnsupportedKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error(
        "the key in `{}` does not belong to the certificate in `{}` (the first certificate of \
         the file must be the server's own, followed by its intermediates)",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("`{}`: certificate {number} of the file cannot be a trust anchor", path.display())]
    Anchor {
        path: PathBuf,
        /// From 1, in file order.
        number: usize,
        source: rustls::Error,
    },
}

impl CertificateError {
    /// The file the problem is in (for a key that does not match, the key's).
    pub(crate) fn file(&self) -> &Path {
        match self {
            CertificateError::Read { path, .. }
            | CertificateError::TooLarge { path }
            | CertificateError::Pem { path, .. }
            | CertificateError::NoCertificate { path }
            | CertificateError::Parse { path, .. }
            | CertificateError::NoKey { path }
            | CertificateError::EncryptedKey { path }
            | CertificateError::UnsupportedKey { path, .. }
            | CertificateError::Anchor { path, .. } => path,
            CertificateError::KeyMismatch { key, .. } => key,
        }
    }
}

/// What tells one version of a file from another without reading it: which file it is (a
/// rename puts another in place), its size, and when it was last written. Following links, so
/// that a link switched to another file (as Kubernetes updates a mounted secret) is a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    device: u64,
    inode: u64,
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl FileStamp {
    /// `None` when the file cannot be looked at (missing, not allowed): loading it tells why.
    fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            device: metadata.dev(),
            inode: metadata.ino(),
            size: metadata.size(),
            modified: (metadata.mtime(), metadata.mtime_nsec()),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
        })
    }
}

/// The stamps of a certificate's two files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamps {
    cert: Option<FileStamp>,
    key: Option<FileStamp>,
}

impl Stamps {
    pub(crate) fn of(cert: &Path, key: &Path) -> Stamps {
        Stamps {
            cert: FileStamp::of(cert),
            key: FileStamp::of(key),
        }
    }
}

/// A certificate chain with its key, ready for rustls, and what its end-entity certificate
/// says.
#[derive(Debug)]
pub(crate) struct Certificate {
    /// The chain (end entity first) and the signing key.
    pub(crate) key: Arc<CertifiedKey>,
    /// The DNS names of its subject alternative names, lower-case, without a trailing dot
    /// (`*.example.com` included as written).
    pub(crate) dns_names: Vec<String>,
    /// Unix time of `notBefore` and `notAfter`.
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    /// `notAfter` as the certificate tells it, for messages.
    pub(crate) not_after_text: String,
    /// The files as they were just before they were read: a later change is a rotation.
    pub(crate) stamps: Stamps,
}

impl Certificate {
    /// Reads `cert` (a PEM chain: the server's certificate first, then its intermediates)
    /// and `key` (its private key, PKCS#8, PKCS#1 or SEC1 PEM), and checks that they belong
    /// together.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<Certificate, CertificateError> {
        Certificate::load_with_key(cert, key).map(|(certificate, _)| certificate)
    }

    /// [`Certificate::load`], also giving the private key as read.
    fn load_with_key(
        cert: &Path,
        key: &Path,
    ) -> Result<(Certificate, PrivateKeyDer<'static>), CertificateError> {
        let stamps = Stamps::of(cert, key);
        let cert_pem = read(cert)?;
        let chain = certificates(cert, &cert_pem)?;
        let key_pem = read(key)?;
        let key_der = private_key(key, &key_pem)?;
        let signing_key = provider()
            .key_provider
            .load_private_key(key_der.clone_key())
            .map_err(|source| CertificateError::UnsupportedKey {
                path: key.to_path_buf(),
                source,
            })?;
        let (dns_names, not_before, not_after, not_after_text) = {
            let leaf = parse(cert, 1, &chain[0])?;
            let validity = leaf.validity();
            (
                dns_names(&leaf),
                validity.not_before.timestamp(),
                validity.not_after.timestamp(),
                validity.not_after.to_string(),
            )
        };
        for (index, intermediate) in chain.iter().enumerate().skip(1) {
            parse(cert, index + 1, intermediate)?;
        }
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => {
                return Err(CertificateError::KeyMismatch {
                    cert: cert.to_path_buf(),
                    key: key.to_path_buf(),
                })
            }
        }
        let certificate = Certificate {
            key: Arc::new(certified),
            dns_names,
            not_before,
            not_after,
            not_after_text,
            stamps,
        };
        Ok((certificate, key_der))
    }

    /// The names SNI is matched against when the configuration names none (`hosts`): its DNS
    /// names that are host names or `*.` wildcards of one label. `name` is the certificate's,
    /// for the warning about the names left out.
    pub(crate) fn served_names(&self, name: &str) -> Vec<ServedName> {
        self.dns_names
            .iter()
            .filter_map(|dns| {
                let served = ServedName::parse(dns);
                if served.is_none() {
                    log::warn!(
                        "certificate `{name}`: its name `{dns}` is not matched against SNI \
                         (only host names and `*.` wildcards of one label are)"
                    );
                }
                served
            })
            .collect()
    }

    /// Whether the certificate is outside its validity period at Unix time `now`.
    pub(crate) fn expired_at(&self, now: i64) -> bool {
        now > self.not_after
    }

    pub(crate) fn not_yet_valid_at(&self, now: i64) -> bool {
        now < self.not_before
    }
}

/// The certificate edgeward shows an origin that asks for one (mutual TLS): the chain and
/// its key as DER, checked as a server certificate is.
pub(crate) struct ClientIdentity {
    /// End entity first.
    pub(crate) chain: Vec<Vec<u8>>,
    pub(crate) key: Vec<u8>,
}

impl ClientIdentity {
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<ClientIdentity, CertificateError> {
        let (certificate, key_der) = Certificate::load_with_key(cert, key)?;
        let key_bytes = key_der.secret_der().to_vec();
        // The TLS client reads the key back from its DER by its structure alone: check now
        // that it can, rather than at the first connection.
        if let Err(reason) = PrivateKeyDer::try_from(key_bytes.as_slice()) {
            return Err(CertificateError::UnsupportedKey {
                path: key.to_path_buf(),
                source: rustls::Error::General(reason.to_string()),
            });
        }
        Ok(ClientIdentity {
            chain: certificate.key.cert.iter().map(|c| c.to_vec()).collect(),
            key: key_bytes,
        })
    }
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// The certificates of a PEM bundle that origins' certificates are verified against: each
/// parses and can be a trust anchor.
pub(crate) fn load_trust_anchors(path: &Path) -> Result<Vec<Vec<u8>>, CertificateError> {
    let pem = read(path)?;
    let bundle = certificates(path, &pem)?;
    let mut roots = rustls::RootCertStore::empty();
    for (index, der) in bundle.iter().enumerate() {
        parse(path, index + 1, der)?;
        roots
            .add(der.clone())
            .map_err(|source| CertificateError::Anchor {
                path: path.to_path_buf(),
                number: index + 1,
                source,
            })?;
    }
    Ok(bundle.iter().map(|der| der.to_vec()).collect())
}

/// The current Unix time in seconds.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A name a certificate serves, as SNI is matched against it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ServedName {
    /// `api.example.com`: that name only.
    Exact(String),
    /// `*.example.com`, kept as `example.com`: any one label in front of it.
    Wildcard(String),
}

impl ServedName {
    /// A host name (`api.example.com`) or a wildcard of one label (`*.example.com`),
    /// case-insensitive, a trailing dot ignored; `None` for anything else.
    pub(crate) fn parse(text: &str) -> Option<ServedName> {
        let text = text.trim();
        let text = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
        let (wildcard, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return None;
        }
        Some(if wildcard {
            ServedName::Wildcard(name.to_string())
        } else {
            ServedName::Exact(text)
        })
    }
}

impl std::fmt::Display for ServedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServedName::Exact(name) => f.write_str(name),
            ServedName::Wildcard(parent) => write!(f, "*.{parent}"),
        }
    }
}

/// The file's bytes, at most [`MAX_FILE`] of them.
fn read(path: &Path) -> Result<Vec<u8>, CertificateError> {
    let read_error = |source| CertificateError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    if file.metadata().map_err(read_error)?.is_dir() {
        return Err(read_error(std::io::Error::other("it is a folder")));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(CertificateError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Every certificate of a PEM file, in file order; at least one.
fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CertificateError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(CertificateError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

/// The first private key of a PEM file.
fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, CertificateError> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            if pem.windows(9).any(|w| w == b"ENCRYPTED") {
                Err(CertificateError::EncryptedKey {
                    path: path.to_path_buf(),
                })
            } else {
                Err(CertificateError::NoKey {
                    path: path.to_path_buf(),
                })
            }
        }
        Err(source) => Err(CertificateError::Pem {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn parse<'a>(
    path: &Path,
    number: usize,
    der: &'a CertificateDer<'_>,
) -> Result<x509_parser::certificate::X509Certificate<'a>, CertificateError> {
    use x509_parser::nom::Err;
    x509_parser::parse_x509_certificate(der)
        .map(|(_, certificate)| certificate)
        .map_err(|e| CertificateError::Parse {
            path: path.to_path_buf(),
            number,
            source: match e {
                Err::Error(e) | Err::Failure(e) => e,
                Err::Incomplete(_) => x509_parser::error::X509Error::InvalidCertificate,
            },
        })
}

/// The DNS names among a certificate's subject alternative names, lower-case.
fn dns_names(certificate: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(names)) = certificate.subject_alternative_name() else {
        return Vec::new();
    };
    names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => {
                let dns = dns.strip_suffix('.').unwrap_or(dns);
                Some(dns.to_ascii_lowercase())
            }
            _ => None,
        })
        .collect()
}

/// Certificates made in memory for the tests of `tls`.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::config::TlsCertificate;

    /// A self-signed ECDSA P-256 certificate served for its `names`.
    pub(crate) fn certificate(name: &str, names: &[&str]) -> TlsCertificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
        let signing_key = provider().key_provider.load_private_key(der).unwrap();
        TlsCertificate::new(
            name.to_string(),
            PathBuf::from(name),
            PathBuf::from(name),
            None,
            Certificate {
                key: Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing_key)),
                dns_names: names.iter().map(|n| n.to_string()).collect(),
                not_before: 0,
                not_after: i64::MAX,
                not_after_text: String::new(),
                stamps: Stamps {
                    cert: None,
                    key: None,
                },
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            Files {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    fn issue(
        names: &[&str],
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        (params.self_signed(&key).unwrap(), key)
    }

    #[test]
    fn a_pair_loads_with_its_names_and_dates_for_each_key_type() {
        let files = Files::new();
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let (cert, key) = issue(&["Example.test.", "*.example.test"], alg);
            let loaded = Certificate::load(
                &files.write("c.pem", cert.pem()),
                &files.write("k.pem", key.serialize_pem()),
            )
            .unwrap();
            assert_eq!(loaded.dns_names, ["example.test", "*.example.test"]);
            assert!(loaded.not_after > loaded.not_before);
            assert!(!loaded.expired_at(unix_now()));
            // One file may hold both, in either order.
            let both = files.write("both.pem", format!("{}{}", key.serialize_pem(), cert.pem()));
            let loaded = Certificate::load(&both, &both).unwrap();
            assert_eq!(loaded.key.cert.len(), 1);
        }
    }

    #[test]
    fn problems_name_their_file() {
        let files = Files::new();
        let (cert, key) = issue(&["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
        let (_, other_key) = issue(&["b.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
        let cert_path = files.write("c.pem", cert.pem());
        let key_path = files.write("k.pem", key.serialize_pem());
        let missing = files.dir.path().join("missing.pem");
        let load = |c: &Path, k: &Path| Certificate::load(c, k).unwrap_err();

        let e = load(&missing, &key_path);
        assert!(matches!(e, CertificateError::Read { ref path, .. } if *path == missing));
        let e = load(&cert_path, &missing);
        assert!(matches!(e, CertificateError::Read { ref path, .. } if *path == missing));
        let e = load(&files.write("empty.pem", ""), &key_path);
        assert!(matches!(e, CertificateError::NoCertificate { .. }), "{e:?}");
        let e = load(&cert_path, &cert_path);
        assert!(matches!(e, CertificateError::NoKey { .. }), "{e:?}");
        let e = load(
            &cert_path,
            &files.write(
                "enc.pem",
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            ),
        );
        assert!(matches!(e, CertificateError::EncryptedKey { .. }), "{e:?}");
        let e = load(
            &files.write(
                "broken.pem",
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
            ),
            &key_path,
        );
        assert!(matches!(e, CertificateError::Pem { .. }), "{e:?}");
        let e = load(
            &files.write(
                "junk.pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            ),
            &key_path,
        );
        assert!(
            matches!(e, CertificateError::Parse { number: 1, .. }),
            "{e:?}"
        );
        let other_key_path = files.write("other.pem", other_key.serialize_pem());
        let e = load(&cert_path, &other_key_path);
        assert!(matches!(e, CertificateError::KeyMismatch { .. }), "{e:?}");
        assert_eq!(e.file(), other_key_path);
        assert!(e
            .to_string()
            .contains("does not belong to the certificate in"));
    }

    #[test]
    fn a_chain_keeps_every_certificate_in_order_and_expiry_is_read() {
        let files = Files::new();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf_params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        leaf_params.not_before = rcgen::date_time_ymd(2001, 1, 1);
        leaf_params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        let loaded = Certificate::load(
            &files.write("chain.pem", format!("{}{}", leaf.pem(), ca.pem())),
            &files.write("k.pem", leaf_key.serialize_pem()),
        )
        .unwrap();
        assert_eq!(loaded.key.cert.len(), 2);
        assert_eq!(loaded.key.cert[0], *leaf.der());
        assert!(loaded.expired_at(unix_now()));
        assert_eq!(loaded.not_after, 1_009_843_200);
        // The CA first: its key is not the leaf's.
        let e = Certificate::load(
            &files.write("reversed.pem", format!("{}{}", ca.pem(), leaf.pem())),
            &files.write("k.pem", leaf_key.serialize_pem()),
        )
        .unwrap_err();
        assert!(matches!(e, CertificateError::KeyMismatch { .. }), "{e:?}");
    }

    #[test]
    fn stamps_change_with_a_rewrite_a_rename_a_switched_link_or_a_removal() {
        let files = Files::new();
        let stamps = |path: &Path| Stamps::of(path, path);
        let path = files.write("c.pem", "one");
        let first = stamps(&path);
        assert_eq!(stamps(&path), first, "unchanged");
        files.write("c.pem", "one, longer");
        let rewritten = stamps(&path);
        assert_ne!(rewritten, first, "rewritten in place");
        std::fs::rename(files.write("new.pem", "one, longer"), &path).unwrap();
        let renamed = stamps(&path);
        assert_ne!(renamed, rewritten, "renamed over");
        // As Kubernetes updates a mounted secret: a link switched to another file.
        let link = files.dir.path().join("link.pem");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let linked = stamps(&link);
        assert_eq!(linked, renamed);
        let switched = files.dir.path().join("switched.pem");
        std::os::unix::fs::symlink(files.write("other.pem", "two"), &switched).unwrap();
        std::fs::rename(&switched, &link).unwrap();
        assert_ne!(stamps(&link), linked, "link switched");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            stamps(&path),
            Stamps {
                cert: None,
                key: None
            },
            "removed"
        );
    }

    #[test]
    fn served_names_are_host_names_or_one_label_wildcards() {
        assert_eq!(
            ServedName::parse("API.Example.com."),
            Some(ServedName::Exact("api.example.com".into()))
        );
        assert_eq!(
            ServedName::parse("*.example.com"),
            Some(ServedName::Wildcard("example.com".into()))
        );
        for bad in [
            "",
            "*",
            "*.",
            "a..b",
            "w*.example.com",
            "a b",
            "*.*.example.com",
        ] {
            assert_eq!(ServedName::parse(bad), None, "{bad:?}");
        }
    }
}
