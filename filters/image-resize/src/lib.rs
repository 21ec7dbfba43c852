//! `image-resize`: resizes and converts images on the response path, in pure Rust inside the
//! module (the `image` crate: no host image code).
//!
//! Config (every key optional; defaults shown):
//!
//! ```yaml
//! config:
//!   params: {width: w, height: h, fit: fit, format: fmt, quality: q}   # query parameter names
//!   path_prefix: /img/            # optional: /img/w=320,fmt=webp/cat.jpg asks for /cat.jpg
//!   max_source_bytes: 1MiB        # larger sources pass through untouched; ≤ limits.body
//!   max_source_pixels: 16000000   # larger images are refused before decoding (on_failure)
//!   max_source_dimension: 8192    # so is a side longer than this
//!   max_width: 4096               # requests for more pass through untouched
//!   max_height: 4096
//!   default_quality: 80           # JPEG quality without `q`
//!   on_failure: pass_through      # pass_through | fail (502)
//! ```
//!
//! A request asks for a transformation with any of the parameters in its query
//! (`?w=320&h=200&fit=cover|contain&fmt=webp|jpeg|png|auto&q=80`) or, with `path_prefix`, in
//! the path segment after the prefix (`/img/w=320,h=200,fmt=auto/photos/cat.jpg`; the filter
//! sends `/photos/cat.jpg` upstream). A bad value answers `400
//! {"error":"invalid_image_parameters","message":...}` ([`params`]). A box over `max_width`
//! or `max_height` is not transformed. A transformation request loses its `Range` and
//! `If-Range` headers: the variant is made from the whole source, and sent whole.
//!
//! The response is transformed when it is a `200` with `Content-Type` `image/jpeg`,
//! `image/png`, `image/webp` or `image/gif`, no content coding, and a `Content-Length` of at
//! most `max_source_bytes` ([`response`]); the head, which leaves before the body, then loses
//! `Content-Length` and `Accept-Ranges`, gets the output's `Content-Type`, its `ETag` made weak, and `Vary: Accept`
//! for `fmt=auto`. The body is buffered to its end, decoded (the first frame of a GIF),
//! resized (never enlarged; EXIF orientation applied) and encoded ([`transform`]). WebP output
//! is lossless (the only pure-Rust WebP encoder of the `image` crate), so `fmt=auto` picks
//! WebP for PNG, GIF and WebP sources only; JPEG sources stay JPEG.
//!
//! A source that fails to decode (truncated, not an image, a declared size over the limits:
//! refused before the decoder allocates) gets `on_failure`: `pass_through` sends the original
//! bytes (under the head already sent) with a warning in the log; `fail` answers `502
//! {"error":"image_transform_failed"}`, or cuts the response short when its head has left.
//!
//! Counters `image_resize_images_outcome=transformed` and `...=failed` (exported as
//! `wasmcustom_image_resize_images{filter, outcome}`) count the variants made and the sources
//! that could not be transformed.
//!
//! The logic ([`config`], [`params`], [`response`], [`transform`]) is free of the SDK and
//! unit-tested natively (`cargo test` in `filters/`); only the glue below talks to the host.

pub mod config;
pub mod params;
pub mod response;
pub mod transform;

use std::rc::Rc;

use filter_support::root::{Configured, ConfiguredRoot};
use filter_support::{host, property};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

use crate::config::{Config, OnFailure};
use crate::params::{Asked, Format, Transform};
use crate::response::{decide, needs_vary_accept, weak_etag, Decision, Head};
use crate::transform::{DecodeLimits, Output};

const NAME: &str = "image-resize";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| ConfiguredRoot::<Filter>::boxed());
}}

/// The configuration and the ids of the counters of transformed and failed images, shared
/// by every request's context.
struct Filter {
    config: Config,
    transformed: Option<u32>,
    failed: Option<u32>,
}

impl Configured for Filter {
    const NAME: &'static str = NAME;

    fn configure(config: Option<&[u8]>) -> Result<Filter, String> {
        let counter = |name: &str| {
            host::define_counter(name)
                .inspect_err(|status| {
                    log::warn!("{NAME}: edgeward refused to define metric `{name}`: {status}")
                })
                .ok()
        };
        Ok(Filter {
            config: Config::parse(config)?,
            transformed: counter("image_resize_images_outcome=transformed"),
            failed: counter("image_resize_images_outcome=failed"),
        })
    }

    fn http_context(filter: &Rc<Filter>) -> Box<dyn HttpContext> {
        Box::new(ImageResize {
            filter: Rc::clone(filter),
            asked: None,
            output: None,
        })
    }
}

/// A transformation request: what it asked for and the request facts the response needs.
struct Asking {
    transform: Transform,
    accept: Option<String>,
    path: String,
}

struct ImageResize {
    filter: Rc<Filter>,
    /// Set by the request headers when the request asked for a transformation.
    asked: Option<Asking>,
    /// Set by the response headers when the body is to be transformed.
    output: Option<Format>,
}

impl Context for ImageResize {}

impl HttpContext for ImageResize {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(path) = text(property(NAME, &["request", "path"])) else {
            return Action::Continue;
        };
        match params::parse_request(&self.filter.config, &path) {
            Ok(Asked::Nothing) => Action::Continue,
            Ok(Asked::Transform {
                transform,
                upstream_path,
            }) => {
                if let Some(upstream_path) = upstream_path {
                    self.set_http_request_header(":path", Some(&upstream_path));
                }
                if transform.within(&self.filter.config) {
                    // A range of the source is no range of the variant: the origin sends the
                    // whole image (a server may always answer a range request in full).
                    self.set_http_request_header("range", None);
                    self.set_http_request_header("if-range", None);
                    self.asked = Some(Asking {
                        transform,
                        accept: text(property(NAME, &["request", "headers", "accept"])),
                        path,
                    });
                } else {
                    log::debug!("{NAME}: {path}: the box is over max_width/max_height; untouched");
                }
                Action::Continue
            }
            Err(message) => {
                log::debug!("{NAME}: {path}: {message}");
                let body =
                    serde_json::json!({"error": "invalid_image_parameters", "message": message});
                self.send_http_response(
                    400,
                    vec![("content-type", "application/json")],
                    Some(body.to_string().as_bytes()),
                );
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(asked) = self.asked.as_ref() else {
            return Action::Continue;
        };
        let choice = asked.transform.format;
        let header = |name| text(self.get_http_response_header_bytes(name));
        let (content_type, content_length, content_encoding) = (
            header("content-type"),
            header("content-length"),
            header("content-encoding"),
        );
        let head = Head {
            status: header(":status").and_then(|s| s.parse().ok()).unwrap_or(0),
            content_type: content_type.as_deref(),
            content_length: content_length.as_deref(),
            content_encoding: content_encoding.as_deref(),
        };
        let decision = decide(
            &self.filter.config,
            &asked.transform,
            asked.accept.as_deref(),
            head,
        );
        let format = match decision {
            Decision::Untouched(why) => {
                log::debug!("{NAME}: {}: untouched: {why}", asked.path);
                return Action::Continue;
            }
            Decision::Revalidated(format) => format,
            Decision::Transform(format) => {
                self.set_http_response_header("content-length", None);
                self.set_http_response_header("accept-ranges", None);
                Some(format)
            }
        };
        if let Some(format) = format {
            self.set_http_response_header("content-type", Some(format.content_type()));
        }
        if let Some(etag) = weak_etag(header("etag").as_deref()) {
            self.set_http_response_header("etag", Some(&etag));
        }
        if needs_vary_accept(choice, header("vary").as_deref()) {
            self.add_http_response_header("vary", "Accept");
        }
        if let Decision::Transform(format) = decision {
            self.output = Some(format);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (Some(asked), Some(format)) = (&self.asked, self.output) else {
            return Action::Continue;
        };
        if !end_of_stream {
            return Action::Pause;
        }
        let source = self
            .get_http_response_body(0, body_size)
            .unwrap_or_default();
        let config = &self.filter.config;
        let limits = DecodeLimits {
            max_pixels: config.max_source_pixels,
            max_dimension: config.max_source_dimension,
        };
        let output = Output {
            format,
            quality: asked.transform.quality.unwrap_or(config.default_quality),
        };
        match transform::transform(&source, &asked.transform, limits, output) {
            Ok(encoded) => {
                log::debug!(
                    "{NAME}: {}: {} bytes → {}x{} {} of {} bytes",
                    asked.path,
                    source.len(),
                    encoded.width,
                    encoded.height,
                    format.content_type(),
                    encoded.bytes.len()
                );
                self.set_http_response_body(0, body_size, &encoded.bytes);
                count(self.filter.transformed);
                Action::Continue
            }
            Err(err) => {
                count(self.filter.failed);
                match config.on_failure {
                    OnFailure::PassThrough => {
                        log::warn!(
                            "{NAME}: {}: cannot transform the image ({err}); passing the original through",
                            asked.path
                        );
                        Action::Continue
                    }
                    OnFailure::Fail => {
                        log::warn!(
                            "{NAME}: {}: cannot transform the image ({err}); failing the response",
                            asked.path
                        );
                        let body =
                            serde_json::json!({"error": "image_transform_failed", "message": err});
                        self.send_http_response(
                            502,
                            vec![("content-type", "application/json")],
                            Some(body.to_string().as_bytes()),
                        );
                        Action::Pause
                    }
                }
            }
        }
    }
}

/// Adds one to a counter edgeward defined.
fn count(counter: Option<u32>) {
    if let Some(id) = counter {
        // Only NOT_FOUND or BAD_ARGUMENT can come back for a metric edgeward defined:
        // nothing to do about either.
        let _ = proxy_wasm::hostcalls::increment_metric(id, 1);
    }
}

/// Bytes as text; `None` when absent or not UTF-8 (nothing the filter acts on).
fn text(bytes: Option<Vec<u8>>) -> Option<String> {
    bytes.and_then(|bytes| String::from_utf8(bytes).ok())
}
