//! A cached response's meta as the store keeps it: serialized for the disk tier, and parsed
//! for hits.

use std::sync::Arc;
use std::time::SystemTime;

use pingora::cache::key::HashBinary;
use pingora::cache::CacheMeta;
use pingora::http::ResponseHeader;
use pingora::Result;

/// A stored `CacheMeta`. It is not `Clone`, so each hit builds its own copy. Parsing the
/// stored response head again (decompressing and building both header maps) costs more than
/// the rest of a small hit's cache work, so the head is also kept parsed; and since even the
/// small internal part (msgpack, plus a stand-in head) is dear to deserialize on every hit,
/// an object never revalidated is rebuilt from its fields instead (docs/benchmarks.md).
#[derive(Clone)]
pub(super) struct SerializedMeta {
    internal: Arc<[u8]>,
    header: Arc<[u8]>,
    head: Arc<ResponseHeader>,
    /// `None` once revalidated: `CacheMeta::new` cannot set `updated` apart from `created`.
    fields: Option<MetaFields>,
}

/// What `CacheMeta::new` and its setters need to rebuild a meta whose `updated` and
/// provenance are its `created` time.
#[derive(Clone, Copy)]
struct MetaFields {
    fresh_until: SystemTime,
    created: SystemTime,
    stale_while_revalidate_sec: u32,
    stale_if_error_sec: u32,
    variance: Option<HashBinary>,
    epoch_override: Option<SystemTime>,
}

impl MetaFields {
    pub(crate) fn of(meta: &CacheMeta) -> Option<Self> {
        let created = meta.created();
        (meta.updated() == created && meta.provenance() == created).then(|| MetaFields {
            fresh_until: meta.fresh_until(),
            created,
            stale_while_revalidate_sec: meta.stale_while_revalidate_sec(),
            stale_if_error_sec: meta.stale_if_error_sec(),
            variance: meta.variance(),
            epoch_override: meta.epoch_override(),
        })
    }

    fn rebuild(&self, head: ResponseHeader) -> CacheMeta {
        let mut meta = CacheMeta::new(
            self.fresh_until,
            self.created,
            self.stale_while_revalidate_sec,
            self.stale_if_error_sec,
            head,
        );
        if let Some(variance) = self.variance {
            meta.set_variance(variance);
        }
        if let Some(epoch) = self.epoch_override {
            meta.set_epoch_override(epoch);
        }
        meta
    }
}

impl SerializedMeta {
    pub(super) fn of(meta: &CacheMeta) -> Result<Self> {
        let (internal, header) = meta.serialize()?;
        Ok(Self::with_parsed(internal, header, meta))
    }

    /// From the disk tier's bytes, which must deserialize.
    pub(super) fn from_stored(internal: Vec<u8>, header: Vec<u8>) -> Result<Self> {
        let meta = CacheMeta::deserialize(&internal, &header)?;
        Ok(Self::with_parsed(internal, header, &meta))
    }

    fn with_parsed(internal: Vec<u8>, header: Vec<u8>, meta: &CacheMeta) -> Self {
        SerializedMeta {
            internal: internal.into(),
            header: header.into(),
            head: Arc::new(meta.response_header_copy()),
            fields: MetaFields::of(meta),
        }
    }

    pub(super) fn meta(&self) -> Result<CacheMeta> {
        let head = ResponseHeader::clone(&self.head);
        if let Some(fields) = &self.fields {
            return Ok(fields.rebuild(head));
        }
        let mut meta = CacheMeta::deserialize(&self.internal, stand_in_head()?)?;
        *meta.response_header_mut() = head;
        Ok(meta)
    }

    /// The serialized internal part, as the disk tier stores it.
    pub(super) fn internal(&self) -> &[u8] {
        &self.internal
    }

    /// The serialized response head, as the disk tier stores it.
    pub(super) fn header(&self) -> &[u8] {
        &self.header
    }

    /// Bytes held: the serialized parts and the parsed head (each field counted twice, for
    /// the map that keeps the names' case beside the value map, plus map overhead).
    pub(super) fn len(&self) -> u64 {
        let fields: usize = self
            .head
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 64)
            .sum();
        (self.internal.len() + self.header.len() + 2 * fields) as u64
    }

    #[cfg(test)]
    pub(crate) fn empty() -> Self {
        SerializedMeta {
            internal: Arc::from(&[][..]),
            header: Arc::from(&[][..]),
            head: Arc::new(ResponseHeader::build(200, None).expect("a 200 head")),
            fields: None,
        }
    }
}

/// The serialized head of a bare `200`, the cheapest to deserialize.
fn stand_in_head() -> Result<&'static [u8]> {
    static HEAD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    if let Some(head) = HEAD.get() {
        return Ok(head);
    }
    let bare = ResponseHeader::build(200, None)?;
    let (_, head) =
        CacheMeta::new(SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH, 0, 0, bare).serialize()?;
    Ok(HEAD.get_or_init(|| head))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stored_at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn response_meta() -> CacheMeta {
        let mut head = ResponseHeader::build(200, None).unwrap();
        head.insert_header("Content-Type", "text/plain").unwrap();
        head.insert_header("X-Mixed-Case", "kept").unwrap();
        let created = stored_at();
        CacheMeta::new(created + Duration::from_secs(60), created, 30, 600, head)
    }

    #[test]
    fn a_meta_never_revalidated_is_rebuilt_exactly() {
        let mut meta = response_meta();
        meta.set_variance([7; 16]);
        meta.set_epoch_override(stored_at() + Duration::from_secs(5));
        let stored = SerializedMeta::of(&meta).unwrap();
        assert!(stored.fields.is_some());
        let hit = stored.meta().unwrap();
        assert_eq!(hit.serialize().unwrap(), meta.serialize().unwrap());
    }

    #[test]
    fn a_revalidated_meta_is_deserialized_with_its_update_time() {
        let mut meta = response_meta();
        meta.update_freshness(stored_at() + Duration::from_secs(3600), 0, 0);
        let stored = SerializedMeta::of(&meta).unwrap();
        assert!(stored.fields.is_none());
        let hit = stored.meta().unwrap();
        assert_eq!(hit.updated(), meta.updated());
        assert_eq!(hit.serialize().unwrap(), meta.serialize().unwrap());
    }
}
