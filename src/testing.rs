//! Test support shared by the native tests (`cargo test`, lavapipe) and the browser tests
//! (`wasm-pack test`, Chromium's WebGPU): one async test body runs in both places.

use std::sync::Mutex;

use burn::tensor::Tensor;

use crate::gpu::{self, DTypeChoice, Gpu, GpuOptions};

/// An async test that runs natively (blocking on its future) and in headless Chrome.
macro_rules! gpu_test {
    ($(#[$meta:meta])* async fn $name:ident() $body:block) => {
        #[cfg(not(target_arch = "wasm32"))]
        #[test]
        $(#[$meta])*
        fn $name() {
            pollster::block_on(async $body)
        }

        #[cfg(target_arch = "wasm32")]
        #[wasm_bindgen_test::wasm_bindgen_test]
        $(#[$meta])*
        async fn $name() $body
    };
}
pub(crate) use gpu_test;

// In a dedicated worker, not on the page's main thread: long GPU work there would starve the
// test driver's messages to the page (WebGPU and IndexedDB exist in workers too).
#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_dedicated_worker);

/// Prints where both test runners show it (stdout natively, the console in the browser).
pub fn log(message: &str) {
    #[cfg(target_arch = "wasm32")]
    web_sys::console::log_1(&message.into());
    #[cfg(not(target_arch = "wasm32"))]
    println!("{message}");
}

/// Says visibly that a test did not check what it is for, and why (an adapter without a
/// feature, say): `scripts/test` counts these lines in its summary.
pub fn skip(test: &str, reason: &str) {
    log(&format!("imvar test skipped: {test}: {reason}"));
}

/// One device per dtype choice for the whole test run: opening one per test is slow on CPU
/// adapters, and every open registers a new burn runtime.
pub async fn shared_gpu(dtype: DTypeChoice) -> Gpu {
    static GPUS: Mutex<Vec<(DTypeChoice, Gpu)>> = Mutex::new(Vec::new());
    let find = || GPUS.lock().unwrap().iter().find(|(d, _)| *d == dtype).map(|(_, g)| g.clone());
    if let Some(gpu) = find() {
        return gpu;
    }
    let gpu = gpu::init(&GpuOptions { dtype, ..Default::default() })
        .await
        .unwrap_or_else(|e| panic!("tests need a GPU adapter: {e}"));
    let mut gpus = GPUS.lock().unwrap();
    if gpus.is_empty() {
        log(&format!("imvar adapter: {}", gpu.capabilities.summary()));
    }
    gpus.push((dtype, gpu.clone()));
    gpu
}

/// Reads a tensor back as f32, whatever its dtype (async: the browser cannot block).
pub async fn read<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    let data = tensor.into_data_async().await.expect("read back from the GPU");
    data.iter::<f32>().collect()
}

/// Deterministic values in [-1, 1) (a 32-bit LCG), so failures reproduce.
pub fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// Fails with the worst element when |a - e| > atol + rtol * |e| anywhere.
#[track_caller]
pub fn assert_close(actual: &[f32], expected: &[f32], atol: f32, rtol: f32) {
    assert_eq!(actual.len(), expected.len(), "length");
    let worst = actual
        .iter()
        .zip(expected)
        .enumerate()
        .map(|(i, (a, e))| (i, (a - e).abs() - rtol * e.abs(), *a, *e))
        .filter(|(_, excess, a, _)| *excess > atol || a.is_nan())
        .max_by(|x, y| x.1.total_cmp(&y.1));
    if let Some((i, _, a, e)) = worst {
        panic!("element {i}: got {a}, expected {e} (atol {atol}, rtol {rtol})");
    }
}

/// Plain CPU matrix product, the reference for the GPU's.
pub fn matmul_reference(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    out
}

/// Plain CPU NCHW convolution (square stride and padding), the reference for the GPU's.
pub fn conv2d_reference(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    weight: &[f32],
    [o, _, kh, kw]: [usize; 4],
    bias: &[f32],
    stride: usize,
    padding: usize,
) -> (Vec<f32>, [usize; 4]) {
    let oh = (h + 2 * padding - kh) / stride + 1;
    let ow = (w + 2 * padding - kw) / stride + 1;
    let mut out = vec![0.0; n * o * oh * ow];
    for b in 0..n {
        for oc in 0..o {
            for y in 0..oh {
                for xo in 0..ow {
                    let mut acc = bias[oc];
                    for ic in 0..c {
                        for dy in 0..kh {
                            for dx in 0..kw {
                                let iy = (y * stride + dy) as isize - padding as isize;
                                let ix = (xo * stride + dx) as isize - padding as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xi = ((b * c + ic) * h + iy as usize) * w + ix as usize;
                                acc += x[xi] * weight[((oc * c + ic) * kh + dy) * kw + dx];
                            }
                        }
                    }
                    out[((b * o + oc) * oh + y) * ow + xo] = acc;
                }
            }
        }
    }
    (out, [n, o, oh, ow])
}

/// A golden safetensors file from `tests/fixtures/golden/` (made by scripts/make_fixtures.py).
#[cfg(not(target_arch = "wasm32"))]
pub struct Golden {
    bytes: Vec<u8>,
}

#[cfg(not(target_arch = "wasm32"))]
impl Golden {
    pub fn open(file: &str) -> Self {
        let path = fixture_path(&format!("golden/{file}"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self { bytes }
    }

    fn tensors(&self) -> safetensors::SafeTensors<'_> {
        safetensors::SafeTensors::deserialize(&self.bytes).expect("golden file parses")
    }

    pub fn names(&self) -> Vec<String> {
        self.tensors().names().into_iter().map(String::from).collect()
    }

    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.tensors().tensor(name).unwrap_or_else(|e| panic!("{name}: {e}")).shape().to_vec()
    }

    /// The tensor's values as f32 (i64 timesteps are converted).
    pub fn f32(&self, name: &str) -> Vec<f32> {
        let tensors = self.tensors();
        let view = tensors.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        match view.dtype() {
            safetensors::Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::I64 => view
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect(),
            other => panic!("{name}: unexpected dtype {other:?}"),
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub fn fixture_path(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// A text file of the tiny fixture model, e.g. `unet/config.json`.
#[cfg(not(target_arch = "wasm32"))]
pub fn tiny_text(path: &str) -> String {
    std::fs::read_to_string(fixture_path(&format!("tiny-sd-image-variations/{path}"))).unwrap()
}

/// The tiny fixture model, fp32 files or the "fp16" variant.
#[cfg(not(target_arch = "wasm32"))]
pub fn tiny_model(variant: Option<&str>) -> crate::weights::source::ModelDir {
    crate::weights::source::ModelDir::open(&fixture_path("tiny-sd-image-variations"), variant).unwrap()
}

/// One component of the tiny fixture model (fp32 files): its config from `{component}/config.json`
/// and the model `load` builds from its weights.
#[cfg(not(target_arch = "wasm32"))]
pub async fn tiny_component<C, T>(
    gpu: &Gpu,
    component: &str,
    config: impl FnOnce(&str) -> C,
    load: impl FnOnce(&crate::weights::Weights, &C) -> Result<T, crate::weights::LoadError>,
) -> (C, T) {
    use crate::weights::source::ModelSource;
    let source = tiny_model(None);
    let config = config(&source.text(&format!("{component}/config.json")).await.unwrap());
    let files = crate::pipeline::WeightsFrom::Files;
    let (model, _) = crate::pipeline::load_component(&source, gpu, files, component, &mut |_| {}, |w| load(w, &config)).await.unwrap();
    (config, model)
}

/// Uploads a golden tensor to the device in its compute dtype.
#[cfg(not(target_arch = "wasm32"))]
pub fn upload<const D: usize>(golden: &Golden, name: &str, gpu: &Gpu) -> Tensor<D> {
    let shape: [usize; D] = golden.shape(name).try_into().expect("rank");
    let dtype = gpu.capabilities.compute_dtype.tensor();
    Tensor::from_data(burn::tensor::TensorData::new(golden.f32(name), shape), (&gpu.device, dtype))
}

/// Max |a - e| relative to the largest |e|: the scale-free error the model tests bound.
#[cfg(not(target_arch = "wasm32"))]
pub fn relative_error(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len(), "length");
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    actual.iter().zip(expected).fold(0f32, |m, (a, e)| if a.is_nan() { f32::INFINITY } else { m.max((a - e).abs()) }) / scale
}

/// Cases per property test: `IMVAR_FUZZ_CASES` when set (a long run by hand), else `default`
/// (what `scripts/test` can afford).
#[cfg(not(target_arch = "wasm32"))]
pub fn fuzz_cases(default: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("IMVAR_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(default);
    proptest::test_runner::Config { cases, failure_persistence: None, ..Default::default() }
}

/// A Hub in memory: serves `files` under any revision, honouring single ranges, every answer
/// carrying the file's sha256 as its ETag (or `etag`, whatever it is) and `commit` (tests make
/// them hostile), and records the URLs asked for.
#[cfg(not(target_arch = "wasm32"))]
pub struct MemoryHub {
    pub files: std::collections::BTreeMap<String, Vec<u8>>,
    pub etag: Option<String>,
    pub commit: Option<String>,
    pub asked: std::cell::RefCell<Vec<String>>,
    /// Answers every request with the whole file and no Content-Length, as a server that
    /// ignores Range and streams its answers would.
    pub ignores_range: bool,
}

#[cfg(not(target_arch = "wasm32"))]
impl MemoryHub {
    /// The tiny fixture model's files that imvar reads (plain weight files, no variant).
    pub fn tiny_model() -> Self {
        use crate::weights::source::{text_paths, weights_file};
        let root = fixture_path("tiny-sd-image-variations");
        let mut paths = text_paths();
        paths.extend(crate::weights::COMPONENTS.iter().map(|(c, _)| weights_file(c, None)));
        let files = paths.into_iter().map(|p| (p.clone(), std::fs::read(root.join(&p)).unwrap())).collect();
        Self { files, etag: None, commit: Some("0123456789abcdef0123456789abcdef01234567".into()), asked: Default::default(), ignores_range: false }
    }

    /// The revision (or commit) each request asked for, in order.
    pub fn revisions(&self) -> Vec<String> {
        self.asked.borrow().iter().filter_map(|url| Some(url.split_once("/resolve/")?.1.split_once('/')?.0.to_string())).collect()
    }
}

/// The sha256 of `bytes` in hex (the Hub's ETag of a weight file).
#[cfg(not(target_arch = "wasm32"))]
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(not(target_arch = "wasm32"))]
impl crate::hub::Fetch for MemoryHub {
    fn get<'a>(&'a self, url: &'a str, range: Option<std::ops::Range<u64>>) -> crate::LocalFuture<'a, Result<crate::hub::Response, String>> {
        use crate::hub::{Headers, Response};
        self.asked.borrow_mut().push(url.to_string());
        let path = url.split_once("/resolve/").and_then(|(_, rest)| rest.split_once('/')).map_or("", |(_, p)| p);
        let etag = self.etag.clone().or_else(|| self.files.get(path).map(|body| sha256_hex(body)));
        let headers = Headers { etag: etag.map(|e| format!("\"{e}\"")), repo_commit: self.commit.clone(), ..Default::default() };
        let answer = match (self.files.get(path), range) {
            (None, _) => Response::whole(404, headers, b"", None),
            (Some(body), range) if self.ignores_range => Response::whole(200, headers, body, range.as_ref()),
            (Some(body), Some(r)) if r.start < body.len() as u64 => {
                let end = r.end.min(body.len() as u64);
                let content_range = Some(format!("bytes {}-{}/{}", r.start, end - 1, body.len()));
                Response::whole(206, Headers { content_range, ..headers }, &body[r.start as usize..end as usize], Some(&r))
            }
            (Some(body), Some(r)) => {
                let content_range = Some(format!("bytes */{}", body.len()));
                Response::whole(416, Headers { content_range, ..headers }, b"", Some(&r))
            }
            (Some(body), None) => Response::whole(200, headers, body, None),
        };
        Box::pin(std::future::ready(Ok(answer)))
    }

    fn sleep(&self, _: web_time::Duration) -> crate::LocalFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}
