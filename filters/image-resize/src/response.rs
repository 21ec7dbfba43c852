//! What the filter does with a response head, decided before its body arrives (the head
//! leaves first). SDK-free, tested natively.

use crate::config::Config;
use crate::params::{output_format, Format, FormatChoice, SourceType, Transform};

/// The parts of a response head the decision reads (`None`: absent or not UTF-8).
#[derive(Clone, Copy, Debug, Default)]
pub struct Head<'a> {
    pub status: u16,
    pub content_type: Option<&'a str>,
    pub content_length: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
}

/// What to do with a response to a transformation request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Leave the response as it is, for this reason (logged at debug level).
    Untouched(&'static str),
    /// A `304`: its validators describe the variant the client or the cache holds, so the
    /// head gets the variant's `Content-Type` (when it names an image of ours) and a weak
    /// `ETag`, and no body change.
    Revalidated(Option<Format>),
    /// Buffer the body and transform it into `format`.
    Transform(Format),
}

/// Decides from the head: a `200` with an image `Content-Type`, no content coding and a
/// `Content-Length` of at most `max_source_bytes` is transformed. Without a length the size
/// cannot be checked before the head leaves, so such a body passes through.
pub fn decide(
    config: &Config,
    transform: &Transform,
    accept: Option<&str>,
    head: Head,
) -> Decision {
    let source = head.content_type.and_then(SourceType::from_content_type);
    let output = |source| output_format(transform.format, source, accept);
    if head.status == 304 {
        return Decision::Revalidated(source.map(output));
    }
    if head.status != 200 {
        return Decision::Untouched("not a 200 response");
    }
    let Some(source) = source else {
        return Decision::Untouched("not a JPEG, PNG, WebP or GIF content type");
    };
    if head
        .content_encoding
        .is_some_and(|coding| !coding.trim().eq_ignore_ascii_case("identity"))
    {
        return Decision::Untouched("the body has a content coding");
    }
    match head.content_length.map(|l| l.trim().parse::<u64>()) {
        None | Some(Err(_)) => Decision::Untouched("no content-length"),
        Some(Ok(length)) if length > config.max_source_bytes => {
            Decision::Untouched("the source is larger than max_source_bytes")
        }
        Some(Ok(_)) => Decision::Transform(output(source)),
    }
}

/// The `ETag` a variant carries: the source's, made weak (`"x"` → `W/"x"`). A transformed
/// image is not byte-for-byte the source, so it must not keep a strong tag; a weak one still
/// lets the origin answer the cache's and clients' revalidations (`If-None-Match` compares
/// weakly) with a `304`, as the variant changes exactly when its source does. `None`: leave
/// the header (absent, already weak, or not a tag).
pub fn weak_etag(etag: Option<&str>) -> Option<String> {
    let etag = etag?.trim();
    (etag.starts_with('"') && etag.ends_with('"') && etag.len() >= 2).then(|| format!("W/{etag}"))
}

/// Whether a `Vary` value still needs `Accept` (for `fmt=auto`, whose output depends on it).
pub fn needs_vary_accept(choice: FormatChoice, vary: Option<&str>) -> bool {
    choice == FormatChoice::Auto
        && !vary.is_some_and(|vary| {
            vary.split(',')
                .any(|name| name.trim().eq_ignore_ascii_case("accept"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::Fit;

    fn config() -> Config {
        Config::parse(Some(br#"{"max_source_bytes": 1000}"#)).unwrap()
    }

    fn jpeg_head(length: &str) -> Head<'_> {
        Head {
            status: 200,
            content_type: Some("image/jpeg"),
            content_length: Some(length),
            content_encoding: None,
        }
    }

    fn to(format: FormatChoice) -> Transform {
        Transform {
            width: Some(100),
            height: None,
            fit: Fit::Contain,
            format,
            quality: None,
        }
    }

    #[test]
    fn images_within_the_size_are_transformed() {
        let webp = to(FormatChoice::Exactly(Format::WebP));
        assert_eq!(
            decide(&config(), &webp, None, jpeg_head("1000")),
            Decision::Transform(Format::WebP)
        );
        let same = to(FormatChoice::Same);
        let gif = Head {
            content_type: Some("image/gif"),
            ..jpeg_head("10")
        };
        assert_eq!(
            decide(&config(), &same, None, gif),
            Decision::Transform(Format::Png)
        );
        let identity = Head {
            content_encoding: Some("identity"),
            ..jpeg_head("10")
        };
        assert_eq!(
            decide(&config(), &same, None, identity),
            Decision::Transform(Format::Jpeg)
        );
    }

    #[test]
    fn everything_else_passes_untouched() {
        let t = to(FormatChoice::Same);
        let cases = [
            (jpeg_head("1001"), "larger than max_source_bytes"),
            (jpeg_head("ten"), "no content-length"),
            (
                Head {
                    content_length: None,
                    ..jpeg_head("")
                },
                "no content-length",
            ),
            (
                Head {
                    status: 404,
                    ..jpeg_head("10")
                },
                "not a 200",
            ),
            (
                Head {
                    status: 206,
                    ..jpeg_head("10")
                },
                "not a 200",
            ),
            (
                Head {
                    content_type: Some("image/svg+xml"),
                    ..jpeg_head("10")
                },
                "content type",
            ),
            (
                Head {
                    content_type: None,
                    ..jpeg_head("10")
                },
                "content type",
            ),
            (
                Head {
                    content_encoding: Some("gzip"),
                    ..jpeg_head("10")
                },
                "content coding",
            ),
        ];
        for (head, reason) in cases {
            match decide(&config(), &t, None, head) {
                Decision::Untouched(why) => assert!(why.contains(reason), "{head:?}: {why}"),
                other => panic!("{head:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_304_gets_the_variants_content_type() {
        let auto = to(FormatChoice::Auto);
        let png = Head {
            status: 304,
            content_type: Some("image/png"),
            ..Head::default()
        };
        assert_eq!(
            decide(&config(), &auto, Some("image/webp"), png),
            Decision::Revalidated(Some(Format::WebP))
        );
        let bare = Head {
            status: 304,
            ..Head::default()
        };
        assert_eq!(
            decide(&config(), &auto, None, bare),
            Decision::Revalidated(None)
        );
    }

    #[test]
    fn etags_are_made_weak() {
        assert_eq!(weak_etag(Some("\"abc\"")).as_deref(), Some("W/\"abc\""));
        assert_eq!(weak_etag(Some(" \"\" ")).as_deref(), Some("W/\"\""));
        for left in [None, Some("W/\"abc\""), Some("abc"), Some("\"")] {
            assert_eq!(weak_etag(left), None, "{left:?}");
        }
    }

    #[test]
    fn vary_accept_is_added_once_for_auto() {
        assert!(needs_vary_accept(FormatChoice::Auto, None));
        assert!(needs_vary_accept(
            FormatChoice::Auto,
            Some("Accept-Encoding")
        ));
        assert!(!needs_vary_accept(
            FormatChoice::Auto,
            Some("origin, ACCEPT")
        ));
        assert!(!needs_vary_accept(FormatChoice::Same, None));
        assert!(!needs_vary_accept(FormatChoice::Exactly(Format::Png), None));
    }
}
