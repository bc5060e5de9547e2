// Batched matrix product over the last two axes (batch axes broadcast through the view's
// strides) and softmax along one axis.

struct Mm {
    m: u32,
    n: u32,
    k: u32,
    batches: u32,
    // The batch axes: `view.shape`/`rank` are the output's batch dims, the strides each
    // operand's matrix offsets per batch index.
}

@group(0) @binding(0) var<uniform> V: View;
@group(0) @binding(1) var<uniform> M: Mm;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    let per = M.m * M.n;
    if (i >= M.batches * per) { return; }
    let off = view_offsets(V, i / per);
    let r = (i % per) / M.n;
    let c = i % M.n;
    var acc = 0.0;
    for (var t = 0u; t < M.k; t++) {
        acc += a[u32(off.x) + r * M.k + t] * b[u32(off.y) + t * M.n + c];
    }
    out[i] = acc;
}
