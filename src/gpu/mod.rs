//! The GPU device layer: one async path that opens a WebGPU (browser) or native wgpu adapter,
//! describes what it can do, picks the compute dtype and hands the device to burn.
//!
//! We create the wgpu adapter and device ourselves instead of letting burn do it, so that we can
//! report the adapter, refuse early with a readable error, and request the adapter's full limits
//! (WebGPU's defaults cap bindings at 128 MiB, far below SD's largest weights).

#[cfg(target_arch = "wasm32")]
mod browser;

use std::fmt;
use std::str::FromStr;

use burn::tensor::{DType, Device, FloatDType};
use serde::Serialize;

#[cfg(target_arch = "wasm32")]
pub use browser::has_webgpu;

pub use burn::tensor::wgpu::wgpu;

/// The float type the model computes and stores weights in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDType {
    F16,
    F32,
}

impl ComputeDType {
    pub fn burn(self) -> FloatDType {
        match self {
            Self::F16 => FloatDType::F16,
            Self::F32 => FloatDType::F32,
        }
    }

    /// The tensor dtype activations and weights are created in.
    pub fn tensor(self) -> DType {
        DType::from(self.burn())
    }
}

impl fmt::Display for ComputeDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F16 => "f16",
            Self::F32 => "f32",
        })
    }
}

/// What the caller asks for: `Auto` takes f16 where the adapter has `shader-f16`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DTypeChoice {
    #[default]
    Auto,
    Exactly(ComputeDType),
}

impl FromStr for DTypeChoice {
    type Err = GpuError;

    fn from_str(s: &str) -> Result<Self, GpuError> {
        match s {
            "auto" => Ok(Self::Auto),
            "f16" => Ok(Self::Exactly(ComputeDType::F16)),
            "f32" => Ok(Self::Exactly(ComputeDType::F32)),
            other => Err(GpuError::InvalidOption(format!(
                "unknown dtype '{other}': expected auto, f16 or f32"
            ))),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    pub dtype: DTypeChoice,
    /// Graphics APIs to look at; `None` for the platform's own (WebGPU in the browser; Vulkan,
    /// Metal or DX12 natively).
    pub backends: Option<wgpu::Backends>,
}

/// What the adapter is and can do, as shown to people and logged by the tests.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Capabilities {
    pub adapter: String,
    pub vendor: String,
    pub device_type: String,
    pub backend: String,
    pub driver: String,
    pub shader_f16: bool,
    pub timestamp_query: bool,
    pub subgroups: bool,
    pub max_buffer_size: u64,
    pub max_storage_buffer_binding_size: u64,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub compute_dtype: ComputeDType,
}

impl Capabilities {
    /// The adapter's identity and what the opened device was granted.
    fn describe(adapter: &wgpu::Adapter, device: &wgpu::Device, compute_dtype: ComputeDType) -> Self {
        let info = adapter.get_info();
        let features = device.features();
        let limits = device.limits();
        Self {
            adapter: info.name,
            vendor: vendor_name(info.vendor),
            device_type: format!("{:?}", info.device_type),
            backend: info.backend.to_string(),
            driver: [info.driver, info.driver_info]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            timestamp_query: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            max_buffer_size: limits.max_buffer_size,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            compute_dtype,
        }
    }

    /// One line for logs and test summaries.
    pub fn summary(&self) -> String {
        format!(
            "{} ({}, {}, {}) compute {} shader-f16 {} max buffer {} MiB",
            self.adapter,
            self.vendor,
            self.device_type,
            self.backend,
            self.compute_dtype,
            self.shader_f16,
            self.max_buffer_size >> 20
        )
    }
}

/// PCI vendor ids of the GPU makers people will see; others print in hex.
fn vendor_name(id: u32) -> String {
    match id {
        0x10de => "NVIDIA".into(),
        0x1002 => "AMD".into(),
        0x8086 => "Intel".into(),
        0x106b => "Apple".into(),
        0x13b5 => "ARM".into(),
        0x5143 => "Qualcomm".into(),
        0x10005 => "Mesa".into(),
        0x1ae0 => "Google".into(),
        0 => "unknown".into(),
        other => format!("0x{other:04x}"),
    }
}

/// A ready device: burn's handle plus what the adapter offers.
#[derive(Clone, Debug)]
pub struct Gpu {
    pub device: Device,
    pub capabilities: Capabilities,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum GpuError {
    #[error(
        "WebGPU is not available here (navigator.gpu is missing). imvar needs a browser with \
         WebGPU: Chrome or Edge 113+ on Windows, macOS or ChromeOS (on Linux start Chrome with \
         --enable-unsafe-webgpu --enable-features=Vulkan), Safari 26+, or Firefox 141+ on Windows; \
         pages must be served over https or from localhost."
    )]
    NoWebGpu,
    #[error(
        "no GPU adapter is available ({0}). The GPU may be blocklisted or its driver too old: \
         update the graphics driver."
    )]
    NoAdapter(String),
    #[error("the GPU adapter '{adapter}' lacks the '{feature}' feature, which {why}")]
    MissingFeature {
        adapter: String,
        feature: &'static str,
        why: &'static str,
    },
    #[error("the GPU device could not be opened: {0}")]
    RequestDevice(String),
    #[error("the GPU runtime could not start on this device: {0}")]
    Runtime(String),
    #[error("{0}")]
    InvalidOption(String),
}

/// Opens the GPU. Async everywhere so the browser and native code share this one path.
pub async fn init(options: &GpuOptions) -> Result<Gpu, GpuError> {
    #[cfg(target_arch = "wasm32")]
    {
        crate::js::run_constructors_once();
        if options.backends.is_none() && !browser::has_webgpu() {
            return Err(GpuError::NoWebGpu);
        }
    }
    let instance = instance(options);
    let adapter = request_adapter(&instance).await?;
    let compute_dtype = choose_dtype(&adapter, options.dtype)?;
    let (device, queue) = request_device(&adapter).await?;
    #[allow(unused_mut)]
    let mut capabilities = Capabilities::describe(&adapter, &device, compute_dtype);
    #[cfg(target_arch = "wasm32")]
    browser::name_adapter(&mut capabilities).await;
    let setup = burn::tensor::wgpu::WgpuSetup {
        instance,
        backend: adapter.get_info().backend,
        adapter,
        device,
        queue,
    };
    let mut device = Device::wgpu_options()
        .setup(setup)
        .init()
        .map_err(|e| GpuError::Runtime(e.to_string()))?;
    device
        .configure(compute_dtype.burn())
        .map_err(|e| GpuError::Runtime(format!("{e:?}")))?;
    Ok(Gpu {
        device,
        capabilities,
    })
}

fn instance(options: &GpuOptions) -> wgpu::Instance {
    let backends = options.backends.unwrap_or(if cfg!(target_arch = "wasm32") {
        wgpu::Backends::BROWSER_WEBGPU
    } else {
        wgpu::Backends::PRIMARY
    });
    wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    })
}

async fn request_adapter(instance: &wgpu::Instance) -> Result<wgpu::Adapter, GpuError> {
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .map_err(|e| GpuError::NoAdapter(e.to_string()))
}

fn choose_dtype(adapter: &wgpu::Adapter, choice: DTypeChoice) -> Result<ComputeDType, GpuError> {
    let has_f16 = adapter.features().contains(wgpu::Features::SHADER_F16);
    match choice {
        DTypeChoice::Auto if has_f16 => Ok(ComputeDType::F16),
        DTypeChoice::Auto => Ok(ComputeDType::F32),
        DTypeChoice::Exactly(ComputeDType::F16) if !has_f16 => Err(GpuError::MissingFeature {
            adapter: adapter.get_info().name,
            feature: "shader-f16",
            why: "computing in f16 needs (use f32 instead: slower, twice the GPU memory)",
        }),
        DTypeChoice::Exactly(dtype) => Ok(dtype),
    }
}

/// Everything the adapter offers (as burn itself requests): its full limits, and all its stable
/// features, since burn's kernels pick their types from the adapter's features.
async fn request_device(adapter: &wgpu::Adapter) -> Result<(wgpu::Device, wgpu::Queue), GpuError> {
    adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: Some("imvar"),
            required_features: adapter
                .features()
                .difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS)
                .difference(wgpu::Features::all_experimental_mask()),
            required_limits: adapter.limits(),
            memory_hints: wgpu::MemoryHints::MemoryUsage,
            ..Default::default()
        })
        .await
        .map_err(|e| GpuError::RequestDevice(e.to_string()))
}

#[cfg(test)]
mod tests {
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{DType, Tensor, TensorData};

    use super::*;
    use crate::testing::{
        assert_close, conv2d_reference, gpu_test, matmul_reference, read, shared_gpu, values,
    };

    const F32: DTypeChoice = DTypeChoice::Exactly(ComputeDType::F32);
    const F16: DTypeChoice = DTypeChoice::Exactly(ComputeDType::F16);

    gpu_test! {
        async fn capability_report_is_filled() {
            let caps = shared_gpu(F32).await.capabilities;
            assert!(!caps.adapter.is_empty() && !caps.vendor.is_empty() && !caps.device_type.is_empty());
            // The platform's own graphics API: WebGPU in the browser, a native one elsewhere.
            let backends: &[&str] = if cfg!(target_arch = "wasm32") { &["webgpu"] } else { &["vulkan", "metal", "dx12"] };
            assert!(backends.iter().any(|b| caps.backend.to_lowercase().contains(b)), "{caps:?}");
            // The device got the adapter's limits, not WebGPU's defaults (256 MiB buffers).
            assert!(caps.max_buffer_size > 256 << 20, "{caps:?}");
            assert!(caps.max_storage_buffer_binding_size >= 128 << 20, "{caps:?}");
            assert!(caps.max_compute_invocations_per_workgroup >= 256, "{caps:?}");
            assert_eq!(caps.compute_dtype, ComputeDType::F32);
            // What the device was granted, as the adapter itself says when asked again.
            assert_eq!(caps.shader_f16, adapter_has_shader_f16().await, "{caps:?}");
            assert!(caps.summary().contains(&caps.adapter));
        }
    }

    /// Whether a freshly requested adapter offers `shader-f16`: natively from wgpu, in the
    /// browser from WebGPU's own `GPUAdapter.features`.
    async fn adapter_has_shader_f16() -> bool {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let adapter = request_adapter(&instance(&GpuOptions::default())).await.unwrap();
            adapter.features().contains(wgpu::Features::SHADER_F16)
        }
        #[cfg(target_arch = "wasm32")]
        {
            let adapter = crate::js::await_navigator("gpu", "requestAdapter", &[]).await.expect("an adapter");
            let features = js_sys::Reflect::get(&adapter, &"features".into()).unwrap();
            crate::js::call_method(&features, "has", &["shader-f16".into()]).and_then(|v| v.as_bool()).unwrap()
        }
    }

    gpu_test! {
        async fn auto_dtype_is_f16_exactly_where_the_adapter_has_shader_f16() {
            let gpu = shared_gpu(DTypeChoice::Auto).await;
            let expected = if gpu.capabilities.shader_f16 { ComputeDType::F16 } else { ComputeDType::F32 };
            assert_eq!(gpu.capabilities.compute_dtype, expected);
            let tensor = Tensor::<1>::from_data(TensorData::new(vec![1.5f32], [1]), &gpu.device);
            assert_eq!(tensor.dtype(), DType::from(expected.burn()));
        }
    }

    async fn check_matmul(gpu: &Gpu, tolerance: f32) {
        let (m, k, n) = (33, 70, 17); // not multiples of any tile size
        let (a, b) = (values(m * k, 1), values(k * n, 2));
        let lhs = Tensor::<2>::from_data(TensorData::new(a.clone(), [m, k]), &gpu.device);
        let rhs = Tensor::<2>::from_data(TensorData::new(b.clone(), [k, n]), &gpu.device);
        let got = read(lhs.matmul(rhs)).await;
        assert_close(&got, &matmul_reference(&a, &b, m, k, n), tolerance, tolerance);
    }

    async fn check_conv2d(gpu: &Gpu, tolerance: f32) {
        let (xs, ws) = ([2, 5, 9, 11], [7, 5, 3, 3]);
        let (x, w, bias) = (values(xs.iter().product(), 3), values(ws.iter().product(), 4), values(7, 5));
        for (stride, padding) in [(1, 1), (2, 1), (1, 0)] {
            let (expected, shape) = conv2d_reference(&x, xs, &w, ws, &bias, stride, padding);
            let out = conv2d(
                Tensor::<4>::from_data(TensorData::new(x.clone(), xs), &gpu.device),
                Tensor::<4>::from_data(TensorData::new(w.clone(), ws), &gpu.device),
                Some(Tensor::<1>::from_data(TensorData::new(bias.clone(), [7]), &gpu.device)),
                ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1),
            );
            assert_eq!(out.dims(), shape);
            assert_close(&read(out).await, &expected, tolerance, tolerance);
        }
    }

    gpu_test! {
        async fn f32_matmul_and_conv2d_match_the_cpu() {
            let gpu = shared_gpu(F32).await;
            check_matmul(&gpu, 1e-5).await;
            check_conv2d(&gpu, 1e-5).await;
        }
    }

    gpu_test! {
        async fn f16_computes_where_offered_and_is_refused_clearly_where_not() {
            let probe = shared_gpu(F32).await.capabilities;
            if probe.shader_f16 {
                let gpu = shared_gpu(F16).await;
                assert_eq!(gpu.capabilities.compute_dtype, ComputeDType::F16);
                // f16 storage: about 3 significant digits.
                check_matmul(&gpu, 3e-2).await;
                check_conv2d(&gpu, 3e-2).await;
            } else {
                let err = init(&GpuOptions { dtype: F16, ..Default::default() }).await.unwrap_err();
                assert!(matches!(err, GpuError::MissingFeature { feature: "shader-f16", .. }), "{err:?}");
                assert!(err.to_string().contains("use f32 instead"), "{err}");
            }
        }
    }

    gpu_test! {
        async fn missing_webgpu_is_a_readable_error() {
            #[cfg(target_arch = "wasm32")]
            let err = {
                // Hide navigator.gpu as a browser without WebGPU would.
                let navigator = js_sys::Reflect::get(&js_sys::global(), &"navigator".into()).unwrap();
                let navigator = js_sys::Object::from(navigator);
                let hidden = js_sys::Object::new();
                js_sys::Reflect::set(&hidden, &"value".into(), &wasm_bindgen::JsValue::UNDEFINED).unwrap();
                js_sys::Reflect::set(&hidden, &"configurable".into(), &true.into()).unwrap();
                js_sys::Object::define_property(&navigator, &"gpu".into(), &hidden);
                let result = init(&GpuOptions::default()).await;
                js_sys::Reflect::delete_property(&navigator, &"gpu".into()).unwrap();
                assert!(has_webgpu(), "navigator.gpu restored");
                result.unwrap_err()
            };
            // Natively: a graphics API this machine has no adapter for.
            #[cfg(not(target_arch = "wasm32"))]
            let err = init(&GpuOptions {
                backends: Some(wgpu::Backends::BROWSER_WEBGPU),
                ..Default::default()
            })
            .await
            .unwrap_err();
            if cfg!(target_arch = "wasm32") {
                assert_eq!(err, GpuError::NoWebGpu);
                assert!(err.to_string().contains("WebGPU is not available"), "{err}");
            } else {
                assert!(matches!(err, GpuError::NoAdapter(_)), "{err:?}");
                assert!(err.to_string().starts_with("no GPU adapter is available"), "{err}");
            }
        }
    }

    #[test]
    #[cfg(not(target_arch = "wasm32"))]
    fn dtype_choice_parses_and_rejects_unknown_names() {
        assert_eq!("auto".parse::<DTypeChoice>().unwrap(), DTypeChoice::Auto);
        assert_eq!("f16".parse::<DTypeChoice>().unwrap(), F16);
        assert_eq!("f32".parse::<DTypeChoice>().unwrap(), F32);
        let err = "bf16".parse::<DTypeChoice>().unwrap_err();
        assert!(err.to_string().contains("bf16") && err.to_string().contains("auto, f16 or f32"));
    }
}
