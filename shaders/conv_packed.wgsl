// Convolution as an explicit im2col and a register-blocked GEMM: the lowering for adapters that
// are CPUs (lavapipe), where workgroup memory and barriers cost more than they save and plain
// vec4 loads from storage vectorise. Per group, over a chunk of whole images:
//   forward          out = act(W·cols·scale + shift)   A = W  [og × K],  B = cols  [K × N]
//   input gradient   colgrad = Wᵀ·dy, then col2im       A = Wᵀ [K × og],  B = dy    [og × N]
//   weight gradient  dW (+)= dy·colsᵀ                   A = dy [og × N],  B = colsᵀ [N × K]
// with K = (input channel, tap row, tap column) of the group and N the chunk's output pixels
// (image, row, column). Every GEMM operand is packed zero-padded to multiples of 4, so the
// GEMM loads whole vec4s with no bounds tests; the weight gradient's chunks add up in chunk
// order (deterministic).

// The GEMM's store, fixed when the pipeline is made: 0 the forward's epilogue into NCHW, 1 the
// plain padded matrix (colgrad), 2 the weight gradient (written by the first chunk, added to
// by the rest).
override MODE: u32 = 0u;

struct Packed {
    // The convolution.
    n: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    cg: u32,
    og: u32,
    kh: u32,
    kw: u32,
    oh: u32,
    ow: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    dh: u32,
    dw: u32,
    act: u32,
    // The group, the chunk's first output pixel (a whole image's) and its pixel count.
    group: u32,
    n0: u32,
    cols: u32,
    // A packed matrix: its valid rows and columns, its padded rows and columns; im2col writes
    // the transpose when `transposed` is 1.
    rows: u32,
    valid_cols: u32,
    rows_p: u32,
    cols_p: u32,
    transposed: u32,
    // packed_matrix's source: 0 strided (first element, row stride, column stride), 1 an
    // NCHW tensor's channels (the first in `off`).
    source: u32,
    off: u32,
    rs: u32,
    cs: u32,
    // The GEMM's padded sizes (gn and gk multiples of 4) and whether it adds to its output.
    gm: u32,
    gn: u32,
    gk: u32,
    accumulate: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Packed;
// Packing: the source tensor and the packed matrix.
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> packed: array<f32>;
// GEMM: A [gm × gk], B [gk × gn], the epilogue's (scale, shift) per output channel, the result.
@group(0) @binding(3) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> coef: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
// col2im: the column gradient [rows_p × gn] and the input gradient.
@group(0) @binding(7) var<storage, read> colgrad: array<f32>;
@group(0) @binding(8) var<storage, read_write> dx: array<f32>;

// The chunk's input window matrix, [K × N] padded to [rows_p × cols_p] (or its transpose):
// the input each tap of each output pixel's window reads, zero in the padding.
@compute @workgroup_size(256)
fn packed_im2col(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= P.rows_p * P.cols_p) { return; }
    var k = i / P.cols_p;
    var c = i % P.cols_p;
    if (P.transposed == 1u) {
        k = i % P.rows_p;
        c = i / P.rows_p;
    }
    var v = 0.0;
    let taps = P.kh * P.kw;
    if (k < P.rows && c < P.cols) {
        let ohw = P.oh * P.ow;
        let o = P.n0 + c;
        let q = o % ohw;
        let t = k % taps;
        let iy = i32((q / P.ow) * P.sh + (t / P.kw) * P.dh) - i32(P.ph);
        let ix = i32((q % P.ow) * P.sw + (t % P.kw) * P.dw) - i32(P.pw);
        if (iy >= 0 && ix >= 0 && iy < i32(P.h) && ix < i32(P.w)) {
            v = src[(((o / ohw) * P.cin + P.group * P.cg + k / taps) * P.h + u32(iy)) * P.w + u32(ix)];
        }
    }
    packed[i] = v;
}

// A [rows × valid_cols] matrix padded to [rows_p × cols_p]: when `source` is 0, strided in
// `src` (the weight, itself or transposed: first element `off`, strides `rs` and `cs`); when 1,
// channels `off`.. of the chunk's pixels of an NCHW output-shaped `src` (the output gradient).
@compute @workgroup_size(256)
fn packed_matrix(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= P.rows_p * P.cols_p) { return; }
    let r = i / P.cols_p;
    let c = i % P.cols_p;
    var v = 0.0;
    if (r < P.rows && c < P.valid_cols) {
        if (P.source == 0u) {
            v = src[P.off + r * P.rs + c * P.cs];
        } else {
            let ohw = P.oh * P.ow;
            let o = P.n0 + c;
            v = src[((o / ohw) * P.cout + P.off + r) * ohw + o % ohw];
        }
    }
    packed[i] = v;
}

// Row `m` of the result, columns 4·c4.. (MODE says where they go).
fn store(m: u32, c4: u32, v: vec4<f32>) {
    switch MODE {
        case 0u: {
            if (m >= P.rows) { return; }
            let ohw = P.oh * P.ow;
            let ch = P.group * P.og + m;
            let s = coef[ch];
            for (var j = 0u; j < 4u; j++) {
                let c = c4 * 4u + j;
                if (c >= P.cols) { return; }
                var r = v[j] * s.x + s.y;
                if (P.act == 1u) {
                    r = r / (1.0 + exp(-r));
                }
                let o = P.n0 + c;
                out[((o / ohw) * P.cout + ch) * ohw + o % ohw] = r;
            }
        }
        case 1u: {
            let base = m * P.gn + c4 * 4u;
            out[base] = v.x;
            out[base + 1u] = v.y;
            out[base + 2u] = v.z;
            out[base + 3u] = v.w;
        }
        default: {
            if (m >= P.rows) { return; }
            let base = (P.group * P.og + m) * P.valid_cols;
            for (var j = 0u; j < 4u; j++) {
                let k = c4 * 4u + j;
                if (k >= P.valid_cols) { return; }
                if (P.accumulate == 1u) {
                    out[base + k] += v[j];
                } else {
                    out[base + k] = v[j];
                }
            }
        }
    }
}

// C = A·B, each invocation 4 rows × 4 columns (one vec4 of B per row of its 4 reduction steps).
@compute @workgroup_size(16, 16)
fn packed_gemm(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n4 = P.gn / 4u;
    let k4 = P.gk / 4u;
    let c4 = gid.x;
    let r0 = gid.y * 4u;
    if (r0 >= P.gm || c4 >= n4) { return; }
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < k4; kk++) {
        let k = kk * 4u;
        let b0 = b[k * n4 + c4];
        let b1 = b[(k + 1u) * n4 + c4];
        let b2 = b[(k + 2u) * n4 + c4];
        let b3 = b[(k + 3u) * n4 + c4];
        let a0 = a[r0 * k4 + kk];
        let a1 = a[(r0 + 1u) * k4 + kk];
        let a2 = a[(r0 + 2u) * k4 + kk];
        let a3 = a[(r0 + 3u) * k4 + kk];
        acc0 += a0.x * b0 + a0.y * b1 + a0.z * b2 + a0.w * b3;
        acc1 += a1.x * b0 + a1.y * b1 + a1.z * b2 + a1.w * b3;
        acc2 += a2.x * b0 + a2.y * b1 + a2.z * b2 + a2.w * b3;
        acc3 += a3.x * b0 + a3.y * b1 + a3.z * b2 + a3.w * b3;
    }
    store(r0, c4, acc0);
    store(r0 + 1u, c4, acc1);
    store(r0 + 2u, c4, acc2);
    store(r0 + 3u, c4, acc3);
}

// The input gradient of the chunk's images in the group: each input pixel gathers the column
// gradient of every (tap, output pixel) that read it (no scatter, no atomics).
@compute @workgroup_size(256)
fn packed_col2im(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    let hw = P.h * P.w;
    let ohw = P.oh * P.ow;
    let images = P.cols / ohw;
    if (i >= images * P.cg * hw) { return; }
    let local = i / (P.cg * hw);
    let ci = (i / hw) % P.cg;
    let y = i32((i % hw) / P.w + P.ph);
    let x = i32(i % P.w + P.pw);
    var acc = 0.0;
    for (var ky = 0u; ky < P.kh; ky++) {
        let ty = y - i32(ky * P.dh);
        if (ty < 0 || ty % i32(P.sh) != 0) { continue; }
        let oy = u32(ty) / P.sh;
        if (oy >= P.oh) { continue; }
        for (var kx = 0u; kx < P.kw; kx++) {
            let tx = x - i32(kx * P.dw);
            if (tx < 0 || tx % i32(P.sw) != 0) { continue; }
            let ox = u32(tx) / P.sw;
            if (ox >= P.ow) { continue; }
            let k = (ci * P.kh + ky) * P.kw + kx;
            acc += colgrad[k * P.gn + local * ohw + oy * P.ow + ox];
        }
    }
    let image = P.n0 / ohw + local;
    dx[((image * P.cin + P.group * P.cg + ci) * hw) + i % hw] = acc;
}
