//! The `imvar` binary end to end on the tiny fixture model (native wgpu on lavapipe).
#![cfg(not(target_arch = "wasm32"))]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use imvar::pipeline::preprocess::{RgbImage, decode};

mod standin;
use standin::{StandIn, fixtures};

fn imvar(args: &[&str]) -> Output {
    imvar_with(args, &[])
}

fn imvar_with(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_imvar"));
    for (key, value) in env {
        command.env(key, value);
    }
    command.args(args).output().expect("imvar runs")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("imvar-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn png(path: &Path) -> RgbImage {
    decode(&std::fs::read(path).unwrap()).unwrap()
}

/// The largest difference in 8-bit levels between two pictures of the same size.
fn worst_level(ours: &RgbImage, theirs: &RgbImage) -> u8 {
    assert_eq!((ours.width, ours.height), (theirs.width, theirs.height), "sizes");
    ours.pixels.iter().zip(&theirs.pixels).map(|(a, b)| a.abs_diff(*b)).max().unwrap()
}

/// One error line on stderr, a non-zero exit, no panic.
fn assert_clear_failure(out: &Output, words: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(words), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn generate_reproduces_every_reference_run() {
    let model = fixtures().join("tiny-sd-image-variations");
    let input = fixtures().join("input.png");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(fixtures().join("golden/manifest.json")).unwrap()).unwrap();
    let runs = manifest["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 22, "5 schedulers x n=1,2 x fp32,fp16 files, plus g=1 twice");
    for run in runs {
        let name = run["name"].as_str().unwrap();
        let out = temp_dir(name);
        let number = |key: &str| run[key].to_string();
        let (seed, steps, guidance, n) = (number("seed"), number("steps"), number("guidance"), number("n"));
        let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--image", input.to_str().unwrap(),
            "--out", out.to_str().unwrap(), "--seed", &seed, "--steps", &steps, "--guidance", &guidance,
            "--scheduler", run["scheduler"].as_str().unwrap(), "--n", &n, "--dtype", "f32"];
        if run["variant"] == "fp16" {
            args.extend(["--variant", "fp16"]);
        }
        let result = imvar(&args);
        assert!(result.status.success(), "{name}: {}", String::from_utf8_lossy(&result.stderr));
        assert!(String::from_utf8_lossy(&result.stdout).starts_with(&format!("seed {seed}\n")));
        let goldens = run["pngs"].as_array().unwrap();
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), goldens.len(), "{name}: one file per golden");
        for (k, golden) in goldens.iter().enumerate() {
            let ours = png(&out.join(format!("variation-{k}.png")));
            let worst = worst_level(&ours, &png(&fixtures().join("golden").join(golden.as_str().unwrap())));
            assert!(worst <= 2, "{name}-{k}: {worst} levels");
        }
    }
}

#[test]
fn bad_input_is_one_clear_line() {
    let model = fixtures().join("tiny-sd-image-variations");
    let dir = temp_dir("bad");
    let corrupt = dir.join("corrupt.png");
    let png = std::fs::read(fixtures().join("input.png")).unwrap();
    std::fs::write(&corrupt, &png[..png.len() / 3]).unwrap();
    let run = |image: &Path, model: &Path, extra: &[&str]| {
        let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--image", image.to_str().unwrap(),
            "--out", dir.to_str().unwrap(), "--steps", "1", "--dtype", "f32"];
        args.extend(extra);
        imvar(&args)
    };
    assert_clear_failure(&run(&corrupt, &model, &[]), "damaged or truncated");
    assert_clear_failure(&run(&fixtures().join("README.md"), &model, &[]), "not an image");
    assert_clear_failure(&run(&fixtures().join("input.png"), &model, &["--scheduler", "heun"]), "unknown scheduler 'heun'");
    // Steps that would run past the training timesteps (`steps_offset` 1): refused, not a panic.
    let input = fixtures().join("input.png");
    let many = imvar(&["generate", "--model", model.to_str().unwrap(), "--image", input.to_str().unwrap(), "--out", dir.to_str().unwrap(),
        "--steps", "1000", "--scheduler", "ddim", "--dtype", "f32"]);
    assert_clear_failure(&many, "reach timestep 1000, past the 1000 the model was trained with");

    // A model folder whose UNet lacks one tensor.
    let broken = dir.join("model");
    copy_dir(&model, &broken);
    let file = broken.join("unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = tensors.tensors().into_iter().filter(|(name, _)| name != "conv_out.bias").collect();
    safetensors::serialize_to_file(kept, None, &file).unwrap();
    assert_clear_failure(&run(&fixtures().join("input.png"), &broken, &[]), "unet: tensor `conv_out.bias` is missing");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn bench_prints_one_json_line_per_stage_with_random_weights() {
    let model = fixtures().join("tiny-sd-image-variations");
    let out = imvar(&["bench", "--model", model.to_str().unwrap(), "--random-weights", "--runs", "1", "--steps", "2", "--dtype", "f32"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let stages: Vec<&str> = lines.iter().map(|l| l["stage"].as_str().unwrap()).collect();
    assert_eq!(&stages[..5], ["clip_encode", "unet_call", "scheduler_step", "vae_decode", "generation"]);
    for line in &lines[..5] {
        assert!(line["median_ms"].as_f64().unwrap() > 0.0, "{line}");
        assert_eq!(line["dtype"], "f32");
    }
    assert_eq!(lines[1]["batch"], 2);
}

#[test]
fn a_hub_model_id_downloads_into_the_hugging_face_cache_once_and_works_offline() {
    let hub = StandIn::start(&[]);
    let home = temp_dir("hf-home");
    let out = temp_dir("hub-out");
    let endpoint = PathBuf::from(&hub.url);
    let env = [("HF_HOME", home.as_path()), ("HF_ENDPOINT", endpoint.as_path())];
    let input = fixtures().join("input.png");
    let args = ["generate", "--model", "imvar-tests/tiny@refs/pr/1", "--image", input.to_str().unwrap(), "--out", out.to_str().unwrap(),
        "--seed", "2026", "--steps", "5", "--scheduler", "pndm", "--dtype", "f32"];
    let check = |result: Output| {
        assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
        let worst = worst_level(&png(&out.join("variation-0.png")), &png(&fixtures().join("golden/images/pndm-n1-g3-fp16-0.png")));
        assert!(worst <= 2, "{worst} levels");
    };
    check(imvar_with(&args, &env));
    let repo = home.join("hub/models--imvar-tests--tiny");
    let commit = std::fs::read_to_string(repo.join("refs/refs/pr/1")).unwrap();
    let unet = repo.join("snapshots").join(&commit).join("unet/diffusion_pytorch_model.fp16.safetensors");
    assert!(std::fs::symlink_metadata(&unet).unwrap().file_type().is_symlink(), "snapshot files link to blobs");
    assert_eq!(std::fs::read(&unet).unwrap(), std::fs::read(fixtures().join("tiny-sd-image-variations/unet/diffusion_pytorch_model.fp16.safetensors")).unwrap());
    let log = hub.log("refs/pr/1");
    assert!(!log.iter().any(|e| e["path"].as_str().unwrap().starts_with("safety_checker")));

    // A second run downloads nothing; with the Hub gone it still works.
    hub.reset();
    check(imvar_with(&args, &env));
    assert_eq!(standin::weight_requests(&hub.log("refs/pr/1")), Vec::<&serde_json::Value>::new(), "no weight requests");
    drop(hub);
    check(imvar_with(&args, &env));
    assert_clear_failure(&imvar_with(&["info", "--model", "imvar-tests/missing"], &env), "offline");
}

#[test]
fn bench_ops_prints_ours_beside_burns_stock_op() {
    let out = imvar(&["bench-ops", "--small", "--runs", "1", "--dtype", "f32"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for op in ["conv2d_3x3", "conv2d_1x1", "conv2d_3x3_residual", "group_norm_silu", "layer_norm", "geglu", "attention", "linear"] {
        assert!(lines.iter().any(|l| l["op"] == op), "{op} missing");
    }
    for line in &lines {
        assert!(line["burn_ms"].as_f64().unwrap() > 0.0 && line["ours_ms"].as_f64().unwrap() > 0.0, "{line}");
    }
}

/// Every file and folder below `dir`, links not followed.
fn tree(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|entry| {
            let path = entry.unwrap().path();
            let below = if path.is_dir() && !path.is_symlink() { tree(&path) } else { Vec::new() };
            below.into_iter().chain([path])
        })
        .collect()
}

#[test]
fn a_hostile_hub_is_one_clear_line_and_writes_nothing_outside_the_cache() {
    let hub = StandIn::start(&[]);
    let home = temp_dir("hostile-home");
    let out = temp_dir("hostile-out");
    let endpoint = PathBuf::from(&hub.url);
    let env = [("HF_HOME", home.as_path()), ("HF_ENDPOINT", endpoint.as_path())];
    let input = fixtures().join("input.png");
    let absolute = std::env::temp_dir().join(format!("imvar-hostile-absolute-{}", std::process::id()));
    // Names a server could give to make the cache write where it likes: a config's ETag, a
    // weight file's (as its CDN answers, the redirect followed), and the snapshot's commit.
    for (revision, path, header, value) in [
        ("etag-escape", ".json", "ETag", "\"../../../escape\"".to_string()),
        ("weights-etag-absolute", ".safetensors", "ETag", format!("\"{}\"", absolute.display())),
        ("commit-escape", "", "X-Repo-Commit", "../../../escape".to_string()),
    ] {
        hub.fault(serde_json::json!({"revision": revision, "path": path, "kind": "header", "name": header, "value": value}));
        let model = format!("imvar-tests/tiny@{revision}");
        let result = imvar_with(&["generate", "--model", &model, "--image", input.to_str().unwrap(), "--out", out.to_str().unwrap(),
            "--steps", "1", "--dtype", "f32"], &env);
        assert_clear_failure(&result, "is not a hex digest");
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(stderr.lines().count(), 1, "{header}: one line: {stderr}");
        assert!(stderr.starts_with("imvar: "), "{stderr}");
    }
    let outside: Vec<PathBuf> = tree(&home).into_iter().filter(|p| !p.starts_with(home.join("hub"))).collect();
    assert!(outside.is_empty(), "written outside HF_HOME/hub: {outside:?}");
    assert!(!absolute.exists() && !home.join("../escape").exists());
}
