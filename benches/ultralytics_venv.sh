# Sourced by the benches that run Ultralytics (never by CI): `ultralytics_venv [PACKAGE...]` makes
# the throwaway venv $VENV (default /tmp/slimc-vs-ultralytics-venv) with CPU PyTorch, Ultralytics
# 8.3.253 and the Python modules named, unless it already imports them all.
VENV=${VENV:-/tmp/slimc-vs-ultralytics-venv}
ultralytics_venv() {
    local imports="ultralytics"
    for p in "$@"; do imports="$imports, $p"; done
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import $imports" 2>/dev/null; then
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet torch torchvision --index-url https://download.pytorch.org/whl/cpu
        "$VENV/bin/pip" install --quiet ultralytics==8.3.253 "$@"
    fi
}
