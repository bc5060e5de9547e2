// 2-D max pooling with -inf padding (a window wholly in the padding gives -inf).

struct Pool {
    n_planes: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    pad0: u32,
}

@group(0) @binding(0) var<uniform> P: Pool;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn max_pool2d(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    let per_plane = P.oh * P.ow;
    if (i >= P.n_planes * per_plane) { return; }
    let plane = i / per_plane;
    let oy = (i % per_plane) / P.ow;
    let ox = i % P.ow;
    var best = bitcast<f32>(0xff800000u);
    for (var ky = 0u; ky < P.kh; ky++) {
        let iy = i32(oy * P.sh + ky) - i32(P.ph);
        if (iy < 0 || iy >= i32(P.h)) { continue; }
        for (var kx = 0u; kx < P.kw; kx++) {
            let ix = i32(ox * P.sw + kx) - i32(P.pw);
            if (ix < 0 || ix >= i32(P.w)) { continue; }
            best = max(best, x[(plane * P.h + u32(iy)) * P.w + u32(ix)]);
        }
    }
    y[i] = best;
}

@group(0) @binding(10) var<uniform> PG: Pool;
@group(0) @binding(11) var<storage, read> gdy: array<f32>;
@group(0) @binding(12) var<storage, read> gx: array<f32>;
@group(0) @binding(13) var<storage, read_write> gdx: array<f32>;

// Whether input (iy, ix) of `plane` is the first maximum, in scan order, of window (oy, ox).
fn first_max(plane: u32, oy: u32, ox: u32, iy: u32, ix: u32) -> bool {
    var best = 0u;
    var found = false;
    for (var ky = 0u; ky < PG.kh; ky++) {
        let y = i32(oy * PG.sh + ky) - i32(PG.ph);
        if (y < 0 || y >= i32(PG.h)) { continue; }
        for (var kx = 0u; kx < PG.kw; kx++) {
            let x = i32(ox * PG.sw + kx) - i32(PG.pw);
            if (x < 0 || x >= i32(PG.w)) { continue; }
            let at = (plane * PG.h + u32(y)) * PG.w + u32(x);
            if (!found || gx[at] > gx[best]) {
                best = at;
                found = true;
            }
        }
    }
    return found && best == (plane * PG.h + iy) * PG.w + ix;
}

// Each input gathers the gradients of the windows whose first maximum it is (no scatter, so no
// atomics).
@compute @workgroup_size(256)
fn max_pool2d_grad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    let per_plane = PG.h * PG.w;
    if (i >= PG.n_planes * per_plane) { return; }
    let plane = i / per_plane;
    let iy = (i % per_plane) / PG.w;
    let ix = i % PG.w;
    // Windows covering row iy: oy·sh − ph ≤ iy ≤ oy·sh − ph + kh − 1.
    let ylo = max(i32(iy) + i32(PG.ph) - i32(PG.kh) + 1, 0);
    let xlo = max(i32(ix) + i32(PG.pw) - i32(PG.kw) + 1, 0);
    let oy0 = u32((ylo + i32(PG.sh) - 1) / i32(PG.sh));
    let ox0 = u32((xlo + i32(PG.sw) - 1) / i32(PG.sw));
    var acc = 0.0;
    for (var oy = oy0; oy < PG.oh && oy * PG.sh <= iy + PG.ph; oy++) {
        for (var ox = ox0; ox < PG.ow && ox * PG.sw <= ix + PG.pw; ox++) {
            if (first_max(plane, oy, ox, iy, ix)) {
                acc += gdy[(plane * PG.oh + oy) * PG.ow + ox];
            }
        }
    }
    gdx[i] = acc;
}
