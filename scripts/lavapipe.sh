# Sourced by scripts/env.sh and scripts/setup: sets LAVAPIPE_ICD, the manifest of Mesa's
# lavapipe Vulkan driver (a CPU driver; the native tests run on it). Debian names the file after
# the CPU (lvp_icd.x86_64.json, lvp_icd.aarch64.json, ...). Where that is absent, any lavapipe
# manifest there; where there is none (Mesa not installed yet), the path Debian would use.
lavapipe_icd() {
  local dir=/usr/share/vulkan/icd.d expected found
  expected=$dir/lvp_icd.$(uname -m).json
  for found in "$expected" "$dir"/lvp_icd*.json; do
    [[ -f $found ]] && { echo "$found"; return; }
  done
  echo "$expected"
}
LAVAPIPE_ICD=$(lavapipe_icd)
