// SiLU and sigmoid, and their gradients, element by element.

@group(0) @binding(0) var<uniform> C: Count;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn silu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= C.n) { return; }
    let x = a[i];
    out[i] = x * sigmoid1(x);
}

@compute @workgroup_size(256)
fn sigmoid(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= C.n) { return; }
    out[i] = sigmoid1(a[i]);
}

// a: dy, b: x.
@compute @workgroup_size(256)
fn silu_grad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= C.n) { return; }
    let x = b[i];
    let s = sigmoid1(x);
    out[i] = a[i] * s * (1.0 + x * (1.0 - s));
}

// a: dy, b: y (the forward result).
@compute @workgroup_size(256)
fn sigmoid_grad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= C.n) { return; }
    let y = b[i];
    out[i] = a[i] * y * (1.0 - y);
}

// Elementwise sign, 0 at 0.
@compute @workgroup_size(256)
fn sign_(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= C.n) { return; }
    out[i] = sign(a[i]);
}
