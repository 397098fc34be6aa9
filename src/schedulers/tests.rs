//! Every scheduler against diffusers on the real config: timesteps, sigmas, and each step of a
//! golden run (fed the golden noise predictions, so each step is checked on its own inputs).

use burn::tensor::{DType, Tensor, TensorData};

use super::*;
use crate::torch_rng::BatchNoise;
use crate::gpu::{ComputeDType, DTypeChoice};
use crate::testing::{Golden, assert_close, read, shared_gpu, tiny_text};

fn real_config() -> SchedulerConfig {
    SchedulerConfig::from_json(&tiny_text("scheduler/scheduler_config.json")).unwrap()
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
            let scheduler = kind.build(&config, steps).unwrap();
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
            let mut scheduler = kind.build(&config, 5).unwrap();
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

#[test]
fn steps_the_config_cannot_take_are_refused_with_the_reason() {
    let config = real_config();
    let refused = |kind: SchedulerKind, config: &SchedulerConfig, steps| kind.build(config, steps).err().expect("refused").to_string();
    // The real config's `steps_offset` 1 pushes 1000 leading timesteps to 1000.
    for kind in [SchedulerKind::Pndm, SchedulerKind::Ddim] {
        let err = refused(kind, &config, 1000);
        assert!(err.contains("reach timestep 1000, past the 1000 the model was trained with"), "{}: {err}", kind.name());
    }
    // More steps than training timesteps, as diffusers refuses; and none.
    let short = SchedulerConfig { num_train_timesteps: 10, ..config.clone() };
    for kind in SchedulerKind::ALL {
        assert!(refused(kind, &short, 20).contains("between 1 and 10, the timesteps the model was trained with, not 20"));
        assert!(refused(kind, &config, 0).contains("not 0"));
        // Everything that is built stays within the training timesteps.
        for steps in [1, 7, 999] {
            if let Ok(scheduler) = kind.build(&config, steps) {
                assert!(scheduler.timesteps().iter().all(|&t| (0.0..1000.0).contains(&t)), "{} {steps}", kind.name());
            }
        }
    }
    // diffusers' PNDM default runs Runge-Kutta warm-up steps, which imvar does not.
    let prk = SchedulerConfig { skip_prk_steps: false, ..config.clone() };
    assert!(refused(SchedulerKind::Pndm, &prk, 5).contains("skip_prk_steps"));
    assert!(SchedulerKind::Ddim.build(&prk, 5).is_ok());
}

#[test]
fn a_config_with_fewer_than_two_training_timesteps_is_refused_by_key() {
    for n in [0, 1] {
        let err = SchedulerConfig::from_json(&format!(r#"{{"num_train_timesteps": {n}}}"#)).unwrap_err();
        assert!(err.to_string().contains(&format!("`num_train_timesteps` = {n}: must be from 2 to 100000")), "{err}");
    }
}
