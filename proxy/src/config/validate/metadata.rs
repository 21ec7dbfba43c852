//! Validation of `node` and of routes' and upstreams' `metadata`: what filters read as the
//! `node`, `route_metadata` and `cluster_metadata` properties.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::super::model::{Metadata, Node};
use super::super::raw::{Named, RawMetadata, RawNode};
use super::super::yaml::Located;
use super::Validator;

/// The most entries (keys, over all namespaces) one `metadata` or the node's may hold: it is
/// copied into every filter that asks, and a file should not make that unbounded.
const MAX_ENTRIES: usize = 256;

impl Validator<'_> {
    pub(super) fn node(&mut self, raw: Option<&Located<RawNode>>) -> Node {
        let Some(raw) = raw else {
            return Node::default();
        };
        let text = |value: &Option<Located<String>>| {
            value.as_ref().map(|v| v.value.clone()).unwrap_or_default()
        };
        Node {
            id: text(&raw.id),
            cluster: text(&raw.cluster),
            metadata: self.entries(&raw.metadata, "node metadata"),
        }
    }

    /// A route's or upstream's `metadata`; `owner` names it in messages.
    pub(super) fn metadata(
        &mut self,
        raw: Option<&Located<RawMetadata>>,
        owner: &str,
    ) -> Arc<Metadata> {
        let Some(raw) = raw else {
            return Arc::default();
        };
        let mut metadata = Metadata::new();
        let mut entries = 0;
        for (namespace, values) in &raw.0 {
            if namespace.trim().is_empty() {
                self.error(
                    namespace.mark,
                    format!("{owner}: a metadata namespace is empty"),
                );
            }
            entries += values.0.len();
            let what = format!("{owner} metadata `{}`", namespace.value);
            metadata.insert(namespace.value.clone(), self.entries(values, &what));
        }
        if entries > MAX_ENTRIES {
            self.error(
                raw.mark,
                format!("{owner}: metadata holds {entries} entries; at most {MAX_ENTRIES}"),
            );
        }
        Arc::new(metadata)
    }

    fn entries(&mut self, raw: &Named<Located<String>>, what: &str) -> BTreeMap<String, String> {
        if raw.0.len() > MAX_ENTRIES {
            if let Some((first, _)) = raw.0.first() {
                self.error(
                    first.mark,
                    format!(
                        "{what} holds {} entries; at most {MAX_ENTRIES}",
                        raw.0.len()
                    ),
                );
            }
        }
        let mut entries = BTreeMap::new();
        for (key, value) in &raw.0 {
            if key.trim().is_empty() {
                self.error(key.mark, format!("{what}: a key is empty"));
            }
            entries.insert(key.value.clone(), value.value.clone());
        }
        entries
    }
}
