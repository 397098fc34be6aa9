# Sourced by the scripts: the environment builds and tests share.
# One persistent target directory outside the clone, so CI on the same machine builds incrementally.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/imvar/target}
# Native GPU tests run on Mesa's lavapipe (a CPU Vulkan driver), so every machine, with or
# without a GPU, tests on the same device.
LAVAPIPE_ICD=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json
# lavapipe warns when XDG_RUNTIME_DIR is unset.
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d -t imvar-xdg.XXXXXX)}
# Browser tests: generous per-test timeout (SwiftShader is slow); never let wasm-pack download.
export WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-600}
