// Softmax along one axis: one invocation per line (every index but the axis's).

struct Lines {
    outer: u32,
    n: u32,
    inner: u32,
    pad0: u32,
}

@group(0) @binding(0) var<uniform> L: Lines;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn softmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let line = flat_index(wg, nwg, lid);
    if (line >= L.outer * L.inner) { return; }
    let base = (line / L.inner) * L.n * L.inner + line % L.inner;
    var m = bitcast<f32>(0xff800000u);
    for (var k = 0u; k < L.n; k++) {
        m = max(m, x[base + k * L.inner]);
    }
    var sum = 0.0;
    for (var k = 0u; k < L.n; k++) {
        let e = exp(x[base + k * L.inner] - m);
        y[base + k * L.inner] = e;
        sum += e;
    }
    for (var k = 0u; k < L.n; k++) {
        y[base + k * L.inner] = y[base + k * L.inner] / sum;
    }
}

@group(0) @binding(10) var<uniform> LG: Lines;
@group(0) @binding(11) var<storage, read> gdy: array<f32>;
@group(0) @binding(12) var<storage, read> gy: array<f32>;
@group(0) @binding(13) var<storage, read_write> gdx: array<f32>;

// The gradient along a line: y·(dy − Σ dy·y).
@compute @workgroup_size(256)
fn softmax_grad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let line = flat_index(wg, nwg, lid);
    if (line >= LG.outer * LG.inner) { return; }
    let base = (line / LG.inner) * LG.n * LG.inner + line % LG.inner;
    var dot = 0.0;
    for (var k = 0u; k < LG.n; k++) {
        dot += gdy[base + k * LG.inner] * gy[base + k * LG.inner];
    }
    for (var k = 0u; k < LG.n; k++) {
        let at = base + k * LG.inner;
        gdx[at] = gy[at] * (gdy[at] - dot);
    }
}
