//! Decoding, resizing and encoding, in pure Rust (the `image` crate). SDK-free, tested
//! natively.
//!
//! Memory: the decoder is refused before it allocates anything when the source's declared
//! size is over `max_source_dimension` on a side or over `max_source_pixels` in all (a
//! decompression bomb, an absurd header); the decoded image then takes 3 bytes a pixel (4 with
//! transparency; a greyscale or 16-bit source is held twice while it is converted). Large
//! reductions first average the source down to twice the output box (a cheap integer pass),
//! so the Lanczos3 pass, whose scratch image takes 16 bytes a pixel, works on a small image;
//! that scratch image is never over 32 MiB ([`LANCZOS_SCRATCH_BUDGET`]). The output takes 3
//! or 4 bytes a pixel, and is never larger than the source.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::imageops::{self, FilterType};
use image::metadata::Orientation;
use image::{
    DynamicImage, GenericImageView, ImageBuffer, ImageDecoder, ImageFormat, ImageReader, Limits,
    Pixel, RgbImage,
};

use crate::params::{Fit, Format, Transform};

/// What bounds a decode.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    pub max_pixels: u64,
    pub max_dimension: u32,
}

/// What the encoder gets: the output format and the JPEG quality.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    pub format: Format,
    pub quality: u8,
}

/// A transformed image.
#[derive(Debug)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// Decodes `source` (JPEG, PNG, WebP or the first frame of a GIF, recognised by its bytes),
/// resizes it as `transform` says (never enlarging), applies its EXIF orientation and encodes
/// it. Errors are messages for the log.
pub fn transform(
    source: &[u8],
    transform: &Transform,
    limits: DecodeLimits,
    output: Output,
) -> Result<Encoded, String> {
    let mut decoder = open(source, limits)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    // The box is asked for in the displayed orientation; resizing happens before the
    // orientation is applied (on the small image), so a quarter turn swaps the box's sides. A
    // centred crop is the same whichever way the image is turned.
    let swaps = matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    let (width, height) = if swaps {
        (transform.height, transform.width)
    } else {
        (transform.width, transform.height)
    };
    let (source_width, source_height) = decoder.dimensions();
    let geometry = Geometry::plan(source_width, source_height, width, height, transform.fit);
    let image = decode(decoder)?;
    let mut resized = resize(image, &geometry);
    resized.apply_orientation(orientation);
    let bytes = encode(&resized, output)?;
    Ok(Encoded {
        bytes,
        width: resized.width(),
        height: resized.height(),
    })
}

/// Recognises the source by its bytes and reads its header, with the decoder's limits set:
/// a side over `max_dimension` or more than `max_pixels` is refused before anything is
/// allocated for the image.
fn open(source: &[u8], limits: DecodeLimits) -> Result<impl ImageDecoder + '_, String> {
    let mut reader = ImageReader::new(Cursor::new(source))
        .with_guessed_format()
        .map_err(|err| err.to_string())?;
    match reader.format() {
        Some(ImageFormat::Jpeg) if !jpeg_is_complete(source) => {
            return Err(
                "the JPEG is truncated: its segments end before the end-of-image marker".into(),
            )
        }
        Some(ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP | ImageFormat::Gif) => {}
        Some(other) => return Err(format!("{other:?} sources are not transformed")),
        None => return Err("the body is not a JPEG, PNG, WebP or GIF image".into()),
    }
    let mut decoder_limits = Limits::default();
    decoder_limits.max_image_width = Some(limits.max_dimension);
    decoder_limits.max_image_height = Some(limits.max_dimension);
    // The decoded image at 4 bytes a pixel: a 16-bit source (8 bytes a pixel) is held to half
    // the pixels.
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(4));
    reader.limits(decoder_limits.clone());
    let decoder = reader.into_decoder().map_err(|err| err.to_string())?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(format!(
            "{width}x{height} is {pixels} pixels, above max_source_pixels ({})",
            limits.max_pixels
        ));
    }
    decoder_limits
        .reserve(decoder.total_bytes())
        .map_err(|err| err.to_string())?;
    Ok(decoder)
}

/// Decodes into 8-bit RGB, or RGBA when the source has transparency.
fn decode(decoder: impl ImageDecoder) -> Result<DynamicImage, String> {
    let image = DynamicImage::from_decoder(decoder).map_err(|err| err.to_string())?;
    Ok(if image.color().has_alpha() {
        DynamicImage::ImageRgba8(image.into_rgba8())
    } else {
        DynamicImage::ImageRgb8(image.into_rgb8())
    })
}

/// Whether a JPEG's markers lead to its end-of-image marker. The JPEG decoder (zune-jpeg)
/// fills a truncated scan with grey instead of failing; a variant made of that would be cached
/// as if it were the image. Walks the segments from the start (so data after the end, such as
/// a phone's motion-photo video, does not matter); within a scan's entropy-coded data a 0xFF
/// byte is followed by 0x00 (stuffing) or a restart marker, anything else is the next marker.
fn jpeg_is_complete(source: &[u8]) -> bool {
    let mut at = 2; // after SOI
    while let Some(&[0xFF, marker]) = source.get(at..at + 2) {
        match marker {
            0xD9 => return true,
            // A fill byte, or a marker without a length.
            0xFF => at += 1,
            0x01 | 0xD0..=0xD7 => at += 2,
            _ => {
                let Some(&[high, low]) = source.get(at + 2..at + 4) else {
                    return false;
                };
                at += 2 + usize::from(u16::from_be_bytes([high, low]));
                if marker == 0xDA {
                    match next_marker(source, at) {
                        Some(next) => at = next,
                        None => return false,
                    }
                }
            }
        }
    }
    false
}

/// Where the entropy-coded data starting at `at` ends: its first marker that is not a
/// restart.
fn next_marker(source: &[u8], mut at: usize) -> Option<usize> {
    loop {
        at += source.get(at..)?.iter().position(|&byte| byte == 0xFF)?;
        match source.get(at + 1)? {
            0x00 | 0xD0..=0xD7 => at += 2,
            _ => return Some(at),
        }
    }
}

/// The part of the source kept and the size it is scaled to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// The crop: left, top, width, height.
    pub crop: (u32, u32, u32, u32),
    pub output: (u32, u32),
}

impl Geometry {
    /// Fits a `source_width` × `source_height` image to the requested box (either side may be
    /// missing: the image's proportions give it). Never enlarges: a source smaller than the
    /// box keeps its size (`cover` then crops it to at most the box).
    pub fn plan(
        source_width: u32,
        source_height: u32,
        width: Option<u32>,
        height: Option<u32>,
        fit: Fit,
    ) -> Geometry {
        let (sw, sh) = (f64::from(source_width), f64::from(source_height));
        let scale_w = width.map(|w| f64::from(w) / sw);
        let scale_h = height.map(|h| f64::from(h) / sh);
        let full = (0, 0, source_width, source_height);
        let scaled = |length: f64, scale: f64| (length * scale).round().max(1.0) as u32;
        match (scale_w, scale_h, fit) {
            (Some(scale_w), Some(scale_h), Fit::Cover) => {
                let scale = scale_w.max(scale_h).min(1.0);
                let out_w = width.unwrap_or(1).min(scaled(sw, scale));
                let out_h = height.unwrap_or(1).min(scaled(sh, scale));
                let crop_w = ((f64::from(out_w) / scale).round() as u32).clamp(1, source_width);
                let crop_h = ((f64::from(out_h) / scale).round() as u32).clamp(1, source_height);
                Geometry {
                    crop: (
                        (source_width - crop_w) / 2,
                        (source_height - crop_h) / 2,
                        crop_w,
                        crop_h,
                    ),
                    output: (out_w, out_h),
                }
            }
            (scale_w, scale_h, _) => {
                let scale = [scale_w, scale_h].into_iter().flatten().fold(1.0, f64::min);
                Geometry {
                    crop: full,
                    output: (scaled(sw, scale), scaled(sh, scale)),
                }
            }
        }
    }
}

/// Most bytes the Lanczos pass's scratch image (16 bytes a pixel: the source's width by the
/// output's height) may take; beyond it the output is made by averaging alone.
const LANCZOS_SCRATCH_BUDGET: u64 = 32 << 20;

/// How the crop becomes the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resampling {
    /// The sizes match: a crop at most.
    None,
    /// A reduction by more than 3 on both sides: averaging down to twice the output (cheap),
    /// then Lanczos3, whose scratch image is then small.
    AverageThenLanczos,
    /// Lanczos3 straight from the crop.
    Lanczos,
    /// Averaging alone, when Lanczos3's scratch image would be over
    /// [`LANCZOS_SCRATCH_BUDGET`] (a mild reduction of a large image): a box filter.
    Average,
}

impl Geometry {
    fn resampling(&self) -> Resampling {
        let (_, _, crop_w, crop_h) = self.crop;
        let (out_w, out_h) = self.output;
        if (crop_w, crop_h) == (out_w, out_h) {
            Resampling::None
        } else if crop_w / 3 > out_w && crop_h / 3 > out_h {
            Resampling::AverageThenLanczos
        } else if u64::from(crop_w) * u64::from(out_h) * 16 <= LANCZOS_SCRATCH_BUDGET {
            Resampling::Lanczos
        } else {
            Resampling::Average
        }
    }
}

/// Crops and scales, as [`Geometry::resampling`] says.
fn resize(image: DynamicImage, geometry: &Geometry) -> DynamicImage {
    let (x, y, crop_w, crop_h) = geometry.crop;
    let resampling = geometry.resampling();
    if resampling == Resampling::None {
        return if geometry.crop == (0, 0, image.width(), image.height()) {
            image
        } else {
            image.crop_imm(x, y, crop_w, crop_h)
        };
    }
    match image {
        DynamicImage::ImageRgba8(buffer) => {
            let view = imageops::crop_imm(&buffer, x, y, crop_w, crop_h);
            DynamicImage::ImageRgba8(scale(&*view, geometry.output, resampling))
        }
        other => {
            let buffer = other.into_rgb8();
            let view = imageops::crop_imm(&buffer, x, y, crop_w, crop_h);
            DynamicImage::ImageRgb8(scale(&*view, geometry.output, resampling))
        }
    }
}

fn scale<I>(
    view: &I,
    (out_w, out_h): (u32, u32),
    resampling: Resampling,
) -> ImageBuffer<I::Pixel, Vec<u8>>
where
    I: GenericImageView,
    I::Pixel: Pixel<Subpixel = u8> + 'static,
{
    match resampling {
        Resampling::AverageThenLanczos => {
            let halfway = imageops::thumbnail(view, out_w * 2, out_h * 2);
            imageops::resize(&halfway, out_w, out_h, FilterType::Lanczos3)
        }
        Resampling::Average => imageops::thumbnail(view, out_w, out_h),
        Resampling::Lanczos | Resampling::None => {
            imageops::resize(view, out_w, out_h, FilterType::Lanczos3)
        }
    }
}

fn encode(image: &DynamicImage, output: Output) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    let result = match output.format {
        Format::Jpeg => JpegEncoder::new_with_quality(&mut bytes, output.quality)
            .encode_image(&over_white(image)),
        Format::Png => image.write_with_encoder(PngEncoder::new(&mut bytes)),
        Format::WebP => image.write_with_encoder(WebPEncoder::new_lossless(&mut bytes)),
    };
    result.map_err(|err| err.to_string())?;
    Ok(bytes)
}

/// JPEG has no transparency: transparent pixels are laid over white (not black, which is
/// what dropping the alpha channel would show).
fn over_white(image: &DynamicImage) -> RgbImage {
    match image {
        DynamicImage::ImageRgba8(rgba) => RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            let [r, g, b, a] = rgba.get_pixel(x, y).0;
            let blend = |c: u8| {
                let (c, a) = (u32::from(c), u32::from(a));
                ((c * a + 255 * (255 - a) + 127) / 255) as u8
            };
            image::Rgb([blend(r), blend(g), blend(b)])
        }),
        other => other.to_rgb8(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, Rgba};

    const LIMITS: DecodeLimits = DecodeLimits {
        max_pixels: 16_000_000,
        max_dimension: 8192,
    };

    fn photo(width: u32, height: u32) -> RgbImage {
        ImageBuffer::from_fn(width, height, |x, y| {
            Rgb([
                (x * 255 / width) as u8,
                (y * 255 / height) as u8,
                ((x ^ y) & 0xff) as u8,
            ])
        })
    }

    fn encoded(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        encoded(
            &DynamicImage::ImageRgb8(photo(width, height)),
            ImageFormat::Jpeg,
        )
    }

    fn sized(width: Option<u32>, height: Option<u32>, fit: Fit) -> Transform {
        Transform {
            width,
            height,
            fit,
            ..Transform::default()
        }
    }

    fn output(format: Format) -> Output {
        Output {
            format,
            quality: 80,
        }
    }

    fn decoded(bytes: &[u8], format: ImageFormat) -> DynamicImage {
        image::load_from_memory_with_format(bytes, format).unwrap()
    }

    #[test]
    fn geometry_contains_covers_and_never_enlarges() {
        let plan = Geometry::plan;
        assert_eq!(
            plan(4000, 3000, Some(320), None, Fit::Contain),
            Geometry {
                crop: (0, 0, 4000, 3000),
                output: (320, 240)
            }
        );
        assert_eq!(
            plan(4000, 3000, None, Some(300), Fit::Contain).output,
            (400, 300)
        );
        assert_eq!(
            plan(4000, 3000, Some(320), Some(200), Fit::Contain).output,
            (267, 200)
        );
        assert_eq!(
            plan(4000, 3000, Some(320), Some(200), Fit::Cover),
            Geometry {
                crop: (0, 250, 4000, 2500),
                output: (320, 200)
            }
        );
        assert_eq!(
            plan(4000, 3000, Some(100), Some(300), Fit::Cover),
            Geometry {
                crop: (1500, 0, 1000, 3000),
                output: (100, 300)
            }
        );
        // Smaller than the box: kept (contain), cropped to the box (cover).
        assert_eq!(
            plan(200, 100, Some(800), None, Fit::Contain).output,
            (200, 100)
        );
        assert_eq!(
            plan(200, 100, Some(150), Some(150), Fit::Cover),
            Geometry {
                crop: (25, 0, 150, 100),
                output: (150, 100)
            }
        );
        // Which resampling: averaging first for large reductions, Lanczos alone for mild ones,
        // averaging alone where Lanczos's scratch image would be over its budget.
        assert_eq!(
            plan(4000, 3000, Some(320), None, Fit::Contain).resampling(),
            Resampling::AverageThenLanczos
        );
        assert_eq!(
            plan(1280, 960, Some(640), None, Fit::Contain).resampling(),
            Resampling::Lanczos
        );
        assert_eq!(
            plan(4000, 3000, Some(3000), None, Fit::Contain).resampling(),
            Resampling::Average
        );
        assert_eq!(
            plan(640, 480, Some(640), None, Fit::Contain).resampling(),
            Resampling::None
        );
        // Extreme proportions never give an empty side.
        assert_eq!(plan(10000, 2, Some(10), None, Fit::Contain).output, (10, 1));
        assert_eq!(plan(640, 480, None, None, Fit::Contain).output, (640, 480));
    }

    #[test]
    fn a_jpeg_becomes_a_smaller_webp_jpeg_or_png() {
        let source = jpeg(1280, 960);
        for (format, image_format) in [
            (Format::WebP, ImageFormat::WebP),
            (Format::Jpeg, ImageFormat::Jpeg),
            (Format::Png, ImageFormat::Png),
        ] {
            let out = transform(
                &source,
                &sized(Some(320), None, Fit::Contain),
                LIMITS,
                output(format),
            )
            .unwrap();
            assert_eq!((out.width, out.height), (320, 240));
            let back = decoded(&out.bytes, image_format);
            assert_eq!((back.width(), back.height()), (320, 240), "{format:?}");
            // The colours survive: the gradient's corners.
            let pixel = back.to_rgb8().get_pixel(316, 4).0;
            assert!(pixel[0] > 230 && pixel[1] < 30, "{format:?}: {pixel:?}");
        }
    }

    #[test]
    fn a_mild_reduction_of_a_large_image_is_averaged() {
        let out = transform(
            &jpeg(4000, 3000),
            &sized(Some(3000), None, Fit::Contain),
            LIMITS,
            output(Format::Jpeg),
        )
        .unwrap();
        assert_eq!((out.width, out.height), (3000, 2250));
    }

    #[test]
    fn cover_crops_to_the_box() {
        let out = transform(
            &jpeg(1200, 800),
            &sized(Some(200), Some(200), Fit::Cover),
            LIMITS,
            output(Format::Png),
        )
        .unwrap();
        assert_eq!((out.width, out.height), (200, 200));
    }

    #[test]
    fn png_gif_and_webp_sources_decode_and_transparency_survives() {
        let rgba = DynamicImage::ImageRgba8(ImageBuffer::from_fn(400, 200, |x, _| {
            Rgba([200, 10, 10, if x < 200 { 0 } else { 255 }])
        }));
        for format in [ImageFormat::Png, ImageFormat::WebP, ImageFormat::Gif] {
            let source = encoded(&rgba, format);
            let out = transform(
                &source,
                &sized(Some(100), None, Fit::Contain),
                LIMITS,
                output(Format::Png),
            )
            .unwrap();
            let back = decoded(&out.bytes, ImageFormat::Png).to_rgba8();
            assert_eq!(back.dimensions(), (100, 50), "{format:?}");
            assert_eq!(
                back.get_pixel(5, 25).0[3],
                0,
                "{format:?}: transparent half"
            );
            assert_eq!(back.get_pixel(95, 25).0[3], 255, "{format:?}: opaque half");
            // As JPEG, the transparent half is white.
            let out = transform(
                &source,
                &sized(Some(100), None, Fit::Contain),
                LIMITS,
                output(Format::Jpeg),
            )
            .unwrap();
            let back = decoded(&out.bytes, ImageFormat::Jpeg).to_rgb8();
            assert!(
                back.get_pixel(5, 25).0.iter().all(|&c| c > 240),
                "{format:?}"
            );
        }
    }

    #[test]
    fn exif_orientation_is_applied() {
        // A 300x100 JPEG whose EXIF says "rotate 90": shown 100x300. Asked for 50 wide, it
        // comes out 50x150.
        let mut source = jpeg(300, 100);
        let exif: &[u8] = &[
            0xFF, 0xE1, 0x00, 0x22, b'E', b'x', b'i', b'f', 0, 0, b'M', b'M', 0, 0x2A, 0, 0, 0, 8,
            0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0,
        ];
        source.splice(2..2, exif.iter().copied());
        let out = transform(
            &source,
            &sized(Some(50), None, Fit::Contain),
            LIMITS,
            output(Format::Png),
        )
        .unwrap();
        assert_eq!((out.width, out.height), (50, 150));
    }

    #[test]
    fn hostile_sources_are_errors_not_panics() {
        let source = jpeg(640, 480);
        let t = sized(Some(100), None, Fit::Contain);
        let webp = output(Format::WebP);
        // Truncated anywhere, or garbage: an error.
        for cut in [0, 1, 2, 10, 100, 600, source.len() / 2, source.len() - 2] {
            assert!(
                transform(&source[..cut], &t, LIMITS, webp).is_err(),
                "cut at {cut}"
            );
        }
        assert!(transform(b"<html>not an image</html>", &t, LIMITS, webp).is_err());
        // A PNG header declaring 100000x100000: refused before any allocation.
        let err = transform(&huge_png_header(100_000, 100_000), &t, LIMITS, webp).unwrap_err();
        assert!(err.contains("limit"), "{err}");
        // Within the side limit but over the pixel limit: a decompression bomb.
        let err = transform(&huge_png_header(8000, 8000), &t, LIMITS, webp).unwrap_err();
        assert!(err.contains("above max_source_pixels"), "{err}");
        // Other formats the decoder knows are not ours.
        let bmp_like = b"BM\0\0\0\0\0\0\0\0";
        assert!(transform(bmp_like, &t, LIMITS, webp).is_err());
    }

    /// A PNG declaring `width`×`height`, 8-bit RGBA, with a few bytes of image data: what a
    /// decompression bomb looks like until its data is inflated.
    fn huge_png_header(width: u32, height: u32) -> Vec<u8> {
        let mut ihdr = width.to_be_bytes().to_vec();
        ihdr.extend(height.to_be_bytes());
        ihdr.extend([8, 6, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in [
            (b"IHDR", ihdr),
            // zlib of one zero byte.
            (
                b"IDAT",
                vec![0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01],
            ),
            (b"IEND", vec![]),
        ] {
            let mut chunk = kind.to_vec();
            chunk.extend(&data);
            png.extend((data.len() as u32).to_be_bytes());
            png.extend(&chunk);
            png.extend(crc32(&chunk).to_be_bytes());
        }
        png
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
            }
        }
        !crc
    }
}
