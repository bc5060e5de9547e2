#!/usr/bin/env bash
# Installs what slimc needs on a fresh Debian machine, idempotently, then prints nothing but
# errors. Source it (`. scripts/setup.sh`) to get ORT_DYLIB_PATH and the Vulkan settings.
#   - Mesa's software Vulkan (lavapipe) for the wgpu backend on machines without a GPU;
#   - Open MPI (mpirun and the library the `mpi` feature links, with libclang for its bindings)
#     for data-parallel training;
#   - Fashion-MNIST (Debian's dataset-fashion-mnist, MIT) for the accuracy benchmark set (scripts/benchset.sh);
#   - the onnxruntime shared library from the PyPI wheel (the version ort 2.0.0-rc.15 expects)
#     unpacked into .ort/, used by `slimc verify` through ORT_DYLIB_PATH.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ORT_VERSION=1.31.1

need_apt=()
for pkg in mesa-vulkan-drivers libvulkan1 libegl1 libegl-mesa0 libgl1-mesa-dri openmpi-bin libopenmpi-dev libclang-dev dataset-fashion-mnist; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

lib="$root/.ort/libonnxruntime.so.$ORT_VERSION"
if [ ! -f "$lib" ]; then
  mkdir -p "$root/.ort"
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --no-cache-dir --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 "onnxruntime==$ORT_VERSION" -d "$tmp"
  python3 - "$tmp" "$root/.ort" <<'PY'
import glob, os, sys, zipfile
whl = glob.glob(os.path.join(sys.argv[1], "onnxruntime-*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        b = os.path.basename(n)
        if n.startswith("onnxruntime/capi/") and b.startswith("libonnxruntime.so"):
            with open(os.path.join(sys.argv[2], b), "wb") as f:
                f.write(z.read(n))
PY
  rm -rf "$tmp"
fi

export ORT_DYLIB_PATH="$lib"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
[ -f /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] && export VK_ICD_FILENAMES=${VK_ICD_FILENAMES:-/usr/share/vulkan/icd.d/lvp_icd.x86_64.json}
true
