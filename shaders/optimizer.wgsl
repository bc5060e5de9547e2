// The optimizer's ops, PyTorch's updates in f32: gradient accumulation, the global gradient
// norm (two deterministic passes), SGD with Nesterov momentum, AdamW, the proximal L1 step of
// network slimming, and the model EMA. `scalars` is the step-scalars vector the host sets per
// micro-batch (see `slimc_ir::step_scalars`).

const LR: u32 = 0u;
const MOMENTUM: u32 = 3u;
const SR: u32 = 4u;
const EMA_DECAY: u32 = 5u;
const EMA_REST: u32 = 6u;
const STEP: u32 = 7u;
const FRESH: u32 = 8u;
const ADAM_C1: u32 = 9u;
const ADAM_C2: u32 = 10u;

struct Update {
    n: u32,
    group: u32,
    weight_decay: f32,
    max_norm: f32,
    // Whether the proximal step is on, and how many largest-magnitude entries it leaves alone.
    prox: u32,
    keep: u32,
    beta1: f32,
    pad0: u32,
}

@group(0) @binding(0) var<uniform> U: Update;
@group(0) @binding(1) var<storage, read> scalars: array<f32>;
@group(0) @binding(2) var<storage, read> p: array<f32>;
@group(0) @binding(3) var<storage, read> g: array<f32>;
@group(0) @binding(4) var<storage, read> norm: array<f32>;
@group(0) @binding(5) var<storage, read> s1: array<f32>;
@group(0) @binding(6) var<storage, read> s2: array<f32>;
@group(0) @binding(7) var<storage, read_write> p_next: array<f32>;
@group(0) @binding(8) var<storage, read_write> s1_next: array<f32>;
@group(0) @binding(9) var<storage, read_write> s2_next: array<f32>;

// The gradient, scaled by clip_grad_norm_'s coefficient when that is below 1.
fn grad(i: u32) -> f32 {
    let coef = U.max_norm / (norm[0] + 1e-6);
    if (U.max_norm > 0.0 && coef < 1.0) {
        return g[i] * coef;
    }
    return g[i];
}

// Whether p[i] is among the `keep` largest magnitudes (ties to the lower index).
fn kept(i: u32) -> bool {
    if (U.keep == 0u) { return false; }
    let a = abs(p[i]);
    var above = 0u;
    for (var j = 0u; j < U.n; j++) {
        let b = abs(p[j]);
        if (b > a || (b == a && j < i)) {
            above++;
        }
    }
    return above < U.keep;
}

// The proximal L1 step: soft-thresholding by eta·sr, except the kept entries.
fn prox(i: u32, w: f32, eta: f32) -> f32 {
    if (U.prox == 0u || kept(i)) {
        return w;
    }
    return sign(w) * max(abs(w) - eta * scalars[SR], 0.0);
}

@compute @workgroup_size(256)
fn sgd_update(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= U.n) { return; }
    if (scalars[STEP] == 0.0) {
        p_next[i] = p[i];
        s1_next[i] = s1[i];
        return;
    }
    let lr = scalars[LR + U.group];
    let mu = scalars[MOMENTUM];
    let d = grad(i) + U.weight_decay * p[i];
    let b = mu * s1[i] + d;
    p_next[i] = prox(i, p[i] - lr * (d + mu * b), lr);
    s1_next[i] = b;
}

@compute @workgroup_size(256)
fn adamw_update(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= U.n) { return; }
    if (scalars[STEP] == 0.0) {
        p_next[i] = p[i];
        s1_next[i] = s1[i];
        s2_next[i] = s2[i];
        return;
    }
    let lr = scalars[LR + U.group];
    let gi = grad(i);
    let m = U.beta1 * s1[i] + (1.0 - U.beta1) * gi;
    let v = 0.999 * s2[i] + 0.001 * gi * gi;
    let eta = lr / (sqrt(v / scalars[ADAM_C2]) + 1e-8);
    let w = p[i] * (1.0 - lr * U.weight_decay) - eta * (m / scalars[ADAM_C1]);
    p_next[i] = prox(i, w, eta);
    s1_next[i] = m;
    s2_next[i] = v;
}

@group(0) @binding(10) var<uniform> C: Count;
@group(0) @binding(11) var<storage, read> e_scalars: array<f32>;
@group(0) @binding(12) var<storage, read> e_a: array<f32>;
@group(0) @binding(13) var<storage, read> e_b: array<f32>;
@group(0) @binding(14) var<storage, read_write> e_out: array<f32>;
@group(0) @binding(15) var<storage, read_write> e_out2: array<f32>;

// d·ema + (1 − d)·x when the step flag is set (a: the average, b: the model's tensor).
@compute @workgroup_size(256)
fn ema_update(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= C.n) { return; }
    if (e_scalars[STEP] == 0.0) {
        e_out[i] = e_a[i];
    } else {
        e_out[i] = e_scalars[EMA_DECAY] * e_a[i] + e_scalars[EMA_REST] * e_b[i];
    }
}

// The sum (this micro-batch's gradient alone on a run's first one) and the accumulator's next
// value (zeros when the optimizer steps). a: the accumulator, b: the gradient.
@compute @workgroup_size(256)
fn accumulate(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= C.n) { return; }
    var s = e_b[i];
    if (e_scalars[FRESH] == 0.0) {
        s = e_a[i] + e_b[i];
    }
    e_out[i] = s;
    if (e_scalars[STEP] != 0.0) {
        e_out2[i] = 0.0;
    } else {
        e_out2[i] = s;
    }
}

struct Squares {
    n: u32,
    // Where this tensor's partial sums start.
    first: u32,
    // Partial sums in all, for the final pass.
    total: u32,
    pad0: u32,
}

@group(0) @binding(20) var<uniform> Q: Squares;
@group(0) @binding(21) var<storage, read> q_in: array<f32>;
@group(0) @binding(22) var<storage, read_write> q_partial: array<f32>;
@group(0) @binding(23) var<storage, read> q_partial_in: array<f32>;
@group(0) @binding(24) var<storage, read_write> q_norm: array<f32>;

// Pass 1: each workgroup sums the squares of its 4096-element block of one tensor.
@compute @workgroup_size(256)
fn sum_squares(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let start = wg.x * 4096u;
    var s = 0.0;
    for (var j = start + lid; j < min(start + 4096u, Q.n); j += 256u) {
        s += q_in[j] * q_in[j];
    }
    let total = workgroup_sum(lid, s);
    if (lid == 0u) {
        q_partial[Q.first + wg.x] = total;
    }
}

// Pass 2: one workgroup adds every partial sum and takes the square root.
@compute @workgroup_size(256)
fn norm_of_partials(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var j = lid; j < Q.total; j += 256u) {
        s += q_partial_in[j];
    }
    let total = workgroup_sum(lid, s);
    if (lid == 0u) {
        q_norm[0] = sqrt(total);
    }
}
