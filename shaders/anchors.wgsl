// Detect-head anchors of one level: points (x then y, in grid units plus the offset) and the
// level's stride, written at the level's place among all anchors.

struct Level {
    h: u32,
    w: u32,
    // Anchors before this level, and over all levels.
    first: u32,
    total: u32,
    offset: f32,
    stride: f32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> L: Level;
@group(0) @binding(1) var<storage, read_write> points: array<f32>;
@group(0) @binding(2) var<storage, read_write> strides: array<f32>;

@compute @workgroup_size(256)
fn anchors(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= L.h * L.w) { return; }
    let a = L.first + i;
    points[a] = f32(i % L.w) + L.offset;
    points[L.total + a] = f32(i / L.w) + L.offset;
    strides[a] = L.stride;
}
