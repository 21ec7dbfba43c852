//! The `image-resize` filter through the real proxy: images from an origin resized and
//! converted by query and by path prefix, `fmt=auto` negotiated from `Accept`, sources the
//! filter must leave alone, hostile images (truncated, a decompression bomb, an absurd
//! declared size) under both failure policies with the proxy serving on, variants cached
//! separately, and refused configurations.
//!
//! The images are `filters/image-resize/tests/fixtures/` (written by that crate's
//! `write_fixtures`); what comes back is checked by its format and dimensions, read from the
//! bytes here (no image crate in this workspace).

use bytes::Bytes;
use edgeward_testkit::{client, filters, reqwest, serve_http, PathHits, Proxy};
use http_body_util::Full;
use hyper::Response;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::support::{
    config, metrics_showing, refused_by_validate, start_proxy, use_built_binary, wait_for_log,
};

macro_rules! fixture {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../filters/image-resize/tests/fixtures/",
                $name
            ))
            .as_slice(),
        )
    };
}

/// 640x480 JPEG, 300x200 PNG with transparency, a 120x80 two-frame GIF, the JPEG cut off,
/// an 8000x8000 one-bit PNG (64 megapixels in 22 KiB) and a PNG declaring 100000x100000.
const FIXTURES: &[(&str, &[u8])] = &[
    fixture!("photo.jpg"),
    fixture!("logo.png"),
    fixture!("two-frames.gif"),
    fixture!("truncated.jpg"),
    fixture!("bomb.png"),
    fixture!("huge-dimensions.png"),
];

fn fixture(name: &str) -> &'static [u8] {
    FIXTURES
        .iter()
        .find(|(fixture, _)| *fixture == name)
        .map(|(_, bytes)| *bytes)
        .unwrap_or_else(|| panic!("no fixture {name}"))
}

/// An origin serving the fixtures at `/<name>` with their content type, a length, a strong
/// `ETag` and a minute of freshness, and `206` for a `Range: bytes=A-B`; it counts requests
/// per path.
struct ImageOrigin {
    addr: String,
    hits: PathHits,
    server: JoinHandle<()>,
}

impl ImageOrigin {
    async fn start() -> ImageOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hits = PathHits::default();
        let server = serve_http(listener, {
            let hits = hits.clone();
            move |request: hyper::Request<_>| {
                let path = request.uri().path().to_owned();
                hits.count(&path);
                async move {
                    let name = path.trim_start_matches('/');
                    let Some((_, bytes)) = FIXTURES.iter().find(|(fixture, _)| *fixture == name)
                    else {
                        return Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                    };
                    let content_type = match name.rsplit('.').next() {
                        Some("jpg") => "image/jpeg",
                        Some("gif") => "image/gif",
                        _ => "image/png",
                    };
                    let range = request
                        .headers()
                        .get("range")
                        .and_then(|v| v.to_str().ok()?.strip_prefix("bytes=")?.split_once('-'))
                        .and_then(|(first, last)| Some((first.parse().ok()?, last.parse().ok()?)));
                    let response = Response::builder()
                        .header("content-type", content_type)
                        .header("etag", format!("\"{name}-v1\""))
                        .header("cache-control", "max-age=60")
                        .header("accept-ranges", "bytes");
                    match range {
                        Some((first, last)) if first <= last && last < bytes.len() => response
                            .status(206)
                            .header(
                                "content-range",
                                format!("bytes {first}-{last}/{}", bytes.len()),
                            )
                            .body(Full::new(Bytes::from_static(&bytes[first..=last]))),
                        _ => response.body(Full::new(Bytes::from_static(bytes))),
                    }
                    .unwrap()
                }
            }
        });
        ImageOrigin { addr, hits, server }
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.of(path)
    }

    /// A proxy with one `image-resize` filter called `images` (its `config` as JSON, the
    /// limits stated explicitly, and `filter` adding keys to its entry), on a route to this
    /// origin (`route` adding keys to it).
    async fn proxy(&self, filter_config: &str, filter: &str, route: &str) -> Proxy {
        start_proxy(&config(
            r#"
listeners: [{address: "{{listen}}"}]
admin: {address: "{{admin}}"}
upstreams:
  images: {endpoints: ["$origin"]}
filters:
  images:
    module: $module
    limits: {memory: 128MiB, cpu: 2s, body: 8MiB}
    config: $config$filter
routes:
  - {match: {path_prefix: /}, upstream: images, filters: [images]$route}
"#,
            &[
                ("origin", self.addr.clone()),
                ("module", filters::IMAGE_RESIZE.to_owned()),
                ("config", filter_config.to_owned()),
                ("filter", filter.to_owned()),
                ("route", route.to_owned()),
            ],
        ))
        .await
    }
}

impl Drop for ImageOrigin {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A response, whole.
struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Bytes,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The image's format and dimensions, read from its bytes.
    fn image(&self) -> (&'static str, u32, u32) {
        image_size(&self.body).unwrap_or_else(|| {
            panic!(
                "not an image: {} {:?} {:?}",
                self.status,
                self.headers,
                &self.body[..self.body.len().min(64)]
            )
        })
    }
}

async fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut request = client::http1().get(proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    Got {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await.unwrap(),
    }
}

/// (format, width, height) of a PNG, lossless WebP or JPEG.
fn image_size(bytes: &[u8]) -> Option<(&'static str, u32, u32)> {
    let be32 = |at: usize| Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Some(("png", be32(16)?, be32(20)?));
    }
    if bytes.starts_with(b"RIFF") && bytes.get(8..16)? == b"WEBPVP8L" {
        // The VP8L header: a signature byte, then 14 bits of width - 1 and of height - 1.
        let bits = u32::from_le_bytes(bytes.get(21..25)?.try_into().ok()?);
        return Some(("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1));
    }
    if bytes.starts_with(&[0xFF, 0xD8]) {
        // Walk the segments to the frame header (SOFn).
        let mut at = 2;
        while let Some(&[0xFF, marker, high, low]) = bytes.get(at..at + 4) {
            if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
                let be16 = |at: usize| {
                    Some(u32::from(u16::from_be_bytes(
                        bytes.get(at..at + 2)?.try_into().ok()?,
                    )))
                };
                return Some(("jpeg", be16(at + 7)?, be16(at + 5)?));
            }
            at += 2 + usize::from(u16::from_be_bytes([high, low]));
        }
    }
    None
}

#[tokio::test]
async fn images_are_resized_and_converted_by_query_and_by_path() {
    let origin = ImageOrigin::start().await;
    let proxy = origin.proxy(r#"{"path_prefix": "/img/"}"#, "", "").await;

    let webp = get(&proxy, "/photo.jpg?w=320&fmt=webp", &[]).await;
    assert_eq!(webp.status, 200);
    assert_eq!(webp.image(), ("webp", 320, 240));
    assert_eq!(webp.header("content-type"), Some("image/webp"));
    assert_eq!(
        webp.header("content-length"),
        None,
        "chunked: the length changed"
    );
    assert_eq!(webp.header("etag"), Some("W/\"photo.jpg-v1\""), "made weak");
    assert_eq!(webp.header("vary"), None, "only fmt=auto varies");

    let jpeg = get(&proxy, "/photo.jpg?w=320&fmt=jpeg&q=60", &[]).await;
    assert_eq!(jpeg.image(), ("jpeg", 320, 240));
    assert_eq!(jpeg.header("content-type"), Some("image/jpeg"));
    assert!(
        jpeg.body.len() < fixture("photo.jpg").len() / 4,
        "{}",
        jpeg.body.len()
    );

    // Both sides: contain fits inside, cover fills and crops.
    let contain = get(&proxy, "/logo.png?w=150&h=150", &[]).await;
    assert_eq!(contain.image(), ("png", 150, 100));
    let cover = get(&proxy, "/logo.png?w=150&h=150&fit=cover", &[]).await;
    assert_eq!(cover.image(), ("png", 150, 150));
    assert_eq!(cover.header("content-type"), Some("image/png"));

    // A GIF's first frame, as PNG (the filter encodes no GIF).
    let gif = get(&proxy, "/two-frames.gif?w=60", &[]).await;
    assert_eq!(gif.image(), ("png", 60, 40));
    assert_eq!(gif.header("content-type"), Some("image/png"));

    // A range of the variant cannot be cut from the source: the variant comes whole.
    let ranged = get(
        &proxy,
        "/photo.jpg?w=100&fmt=webp",
        &[("range", "bytes=0-99")],
    )
    .await;
    assert_eq!(ranged.status, 200);
    assert_eq!(ranged.image(), ("webp", 100, 75));
    assert_eq!(ranged.header("accept-ranges"), None);

    // Never enlarged.
    let small = get(&proxy, "/logo.png?w=1000&fmt=webp", &[]).await;
    assert_eq!(small.image(), ("webp", 300, 200));

    // The options in the path; the origin is asked for the image's own path.
    let by_path = get(&proxy, "/img/w=100,fmt=png/photo.jpg", &[]).await;
    assert_eq!(by_path.image(), ("png", 100, 75));
    assert_eq!(origin.hits("/photo.jpg"), 4);
    assert_eq!(origin.hits("/img/w=100,fmt=png/photo.jpg"), 0);

    // Without a transformation, or asking for more than max_width: the original, untouched.
    for path in ["/photo.jpg", "/photo.jpg?v=2", "/photo.jpg?w=5000"] {
        let original = get(&proxy, path, &[]).await;
        assert_eq!(original.body, fixture("photo.jpg"), "{path}");
        assert_eq!(original.header("etag"), Some("\"photo.jpg-v1\""), "{path}");
        assert_eq!(
            original.header("content-type"),
            Some("image/jpeg"),
            "{path}"
        );
    }

    // A bad value is the client's mistake.
    for path in [
        "/photo.jpg?w=abc",
        "/photo.jpg?fmt=gif",
        "/img/w=10,zoom=2/photo.jpg",
    ] {
        let bad = get(&proxy, path, &[]).await;
        assert_eq!(bad.status, 400, "{path}");
        let body: serde_json::Value = serde_json::from_slice(&bad.body).unwrap();
        assert_eq!(body["error"], "invalid_image_parameters", "{path}");
    }
}

#[tokio::test]
async fn fmt_auto_negotiates_from_accept_and_varies_on_it() {
    let origin = ImageOrigin::start().await;
    let proxy = origin.proxy("{}", "", "").await;
    let chrome = "image/avif,image/webp,image/apng,image/*,*/*;q=0.8";

    let webp = get(&proxy, "/logo.png?w=100&fmt=auto", &[("accept", chrome)]).await;
    assert_eq!(webp.image(), ("webp", 100, 67));
    assert_eq!(webp.header("vary"), Some("Accept"));

    let png = get(
        &proxy,
        "/logo.png?w=100&fmt=auto",
        &[("accept", "image/png,*/*")],
    )
    .await;
    assert_eq!(png.image(), ("png", 100, 67));
    assert_eq!(png.header("vary"), Some("Accept"));

    // WebP here is lossless: a JPEG photo stays JPEG.
    let jpeg = get(&proxy, "/photo.jpg?w=100&fmt=auto", &[("accept", chrome)]).await;
    assert_eq!(jpeg.image(), ("jpeg", 100, 75));
}

#[tokio::test]
async fn hostile_images_pass_through_and_the_proxy_serves_on() {
    let origin = ImageOrigin::start().await;
    let proxy = origin
        .proxy(r#"{"on_failure": "pass_through"}"#, "", "")
        .await;
    for (name, why) in [
        ("truncated.jpg", "truncated"),
        ("bomb.png", "above max_source_pixels"),
        ("huge-dimensions.png", "limit"),
    ] {
        let got = get(&proxy, &format!("/{name}?w=100&fmt=jpeg"), &[]).await;
        assert_eq!(got.status, 200, "{name}");
        assert_eq!(got.body, fixture(name), "{name}: the original bytes");
        let line = wait_for_log(&proxy, &format!("/{name}?w=100&fmt=jpeg: cannot transform")).await;
        assert!(
            line.contains(why) && line.contains("passing the original"),
            "{line}"
        );
    }
    let fine = get(&proxy, "/photo.jpg?w=100&fmt=webp", &[]).await;
    assert_eq!(fine.image(), ("webp", 100, 75));
    // Counted by outcome.
    metrics_showing(
        &proxy,
        &[
            (
                r#"wasmcustom_image_resize_images{filter="images",outcome="failed"}"#,
                3.0,
            ),
            (
                r#"wasmcustom_image_resize_images{filter="images",outcome="transformed"}"#,
                1.0,
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn hostile_images_fail_when_so_configured_and_the_proxy_serves_on() {
    let origin = ImageOrigin::start().await;
    let proxy = origin.proxy(r#"{"on_failure": "fail"}"#, "", "").await;
    for name in ["truncated.jpg", "bomb.png", "huge-dimensions.png"] {
        let response = client::http1()
            .get(proxy.url(&format!("/{name}?w=100")))
            .send()
            .await
            .unwrap();
        // A 502 when the head had not left with the first of the body; otherwise the
        // response is cut short. Never the image.
        let status = response.status().as_u16();
        match response.bytes().await {
            Ok(body) => {
                assert_eq!(status, 502, "{name}: {body:?}");
                let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(body["error"], "image_transform_failed", "{name}");
            }
            Err(err) => assert_eq!(status, 200, "{name}: cut short ({err})"),
        }
        wait_for_log(&proxy, &format!("/{name}?w=100: cannot transform")).await;
    }
    let fine = get(&proxy, "/photo.jpg?w=100&fmt=webp", &[]).await;
    assert_eq!(fine.image(), ("webp", 100, 75));
}

#[tokio::test]
async fn sources_over_max_source_bytes_pass_untouched() {
    let origin = ImageOrigin::start().await;
    let proxy = origin.proxy(r#"{"max_source_bytes": 10000}"#, "", "").await;
    let big = get(&proxy, "/photo.jpg?w=100&fmt=webp", &[]).await;
    assert_eq!(big.body, fixture("photo.jpg"));
    assert_eq!(big.header("content-type"), Some("image/jpeg"));
    let length = fixture("photo.jpg").len().to_string();
    assert_eq!(big.header("content-length"), Some(length.as_str()));
    let small = get(&proxy, "/logo.png?w=100&fmt=webp", &[]).await;
    assert_eq!(small.image(), ("webp", 100, 67));
}

#[tokio::test]
async fn each_variant_is_cached_separately() {
    let origin = ImageOrigin::start().await;
    // The route's cache key is the default [host, path, query]: the query's parameters make
    // the variants. Before the cache, the filter's output is what is stored.
    let proxy = origin
        .proxy(
            "{}",
            "\n    response_phase: before_cache",
            ", cache: {key: [host, path, query]}",
        )
        .await;
    for (query, width) in [("w=320&fmt=webp", 320), ("w=160&fmt=webp", 160)] {
        let path = format!("/photo.jpg?{query}");
        let first = get(&proxy, &path, &[]).await;
        assert_eq!(
            first.header("cache-status"),
            Some("edgeward; fwd=miss"),
            "{path}"
        );
        assert_eq!(first.image(), ("webp", width, width * 3 / 4), "{path}");
        let second = get(&proxy, &path, &[]).await;
        let status = second.header("cache-status").unwrap_or_default();
        assert!(status.starts_with("edgeward; hit"), "{path}: {status}");
        assert_eq!(second.image(), ("webp", width, width * 3 / 4), "{path}");
        assert_eq!(second.body, first.body, "{path}");
        assert_eq!(second.header("content-type"), Some("image/webp"), "{path}");
    }
    assert_eq!(
        origin.hits("/photo.jpg"),
        2,
        "one origin request per variant"
    );
}

#[test]
fn bad_configurations_are_refused_naming_the_key() {
    use_built_binary();
    for (filter_config, message) in [
        (
            r#"{"max_source_bytes": 0}"#,
            "max_source_bytes: must be at least 1",
        ),
        (
            r#"{"params": {"width": "a b"}}"#,
            "params.width: `a b` is not a parameter name",
        ),
        (r#"{"on_failure": "ignore"}"#, "unknown variant `ignore`"),
        (r#"{"max_widht": 10}"#, "unknown field `max_widht`"),
    ] {
        let yaml = format!(
            "listeners: [{{address: 127.0.0.1:0}}]\nupstreams: {{o: {{builtin: echo}}}}\n\
             filters:\n  images:\n    module: {}\n    config: {filter_config}\n\
             routes:\n  - {{upstream: o, filters: [images]}}\n",
            filters::IMAGE_RESIZE
        );
        let stderr = refused_by_validate(&yaml);
        assert!(
            stderr.contains("filter `images`")
                && stderr.contains(&format!("image-resize: invalid configuration: {message}")),
            "{filter_config}: {stderr}"
        );
    }
}
