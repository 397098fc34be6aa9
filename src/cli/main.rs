//! The native CLI: the same core as the browser, on native wgpu. Option parsing and output
//! here; `bench` and `bench_ops` are the benchmarks (burn's stock operations as the baseline).

#[cfg(not(target_arch = "wasm32"))]
mod bench;
#[cfg(not(target_arch = "wasm32"))]
mod bench_ops;

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::hash::{BuildHasher, Hasher};
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;
    use std::time::Instant;

    use clap::{Parser, Subcommand};
    use imvar::gpu::{self, DTypeChoice, Gpu, GpuOptions};
    use imvar::hub::hf_cache;
    use imvar::weights::COMPONENTS;
    use imvar::weights::source::{ModelDir, ModelSource, PREFERRED_VARIANT};
    use imvar::pipeline::{GenerateOptions, ImageVariationPipeline, WeightsFrom};
    use imvar::pipeline::preprocess;
    use imvar::schedulers::SchedulerKind;
    use indicatif::{ProgressBar, ProgressStyle};

    #[derive(Parser)]
    #[command(name = "imvar", version, about = "Stable Diffusion image variations on WebGPU")]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Generates variations of a picture into OUT/variation-K.png.
        Generate {
            #[command(flatten)]
            model: ModelArgs,
            /// The picture to vary (JPEG, PNG, WebP, GIF, BMP).
            #[arg(long)]
            image: PathBuf,
            /// Output folder (created if needed).
            #[arg(long)]
            out: PathBuf,
            /// Seed (torch.manual_seed-compatible); random and printed when absent.
            #[arg(long)]
            seed: Option<u64>,
            #[arg(long, default_value_t = 50)]
            steps: usize,
            /// Classifier-free guidance scale (the model card uses 3).
            #[arg(long, default_value_t = 3.0)]
            guidance: f32,
            /// pndm, ddim, euler, euler-a or dpm++2m; the model's own by default.
            #[arg(long)]
            scheduler: Option<SchedulerKind>,
            /// Number of variations.
            #[arg(long, default_value_t = 1)]
            n: usize,
            /// Output size WxH in pixels; the model's sample size by default.
            #[arg(long, value_parser = parse_size)]
            size: Option<(usize, usize)>,
        },
        /// Times each stage (CLIP, one UNet call at batch 2n, a scheduler step, VAE decode, a
        /// whole generation) and prints one JSON line per stage.
        Bench {
            /// With --random-weights only the model's configs are read.
            #[command(flatten)]
            model: ModelArgs,
            /// Random weights in the configs' shapes (no weight files needed).
            #[arg(long)]
            random_weights: bool,
            #[arg(long, default_value_t = 1)]
            n: usize,
            #[arg(long, default_value_t = 50)]
            steps: usize,
            /// Timed runs per stage (the median is printed).
            #[arg(long, default_value_t = 5)]
            runs: usize,
            /// Image size WxH in pixels; the model's sample size by default.
            #[arg(long, value_parser = parse_size)]
            size: Option<(usize, usize)>,
            #[command(flatten)]
            gemm: GemmArgs,
        },
        /// Times each hot operation at SD1's shapes, imvar's kernels beside burn's stock ones,
        /// and prints one JSON line per operation (compare with scripts/bench_ops_torch.py).
        BenchOps {
            #[arg(long, default_value_t = 10)]
            runs: usize,
            #[arg(long, default_value = "auto")]
            dtype: DTypeChoice,
            /// Channels and sides divided by 8: a quick run for CPU adapters.
            #[arg(long)]
            small: bool,
            #[command(flatten)]
            gemm: GemmArgs,
        },
        /// Prints the model's components, parameter counts, file dtypes and the adapter.
        Info {
            #[command(flatten)]
            model: ModelArgs,
        },
        /// Opens the GPU and prints its capability report as JSON.
        Adapter {
            /// Compute dtype: auto (f16 where the adapter supports it), f16 or f32.
            #[arg(long, default_value = "auto")]
            dtype: DTypeChoice,
        },
    }

    /// Which model, and how to run it: shared by every command that loads one.
    #[derive(clap::Args)]
    struct ModelArgs {
        /// Model folder in the Hub layout, or a Hub model id `OWNER/NAME[@REVISION]`
        /// (downloaded once into the Hugging Face cache under HF_HOME, from HF_ENDPOINT).
        #[arg(long, default_value = imvar::hub::DEFAULT_REPO)]
        model: String,
        /// Weight files variant, e.g. fp16 (`*.fp16.safetensors`), used where the model has it;
        /// fp16 by default for a Hub model id, none for a folder.
        #[arg(long)]
        variant: Option<String>,
        /// Compute dtype: auto (f16 where the adapter supports it), f16 or f32.
        #[arg(long, default_value = "auto")]
        dtype: DTypeChoice,
    }

    fn parse_size(s: &str) -> Result<(usize, usize), String> {
        let (w, h) = s.split_once(['x', 'X']).ok_or("expected WxH, e.g. 512x512")?;
        Ok((w.parse().map_err(|_| "bad width")?, h.parse().map_err(|_| "bad height")?))
    }

    /// The benchmarks' GEMM overrides, for measuring the choices the kernels make by shape.
    #[derive(clap::Args)]
    struct GemmArgs {
        /// Force the GEMM's per-thread block (4 or 8) instead of choosing it per shape.
        #[arg(long, value_parser = parse_gemm_block)]
        gemm_block: Option<u32>,
        /// Never split a GEMM's depth across workgroups (it is split where few would run).
        #[arg(long)]
        no_split_k: bool,
    }

    impl GemmArgs {
        fn forcing(&self) -> imvar::kernels::GemmForcing {
            imvar::kernels::GemmForcing { block: self.gemm_block, splits: self.no_split_k.then_some(1) }
        }
    }

    fn parse_gemm_block(s: &str) -> Result<u32, String> {
        match s {
            "4" => Ok(4),
            "8" => Ok(8),
            _ => Err("expected 4 or 8".into()),
        }
    }

    pub fn main() -> ExitCode {
        match run(Cli::parse()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("imvar: {message}");
                ExitCode::FAILURE
            }
        }
    }

    /// A local model folder (with `variant`'s weight files where present), or a Hub model id
    /// fetched into the Hugging Face cache (`variant`'s files where the repo has them, by default
    /// the preferred fp16 variant).
    fn model_dir(args: &ModelArgs) -> Result<ModelDir, String> {
        let path = Path::new(&args.model);
        if path.exists() {
            return ModelDir::open(path, args.variant.as_deref()).map_err(|e| e.to_string());
        }
        let hub_model = imvar::hub::HubModel::parse(&args.model, &hf_cache::endpoint())
            .map_err(|_| format!("{}: no such folder, and not a Hub model id (OWNER/NAME[@REVISION])", args.model))?;
        let variant = args.variant.as_deref().unwrap_or(PREFERRED_VARIANT);
        let bar = ProgressBar::new(0);
        bar.set_style(ProgressStyle::with_template("{msg:40} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}").unwrap());
        let fetch = imvar::hub::NativeFetch::default();
        let snapshot = pollster::block_on(hf_cache::snapshot(&fetch, &hf_cache::hub_dir(), &hub_model, Some(variant), &mut |file, done, size| {
            bar.set_message(file.to_string());
            bar.set_length(size);
            bar.set_position(done);
        }));
        bar.finish_and_clear();
        let snapshot = snapshot.map_err(|e| e.to_string())?;
        ModelDir::open(&snapshot, Some(variant)).map_err(|e| e.to_string())
    }

    fn open_gpu(dtype: DTypeChoice) -> Result<Gpu, String> {
        pollster::block_on(gpu::init(&GpuOptions { dtype, ..Default::default() })).map_err(|e| e.to_string())
    }

    fn run(cli: Cli) -> Result<(), String> {
        match cli.command {
            Command::Generate { model, image, out, seed, steps, guidance, scheduler, n, size } => {
                let bytes = std::fs::read(&image).map_err(|e| format!("{}: {e}", image.display()))?;
                let picture = preprocess::decode(&bytes).map_err(|e| format!("{}: {e}", image.display()))?;
                let gpu = open_gpu(model.dtype)?;
                let source = model_dir(&model)?;
                let (pipeline, loaded) = pollster::block_on(ImageVariationPipeline::load_with(&source, &gpu, WeightsFrom::Files, &mut |_| {}))
                    .map_err(|e| e.to_string())?;
                let pools = loaded.device_bytes_allocated.map_or(String::new(), |b| format!(", device pools grew {b} bytes"));
                eprintln!("weights: {} bytes on the GPU{pools}", loaded.weight_bytes);
                // Below 2^32: torch's generator only uses a seed's low 32 bits.
                let seed = seed.unwrap_or_else(|| std::collections::hash_map::RandomState::new().build_hasher().finish() >> 32);
                println!("seed {seed}");
                let options = GenerateOptions { n, steps, guidance, seed, scheduler, size, ..Default::default() };
                let bar = ProgressBar::new(0);
                bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} steps, {elapsed} elapsed, ETA {eta}").unwrap());
                let started = Instant::now();
                let result = pollster::block_on(pipeline.generate(&picture, &options, &mut |p| {
                    bar.set_length(p.total as u64);
                    bar.set_position(p.step as u64);
                    true
                }));
                bar.finish_and_clear();
                let variations = result.map_err(|e| e.to_string())?;
                std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
                for v in &variations {
                    let path = out.join(format!("variation-{}.png", v.index));
                    std::fs::write(&path, preprocess::encode_png(&v.image)).map_err(|e| format!("{}: {e}", path.display()))?;
                    println!("{}", path.display());
                }
                eprintln!("{} variation(s) in {:.1} s on {}", variations.len(), started.elapsed().as_secs_f32(), gpu.capabilities.summary());
                Ok(())
            }
            Command::Bench { model, random_weights, n, steps, runs, size, gemm } => {
                let gpu = open_gpu(model.dtype)?;
                let source = model_dir(&model)?;
                let from = if random_weights { WeightsFrom::Random } else { WeightsFrom::Files };
                let (pipeline, _) = pollster::block_on(ImageVariationPipeline::load_with(&source, &gpu, from, &mut |_| {}))
                    .map_err(|e| e.to_string())?;
                let options = crate::bench::BenchOptions { n, steps, runs: runs.max(1), size, gemm: gemm.forcing() };
                crate::bench::run(&pipeline, &gpu, &options).map_err(|e| e.to_string())?;
                Ok(())
            }
            Command::BenchOps { runs, dtype, small, gemm } => {
                let gpu = open_gpu(dtype)?;
                crate::bench_ops::ops(&gpu, runs.max(1), small, gemm.forcing()).map_err(|e| e.to_string())?;
                Ok(())
            }
            Command::Info { model } => info(&model),
            Command::Adapter { dtype } => {
                let gpu = open_gpu(dtype)?;
                println!("{}", serde_json::to_string_pretty(&gpu.capabilities).unwrap());
                Ok(())
            }
        }
    }

    fn info(model: &ModelArgs) -> Result<(), String> {
        let source = model_dir(model)?;
        for (component, _) in COMPONENTS {
            let tensors = pollster::block_on(source.tensors(component)).map_err(|e| e.to_string())?.tensors();
            let params: usize = tensors.iter().map(|t| t.shape.iter().product::<usize>()).sum();
            let dtypes: std::collections::BTreeSet<String> = tensors.iter().map(|t| format!("{:?}", t.dtype)).collect();
            let dtypes: Vec<String> = dtypes.into_iter().collect();
            println!("{component:<14} {:>8.1}M parameters  {}", params as f64 / 1e6, dtypes.join(","));
        }
        let gpu = open_gpu(model.dtype)?;
        println!("adapter        {}", gpu.capabilities.summary());
        Ok(())
    }
}
