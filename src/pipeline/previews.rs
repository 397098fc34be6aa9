//! Cheap previews of the latents while denoising runs.

use super::preprocess::RgbImage;

/// How much each latent channel adds to R, G and B: a linear fit of SD1's VAE decoder, good
/// enough to watch an image form (latent resolution, no VAE call).
const LATENT_RGB: [[f32; 3]; 4] = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
];

/// Previews of latents `[n, c, h, w]` (row-major values): the linear fit above for 4-channel
/// latents, the channel mean in grey otherwise.
pub fn latent_previews(values: &[f32], [n, c, h, w]: [usize; 4]) -> Vec<RgbImage> {
    let plane = h * w;
    (0..n)
        .map(|b| {
            let latent = &values[b * c * plane..(b + 1) * c * plane];
            let pixels = (0..plane)
                .flat_map(|p| {
                    (0..3).map(move |rgb| {
                        let v: f32 = if c == LATENT_RGB.len() {
                            (0..c).map(|ch| latent[ch * plane + p] * LATENT_RGB[ch][rgb]).sum()
                        } else {
                            (0..c).map(|ch| latent[ch * plane + p]).sum::<f32>() / c as f32
                        };
                        ((v + 1.0) * 127.5).clamp(0.0, 255.0) as u8
                    })
                })
                .collect();
            RgbImage { width: w, height: h, pixels }
        })
        .collect()
}
