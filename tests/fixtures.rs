//! The committed reference fixtures are complete and consistent with the tiny model's configs.
#![cfg(not(target_arch = "wasm32"))]

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn json(rel: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join(rel)).unwrap()).unwrap()
}

fn with_golden(file: &str, check: impl FnOnce(&SafeTensors)) {
    let bytes = std::fs::read(fixtures().join("golden").join(file)).unwrap();
    check(&SafeTensors::deserialize(&bytes).unwrap());
}

fn shape(tensors: &SafeTensors, name: &str) -> Vec<usize> {
    let view = tensors.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(matches!(view.dtype(), Dtype::F32 | Dtype::I64), "{name}: {:?}", view.dtype());
    view.shape().to_vec()
}

#[test]
fn golden_tensors_load_with_the_shapes_the_configs_imply() {
    let unet = json("tiny-sd-image-variations/unet/config.json");
    let clip = json("tiny-sd-image-variations/image_encoder/config.json");
    let manifest = json("golden/manifest.json");
    let [sample, channels, projection, hidden, layers] = [
        &unet["sample_size"],
        &unet["in_channels"],
        &clip["projection_dim"],
        &clip["hidden_size"],
        &clip["num_hidden_layers"],
    ]
    .map(|v| v.as_u64().unwrap() as usize);
    let tokens = (224 / 14) * (224 / 14) + 1;

    with_golden("preprocess.safetensors", |t| {
        assert_eq!(shape(t, "input"), [1, 3, 224, 224]);
        assert_eq!(shape(t, "input-rgba"), [1, 3, 224, 224]);
    });
    with_golden("clip.safetensors", |t| {
        for i in 0..=layers {
            assert_eq!(shape(t, &format!("hidden_states.{i}")), [1, tokens, hidden]);
        }
        assert_eq!(shape(t, "image_embeds"), [1, projection]);
    });
    let schedulers = manifest["schedulers"].as_object().unwrap();
    with_golden("schedulers.safetensors", |t| {
        for name in schedulers.keys() {
            assert_eq!(shape(t, &format!("{name}.alphas_cumprod")), [1000]);
            assert!(shape(t, &format!("{name}.steps50.timesteps"))[0] >= 50);
        }
    });
    for name in schedulers.keys() {
        with_golden(&format!("run-{name}.safetensors"), |t| {
            assert_eq!(shape(t, "noise"), [1, channels, sample, sample]);
            assert_eq!(shape(t, "call0.model_input"), [2, channels, sample, sample]);
            assert_eq!(shape(t, "image_embeds"), [1, 1, projection]);
        });
    }
    with_golden("randn.safetensors", |t| {
        let cases = manifest["randn"]["seeds"].as_array().unwrap().len()
            * manifest["randn"]["shapes"].as_array().unwrap().len();
        assert!(t.len() > cases, "{} tensors for {cases} cases plus a stream", t.len());
    });
    with_golden("blocks.safetensors", |t| assert!(shape(t, "unet.mid_block.out")[0] == 2));
    for run in manifest["runs"].as_array().unwrap() {
        for png in run["pngs"].as_array().unwrap() {
            let bytes = std::fs::read(fixtures().join("golden").join(png.as_str().unwrap())).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        }
    }
}
