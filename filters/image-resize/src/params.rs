//! What a request asks for: the transformation in its query (`?w=320&fmt=webp`) or in the
//! options segment after the configured path prefix (`/img/w=320,fmt=webp/cat.jpg`), and the
//! output format negotiated from `Accept`. SDK-free, tested natively.

use crate::config::Config;

/// The names of the five parameters (configurable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamNames {
    pub width: String,
    pub height: String,
    pub fit: String,
    pub format: String,
    pub quality: String,
}

impl Default for ParamNames {
    fn default() -> ParamNames {
        ParamNames {
            width: "w".into(),
            height: "h".into(),
            fit: "fit".into(),
            format: "fmt".into(),
            quality: "q".into(),
        }
    }
}

impl ParamNames {
    pub fn all(&self) -> [&str; 5] {
        [
            &self.width,
            &self.height,
            &self.fit,
            &self.format,
            &self.quality,
        ]
    }
}

/// How the image fills the requested box when both sides are given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fit {
    /// The whole image, within the box (one side may come out shorter).
    #[default]
    Contain,
    /// The box filled, the image cropped around its centre.
    Cover,
}

/// An encodable output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    WebP,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::WebP => "image/webp",
        }
    }
}

/// The output format the request asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FormatChoice {
    /// The source's own format (GIF becomes PNG: the filter encodes no GIF).
    #[default]
    Same,
    /// Negotiated from `Accept` ([`negotiate`]).
    Auto,
    Exactly(Format),
}

/// A transformation a request asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transform {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fit: Fit,
    pub format: FormatChoice,
    /// JPEG quality, 1 to 100 (`None`: the configured default).
    pub quality: Option<u8>,
}

impl Transform {
    /// Whether the requested box is within the configured maximum.
    pub fn within(&self, config: &Config) -> bool {
        self.width.is_none_or(|w| w <= config.max_width)
            && self.height.is_none_or(|h| h <= config.max_height)
    }
}

/// What a request's path says.
#[derive(Debug, PartialEq, Eq)]
pub enum Asked {
    /// No transformation: the filter leaves the request and its response alone.
    Nothing,
    /// A transformation; `upstream_path` is the `:path` to send upstream when the options came
    /// in the path (the prefix and options segment removed), `None` to leave it.
    Transform {
        transform: Transform,
        upstream_path: Option<String>,
    },
}

/// Reads the request's `:path` (with its query). A parameter with a bad value is an error
/// naming it, for a `400`.
pub fn parse_request(config: &Config, path: &str) -> Result<Asked, String> {
    let (path_only, query) = match path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path, None),
    };
    let names = &config.params;
    if let Some(rest) = config
        .path_prefix
        .as_deref()
        .and_then(|prefix| path_only.strip_prefix(prefix))
    {
        if let Some((options, source)) = rest.split_once('/') {
            let pairs = options.split(',').filter(|o| !o.is_empty()).map(|option| {
                option
                    .split_once('=')
                    .map_or((option, ""), |(name, value)| (name, value))
            });
            if let Some(transform) = read_pairs(names, pairs, true)? {
                let upstream_path = match query {
                    Some(query) => format!("/{source}?{query}"),
                    None => format!("/{source}"),
                };
                return Ok(Asked::Transform {
                    transform,
                    upstream_path: Some(upstream_path),
                });
            }
        }
    }
    let pairs = query
        .into_iter()
        .flat_map(|query| query.split('&'))
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")));
    Ok(match read_pairs(names, pairs, false)? {
        Some(transform) => Asked::Transform {
            transform,
            upstream_path: None,
        },
        None => Asked::Nothing,
    })
}

/// Reads `name=value` pairs; `None` when none of them is one of ours. In the path, options
/// that are not ours are errors (the segment is all options); in the query they belong to
/// the origin. The first occurrence of a parameter wins.
fn read_pairs<'a>(
    names: &ParamNames,
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
    all_ours: bool,
) -> Result<Option<Transform>, String> {
    let mut transform = Transform::default();
    let mut seen = [false; 5];
    for (name, value) in pairs {
        let Some(index) = names.all().iter().position(|ours| *ours == name) else {
            if all_ours {
                return Err(format!("`{name}` is not an image option"));
            }
            continue;
        };
        if std::mem::replace(&mut seen[index], true) {
            continue;
        }
        match index {
            0 => transform.width = Some(dimension(name, value)?),
            1 => transform.height = Some(dimension(name, value)?),
            2 => {
                transform.fit = match value {
                    "contain" => Fit::Contain,
                    "cover" => Fit::Cover,
                    _ => return Err(format!("{name}: `{value}` is not `contain` or `cover`")),
                }
            }
            3 => {
                transform.format = match value {
                    "auto" => FormatChoice::Auto,
                    "webp" => FormatChoice::Exactly(Format::WebP),
                    "jpeg" | "jpg" => FormatChoice::Exactly(Format::Jpeg),
                    "png" => FormatChoice::Exactly(Format::Png),
                    _ => {
                        return Err(format!(
                            "{name}: `{value}` is not `auto`, `webp`, `jpeg` or `png`"
                        ))
                    }
                }
            }
            _ => {
                transform.quality = match value.parse::<u8>() {
                    Ok(q) if (1..=100).contains(&q) => Some(q),
                    _ => return Err(format!("{name}: `{value}` is not a quality from 1 to 100")),
                }
            }
        }
    }
    Ok(seen.contains(&true).then_some(transform))
}

fn dimension(name: &str, value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if n > 0 && value.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(format!("{name}: `{value}` is not a size in pixels")),
    }
}

/// A decodable source format, from the response's `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceType {
    Jpeg,
    Png,
    WebP,
    Gif,
}

impl SourceType {
    /// `image/jpeg`, `image/png`, `image/webp`, `image/gif` (parameters and case ignored);
    /// anything else is not ours.
    pub fn from_content_type(value: &str) -> Option<SourceType> {
        let essence = value.split(';').next().unwrap_or("").trim();
        [
            ("image/jpeg", SourceType::Jpeg),
            ("image/png", SourceType::Png),
            ("image/webp", SourceType::WebP),
            ("image/gif", SourceType::Gif),
        ]
        .into_iter()
        .find(|(name, _)| essence.eq_ignore_ascii_case(name))
        .map(|(_, source)| source)
    }

    /// The format that keeps the source's own: GIF, which the filter does not encode,
    /// becomes PNG (lossless, with transparency).
    fn same(self) -> Format {
        match self {
            SourceType::Jpeg => Format::Jpeg,
            SourceType::Png | SourceType::Gif => Format::Png,
            SourceType::WebP => Format::WebP,
        }
    }
}

/// The output format for a source, given the request's choice and its `Accept`.
///
/// `auto`: WebP when the client lists `image/webp` (with a non-zero `q`) and the source is
/// lossless or WebP (PNG, GIF, WebP): this build's WebP encoder is lossless, which beats PNG
/// but not a JPEG photo, so JPEG sources stay JPEG. A WebP source for a client without WebP
/// becomes PNG.
pub fn output_format(choice: FormatChoice, source: SourceType, accept: Option<&str>) -> Format {
    match choice {
        FormatChoice::Exactly(format) => format,
        FormatChoice::Same => source.same(),
        FormatChoice::Auto => match source {
            SourceType::Jpeg => Format::Jpeg,
            _ if accept.is_some_and(accepts_webp) => Format::WebP,
            _ => Format::Png,
        },
    }
}

/// Whether an `Accept` value lists `image/webp` with a non-zero weight. Wildcards do not
/// count: browsers that decode WebP name it.
fn accepts_webp(accept: &str) -> bool {
    accept.split(',').any(|item| {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim();
        media.eq_ignore_ascii_case("image/webp")
            && parts.all(|param| {
                let (name, value) = param.split_once('=').unwrap_or((param, ""));
                !name.trim().eq_ignore_ascii_case("q")
                    || value.trim().parse::<f32>().is_ok_and(|q| q > 0.0)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        Config::parse(Some(json.as_bytes())).unwrap()
    }

    fn transform(config: &Config, path: &str) -> Transform {
        match parse_request(config, path).unwrap() {
            Asked::Transform { transform, .. } => transform,
            Asked::Nothing => panic!("{path}: no transformation"),
        }
    }

    #[test]
    fn the_query_carries_the_transformation() {
        let config = config("{}");
        let t = transform(&config, "/a.jpg?w=320&h=200&fit=cover&fmt=webp&q=70&v=3");
        assert_eq!(
            t,
            Transform {
                width: Some(320),
                height: Some(200),
                fit: Fit::Cover,
                format: FormatChoice::Exactly(Format::WebP),
                quality: Some(70),
            }
        );
        let t = transform(&config, "/a.jpg?fmt=auto");
        assert_eq!((t.width, t.format), (None, FormatChoice::Auto));
        assert_eq!(transform(&config, "/a?w=1&w=2").width, Some(1));
        for path in ["/a.jpg", "/a.jpg?", "/a.jpg?v=3&&x", "/a.jpg?width=3"] {
            assert_eq!(
                parse_request(&config, path).unwrap(),
                Asked::Nothing,
                "{path}"
            );
        }
    }

    #[test]
    fn parameter_names_are_configurable() {
        let config = config(r#"{"params": {"width": "width", "format": "format"}}"#);
        assert_eq!(transform(&config, "/a?width=10").width, Some(10));
        assert_eq!(
            parse_request(&config, "/a?w=10").unwrap(),
            Asked::Nothing,
            "the default name no longer counts"
        );
    }

    #[test]
    fn bad_values_are_errors_naming_the_parameter() {
        let config = config("{}");
        for (path, message) in [
            ("/a?w=0", "w: `0` is not a size"),
            ("/a?w=-3", "w: `-3`"),
            ("/a?w=+3", "w: `+3`"),
            ("/a?h=1e3", "h: `1e3`"),
            ("/a?w=99999999999", "w: `99999999999`"),
            ("/a?w", "w: `` is not"),
            ("/a?fit=fill", "fit: `fill`"),
            ("/a?fmt=gif", "fmt: `gif`"),
            ("/a?q=0", "q: `0`"),
            ("/a?q=101", "q: `101`"),
        ] {
            let err = parse_request(&config, path).unwrap_err();
            assert!(err.contains(message), "{path}: {err}");
        }
    }

    #[test]
    fn the_path_prefix_carries_options_and_the_rest_goes_upstream() {
        let config = config(r#"{"path_prefix": "/img/"}"#);
        assert_eq!(
            parse_request(&config, "/img/w=320,fmt=webp/photos/cat.jpg?v=2").unwrap(),
            Asked::Transform {
                transform: Transform {
                    width: Some(320),
                    format: FormatChoice::Exactly(Format::WebP),
                    ..Transform::default()
                },
                upstream_path: Some("/photos/cat.jpg?v=2".into()),
            }
        );
        let err = parse_request(&config, "/img/w=3,size=4/cat.jpg").unwrap_err();
        assert!(err.contains("`size` is not an image option"), "{err}");
        // No options segment, or an empty one: not a transformation by path.
        for path in ["/img/cat.jpg", "/img//cat.jpg", "/images/w=3/cat.jpg"] {
            assert_eq!(
                parse_request(&config, path).unwrap(),
                Asked::Nothing,
                "{path}"
            );
        }
        // Outside the prefix the query still works.
        assert_eq!(transform(&config, "/cat.jpg?w=5").width, Some(5));
    }

    #[test]
    fn the_maximum_box_is_checked() {
        let config = config(r#"{"max_width": 1000, "max_height": 500}"#);
        assert!(transform(&config, "/a?w=1000&h=500").within(&config));
        assert!(!transform(&config, "/a?w=1001").within(&config));
        assert!(!transform(&config, "/a?h=501").within(&config));
        assert!(transform(&config, "/a?fmt=png").within(&config));
    }

    #[test]
    fn content_types_name_the_source() {
        assert_eq!(
            SourceType::from_content_type("IMAGE/JPEG; charset=x"),
            Some(SourceType::Jpeg)
        );
        assert_eq!(
            SourceType::from_content_type("image/gif"),
            Some(SourceType::Gif)
        );
        for other in [
            "image/svg+xml",
            "image/avif",
            "text/html",
            "",
            "image/jpegx",
        ] {
            assert_eq!(SourceType::from_content_type(other), None, "{other}");
        }
    }

    #[test]
    fn auto_negotiates_webp_for_lossless_sources() {
        let chrome = "image/avif,image/webp,image/apng,image/*,*/*;q=0.8";
        let old = "image/png,image/*;q=0.8,*/*;q=0.5";
        let auto = FormatChoice::Auto;
        assert_eq!(
            output_format(auto, SourceType::Png, Some(chrome)),
            Format::WebP
        );
        assert_eq!(
            output_format(auto, SourceType::Gif, Some(chrome)),
            Format::WebP
        );
        assert_eq!(output_format(auto, SourceType::Png, Some(old)), Format::Png);
        assert_eq!(output_format(auto, SourceType::Png, None), Format::Png);
        assert_eq!(
            output_format(auto, SourceType::WebP, Some(old)),
            Format::Png
        );
        assert_eq!(
            output_format(auto, SourceType::Jpeg, Some(chrome)),
            Format::Jpeg
        );
        assert_eq!(
            output_format(auto, SourceType::Png, Some("image/webp;q=0, */*")),
            Format::Png
        );
        assert_eq!(
            output_format(auto, SourceType::Png, Some("IMAGE/WEBP ; q=0.5")),
            Format::WebP
        );
        assert_eq!(
            output_format(FormatChoice::Same, SourceType::Gif, None),
            Format::Png
        );
        assert_eq!(
            output_format(FormatChoice::Exactly(Format::WebP), SourceType::Jpeg, None),
            Format::WebP
        );
    }
}
