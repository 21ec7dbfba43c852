//! TLS for clients on listeners: certificates chosen by SNI, ALPN (h2, http/1.1), session
//! resumption, and the handshake that `connections` performs before Pingora sees a TLS
//! listener's connection. The stack is rustls with the *ring* provider; docs/architecture.md
//! says why.
//!
//! - `certificate`: PEM files read and checked (also by `config` validation)
//! - `store`: a listener's certificates by SNI (rustls's `ResolvesServerCert`)
//! - `handshake`: a listener's rustls configuration, the first-byte check, the counting
//! - `stream`: the TLS connection as Pingora's IO traits
//! - `rotation`: certificate files watched, and a replacement swapped in without a restart

pub(crate) mod certificate;
mod handshake;
mod rotation;
mod store;
mod stream;

pub(crate) use handshake::Acceptor;
pub(crate) use handshake::TlsError;
pub(crate) use rotation::{LookNow, Rotation};
pub(crate) use stream::requested_server_name;
