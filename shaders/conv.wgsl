// Convolution, NCHW, any stride, padding, dilation and groups, and its two gradients, as one
// implicit GEMM per group, C[m, n] = Σ_k A[m, k]·B[k, n], in three modes:
//   0 forward:         m output channel, n output pixel (image, row, column), k (input channel,
//                      tap row, tap column); A the weight, B the input; the result goes through
//                      the epilogue act(acc·scale + shift) per output channel (the bias, or an
//                      inference batch norm folded in, then SiLU when `act` is 1);
//   1 input gradient:  m input channel, n input pixel, k (output channel, tap row, tap column);
//                      A the weight transposed, B the output gradient at the output pixel that
//                      tap reads from this input pixel (zero where none does);
//   2 weight gradient: m output channel, n (input channel, tap row, tap column), k output pixel;
//                      A the output gradient, B the input; k is split into chunks of `chunk`,
//                      each chunk's partial sums stored apart and summed in order by
//                      `conv_reduce` (deterministic: no float atomics).
// `src` holds the input (modes 0, 2) or the output gradient (mode 1); `aux` the weight (modes 0,
// 1) or the output gradient (mode 2).

// The mode, fixed when the pipeline is made, so the driver compiles each mode's loads alone.
override MODE: u32 = 0u;

struct Conv {
    n: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    cg: u32,
    kh: u32,
    kw: u32,
    oh: u32,
    ow: u32,
    og: u32,
    m_tiles: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    dh: u32,
    dw: u32,
    act: u32,
    pad0: u32,
    // The GEMM's sizes per group.
    gm: u32,
    gn: u32,
    gk: u32,
    chunk: u32,
}

@group(0) @binding(0) var<uniform> P: Conv;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> aux: array<f32>;
// (scale, shift) per output channel; read in mode 0 only.
@group(0) @binding(3) var<storage, read> coef: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> atile: array<f32, 1024>;
var<workgroup> btile: array<f32, 1024>;

// Index decompositions, made once where the tiled loop holds one side fixed:
// an output pixel: (image, the input row and column its window starts at);
fn out_pixel(p: u32) -> vec3<i32> {
    let ohw = P.oh * P.ow;
    let q = p % ohw;
    return vec3<i32>(i32(p / ohw), i32((q / P.ow) * P.sh) - i32(P.ph), i32((q % P.ow) * P.sw) - i32(P.pw));
}

// a reduction index over (channel, tap): (channel, the tap's row and column offsets);
fn tap(r: u32) -> vec3<i32> {
    let taps = P.kh * P.kw;
    let t = r % taps;
    return vec3<i32>(i32(r / taps), i32((t / P.kw) * P.dh), i32((t % P.kw) * P.dw));
}

// an input pixel: (image, its row and column plus the padding).
fn in_pixel(p: u32) -> vec3<i32> {
    let hw = P.h * P.w;
    let q = p % hw;
    return vec3<i32>(i32(p / hw), i32(q / P.w + P.ph), i32(q % P.w + P.pw));
}

// The input at tap `t` of the window of output pixel `o` in group `g`; zero in the padding.
fn x_at(t: vec3<i32>, o: vec3<i32>, g: u32) -> f32 {
    let iy = o.y + t.y;
    let ix = o.z + t.z;
    if (iy < 0 || ix < 0 || iy >= i32(P.h) || ix >= i32(P.w)) {
        return 0.0;
    }
    return src[((u32(o.x) * P.cin + g * P.cg + u32(t.x)) * P.h + u32(iy)) * P.w + u32(ix)];
}

// The output gradient that input pixel `i` receives through tap `t` (whose channel is the
// output channel); zero when no output pixel reads it through that tap.
fn dy_at(t: vec3<i32>, i: vec3<i32>, g: u32) -> f32 {
    let ty = i.y - t.y;
    let tx = i.z - t.z;
    if (ty < 0 || tx < 0 || ty % i32(P.sh) != 0 || tx % i32(P.sw) != 0) {
        return 0.0;
    }
    let oy = u32(ty) / P.sh;
    let ox = u32(tx) / P.sw;
    if (oy >= P.oh || ox >= P.ow) {
        return 0.0;
    }
    return src[((u32(i.x) * P.cout + g * P.og + u32(t.x)) * P.oh + oy) * P.ow + ox];
}

// B's fixed side for column n (modes 0, 1: the pixel; mode 2: the tap) and its side for
// reduction index k.
fn b_column(n: u32) -> vec3<i32> {
    switch MODE {
        case 0u: { return out_pixel(n); }
        case 1u: { return in_pixel(n); }
        default: { return tap(n); }
    }
}

fn b_row(k: u32) -> vec3<i32> {
    if (MODE == 2u) {
        return out_pixel(k);
    }
    return tap(k);
}

fn b_at(row: vec3<i32>, column: vec3<i32>, g: u32) -> f32 {
    switch MODE {
        case 0u: { return x_at(row, column, g); }
        case 1u: { return dy_at(row, column, g); }
        default: { return x_at(column, row, g); }
    }
}

// A's reduction index k split as its layout needs (mode 1: output channel and tap; mode 2:
// image and pixel).
fn a_split(k: u32) -> vec2<u32> {
    switch MODE {
        case 0u: { return vec2<u32>(k, 0u); }
        case 1u: { return vec2<u32>(k / (P.kh * P.kw), k % (P.kh * P.kw)); }
        default: { return vec2<u32>(k / (P.oh * P.ow), k % (P.oh * P.ow)); }
    }
}

fn a_at(m: u32, k: vec2<u32>, g: u32) -> f32 {
    let taps = P.kh * P.kw;
    switch MODE {
        case 0u: {
            return aux[(g * P.og + m) * P.cg * taps + k.x];
        }
        case 1u: {
            return aux[((g * P.og + k.x) * P.cg + m) * taps + k.y];
        }
        default: {
            let ohw = P.oh * P.ow;
            return aux[(k.x * P.cout + g * P.og + m) * ohw + k.y];
        }
    }
}

fn store(m: u32, n: u32, g: u32, z: u32, v: f32) {
    switch MODE {
        case 0u: {
            let ohw = P.oh * P.ow;
            let c = g * P.og + m;
            var r = v * coef[c].x + coef[c].y;
            if (P.act == 1u) {
                r = r / (1.0 + exp(-r));
            }
            dst[((n / ohw) * P.cout + c) * ohw + n % ohw] = r;
        }
        case 1u: {
            let hw = P.h * P.w;
            dst[((n / hw) * P.cin + g * P.cg + m) * hw + n % hw] = v;
        }
        default: {
            dst[(z * P.cout + g * P.og + m) * P.gn + n] = v;
        }
    }
}

// The reduction range of chunk `z` (all of k outside mode 2).
fn k_range(z: u32) -> vec2<u32> {
    if (MODE == 2u) {
        return vec2<u32>(z * P.chunk, min(P.gk, (z + 1u) * P.chunk));
    }
    return vec2<u32>(0u, P.gk);
}

// Tiles of 64 (m) × 64 (n) outputs, each invocation keeping 4×4. Workgroups: y covers every
// group's m tiles; x covers n tiles (with z too in modes 0 and 1 when x would exceed the grid
// limit); in mode 2, z is the chunk of k.
@compute @workgroup_size(16, 16)
fn conv_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) l: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let g = wg.y / P.m_tiles;
    let m0 = (wg.y % P.m_tiles) * TM;
    var z = 0u;
    var n0 = (wg.z * nwg.x + wg.x) * TN;
    if (MODE == 2u) {
        z = wg.z;
        n0 = wg.x * TN;
    }
    if (n0 >= P.gn) {
        return;
    }
    let ks = k_range(z);
    // This invocation loads A at one reduction offset and B in one column, every tile.
    let a_k = tid % TK;
    let b_n = n0 + tid % TN;
    let column = b_column(b_n);
    var acc: array<vec4<f32>, 4>;
    for (var k0 = ks.x; k0 < ks.y; k0 += TK) {
        let ka = a_split(k0 + a_k);
        for (var i = 0u; i < 4u; i++) {
            let mm = tid / TK + i * 16u;
            var av = 0.0;
            if (m0 + mm < P.gm && k0 + a_k < ks.y) {
                av = a_at(m0 + mm, ka, g);
            }
            atile[a_k * TM + mm] = av;
            let kb = tid / TN + i * 4u;
            var bv = 0.0;
            if (b_n < P.gn && k0 + kb < ks.y) {
                bv = b_at(b_row(k0 + kb), column, g);
            }
            btile[kb * TN + tid % TN] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let ab = kk * TM + l.y * 4u;
            let bb = kk * TN + l.x * 4u;
            let b = vec4<f32>(btile[bb], btile[bb + 1u], btile[bb + 2u], btile[bb + 3u]);
            acc[0] += atile[ab] * b;
            acc[1] += atile[ab + 1u] * b;
            acc[2] += atile[ab + 2u] * b;
            acc[3] += atile[ab + 3u] * b;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + l.y * 4u + i;
        if (m >= P.gm) { break; }
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + l.x * 4u + j;
            if (n >= P.gn) { break; }
            store(m, n, g, z, acc[i][j]);
        }
    }
}

// One output per invocation, flat over (chunk, group, m, n): for depthwise convolutions, whose
// GEMMs have a single row.
@compute @workgroup_size(256)
fn conv_direct(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    let groups = P.cout / P.og;
    let per_chunk = groups * P.gm * P.gn;
    var chunks = 1u;
    if (MODE == 2u) {
        chunks = (P.gk + P.chunk - 1u) / P.chunk;
    }
    if (i >= chunks * per_chunk) { return; }
    let n = i % P.gn;
    let m = (i / P.gn) % P.gm;
    let g = (i / (P.gn * P.gm)) % groups;
    let z = i / per_chunk;
    let ks = k_range(z);
    let column = b_column(n);
    var acc = 0.0;
    for (var k = ks.x; k < ks.y; k++) {
        acc += a_at(m, a_split(k), g) * b_at(b_row(k), column, g);
    }
    store(m, n, g, z, acc);
}

struct Chunks {
    numel: u32,
    chunks: u32,
    pad0: u32,
    pad1: u32,
}

// Its own binding numbers, apart from the GEMM's.
@group(0) @binding(20) var<uniform> R: Chunks;
@group(0) @binding(21) var<storage, read> partial: array<f32>;
@group(0) @binding(22) var<storage, read_write> summed: array<f32>;

// The weight gradient: the chunks' partial sums added in chunk order.
@compute @workgroup_size(256)
fn conv_reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= R.numel) { return; }
    var acc = 0.0;
    for (var z = 0u; z < R.chunks; z++) {
        acc += partial[z * R.numel + i];
    }
    summed[i] = acc;
}

struct Fold {
    cout: u32,
    has_bias: u32,
    has_bn: u32,
    eps: f32,
}

@group(0) @binding(10) var<uniform> F: Fold;
@group(0) @binding(11) var<storage, read> bias: array<f32>;
@group(0) @binding(12) var<storage, read> gamma: array<f32>;
@group(0) @binding(13) var<storage, read> beta: array<f32>;
@group(0) @binding(14) var<storage, read> mean: array<f32>;
@group(0) @binding(15) var<storage, read> var_: array<f32>;
@group(0) @binding(16) var<storage, read_write> coef_out: array<vec2<f32>>;

// The epilogue's (scale, shift) per output channel from the bias and a folded batch norm's
// parameters, recomputed every run since training may change them.
@compute @workgroup_size(256)
fn conv_coefficients(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let c = flat_index(wg, nwg, lid);
    if (c >= F.cout) { return; }
    var b = 0.0;
    if (F.has_bias == 1u) { b = bias[c]; }
    if (F.has_bn == 1u) {
        let s = gamma[c] / sqrt(var_[c] + F.eps);
        coef_out[c] = vec2<f32>(s, beta[c] + (b - mean[c]) * s);
    } else {
        coef_out[c] = vec2<f32>(1.0, b);
    }
}
