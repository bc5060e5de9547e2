// Broadcasting arithmetic: out = a (op) b over a view whose zero strides broadcast an operand.

@group(0) @binding(0) var<uniform> V: View;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// `V.code`: 0 add, 1 subtract, 2 multiply, 3 divide.
@compute @workgroup_size(256)
fn binary(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= V.numel) { return; }
    let off = view_offsets(V, i);
    let x = a[off.x];
    let y = b[off.y];
    var r: f32;
    switch V.code {
        case 0u: { r = x + y; }
        case 1u: { r = x - y; }
        case 2u: { r = x * y; }
        default: { r = x / y; }
    }
    out[off.z] = r;
}

@group(0) @binding(10) var<uniform> KEPT: View;
@group(0) @binding(11) var<uniform> REDUCED: View;
@group(0) @binding(12) var<storage, read> sx: array<f32>;
@group(0) @binding(13) var<storage, read_write> sy: array<f32>;

// The gradient of broadcasting: each output element sums the elements of `sx` broadcast from it.
// `KEPT` walks the output (operand a: its first element in `sx`), `REDUCED` the summed axes.
@compute @workgroup_size(256)
fn sum_to(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= KEPT.numel) { return; }
    let base = view_offsets(KEPT, i).x;
    var acc = 0.0;
    for (var j = 0u; j < REDUCED.numel; j++) {
        acc += sx[base + view_offsets(REDUCED, j).x];
    }
    sy[i] = acc;
}
