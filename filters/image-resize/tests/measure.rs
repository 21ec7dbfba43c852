//! Measurements and fixtures, run by hand (`#[ignore]`d):
//!
//! ```sh
//! cargo test --release -p image-resize --test measure -- --ignored --nocapture --test-threads 1
//! ```
//!
//! - `native_time_and_peak_memory`: decode + resize + encode of synthetic 1-megapixel and
//!   12-megapixel JPEGs to 320 px wide WebP and JPEG, natively, with the peak of the heap
//!   (a counting allocator); writes the two sources to `target/image-resize-bench/` for the
//!   wasm measurement through `edgeward filter test`.
//! - `write_fixtures`: (re)writes `tests/fixtures/`, the images the end-to-end tests serve.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb, RgbImage, Rgba};
use image_resize::params::{Fit, Format, Transform};
use image_resize::transform::{transform, DecodeLimits, Output};

/// The system allocator, counting the bytes in use and their peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A photo-like image: smooth gradients with a little deterministic grain, which JPEG
/// compresses about as it does a camera's picture.
fn photo(width: u32, height: u32) -> RgbImage {
    ImageBuffer::from_fn(width, height, |x, y| {
        let grain = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)).rotate_left(7) % 24;
        let wave = ((x as f32 / 37.0).sin() * (y as f32 / 53.0).cos() * 40.0) as i32;
        let channel = |base: u32| (base as i32 + wave + grain as i32).clamp(0, 255) as u8;
        Rgb([
            channel(x * 200 / width + 20),
            channel(y * 200 / height + 20),
            channel(120),
        ])
    })
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode_image(&photo(width, height))
        .unwrap();
    bytes
}

#[test]
#[ignore]
fn native_time_and_peak_memory() {
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/image-resize-bench");
    std::fs::create_dir_all(&out_dir).unwrap();
    let limits = DecodeLimits {
        max_pixels: 16_000_000,
        max_dimension: 8192,
    };
    let request = Transform {
        width: Some(320),
        fit: Fit::Contain,
        ..Transform::default()
    };
    for (name, width, height) in [("1mp", 1280, 800), ("12mp", 4000, 3000)] {
        let source = jpeg(width, height);
        std::fs::write(out_dir.join(format!("{name}.jpg")), &source).unwrap();
        for format in [Format::WebP, Format::Jpeg] {
            let output = Output {
                format,
                quality: 80,
            };
            // One warm-up, then the median of five.
            transform(&source, &request, limits, output).unwrap();
            let mut times = Vec::new();
            let mut peak = 0;
            let mut size = 0;
            for _ in 0..5 {
                let before = IN_USE.load(Ordering::Relaxed);
                PEAK.store(before, Ordering::Relaxed);
                let start = Instant::now();
                let encoded = transform(&source, &request, limits, output).unwrap();
                times.push(start.elapsed());
                peak = PEAK.load(Ordering::Relaxed) - before;
                size = encoded.bytes.len();
            }
            times.sort();
            println!(
                "{name} ({width}x{height}, {} KiB JPEG) -> 320 px {format:?}: {:.1} ms, peak heap {:.1} MiB, {} KiB out",
                source.len() / 1024,
                times[2].as_secs_f64() * 1000.0,
                peak as f64 / (1 << 20) as f64,
                size / 1024
            );
        }
    }
}

#[test]
#[ignore]
fn write_fixtures() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let photo_jpg = {
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85)
            .encode_image(&photo(640, 480))
            .unwrap();
        bytes
    };
    std::fs::write(dir.join("photo.jpg"), &photo_jpg).unwrap();
    // The same photo cut off in the middle of its scan.
    std::fs::write(
        dir.join("truncated.jpg"),
        &photo_jpg[..photo_jpg.len() * 3 / 5],
    )
    .unwrap();
    // A logo with a transparent left half.
    let logo = DynamicImage::ImageRgba8(ImageBuffer::from_fn(300, 200, |x, y| {
        Rgba([
            (x % 256) as u8,
            (y % 256) as u8,
            160,
            if x < 150 { 0 } else { 255 },
        ])
    }));
    std::fs::write(dir.join("logo.png"), encode(&logo, ImageFormat::Png)).unwrap();
    // A two-frame GIF: red, then blue; the first frame is the picture.
    {
        use image::codecs::gif::GifEncoder;
        use image::{Delay, Frame};
        let frame = |rgb: [u8; 3]| {
            Frame::from_parts(
                ImageBuffer::from_pixel(120, 80, Rgba([rgb[0], rgb[1], rgb[2], 255])),
                0,
                0,
                Delay::from_numer_denom_ms(100, 1),
            )
        };
        let mut bytes = Vec::new();
        GifEncoder::new(&mut bytes)
            .encode_frames([frame([255, 0, 0]), frame([0, 0, 255])])
            .unwrap();
        std::fs::write(dir.join("two-frames.gif"), bytes).unwrap();
    }
    // A decompression bomb: 8000x8000 (within the side limit, 64 megapixels) in a few KiB: a
    // one-bit greyscale PNG of zeros, which decodes to 64 MB at 8 bits a pixel.
    {
        let mut bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut bytes, 8000, 8000);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::One);
        encoder.set_compression(png::Compression::High);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&vec![0; 1000 * 8000]).unwrap();
        writer.finish().unwrap();
        std::fs::write(dir.join("bomb.png"), bytes).unwrap();
    }
    // A PNG whose header declares 100000x100000, with one byte of image data.
    std::fs::write(dir.join("huge-dimensions.png"), huge_dimensions_png()).unwrap();
}

fn huge_dimensions_png() -> Vec<u8> {
    let mut bytes = Vec::new();
    let encoder = png::Encoder::new(&mut bytes, 1, 1);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&[0]).unwrap();
    writer.finish().unwrap();
    // Rewrite IHDR's width and height (bytes 16..24), then its CRC (bytes 29..33).
    bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}
