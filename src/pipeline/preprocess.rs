//! The model card's preprocessing, exactly: decode, RGB as PIL's `convert("RGB")`, float in
//! [0, 1], resize to the CLIP size with PyTorch's bicubic (A = -0.75, align_corners=False, NO
//! antialiasing, border-clamped taps, no value clamp; the image is stretched, not cropped), then
//! CLIP's mean/std. The model is very sensitive to this: an antialiased resize blurs its output.

use std::io::Cursor;

use image::{ImageReader, Limits};

// The model card's digits, verbatim (f32 rounds them as torch does).
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Larger pictures are refused before decoding (a 24-megapixel photo is about 5600x4200).
pub const MAX_PIXELS: u64 = 50_000_000;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ImageError {
    #[error("this file is not an image imvar can read (JPEG, PNG, WebP, GIF or BMP)")]
    UnknownFormat,
    #[error("the image could not be decoded; the file may be damaged or truncated ({0})")]
    Corrupt(String),
    #[error(
        "the image is {width}x{height} ({} megapixels); imvar accepts up to {} megapixels: \
         scale it down first", (*width as u64 * *height as u64) / 1_000_000, MAX_PIXELS / 1_000_000
    )]
    TooLarge { width: u32, height: u32 },
}

/// A decoded picture: RGB, 8 bits per channel, row-major.
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

/// Decodes any image the `image` crate reads, refusing huge ones from their header alone.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| ImageError::Corrupt(e.to_string()))
    };
    if reader()?.format().is_none() {
        return Err(ImageError::UnknownFormat);
    }
    let (width, height) = reader()?.into_dimensions().map_err(|e| ImageError::Corrupt(e.to_string()))?;
    if width as u64 * height as u64 > MAX_PIXELS {
        return Err(ImageError::TooLarge { width, height });
    }
    let mut reader = reader()?;
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 8 + (64 << 20));
    reader.limits(limits);
    let image = reader.decode().map_err(|e| ImageError::Corrupt(e.to_string()))?;
    // Like PIL's convert("RGB"): alpha is dropped (not composited), grey is replicated.
    let rgb = image.to_rgb8();
    Ok(RgbImage {
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        pixels: rgb.into_raw(),
    })
}

/// PNG bytes of a picture (how variations are saved and handed to the page).
pub fn encode_png(image: &RgbImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image::RgbImage::from_raw(image.width as u32, image.height as u32, image.pixels.clone())
        .expect("pixel count matches the size")
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("PNG encoding into memory cannot fail");
    out.into_inner()
}

/// The CLIP input, CHW `[3, size, size]`, from a decoded picture.
pub fn clip_input(image: &RgbImage, size: usize) -> Vec<f32> {
    let (w, h) = (image.width, image.height);
    let horizontal = cubic_taps(w, size);
    let vertical = cubic_taps(h, size);
    let mut out = vec![0.0f32; 3 * size * size];
    for c in 0..3 {
        // ToTensor: u8 / 255 in f32.
        let plane: Vec<f32> = image.pixels[c..].iter().step_by(3).map(|&v| v as f32 / 255.0).collect();
        for (y, (rows, wy)) in vertical.iter().enumerate() {
            for (x, (cols, wx)) in horizontal.iter().enumerate() {
                // Along x first, then y, summed left to right as torch's kernel does.
                let row = |r: usize| {
                    let line = &plane[r * w..];
                    line[cols[0]] * wx[0] + line[cols[1]] * wx[1] + line[cols[2]] * wx[2] + line[cols[3]] * wx[3]
                };
                let value = row(rows[0]) * wy[0] + row(rows[1]) * wy[1] + row(rows[2]) * wy[2] + row(rows[3]) * wy[3];
                out[(c * size + y) * size + x] = (value - CLIP_MEAN[c]) / CLIP_STD[c];
            }
        }
    }
    out
}

/// For each output index: the 4 source indices (clamped to the border) and their weights, as
/// PyTorch's `upsample_bicubic2d` computes them in f32.
fn cubic_taps(input: usize, output: usize) -> Vec<([usize; 4], [f32; 4])> {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| {
            let real = scale * (i as f32 + 0.5) - 0.5;
            let index = (real.floor() as i64).min(input as i64 - 1);
            let t = (real - index as f32).clamp(0.0, 1.0);
            let weights = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
            let taps = std::array::from_fn(|j| (index - 1 + j as i64).clamp(0, input as i64 - 1) as usize);
            (taps, weights)
        })
        .collect()
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::testing::{Golden, assert_close, fixture_path};

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(fixture_path(name)).unwrap()
    }

    #[test]
    fn matches_the_model_card_transform() {
        let golden = Golden::open("preprocess.safetensors");
        for (file, key) in [("input.png", "input"), ("input-rgba.png", "input-rgba")] {
            let image = decode(&fixture(file)).unwrap();
            assert_close(&clip_input(&image, 224), &golden.f32(key), 1e-5, 0.0);
        }
    }

    #[test]
    fn bad_files_are_clear_errors() {
        assert_eq!(decode(b"definitely not an image").err(), Some(ImageError::UnknownFormat));
        let png = fixture("input.png");
        let truncated = decode(&png[..png.len() / 2]).err().unwrap();
        assert!(matches!(truncated, ImageError::Corrupt(_)), "{truncated:?}");
        assert!(truncated.to_string().contains("damaged or truncated"));
        // A BMP header claiming 10000x10000 pixels (and no pixel data) is refused from the header.
        let mut huge = Vec::new();
        huge.extend_from_slice(b"BM");
        for v in [54u32 + 300_000_000, 0, 54, 40, 10_000, 10_000] {
            huge.extend_from_slice(&v.to_le_bytes());
        }
        huge.extend_from_slice(&1u16.to_le_bytes());
        huge.extend_from_slice(&24u16.to_le_bytes());
        huge.extend_from_slice(&[0; 24]);
        let err = decode(&huge).err().unwrap();
        assert_eq!(err, ImageError::TooLarge { width: 10_000, height: 10_000 });
        assert!(err.to_string().contains("100 megapixels"), "{err}");
    }

    #[test]
    fn other_formats_decode_to_the_same_pixels() {
        let image = decode(&fixture("input.png")).unwrap();
        let rgb = image::RgbImage::from_raw(image.width as u32, image.height as u32, image.pixels.clone()).unwrap();
        for format in [image::ImageFormat::Bmp, image::ImageFormat::WebP] {
            let mut bytes = Cursor::new(Vec::new());
            rgb.write_to(&mut bytes, format).unwrap();
            let again = decode(bytes.get_ref()).unwrap();
            assert_eq!(again.pixels, image.pixels, "{format:?} is lossless");
        }
        let mut jpeg = Cursor::new(Vec::new());
        rgb.write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
        assert_eq!(decode(jpeg.get_ref()).unwrap().width, image.width);
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod fuzz {
        use image::ImageFormat;
        use proptest::prelude::*;

        use super::*;

        /// A small picture in every format imvar reads, as an encoder writes it.
        fn seeds() -> Vec<Vec<u8>> {
            let picture = image::RgbImage::from_fn(24, 16, |x, y| image::Rgb([(x * 10) as u8, (y * 15) as u8, 128]));
            [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Gif, ImageFormat::Bmp, ImageFormat::WebP]
                .into_iter()
                .map(|format| {
                    let mut out = Cursor::new(Vec::new());
                    image::DynamicImage::ImageRgb8(picture.clone()).write_to(&mut out, format).unwrap();
                    out.into_inner()
                })
                .collect()
        }

        /// A seed with bytes overwritten, a 32-bit field replaced (where sizes live), and cut.
        fn mutated() -> impl Strategy<Value = Vec<u8>> {
            (proptest::sample::select(seeds()), proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
                any::<prop::sample::Index>(), any::<u32>(), any::<bool>(), any::<prop::sample::Index>())
                .prop_map(|(mut file, edits, field, value, cut, keep)| {
                    for (at, byte) in edits {
                        let at = at.index(file.len());
                        file[at] = byte;
                    }
                    let at = field.index(file.len() - 4);
                    file[at..at + 4].copy_from_slice(&value.to_le_bytes());
                    if cut {
                        file.truncate(keep.index(file.len()));
                    }
                    file
                })
        }

        proptest! {
            #![proptest_config(crate::testing::fuzz_cases(300))]

            /// Any file is a picture within the pixel bound whose buffer fits its size, or an
            /// error: never a panic.
            #[test]
            fn any_file_decodes_to_a_bounded_picture_or_an_error(file in mutated()) {
                if let Ok(picture) = decode(&file) {
                    prop_assert!((picture.width * picture.height) as u64 <= MAX_PIXELS);
                    prop_assert_eq!(picture.pixels.len(), picture.width * picture.height * 3);
                }
            }
        }
    }
}
