//! Where answers and notices meant for one instance go. Callouts and queue notices finish on a
//! background service, long after the hostcall that asked for them returned; they find their
//! instance through the cell it was placed in, as a [`Mailbox`], which keeps this file (and the
//! services that use it) below the instance in the layering.

use std::sync::{Arc, OnceLock, Weak};

/// What a placed instance accepts from the background services.
pub(crate) trait Mailbox: Send + Sync {
    /// A callout that `context_id` made got its answer.
    fn deliver_callout(&self, context_id: u32, token: u32, answer: CalloutAnswer);
    /// Queue `queue_id`, registered by root context `root_id`, has new items.
    fn queue_ready(&self, root_id: u32, queue_id: u32);
}

/// The slot an instance is placed in once started; filled exactly once. Weak, so that a
/// callout in flight does not keep a discarded instance alive.
pub(super) type InstanceCell = Arc<OnceLock<Weak<dyn Mailbox>>>;

/// What a callout got: the response, or why there is none (the guest then sees 0 headers
/// and an empty body).
#[derive(Debug, Clone, Default)]
pub(crate) struct CalloutAnswer {
    /// Pseudo-header `:status` first.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(Vec<u8>, Vec<u8>)>,
    pub failure: Option<String>,
}
