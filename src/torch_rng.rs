//! PyTorch's CPU generator, bit for bit: `torch.randn(shape, generator=torch.Generator()
//! .manual_seed(seed))` as diffusers draws latents (and per-step noise) with a CPU generator. So a
//! seed here gives the same images as the same seed in diffusers.
//!
//! MT19937 words; float32 normals by Box–Muller in blocks of 16, with the AVX2 cephes `log` and
//! `sincos` that torch's x86 builds run, fused multiply-adds included (see the reference notes).

use std::f64::consts::PI;

/// Standard 32-bit Mersenne Twister, seeded like `std::mt19937` / numpy's `RandomState`.
#[derive(Clone)]
struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, index: 624 }
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn twist(&mut self) {
        for i in 0..624 {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
            let mut next = self.state[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                next ^= 0x9908_b0df;
            }
            self.state[i] = next;
        }
        self.index = 0;
    }
}

/// A `torch.Generator()` on the CPU: one stream that successive `randn` calls continue.
#[derive(Clone)]
pub struct TorchGenerator {
    engine: Mt19937,
    /// The second normal of the last double-precision Box–Muller pair (small tensors).
    cached_normal: Option<f64>,
}

impl TorchGenerator {
    /// `torch.Generator().manual_seed(seed)`: seeds `s` and `s + 2^32` give the same stream.
    pub fn new(seed: u64) -> Self {
        Self {
            engine: Mt19937::new(seed as u32),
            cached_normal: None,
        }
    }

    fn uniform_f32(&mut self) -> f32 {
        (self.engine.next_u32() & 0x00ff_ffff) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    fn uniform_f64(&mut self) -> f64 {
        let hi = self.engine.next_u32() as u64;
        let lo = self.engine.next_u32() as u64;
        (((hi << 32) | lo) & ((1u64 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `torch.randn(n, generator=self)` as float32, in row-major order.
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        if n < 16 {
            return (0..n).map(|_| self.normal_f64() as f32).collect();
        }
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        for start in (0..=n - 16).step_by(16) {
            box_muller_16(&mut data[start..start + 16]);
        }
        if !n.is_multiple_of(16) {
            // The tail is redrawn as one more block over the last 16 positions.
            let tail = &mut data[n - 16..];
            for value in tail.iter_mut() {
                *value = self.uniform_f32();
            }
            box_muller_16(tail);
        }
        data
    }

    /// One double-precision normal (torch's scalar path, for tensors under 16 elements).
    fn normal_f64(&mut self) -> f64 {
        if let Some(cached) = self.cached_normal.take() {
            return cached;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let radius = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * PI * u1;
        self.cached_normal = Some(radius * theta.sin());
        radius * theta.cos()
    }
}

/// The noise of a batch of `batch` images, of which only `rows` are being generated: each draw
/// takes the whole batch's values from the stream (as diffusers does for the whole batch) and
/// keeps the rows. So variation k of a seed is the same whether made alone, in a chunk, or with
/// all the others.
pub struct BatchNoise {
    generator: TorchGenerator,
    batch: usize,
    rows: std::ops::Range<usize>,
}

impl BatchNoise {
    pub fn new(seed: u64, batch: usize, rows: std::ops::Range<usize>) -> Self {
        assert!(rows.start < rows.end && rows.end <= batch, "rows {rows:?} of a batch of {batch}");
        Self { generator: TorchGenerator::new(seed), batch, rows }
    }

    /// `per_row` normals for each kept row, row after row.
    pub fn draw(&mut self, per_row: usize) -> Vec<f32> {
        let all = self.generator.randn(self.batch * per_row);
        all[self.rows.start * per_row..self.rows.end * per_row].to_vec()
    }
}

/// Box–Muller on 16 uniforms in place: pairs (j, j + 8).
fn box_muller_16(block: &mut [f32]) {
    for j in 0..8 {
        let u1 = 1.0 - block[j];
        let u2 = block[j + 8];
        let radius = (-2.0 * log_avx(u1)).sqrt();
        let theta = (2.0 * std::f32::consts::PI) * u2;
        let (sin, cos) = sincos_avx(theta);
        block[j] = radius * cos + 0.0;
        block[j + 8] = radius * sin + 0.0;
    }
}

/// cephes `logf` as avx_mathfun.h evaluates it (with fused multiply-adds).
fn log_avx(x: f32) -> f32 {
    const P: [f32; 9] = [
        7.037_683_6e-2,
        -1.151_461e-1,
        1.167_699_9e-1,
        -1.242_014_1e-1,
        1.424_932_3e-1,
        -1.666_805_8e-1,
        2.000_071_4e-1,
        -2.499_999_4e-1,
        3.333_333e-1,
    ];
    const Q1: f32 = -2.121_944_4e-4;
    const Q2: f32 = 0.693_359_4;
    const SQRTHF: f32 = std::f32::consts::FRAC_1_SQRT_2;

    let x = x.max(f32::MIN_POSITIVE);
    let bits = x.to_bits();
    let mut e = ((bits >> 23) as i32 - 127) as f32 + 1.0;
    let mut m = f32::from_bits((bits & 0x807f_ffff) | 0.5f32.to_bits());
    let below = m < SQRTHF;
    let tmp = if below { m } else { 0.0 };
    m -= 1.0;
    e -= if below { 1.0 } else { 0.0 };
    m += tmp;

    let z = m * m;
    let mut y = P[0];
    for p in &P[1..] {
        y = y.mul_add(m, *p);
    }
    y = (y * m).mul_add(z, e * Q1);
    y = (-z).mul_add(0.5, y);
    let x = m + y;
    e.mul_add(Q2, x)
}

/// cephes `sincosf` as avx_mathfun.h evaluates it (with fused multiply-adds).
fn sincos_avx(x: f32) -> (f32, f32) {
    const FOPI: f32 = 1.273_239_5;
    const DP: [f32; 3] = [-0.785_156_25, -2.418_756_5e-4, -3.774_895e-8];
    const C: [f32; 3] = [2.443_315_7e-5, -1.388_731_6e-3, 4.166_664_6e-2];
    const S: [f32; 3] = [-1.951_529_6e-4, 8.332_161e-3, -1.666_665_5e-1];
    const SIGN: u32 = 0x8000_0000;

    let mut sign_sin = x.to_bits() & SIGN;
    let mut x = x.abs();
    let mut j = (x * FOPI) as i32;
    j = (j + 1) & !1;
    let y = j as f32;
    let swap = ((j & 4) as u32) << 29;
    let poly_mask = (j & 2) == 0;
    let sign_cos = ((!(j - 2) & 4) as u32) << 29;
    sign_sin ^= swap;

    for dp in DP {
        x = y.mul_add(dp, x);
    }
    let z = x * x;

    let mut c = C[0].mul_add(z, C[1]);
    c = c.mul_add(z, C[2]);
    c *= z;
    c = c.mul_add(z, -(z * 0.5));
    c += 1.0;

    let mut s = S[0].mul_add(z, S[1]);
    s = s.mul_add(z, S[2]);
    s *= z;
    s = s.mul_add(x, x);

    let (ysin2, ysin1) = if poly_mask { (s, 0.0) } else { (0.0, c) };
    let sin = f32::from_bits((ysin1 + ysin2).to_bits() ^ sign_sin);
    let cos = f32::from_bits(((c - ysin1) + (s - ysin2)).to_bits() ^ sign_cos);
    (sin, cos)
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::testing::Golden;

    fn numel(key: &str) -> usize {
        let shape = key.rsplit("shape").next().unwrap();
        shape.split('x').map(|d| d.parse::<usize>().unwrap()).product()
    }

    #[test]
    fn randn_matches_torch_bit_for_bit_on_every_fixture_case() {
        let golden = Golden::open("randn.safetensors");
        let mut checked = 0;
        for key in golden.names().into_iter().filter(|k| k.starts_with("seed")) {
            let seed: u64 = key["seed".len()..key.find('.').unwrap()].parse().unwrap();
            let got = TorchGenerator::new(seed).randn(numel(&key));
            let expected = golden.f32(&key);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(&got) == bits(&expected), "{key}: first difference at {:?}",
                got.iter().zip(&expected).position(|(a, b)| a.to_bits() != b.to_bits()));
            checked += 1;
        }
        assert_eq!(checked, 60);
    }

    #[test]
    fn batch_noise_keeps_the_rows_of_the_whole_batch_draw() {
        let mut whole = BatchNoise::new(9, 3, 0..3);
        let mut middle = BatchNoise::new(9, 3, 1..2);
        for _ in 0..2 {
            let all = whole.draw(20);
            assert_eq!(middle.draw(20), all[20..40]);
        }
    }

    #[test]
    fn successive_draws_continue_one_stream_like_torch() {
        let golden = Golden::open("randn.safetensors");
        let mut stream: Vec<String> = golden.names().into_iter().filter(|k| k.starts_with("stream")).collect();
        stream.sort_by_key(|k| k.split('.').nth(1).unwrap().parse::<usize>().unwrap());
        let seed: u64 = stream[0]["stream".len()..stream[0].find('.').unwrap()].parse().unwrap();
        let mut generator = TorchGenerator::new(seed);
        assert!(stream.len() >= 4);
        for key in stream {
            let got = generator.randn(numel(&key));
            assert_eq!(got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                golden.f32(&key).iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "{key}");
        }
    }
}
