// Data movement: one strided copy does transpose, slice, reshape, each part of a concatenation
// or split, and nearest upsampling (a view with zero strides over the repeated axes).

@group(0) @binding(0) var<uniform> V: View;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

// dst[view out offset] = src[view a offset] for every element of the view.
@compute @workgroup_size(256)
fn strided_copy(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= V.numel) { return; }
    let off = view_offsets(V, i);
    dst[off.z] = src[off.x];
}

struct Fill {
    n: u32,
    value: f32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(10) var<uniform> F: Fill;
@group(0) @binding(11) var<storage, read_write> filled: array<f32>;

// Sets the first `n` elements (before a strided copy that writes only some of them: the
// gradient of a slice).
@compute @workgroup_size(256)
fn fill(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= F.n) { return; }
    filled[i] = F.value;
}

struct Blocks {
    n_planes: u32,
    h: u32,
    w: u32,
    sy: u32,
    sx: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(20) var<uniform> B: Blocks;
@group(0) @binding(21) var<storage, read> bdy: array<f32>;
@group(0) @binding(22) var<storage, read_write> bdx: array<f32>;

// The gradient of nearest upsampling: each input sums its sy × sx block of the output gradient.
@compute @workgroup_size(256)
fn upsample_nearest_grad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    let per_plane = B.h * B.w;
    if (i >= B.n_planes * per_plane) { return; }
    let plane = i / per_plane;
    let y = (i % per_plane) / B.w;
    let x = i % B.w;
    let ow = B.w * B.sx;
    var acc = 0.0;
    for (var a = 0u; a < B.sy; a++) {
        for (var b = 0u; b < B.sx; b++) {
            acc += bdy[(plane * B.h * B.sy + y * B.sy + a) * ow + x * B.sx + b];
        }
    }
    bdx[i] = acc;
}
