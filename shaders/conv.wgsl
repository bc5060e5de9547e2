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
    mode: u32,
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

// The input element at reduction index `r` (group-local channel, tap) for output pixel `p` of
// group `g`; zero in the padding.
fn x_at(r: u32, p: u32, g: u32) -> f32 {
    let taps = P.kh * P.kw;
    let cl = r / taps;
    let t = r % taps;
    let ohw = P.oh * P.ow;
    let b = p / ohw;
    let q = p % ohw;
    let iy = i32((q / P.ow) * P.sh + (t / P.kw) * P.dh) - i32(P.ph);
    let ix = i32((q % P.ow) * P.sw + (t % P.kw) * P.dw) - i32(P.pw);
    if (iy < 0 || ix < 0 || iy >= i32(P.h) || ix >= i32(P.w)) {
        return 0.0;
    }
    return src[((b * P.cin + g * P.cg + cl) * P.h + u32(iy)) * P.w + u32(ix)];
}

// The output gradient that tap (output channel, tap) of input pixel `p` receives; zero when no
// output pixel reads this input pixel through that tap.
fn dy_at(k: u32, p: u32, g: u32) -> f32 {
    let taps = P.kh * P.kw;
    let co = k / taps;
    let t = k % taps;
    let hw = P.h * P.w;
    let b = p / hw;
    let q = p % hw;
    let ty = i32(q / P.w) + i32(P.ph) - i32((t / P.kw) * P.dh);
    let tx = i32(q % P.w) + i32(P.pw) - i32((t % P.kw) * P.dw);
    if (ty < 0 || tx < 0 || ty % i32(P.sh) != 0 || tx % i32(P.sw) != 0) {
        return 0.0;
    }
    let oy = u32(ty) / P.sh;
    let ox = u32(tx) / P.sw;
    if (oy >= P.oh || ox >= P.ow) {
        return 0.0;
    }
    return src[((b * P.cout + g * P.og + co) * P.oh + oy) * P.ow + ox];
}

fn a_at(m: u32, k: u32, g: u32) -> f32 {
    let taps = P.kh * P.kw;
    switch P.mode {
        case 0u: {
            return aux[(g * P.og + m) * P.cg * taps + k];
        }
        case 1u: {
            return aux[((g * P.og + k / taps) * P.cg + m) * taps + k % taps];
        }
        default: {
            let ohw = P.oh * P.ow;
            return aux[((k / ohw) * P.cout + g * P.og + m) * ohw + k % ohw];
        }
    }
}

fn b_at(k: u32, n: u32, g: u32) -> f32 {
    switch P.mode {
        case 0u: {
            return x_at(k, n, g);
        }
        case 1u: {
            return dy_at(k, n, g);
        }
        default: {
            return x_at(n, k, g);
        }
    }
}

fn store(m: u32, n: u32, g: u32, z: u32, v: f32) {
    switch P.mode {
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
    if (P.mode == 2u) {
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
    if (P.mode == 2u) {
        z = wg.z;
        n0 = wg.x * TN;
    }
    if (n0 >= P.gn) {
        return;
    }
    let ks = k_range(z);
    var acc: array<vec4<f32>, 4>;
    for (var k0 = ks.x; k0 < ks.y; k0 += TK) {
        for (var i = 0u; i < 4u; i++) {
            let e = tid + i * 256u;
            let mm = e / TK;
            let kk = e % TK;
            var av = 0.0;
            if (m0 + mm < P.gm && k0 + kk < ks.y) {
                av = a_at(m0 + mm, k0 + kk, g);
            }
            atile[kk * TM + mm] = av;
            let kb = e / TN;
            let nn = e % TN;
            var bv = 0.0;
            if (n0 + nn < P.gn && k0 + kb < ks.y) {
                bv = b_at(k0 + kb, n0 + nn, g);
            }
            btile[kb * TN + nn] = bv;
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
    if (P.mode == 2u) {
        chunks = (P.gk + P.chunk - 1u) / P.chunk;
    }
    if (i >= chunks * per_chunk) { return; }
    let n = i % P.gn;
    let m = (i / P.gn) % P.gm;
    let g = (i / (P.gn * P.gm)) % groups;
    let z = i / per_chunk;
    let ks = k_range(z);
    var acc = 0.0;
    for (var k = ks.x; k < ks.y; k++) {
        acc += a_at(m, k, g) * b_at(k, n, g);
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
