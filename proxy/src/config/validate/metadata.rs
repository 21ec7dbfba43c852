//! Validation of `node` and of routes' and upstreams' `metadata`: what filters read as the
//! `node`, `route_metadata` and `cluster_metadata` properties; and of the properties filters
//! set that the access log shows.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::super::model::{Metadata, Node};
use super::super::raw::{Named, RawMetadata, RawNode};
use super::super::yaml::Located;
use super::Validator;

/// The most entries (keys, over all namespaces) one `metadata` or the node's may hold: it is
/// copied into every filter that asks, and a file should not make that unbounded.
const MAX_ENTRIES: usize = 256;

/// The most properties an access-log line may show.
const MAX_LOGGED_PROPERTIES: usize = 32;

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

    /// `access_log_properties`: property paths as filters set them (`ab-test.bucket`), each
    /// at most once.
    pub(super) fn access_log_properties(
        &mut self,
        raw: Option<&Located<Vec<Located<String>>>>,
    ) -> Arc<[String]> {
        let Some(raw) = raw else {
            return Arc::from([]);
        };
        if raw.value.len() > MAX_LOGGED_PROPERTIES {
            self.error(
                raw.mark,
                format!("`access_log_properties`: at most {MAX_LOGGED_PROPERTIES} properties"),
            );
        }
        let mut names: Vec<String> = Vec::new();
        for name in &raw.value {
            let well_formed = name.value.split('.').all(|segment| {
                !segment.is_empty() && segment.chars().all(|c| c.is_ascii_graphic())
            });
            if !well_formed {
                self.error(
                    name.mark,
                    format!(
                        "`access_log_properties`: `{}` is not a property path (segments of visible ASCII joined by `.`)",
                        name.value
                    ),
                );
            } else if names.contains(&name.value) {
                self.error(
                    name.mark,
                    format!("`access_log_properties`: `{}` is listed twice", name.value),
                );
            } else {
                names.push(name.value.clone());
            }
        }
        Arc::from(names)
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
