# Sourced by the scripts: the environment builds and tests share.
# One persistent target directory outside the clone, so CI on the same machine builds incrementally.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/imvar/target}
# Native GPU tests run on Mesa's lavapipe (a CPU Vulkan driver), so every machine, with or
# without a GPU, tests on the same device: $LAVAPIPE_ICD is its driver manifest.
source "$(dirname "${BASH_SOURCE[0]}")/lavapipe.sh"
# lavapipe warns when XDG_RUNTIME_DIR is unset.
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d -t imvar-xdg.XXXXXX)}
# Browser tests: a generous per-test timeout (SwiftShader is slow).
export WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-600}
