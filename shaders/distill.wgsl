// Knowledge distillation from a frozen teacher's Detect head and its gradient: per anchor, the
// binary KL of the class probabilities σ(s/T) from the teacher's σ(t/T), and the KL of each
// side's DFL distribution softmax(s/T) from the teacher's (averaged over the 4 sides, weighted by
// the teacher's confidence w = max_c σ(t_c)); both scaled by T², divided by S = max(Σ w, 1) and
// weighted by their gains; the total is their sum times the batch size. Same order of decisions
// as `slimc_ir::eval::distill`; every reduction runs in a fixed order.
//
// `ps` and `pt` hold the student's and the teacher's level maps as [image, anchor, channel]
// (4·reg_max distribution logits, then the class logits). `work` holds each anchor's
// (w, class, w·box) at `K.part`, then (S, class sum, box sum) at `K.sums`.

struct Kd {
    batch: u32,
    na: u32,
    nc: u32,
    reg_max: u32,
    temperature: f32,
    gain_cls: f32,
    gain_box: f32,
    // Nonzero: `kd_anchor` also writes the gradient.
    grad: u32,
    part: u32,
    sums: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> K: Kd;
@group(0) @binding(1) var<storage, read> ps: array<f32>;
@group(0) @binding(2) var<storage, read> pt: array<f32>;
@group(0) @binding(3) var<storage, read_write> work: array<f32>;
@group(0) @binding(4) var<storage, read_write> items: array<f32>;
@group(0) @binding(5) var<storage, read_write> total: array<f32>;
@group(0) @binding(6) var<storage, read_write> gpred: array<f32>;

// Every entry point binds the same buffers (auto layouts keep only what an entry uses).
fn bind_all() {
    if (K.batch == 0xffffffffu) {
        let t = ps[0] + pt[0] + work[0] + items[0] + total[0] + gpred[0];
        work[0] = t;
    }
}

fn no() -> u32 {
    return 4u * K.reg_max + K.nc;
}

// ln(1 + eˣ) without overflow.
fn softplus(x: f32) -> f32 {
    return max(x, 0.0) + log1p_(exp(-abs(x)));
}

// The log-sum-exp of side `side`'s bins at temperature T in `p` (ps or pt) from `base`.
fn side_lse(student: bool, base: u32, side: u32) -> f32 {
    var m = -3.4e38;
    for (var k = 0u; k < K.reg_max; k++) {
        let j = base + side * K.reg_max + k;
        m = max(m, select(pt[j], ps[j], student) / K.temperature);
    }
    var s = 0.0;
    for (var k = 0u; k < K.reg_max; k++) {
        let j = base + side * K.reg_max + k;
        s += exp(select(pt[j], ps[j], student) / K.temperature - m);
    }
    return m + log(s);
}

// Pass 1, per (image, anchor): its (w, class, w·box) into `part`; with `K.grad`, the derivative
// of its terms with respect to the softened student logits s/T into `gpred` (q − p on the class
// channels, w·(Q − P)/4 on the box channels).
@compute @workgroup_size(256)
fn kd_anchor(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    bind_all();
    let i = flat_index(wg, nwg, lid);
    if (i >= K.batch * K.na) { return; }
    let base = i * no();
    let cls = base + 4u * K.reg_max;
    let temp = K.temperature;
    var w = 0.0;
    var lcls = 0.0;
    for (var c = 0u; c < K.nc; c++) {
        let t = pt[cls + c];
        let s = ps[cls + c];
        w = max(w, sigmoid1(t));
        let a = t / temp;
        let b = s / temp;
        let p = sigmoid1(a);
        lcls += p * (softplus(-b) - softplus(-a)) + (1.0 - p) * (softplus(b) - softplus(a));
        if (K.grad != 0u) { gpred[cls + c] = sigmoid1(b) - p; }
    }
    var lbox = 0.0;
    for (var side = 0u; side < 4u; side++) {
        let lt = side_lse(false, base, side);
        let ls = side_lse(true, base, side);
        for (var k = 0u; k < K.reg_max; k++) {
            let j = base + side * K.reg_max + k;
            let log_p = pt[j] / temp - lt;
            let log_q = ps[j] / temp - ls;
            lbox += exp(log_p) * (log_p - log_q) / 4.0;
            if (K.grad != 0u) { gpred[j] = w * (exp(log_q) - exp(log_p)) / 4.0; }
        }
    }
    let o = K.part + i * 3u;
    work[o] = w;
    work[o + 1u] = lcls;
    work[o + 2u] = w * lbox;
}

var<workgroup> red: array<vec3<f32>, 256>;

// Pass 2, one workgroup: the sums over every anchor in a fixed order, the terms and the total.
@compute @workgroup_size(256)
fn kd_sum(@builtin(local_invocation_index) lid: u32) {
    bind_all();
    var s = vec3<f32>(0.0);
    for (var i = lid; i < K.batch * K.na; i += 256u) {
        let o = K.part + i * 3u;
        s += vec3<f32>(work[o], work[o + 1u], work[o + 2u]);
    }
    red[lid] = s;
    workgroupBarrier();
    for (var k = 128u; k > 0u; k >>= 1u) {
        if (lid < k) { red[lid] += red[lid + k]; }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let r = red[0];
        let sw = max(r.x, 1.0);
        work[K.sums] = sw;
        let t2 = K.temperature * K.temperature;
        let c = K.gain_cls * t2 * r.y / sw;
        let b = K.gain_box * t2 * r.z / sw;
        items[0] = c;
        items[1] = b;
        total[0] = (c + b) * f32(K.batch);
    }
}

// Pass 3, per element of `gpred`: the derivative with respect to s/T times N·gain·T/S, the
// gradient of the total with respect to the student's logits.
@compute @workgroup_size(256)
fn kd_scale(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    bind_all();
    let j = flat_index(wg, nwg, lid);
    if (j >= K.batch * K.na * no()) { return; }
    let gain = select(K.gain_cls, K.gain_box, j % no() < 4u * K.reg_max);
    gpred[j] *= f32(K.batch) * K.temperature / work[K.sums] * gain;
}
