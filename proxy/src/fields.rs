//! Removing response fields by name, cheaply when they are absent (the common case).

use pingora::http::ResponseHeader;

/// Removes the fields named in `names` (lowercase) from `head`. Removing a field by name
/// parses and hashes the name in both of Pingora's header maps, present or not, so the
/// fields are looked for in one pass first and only those present are removed.
pub(crate) fn remove_fields<const N: usize>(head: &mut ResponseHeader, names: &[&str; N]) {
    // One bit per name in `present`: a longer list would not compile rather than misbehave.
    const { assert!(N <= 64) };
    let mut present = 0u64;
    for field in head.headers.keys() {
        if let Some(i) = names.iter().position(|name| *name == field.as_str()) {
            present |= 1 << i;
        }
    }
    for (i, name) in names.iter().enumerate() {
        if present & (1 << i) != 0 {
            head.remove_header(*name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_the_named_fields_present_and_keeps_the_rest() {
        let mut head = ResponseHeader::build(200, None).unwrap();
        head.append_header("Connection", "close").unwrap();
        head.append_header("X-Kept", "1").unwrap();
        head.append_header("Surrogate-Key", "a").unwrap();
        head.append_header("surrogate-key", "b").unwrap();
        remove_fields(&mut head, &["connection", "upgrade", "surrogate-key"]);
        let left: Vec<_> = head.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
        // The map keeping the names' case agrees: the head still writes.
        let mut wire = Vec::new();
        head.header_to_h1_wire(&mut wire);
        assert_eq!(wire, b"X-Kept: 1\r\n");
    }
}
