//! Every scheduler against diffusers on the real config: timesteps, sigmas, and each step of a
//! golden run (fed the golden noise predictions, so each step is checked on its own inputs).

use burn::tensor::{DType, Tensor, TensorData};

use super::*;
use crate::torch_rng::BatchNoise;
use crate::gpu::{ComputeDType, DTypeChoice};
use crate::testing::{Golden, assert_close, fixture_path, read, shared_gpu};

fn real_config() -> SchedulerConfig {
    let text = std::fs::read_to_string(fixture_path("tiny-sd-image-variations/scheduler/scheduler_config.json")).unwrap();
    SchedulerConfig::from_json(&text).unwrap()
}

const SEED: u64 = 2026;

#[test]
fn alphas_cumprod_matches_torch() {
    let golden = Golden::open("schedulers.safetensors");
    let ours = alphas_cumprod(&real_config());
    // Bit-exact but for the odd last-ulp difference of the f64 product.
    assert_close(&ours, &golden.f32("pndm.alphas_cumprod"), 0.0, 2.0 * f32::EPSILON);
}

#[test]
fn timesteps_sigmas_and_init_noise_sigma_match_diffusers() {
    let golden = Golden::open("schedulers.safetensors");
    let config = real_config();
    for kind in SchedulerKind::ALL {
        for steps in [50, 25, 5, 1] {
            let key = |what: &str| format!("{}.steps{steps}.{what}", kind.name());
            let scheduler = kind.build(&config, steps);
            assert_eq!(scheduler.timesteps(), golden.f32(&key("timesteps")), "{}", key("timesteps"));
            assert_close(&[scheduler.init_noise_sigma()], &golden.f32(&key("init_noise_sigma")), 0.0, 1e-6);
            if golden.names().contains(&key("sigmas")) {
                let sigmas = match kind {
                    SchedulerKind::Euler | SchedulerKind::EulerAncestral => euler_discrete::EulerSchedule::new(&config, steps).sigmas,
                    SchedulerKind::DpmSolverMultistep => DpmSolverMultistepScheduler::new(&config, steps).sigmas,
                    _ => unreachable!("{} has no sigmas", kind.name()),
                };
                assert_close(&sigmas, &golden.f32(&key("sigmas")), 0.0, 1e-6);
            }
        }
    }
    assert_eq!(SchedulerKind::of_config(&config), Some(SchedulerKind::Pndm));
}

fn upload(golden: &Golden, name: &str, device: &burn::tensor::Device) -> Tensor<4> {
    let shape: [usize; 4] = golden.shape(name).try_into().unwrap();
    Tensor::from_data(TensorData::new(golden.f32(name), shape), (device, DType::F32))
}

#[test]
fn every_step_of_a_golden_run_matches_diffusers() {
    pollster::block_on(async {
        let gpu = shared_gpu(DTypeChoice::Exactly(ComputeDType::F32)).await;
        let config = real_config();
        for kind in SchedulerKind::ALL {
            let golden = Golden::open(&format!("run-{}.safetensors", kind.name()));
            let mut scheduler = kind.build(&config, 5);
            let mut generator = BatchNoise::new(SEED, 1, 0..1);
            let noise = generator.draw(golden.f32("noise").len());
            assert_eq!(noise, golden.f32("noise"), "initial latents of seed {SEED}");
            let mut latents = upload(&golden, "noise", &gpu.device).mul_scalar(scheduler.init_noise_sigma());
            for index in 0..scheduler.timesteps().len() {
                let model_input = scheduler.scale_model_input(latents.clone(), index);
                let expected_input = golden.f32(&format!("call{index}.model_input"));
                assert_close(&read(model_input).await, &expected_input[..expected_input.len() / 2], 1e-5, 1e-5);
                let guided = upload(&golden, &format!("step{index}.guided"), &gpu.device);
                latents = scheduler.step(index, guided, latents, &mut generator);
                let expected = golden.f32(&format!("step{index}.latents"));
                let got = read(latents.clone()).await;
                let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
                crate::testing::log(&format!("{} step {index}: latents up to {scale}", kind.name()));
                assert_close(&got, &expected, 2e-6 * scale.max(1.0), 1e-5);
            }
        }
    });
}

#[test]
fn scheduler_names_parse_and_unknown_ones_are_refused() {
    for kind in SchedulerKind::ALL {
        assert_eq!(kind.name().parse::<SchedulerKind>(), Ok(kind));
    }
    let err = "heun".parse::<SchedulerKind>().unwrap_err();
    assert!(err.contains("heun") && err.contains("dpm++2m"), "{err}");
}
