//! The native CLI: the same core as the browser, on native wgpu.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::process::ExitCode;

    use clap::{Parser, Subcommand};
    use imvar::gpu::{self, DTypeChoice, GpuOptions};

    #[derive(Parser)]
    #[command(name = "imvar", version, about = "Stable Diffusion image variations on WebGPU")]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Opens the GPU and prints its capability report as JSON.
        Adapter {
            /// Compute dtype: auto (f16 where the adapter supports it), f16 or f32.
            #[arg(long, default_value = "auto")]
            dtype: DTypeChoice,
        },
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

    fn run(cli: Cli) -> Result<(), String> {
        match cli.command {
            Command::Adapter { dtype } => {
                let gpu = pollster::block_on(gpu::init(&GpuOptions { dtype, ..Default::default() }))
                    .map_err(|e| e.to_string())?;
                println!("{}", serde_json::to_string_pretty(&gpu.capabilities).unwrap());
                Ok(())
            }
        }
    }
}
