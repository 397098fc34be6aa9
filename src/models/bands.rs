//! An activation too large for one GPU storage binding, kept as bands of rows, top to bottom
//! (`[B, C, h_i, W]` each), and the VAE decoder's full-resolution operations on it, equal to the
//! same operations on the whole: GroupNorm with statistics over every band
//! (`kernels::group_norm_bands`), and 3x3 convolutions (plain or after a nearest-neighbour x2
//! upsampling) in which each band reads one row of each neighbouring band.

use burn::tensor::Tensor;

pub struct Bands(pub(crate) Vec<Tensor<4>>);

impl Bands {
    /// `x` cut into `count` bands of nearly equal height (one band: `x` as it is).
    pub fn split(x: Tensor<4>, count: usize) -> Self {
        let height = x.dims()[2];
        let count = count.clamp(1, height.max(1));
        if count == 1 {
            return Self(vec![x]);
        }
        let bounds: Vec<usize> = (0..=count).map(|i| i * height / count).collect();
        Self(bounds.windows(2).map(|rows| x.clone().narrow(2, rows[0], rows[1] - rows[0])).collect())
    }

    /// The bands as one tensor.
    pub fn join(mut self) -> Tensor<4> {
        if self.0.len() == 1 { self.0.pop().unwrap() } else { Tensor::cat(self.0, 2) }
    }

    /// `f` of every band (an operation that keeps rows apart, such as a 1x1 convolution).
    pub fn map(self, f: impl Fn(Tensor<4>) -> Tensor<4>) -> Self {
        Self(self.0.into_iter().map(f).collect())
    }

    /// Band `i` with the last row of the band above it and the first row of the band below it,
    /// where there are such bands; and whether each was added.
    fn with_neighbours(&self, i: usize) -> (Tensor<4>, bool, bool) {
        let (above, below) = (i > 0, i + 1 < self.0.len());
        let mut parts = Vec::with_capacity(3);
        if above {
            let previous = &self.0[i - 1];
            parts.push(previous.clone().narrow(2, previous.dims()[2] - 1, 1));
        }
        parts.push(self.0[i].clone());
        if below {
            parts.push(self.0[i + 1].clone().narrow(2, 0, 1));
        }
        let band = if parts.len() == 1 { parts.pop().unwrap() } else { Tensor::cat(parts, 2) };
        (band, above, below)
    }

    /// `conv`, a 3x3 convolution with stride 1 and padding 1 whose output has `scale` times its
    /// input's rows (2 where it upsamples first), of every band with its neighbours' rows; the
    /// output rows computed from those rows are dropped. `residual` (bands of the output's
    /// rows, `scale` 1) reaches `conv`'s epilogue with the same neighbours' rows, so that each
    /// band is added where it belongs.
    pub fn convolve3x3(&self, scale: usize, residual: Option<&Bands>, conv: impl Fn(Tensor<4>, Option<Tensor<4>>) -> Tensor<4>) -> Bands {
        assert!(residual.is_none() || scale == 1, "a residual belongs to a convolution that keeps the rows");
        let bands = (0..self.0.len()).map(|i| {
            let (input, above, below) = self.with_neighbours(i);
            let out = conv(input, residual.map(|r| r.with_neighbours(i).0));
            let rows = self.0[i].dims()[2] * scale;
            if above || below { out.narrow(2, if above { scale } else { 0 }, rows) } else { out }
        });
        Bands(bands.collect())
    }
}
