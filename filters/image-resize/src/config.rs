//! Reading and checking the configuration. SDK-free, tested natively.

use serde::Deserialize;

use crate::params::ParamNames;

/// The default largest source body: edgeward's default `limits.body`, so that the filter
/// never buffers past what the host lets it hold unless both are raised together.
pub const DEFAULT_MAX_SOURCE_BYTES: u64 = 1 << 20;
/// The default largest source image, in pixels: a 16-megapixel photo.
pub const DEFAULT_MAX_SOURCE_PIXELS: u64 = 16_000_000;
/// The default longest side of a source image (a strict decoder limit).
pub const DEFAULT_MAX_SOURCE_DIMENSION: u32 = 8192;
/// The default largest width and height a request may ask for.
pub const DEFAULT_MAX_OUTPUT_DIMENSION: u32 = 4096;
/// The default JPEG quality.
pub const DEFAULT_QUALITY: u8 = 80;
/// Hard ceiling of `max_source_pixels`: 64 megapixels decode to 256 MiB (RGBA), more than a
/// wasm32 instance's memory can hold together with the source.
pub const MAX_SOURCE_PIXELS_CEILING: u64 = 64_000_000;
/// Hard ceiling of the dimension limits: 65535, the largest side JPEG and WebP can encode.
pub const MAX_DIMENSION_CEILING: u32 = 65_535;

/// What happens when an image the filter committed to transform cannot be decoded or
/// encoded (a truncated file, a decompression bomb, an absurd declared size).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Send the original bytes (a valid image) and log a warning.
    PassThrough,
    /// Answer `502 {"error": "image_transform_failed"}` (the response is cut short when its
    /// head has already left).
    Fail,
}

/// The checked configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub params: ParamNames,
    /// Requests whose path starts with this prefix carry their options in the next path
    /// segment (`/img/w=320,fmt=webp/photos/cat.jpg`); the filter sends the rest upstream.
    pub path_prefix: Option<String>,
    pub max_source_bytes: u64,
    pub max_source_pixels: u64,
    pub max_source_dimension: u32,
    pub max_width: u32,
    pub max_height: u32,
    pub default_quality: u8,
    pub on_failure: OnFailure,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    params: RawParams,
    #[serde(default)]
    path_prefix: Option<String>,
    /// Bytes, or a string with a unit (`8MiB`), read by [`byte_size`].
    #[serde(default)]
    max_source_bytes: Option<serde_json::Value>,
    #[serde(default)]
    max_source_pixels: Option<u64>,
    #[serde(default)]
    max_source_dimension: Option<u32>,
    #[serde(default)]
    max_width: Option<u32>,
    #[serde(default)]
    max_height: Option<u32>,
    #[serde(default)]
    default_quality: Option<u8>,
    #[serde(default)]
    on_failure: Option<OnFailure>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParams {
    width: Option<String>,
    height: Option<String>,
    fit: Option<String>,
    format: Option<String>,
    quality: Option<String>,
}

impl Config {
    /// Parses the plugin configuration (JSON); an absent or empty one means every default.
    /// Errors name the key.
    pub fn parse(raw: Option<&[u8]>) -> Result<Config, String> {
        let raw = match raw {
            Some(bytes) if !bytes.trim_ascii().is_empty() => bytes,
            _ => b"{}",
        };
        let raw: RawConfig = serde_json::from_slice(raw).map_err(|err| err.to_string())?;
        let defaults = ParamNames::default();
        let params = ParamNames {
            width: param_name("params.width", raw.params.width, defaults.width)?,
            height: param_name("params.height", raw.params.height, defaults.height)?,
            fit: param_name("params.fit", raw.params.fit, defaults.fit)?,
            format: param_name("params.format", raw.params.format, defaults.format)?,
            quality: param_name("params.quality", raw.params.quality, defaults.quality)?,
        };
        let names = params.all();
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                return Err(format!("params: `{name}` names two parameters"));
            }
        }
        let path_prefix = raw.path_prefix.map(check_prefix).transpose()?;
        let max_source_bytes = positive(
            "max_source_bytes",
            raw.max_source_bytes.as_ref().map(byte_size).transpose()?,
            DEFAULT_MAX_SOURCE_BYTES,
            u64::from(u32::MAX),
        )?;
        let max_source_pixels = positive(
            "max_source_pixels",
            raw.max_source_pixels,
            DEFAULT_MAX_SOURCE_PIXELS,
            MAX_SOURCE_PIXELS_CEILING,
        )?;
        let dimension = |key, value: Option<u32>, default| {
            positive(
                key,
                value.map(u64::from),
                u64::from(default),
                u64::from(MAX_DIMENSION_CEILING),
            )
            .map(|value| value as u32)
        };
        let max_source_dimension = dimension(
            "max_source_dimension",
            raw.max_source_dimension,
            DEFAULT_MAX_SOURCE_DIMENSION,
        )?;
        let max_width = dimension("max_width", raw.max_width, DEFAULT_MAX_OUTPUT_DIMENSION)?;
        let max_height = dimension("max_height", raw.max_height, DEFAULT_MAX_OUTPUT_DIMENSION)?;
        let default_quality = raw.default_quality.unwrap_or(DEFAULT_QUALITY);
        if !(1..=100).contains(&default_quality) {
            return Err(format!(
                "default_quality: {default_quality} is not a quality from 1 to 100"
            ));
        }
        Ok(Config {
            params,
            path_prefix,
            max_source_bytes,
            max_source_pixels,
            max_source_dimension,
            max_width,
            max_height,
            default_quality,
            on_failure: raw.on_failure.unwrap_or(OnFailure::PassThrough),
        })
    }
}

/// A query parameter name: letters, digits, `-`, `_` and `.` (no character that needs
/// percent-encoding, nor the `=` and `,` that separate path options).
fn param_name(key: &str, value: Option<String>, default: String) -> Result<String, String> {
    let Some(name) = value else {
        return Ok(default);
    };
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if valid {
        Ok(name)
    } else {
        Err(format!(
            "{key}: `{name}` is not a parameter name (1 to 64 letters, digits, `-`, `_`, `.`)"
        ))
    }
}

/// A path prefix: starts and ends with `/`, no query, no whitespace or control characters.
fn check_prefix(prefix: String) -> Result<String, String> {
    let valid = prefix.len() >= 2
        && prefix.starts_with('/')
        && prefix.ends_with('/')
        && !prefix
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'?' || b == b'#');
    if valid {
        Ok(prefix)
    } else {
        Err(format!(
            "path_prefix: `{prefix}` is not a path prefix (starts and ends with `/`, like `/img/`)"
        ))
    }
}

/// A number of bytes: an integer, or a string of one with `KiB`, `MiB` or `GiB` (as
/// edgeward's own `limits.body`).
fn byte_size(value: &serde_json::Value) -> Result<u64, String> {
    let invalid = || format!("max_source_bytes: `{value}` is not a size (bytes, or like `8MiB`)");
    if let Some(bytes) = value.as_u64() {
        return Ok(bytes);
    }
    let text = value.as_str().ok_or_else(invalid)?.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(invalid()),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(invalid)
}

fn positive(key: &str, value: Option<u64>, default: u64, ceiling: u64) -> Result<u64, String> {
    match value.unwrap_or(default) {
        0 => Err(format!("{key}: must be at least 1")),
        value if value > ceiling => Err(format!("{key}: {value} is above the most, {ceiling}")),
        value => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Config {
        Config::parse(Some(json.as_bytes())).unwrap()
    }

    #[test]
    fn an_empty_configuration_takes_every_default() {
        for raw in [None, Some(&b""[..]), Some(&b" {} "[..])] {
            let config = Config::parse(raw).unwrap();
            assert_eq!(config.params, ParamNames::default());
            assert_eq!(config.path_prefix, None);
            assert_eq!(config.max_source_bytes, DEFAULT_MAX_SOURCE_BYTES);
            assert_eq!(config.max_source_pixels, DEFAULT_MAX_SOURCE_PIXELS);
            assert_eq!(config.max_source_dimension, DEFAULT_MAX_SOURCE_DIMENSION);
            assert_eq!(config.max_width, DEFAULT_MAX_OUTPUT_DIMENSION);
            assert_eq!(config.max_height, DEFAULT_MAX_OUTPUT_DIMENSION);
            assert_eq!(config.default_quality, DEFAULT_QUALITY);
            assert_eq!(config.on_failure, OnFailure::PassThrough);
        }
    }

    #[test]
    fn every_key_is_read() {
        let config = parse(
            r#"{"params": {"width": "width", "height": "height", "fit": "mode",
                "format": "format", "quality": "quality"},
                "path_prefix": "/img/", "max_source_bytes": "8MiB",
                "max_source_pixels": 13000000, "max_source_dimension": 6000,
                "max_width": 2000, "max_height": 1000, "default_quality": 70,
                "on_failure": "fail"}"#,
        );
        assert_eq!(config.params.width, "width");
        assert_eq!(config.params.fit, "mode");
        assert_eq!(config.params.quality, "quality");
        assert_eq!(config.path_prefix.as_deref(), Some("/img/"));
        assert_eq!(config.max_source_bytes, 8 << 20);
        assert_eq!(config.max_source_pixels, 13_000_000);
        assert_eq!(config.max_source_dimension, 6000);
        assert_eq!((config.max_width, config.max_height), (2000, 1000));
        assert_eq!(config.default_quality, 70);
        assert_eq!(config.on_failure, OnFailure::Fail);
    }

    #[test]
    fn sizes_take_units() {
        for (value, bytes) in [("1000", 1000), (r#""1000""#, 1000), (r#"" 64KiB ""#, 65536)] {
            let config = parse(&format!(r#"{{"max_source_bytes": {value}}}"#));
            assert_eq!(config.max_source_bytes, bytes, "{value}");
        }
        assert_eq!(
            parse(r#"{"max_source_bytes": "2GiB"}"#).max_source_bytes,
            2 << 30
        );
    }

    #[test]
    fn bad_configurations_are_refused_naming_the_key() {
        let cases = [
            (r#"{"widht": 1}"#, "unknown field `widht`"),
            (r#"{"params": {"w": "x"}}"#, "unknown field `w`"),
            (r#"{"params": {"width": "a b"}}"#, "params.width: `a b`"),
            (r#"{"params": {"fit": ""}}"#, "params.fit: `` is not"),
            (r#"{"params": {"format": "w"}}"#, "params: `w` names two"),
            (r#"{"path_prefix": "img/"}"#, "path_prefix: `img/`"),
            (r#"{"path_prefix": "/img"}"#, "path_prefix: `/img`"),
            (r#"{"path_prefix": "/"}"#, "path_prefix: `/`"),
            (r#"{"max_source_bytes": 0}"#, "max_source_bytes: must be"),
            (
                r#"{"max_source_bytes": -1}"#,
                "max_source_bytes: `-1` is not a size",
            ),
            (
                r#"{"max_source_bytes": "8MB"}"#,
                "max_source_bytes: `\"8MB\"` is not",
            ),
            (r#"{"max_source_bytes": "MiB"}"#, "is not a size"),
            (
                r#"{"max_source_bytes": "5GiB"}"#,
                "max_source_bytes: 5368709120 is above",
            ),
            (
                r#"{"max_source_pixels": 64000001}"#,
                "max_source_pixels: 64000001",
            ),
            (
                r#"{"max_source_dimension": 70000}"#,
                "max_source_dimension: 70000",
            ),
            (r#"{"max_width": 0}"#, "max_width: must be at least 1"),
            (r#"{"max_height": "big"}"#, "invalid type"),
            (r#"{"default_quality": 0}"#, "default_quality: 0 is not"),
            (r#"{"default_quality": 101}"#, "default_quality: 101 is not"),
            (r#"{"on_failure": "ignore"}"#, "unknown variant `ignore`"),
            ("[", "EOF"),
        ];
        for (json, message) in cases {
            let err = Config::parse(Some(json.as_bytes())).unwrap_err();
            assert!(err.contains(message), "{json}: {err}");
        }
    }
}
