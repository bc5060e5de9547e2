# Sourced by the benches that run Ultralytics (never by CI): `ultralytics_venv [PACKAGE...]` makes
# the throwaway venv $VENV (default /tmp/slimc-vs-ultralytics-venv) with CPU PyTorch, Ultralytics
# 8.3.253 and the PyPI packages named (pinned as `name==version` if wanted), unless it already
# imports them all (a package's import name is its name with - as _, before any ==).
VENV=${VENV:-/tmp/slimc-vs-ultralytics-venv}
ultralytics_venv() {
    local imports="ultralytics"
    for p in "$@"; do p=${p%%==*}; imports="$imports, ${p//-/_}"; done
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import $imports" 2>/dev/null; then
        python3 -m venv "$VENV"
        # PyTorch's CPU-only wheels; where its index cannot be reached, PyPI's (CUDA-enabled, larger,
        # the same CPU kernels).
        "$VENV/bin/pip" install --quiet torch torchvision --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
            || "$VENV/bin/pip" install --quiet torch torchvision
        "$VENV/bin/pip" install --quiet ultralytics==8.3.253 "$@"
    fi
}
