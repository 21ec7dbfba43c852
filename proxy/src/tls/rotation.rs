//! Certificate rotation without a restart. A background service looks at the certificate and
//! key files of every TLS listener each `tls.reload_interval`: a `stat` of each file, nothing
//! read while they stay as they were. Changed files are loaded by the code that loaded them at
//! start (`Certificate::load`), and a replacement that loads and is within its validity period
//! goes into a new `CertificateStore`, swapped in whole: new handshakes get it, open
//! connections keep the session they have.
//!
//! Tools write a certificate and its key one after the other, so a pair that does not load is
//! looked at again before it counts as broken; when it still fails on the same files, the
//! certificate served until then goes on serving, and the failure is logged and counted once,
//! until the files change again.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounter;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::causes;
use crate::config::{ListenerTls, TlsCertificate};
use crate::metrics;
use crate::sync::lock;
use crate::tls::certificate::{unix_now, Certificate, CertificateError, Stamps};
use crate::tls::store::{CertificateStore, LiveStore};

/// Why changed certificate files are not served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    #[error(transparent)]
    Load(#[from] CertificateError),
    /// At start an expired certificate serves, as there is nothing else to serve; a
    /// replacement that clients would refuse is not worth the certificate serving now.
    #[error("the certificate in `{}` expired on {not_after}", path.display())]
    Expired { path: PathBuf, not_after: String },
    #[error("the certificate in `{}` is not valid yet", path.display())]
    NotYetValid { path: PathBuf },
}

/// The certificates of every TLS listener, watched for rotation: a background service, whose
/// own thread does the file reading.
#[derive(Default)]
pub(crate) struct Rotation {
    /// Each listener's lock is taken by its own task only, while it looks at the files.
    listeners: Vec<Mutex<Watched>>,
    /// Makes every listener look at its files now (a configuration reload asks for it).
    look_now: LookNow,
    /// Each listener's view of `look_now`, taken by its task when the service starts: made
    /// with the listener, so that no ask is missed, however early it comes.
    asks: Mutex<Vec<watch::Receiver<u64>>>,
}

/// Asks every TLS listener to look at its certificate files at once rather than at its next
/// `reload_interval`.
#[derive(Clone, Default)]
pub(crate) struct LookNow(Arc<watch::Sender<u64>>);

impl LookNow {
    pub(crate) fn ask(&self) {
        self.0.send_modify(|asks| *asks = asks.wrapping_add(1));
    }
}

impl Rotation {
    /// Watches the certificate files of `listener` (settings `tls`), whose handshakes resolve
    /// through `store`.
    pub(crate) fn watch(&mut self, listener: Arc<str>, tls: &ListenerTls, store: Arc<LiveStore>) {
        self.listeners
            .push(Mutex::new(Watched::new(listener, tls, store)));
        lock(&self.asks).push(self.look_now.0.subscribe());
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }

    /// What makes every listener look at its certificate files at once.
    pub(crate) fn look_now(&self) -> LookNow {
        self.look_now.clone()
    }
}

#[async_trait::async_trait]
impl BackgroundService for Rotation {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let asks = std::mem::take(&mut *lock(&self.asks));
        let watching = futures_util::future::join_all(
            self.listeners
                .iter()
                .zip(asks)
                .map(|(listener, asks)| look_every(listener, asks)),
        );
        tokio::select! {
            _ = watching => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Looks at one listener's files every `reload_interval`, and when asked to at once, for as
/// long as the service runs.
async fn look_every(listener: &Mutex<Watched>, asks: watch::Receiver<u64>) {
    let interval = lock(listener).tls.reload_interval;
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    // After a stall, one look, not a burst of them.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // `None` once nobody can ask (the rotation, which keeps the sender, is gone).
    let mut asks = Some(asks);
    loop {
        let asked = async {
            match asks.as_mut() {
                Some(asks) => asks.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ticks.tick() => {}
            still_asking = asked => {
                if !still_asking {
                    asks = None;
                    continue;
                }
            }
        }
        lock(listener).look();
    }
}

/// One TLS listener's certificates as served now, and what is known of their files.
struct Watched {
    listener: Arc<str>,
    /// The listener's settings with its certificates as served now: a new store is built from
    /// them.
    tls: ListenerTls,
    store: Arc<LiveStore>,
    /// One per certificate of `tls`, in its order.
    files: Vec<Files>,
}

/// One certificate's files, and its reloads counted.
struct Files {
    watch: Watch,
    ok: IntCounter,
    error: IntCounter,
}

impl Watched {
    fn new(listener: Arc<str>, tls: &ListenerTls, store: Arc<LiveStore>) -> Watched {
        let reloads = &metrics::global().tls_certificate_reloads;
        let files = tls
            .certificates
            .iter()
            .map(|certificate| {
                let counter =
                    |result| reloads.with_label_values(&[&*listener, &certificate.name, result]);
                Files {
                    watch: Watch::new(certificate.loaded.stamps),
                    ok: counter("ok"),
                    error: counter("error"),
                }
            })
            .collect();
        Watched {
            listener,
            tls: tls.clone(),
            store,
            files,
        }
    }

    /// Looks at every certificate's files; swaps in a new store when one was replaced.
    fn look(&mut self) {
        let listener = &self.listener;
        let mut replaced = false;
        for (certificate, files) in self.tls.certificates.iter_mut().zip(&mut self.files) {
            let stamps = Stamps::of(&certificate.cert, &certificate.key);
            match files.watch.look(stamps, || replacement(certificate)) {
                Looked::Unchanged => {}
                Looked::Replaced(new) => {
                    log::info!(
                        "TLS listener {listener}: certificate `{}` reloaded; it expires {}",
                        new.name,
                        new.loaded.not_after_text
                    );
                    metrics::global()
                        .tls_certificate_expiry
                        .with_label_values(&[&new.name])
                        .set(new.loaded.not_after);
                    files.ok.inc();
                    *certificate = new;
                    replaced = true;
                }
                Looked::Unsettled(e) => log::debug!(
                    "TLS listener {listener}: certificate `{}` changed but does not load yet \
                     ({}); looking again",
                    certificate.name,
                    causes::describe(&e)
                ),
                Looked::Failed(e) => {
                    log::error!(
                        "TLS listener {listener}: the changed files of certificate `{}` cannot \
                         be served, so the previous certificate still is: {}",
                        certificate.name,
                        causes::describe(&e)
                    );
                    files.error.inc();
                }
            }
        }
        if replaced {
            self.store.replace(CertificateStore::new(&self.tls));
        }
    }
}

/// `certificate` as its files now hold it, checked as at start and within its validity period.
fn replacement(certificate: &TlsCertificate) -> Result<TlsCertificate, ReloadError> {
    let loaded = Certificate::load(&certificate.cert, &certificate.key)?;
    let now = unix_now();
    if loaded.expired_at(now) {
        return Err(ReloadError::Expired {
            path: certificate.cert.clone(),
            not_after: loaded.not_after_text,
        });
    }
    if loaded.not_yet_valid_at(now) {
        return Err(ReloadError::NotYetValid {
            path: certificate.cert.clone(),
        });
    }
    Ok(certificate.replaced_by(loaded))
}

/// What one look at a certificate's files found.
#[derive(Debug, PartialEq)]
enum Looked<T, E> {
    /// The files are as they were (or their failure was reported already).
    Unchanged,
    /// They changed and loaded.
    Replaced(T),
    /// They changed and do not load: perhaps half written; looked at again next time.
    Unsettled(E),
    /// They still do not load, unchanged since the last look: to report.
    Failed(E),
}

/// One certificate's files between looks.
#[derive(Debug)]
struct Watch {
    /// The stamps of the files at the last look (at first, those loaded at start).
    seen: Stamps,
    /// The last look's files changed and did not load.
    unsettled: bool,
}

impl Watch {
    fn new(seen: Stamps) -> Watch {
        Watch {
            seen,
            unsettled: false,
        }
    }

    /// The files now have `stamps`; `load` reads them.
    fn look<T, E>(&mut self, stamps: Stamps, load: impl FnOnce() -> Result<T, E>) -> Looked<T, E> {
        let changed = stamps != self.seen;
        if !changed && !self.unsettled {
            return Looked::Unchanged;
        }
        self.seen = stamps;
        match load() {
            Ok(loaded) => {
                self.unsettled = false;
                Looked::Replaced(loaded)
            }
            Err(e) if changed => {
                self.unsettled = true;
                Looked::Unsettled(e)
            }
            Err(e) => {
                self.unsettled = false;
                Looked::Failed(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Alpn, TlsDefault, TlsVersion};
    use std::path::Path;
    use std::time::Duration;

    fn write(path: &Path, contents: impl AsRef<[u8]>) {
        std::fs::write(path, contents).unwrap();
    }

    /// Distinct stamps: files of their own (an inode each), or none.
    struct Versions {
        _dir: tempfile::TempDir,
        a: Stamps,
        b: Stamps,
        missing: Stamps,
    }

    fn versions() -> Versions {
        let dir = tempfile::tempdir().unwrap();
        let stamps = |name: &str| {
            let path = dir.path().join(name);
            write(&path, name);
            Stamps::of(&path, &path)
        };
        let (a, b) = (stamps("a"), stamps("b"));
        let missing = dir.path().join("missing");
        Versions {
            a,
            b,
            missing: Stamps::of(&missing, &missing),
            _dir: dir,
        }
    }

    type Step = (Stamps, Result<u8, &'static str>, Looked<u8, &'static str>);

    /// A watch that last saw `seen`, through looks at files with the stamps of each step,
    /// which load as the step says: each look finds what the step expects (`Unchanged`: the
    /// files were not read).
    fn looks(seen: Stamps, steps: &[Step]) {
        let mut watch = Watch::new(seen);
        for (number, (stamps, load, expected)) in steps.iter().enumerate() {
            assert_eq!(watch.look(*stamps, || *load), *expected, "look {number}");
        }
    }

    #[test]
    fn unchanged_files_are_not_read_and_changed_ones_that_load_replace_at_once() {
        let v = versions();
        looks(
            v.a,
            &[
                (v.a, Ok(1), Looked::Unchanged),
                (v.b, Ok(2), Looked::Replaced(2)),
                (v.b, Ok(3), Looked::Unchanged),
            ],
        );
    }

    #[test]
    fn a_pair_written_in_two_steps_is_not_reported_half_way() {
        let v = versions();
        looks(
            v.a,
            &[
                // The certificate is new, the key not yet.
                (v.b, Err("mismatch"), Looked::Unsettled("mismatch")),
                // Then the key: another change, which loads.
                (v.a, Ok(1), Looked::Replaced(1)),
            ],
        );
    }

    #[test]
    fn a_broken_replacement_is_reported_once_it_stays_so_and_once_only() {
        let v = versions();
        looks(
            v.a,
            &[
                (v.b, Err("garbage"), Looked::Unsettled("garbage")),
                (v.b, Err("garbage"), Looked::Failed("garbage")),
                (v.b, Err("garbage"), Looked::Unchanged),
                (v.b, Err("garbage"), Looked::Unchanged),
                // Fixed: the next change loads.
                (v.a, Ok(1), Looked::Replaced(1)),
            ],
        );
    }

    #[test]
    fn a_half_written_file_read_again_unchanged_may_load_then() {
        let v = versions();
        looks(
            v.a,
            &[
                (v.b, Err("truncated"), Looked::Unsettled("truncated")),
                (v.b, Ok(1), Looked::Replaced(1)),
            ],
        );
    }

    #[test]
    fn a_deleted_file_is_a_change_that_fails() {
        let v = versions();
        looks(
            v.a,
            &[
                (v.missing, Err("gone"), Looked::Unsettled("gone")),
                (v.missing, Err("gone"), Looked::Failed("gone")),
                (v.missing, Err("gone"), Looked::Unchanged),
            ],
        );
    }

    /// A certificate and its key in `dir` as `name.pem` and `name.key`, for `names`, valid
    /// from the first day of `years.0` to that of `years.1`.
    fn issue(
        dir: &Path,
        name: &str,
        names: &[&str],
        years: (i32, i32),
    ) -> rustls::pki_types::CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        write(&dir.join(format!("{name}.pem")), cert.pem());
        write(&dir.join(format!("{name}.key")), key.serialize_pem());
        cert.der().clone()
    }

    /// A listener serving `site.pem` (with `site.key`) from `dir`, watched.
    fn watched(dir: &Path, listener: &str) -> (Watched, Arc<LiveStore>) {
        let (cert, key) = (dir.join("site.pem"), dir.join("site.key"));
        let loaded = Certificate::load(&cert, &key).unwrap();
        let tls = ListenerTls {
            certificates: vec![TlsCertificate::new(
                format!("{listener}.pem"),
                cert,
                key,
                None,
                loaded,
            )],
            default: TlsDefault::Reject,
            min_version: TlsVersion::Tls12,
            alpn: vec![Alpn::H2],
            reload_interval: Duration::from_secs(5),
        };
        let store = Arc::new(LiveStore::new(CertificateStore::new(&tls)));
        (
            Watched::new(Arc::from(listener), &tls, store.clone()),
            store,
        )
    }

    fn served(store: &LiveStore, sni: &str) -> Option<rustls::pki_types::CertificateDer<'static>> {
        store.find(Some(sni)).map(|key| key.cert[0].clone())
    }

    fn reloads(listener: &str, result: &str) -> u64 {
        metrics::global()
            .tls_certificate_reloads
            .with_label_values(&[listener, &format!("{listener}.pem"), result])
            .get()
    }

    /// Puts `contents` at `path` as tools that write atomically do: a new file renamed over
    /// the old one.
    fn replace(path: &Path, contents: impl AsRef<[u8]>) {
        let new = path.with_extension("new");
        write(&new, contents);
        std::fs::rename(new, path).unwrap();
    }

    #[test]
    fn a_rotated_pair_serves_its_own_names_and_a_broken_one_leaves_it_serving() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| dir.path().join(name);
        let pem = |name: &str| std::fs::read(file(name)).unwrap();
        let listener = "unit-test-rotation";
        let first = issue(dir.path(), "site", &["old.test"], (2020, 2099));
        let (mut watched, store) = watched(dir.path(), listener);
        watched.look();
        assert_eq!(served(&store, "old.test"), Some(first));
        assert_eq!(reloads(listener, "ok"), 0);

        // The names follow the new certificate's SANs, the expiry gauge its notAfter.
        let second = issue(dir.path(), "next", &["new.test"], (2020, 2098));
        replace(&file("site.key"), pem("next.key"));
        replace(&file("site.pem"), pem("next.pem"));
        watched.look();
        assert_eq!(served(&store, "new.test"), Some(second.clone()));
        assert_eq!(served(&store, "old.test"), None);
        assert_eq!(reloads(listener, "ok"), 1);
        let expiry = metrics::global()
            .tls_certificate_expiry
            .with_label_values(&[&format!("{listener}.pem")])
            .get();
        assert_eq!(expiry, 4_070_908_800 - 365 * 86_400);

        // Broken in turn, each reported once it stayed so, and only then.
        issue(dir.path(), "other", &["new.test"], (2020, 2099));
        issue(dir.path(), "expired", &["new.test"], (2000, 2001));
        issue(dir.path(), "early", &["new.test"], (2090, 2099));
        type Breakage<'a> = (Box<dyn Fn() + 'a>, fn(&ReloadError) -> bool);
        let breakages: [Breakage; 5] = [
            (Box::new(|| replace(&file("site.pem"), "garbage\n")), |e| {
                matches!(e, ReloadError::Load(CertificateError::NoCertificate { .. }))
            }),
            (
                Box::new(|| replace(&file("site.pem"), pem("other.pem"))),
                |e| matches!(e, ReloadError::Load(CertificateError::KeyMismatch { .. })),
            ),
            (
                Box::new(|| {
                    replace(&file("site.pem"), pem("expired.pem"));
                    replace(&file("site.key"), pem("expired.key"));
                }),
                |e| matches!(e, ReloadError::Expired { .. }),
            ),
            (
                Box::new(|| {
                    replace(&file("site.pem"), pem("early.pem"));
                    replace(&file("site.key"), pem("early.key"));
                }),
                |e| matches!(e, ReloadError::NotYetValid { .. }),
            ),
            (
                Box::new(|| std::fs::remove_file(file("site.pem")).unwrap()),
                |e| matches!(e, ReloadError::Load(CertificateError::Read { .. })),
            ),
        ];
        for (errors, (breakage, why)) in (1..).zip(&breakages) {
            breakage();
            let e = replacement(&watched.tls.certificates[0]).unwrap_err();
            assert!(why(&e), "{e:?}");
            watched.look();
            assert_eq!(
                reloads(listener, "error"),
                errors - 1,
                "{e}: reported at once"
            );
            for _ in 0..3 {
                watched.look();
            }
            assert_eq!(served(&store, "new.test"), Some(second.clone()), "{e}");
            assert_eq!(reloads(listener, "error"), errors, "{e}");
        }
        assert_eq!(reloads(listener, "ok"), 1);
        assert_eq!(
            metrics::global()
                .tls_certificate_expiry
                .with_label_values(&[&format!("{listener}.pem")])
                .get(),
            expiry
        );
    }
}
