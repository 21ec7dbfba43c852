//! The Pingora `ProxyHttp` implementation: `phases` conducts, the other files hold what each
//! phase needs (see docs/architecture.md).

pub(crate) mod answers;
mod caching;
mod context;
mod failures;
mod filtering;
mod forwarding;
mod logging;
mod phases;
mod purge;

pub(crate) use phases::Edge;
