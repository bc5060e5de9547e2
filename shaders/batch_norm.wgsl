// Inference batch normalisation over axis 1: γ·(x − mean)/sqrt(var + eps) + β.

struct Norm {
    numel: u32,
    channels: u32,
    plane: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> P: Norm;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read> mean: array<f32>;
@group(0) @binding(5) var<storage, read> var_: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn batch_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= P.numel) { return; }
    let c = (i / P.plane) % P.channels;
    y[i] = (x[i] - mean[c]) / sqrt(var_[c] + P.eps) * gamma[c] + beta[c];
}

// Training mode: batch statistics per channel (one workgroup per channel, two deterministic
// passes: the mean, then the mean squared deviation), the running-statistic update, and the
// gradient's per-channel sums.

struct Train {
    n: u32,
    channels: u32,
    plane: u32,
    eps: f32,
    momentum: f32,
    // count / (count − 1): the unbiased variance for the running statistic.
    unbias: f32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(10) var<uniform> T: Train;
@group(0) @binding(11) var<storage, read> tx: array<f32>;
@group(0) @binding(12) var<storage, read> run_mean: array<f32>;
@group(0) @binding(13) var<storage, read> run_var: array<f32>;
@group(0) @binding(14) var<storage, read_write> batch_mean: array<f32>;
@group(0) @binding(15) var<storage, read_write> batch_invstd: array<f32>;
@group(0) @binding(16) var<storage, read_write> next_mean: array<f32>;
@group(0) @binding(17) var<storage, read_write> next_var: array<f32>;

// Element `j` of channel `c`'s N·H·W elements.
fn channel_at(c: u32, j: u32) -> u32 {
    return ((j / T.plane) * T.channels + c) * T.plane + j % T.plane;
}

@compute @workgroup_size(256)
fn bn_stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wg.x;
    let count = T.n * T.plane;
    var s = 0.0;
    for (var j = lid; j < count; j += 256u) {
        s += tx[channel_at(c, j)];
    }
    let mean = workgroup_sum(lid, s) / f32(count);
    var q = 0.0;
    for (var j = lid; j < count; j += 256u) {
        let d = tx[channel_at(c, j)] - mean;
        q += d * d;
    }
    let var_b = workgroup_sum(lid, q) / f32(count);
    if (lid == 0u) {
        batch_mean[c] = mean;
        batch_invstd[c] = 1.0 / sqrt(var_b + T.eps);
        next_mean[c] = (1.0 - T.momentum) * run_mean[c] + T.momentum * mean;
        next_var[c] = (1.0 - T.momentum) * run_var[c] + T.momentum * var_b * T.unbias;
    }
}

@group(0) @binding(20) var<uniform> A: Train;
@group(0) @binding(21) var<storage, read> ax: array<f32>;
@group(0) @binding(22) var<storage, read> a_gamma: array<f32>;
@group(0) @binding(23) var<storage, read> a_beta: array<f32>;
@group(0) @binding(24) var<storage, read> a_mean: array<f32>;
@group(0) @binding(25) var<storage, read> a_invstd: array<f32>;
@group(0) @binding(26) var<storage, read_write> ay: array<f32>;

// y = (x − mean)·invstd·γ + β with the batch statistics.
@compute @workgroup_size(256)
fn bn_train_apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= A.n * A.channels * A.plane) { return; }
    let c = (i / A.plane) % A.channels;
    ay[i] = (ax[i] - a_mean[c]) * a_invstd[c] * a_gamma[c] + a_beta[c];
}

@group(0) @binding(30) var<uniform> G: Train;
@group(0) @binding(31) var<storage, read> gdy: array<f32>;
@group(0) @binding(32) var<storage, read> gx: array<f32>;
@group(0) @binding(33) var<storage, read> g_mean: array<f32>;
@group(0) @binding(34) var<storage, read> g_invstd: array<f32>;
@group(0) @binding(35) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(36) var<storage, read_write> dbeta: array<f32>;

// dβ = Σ dy and dγ = Σ dy·x̂ per channel (one workgroup per channel).
@compute @workgroup_size(256)
fn bn_grad_stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wg.x;
    let count = G.n * G.plane;
    var sb = 0.0;
    var sg = 0.0;
    for (var j = lid; j < count; j += 256u) {
        let i = ((j / G.plane) * G.channels + c) * G.plane + j % G.plane;
        sb += gdy[i];
        sg += gdy[i] * (gx[i] - g_mean[c]) * g_invstd[c];
    }
    let b = workgroup_sum(lid, sb);
    let gg = workgroup_sum(lid, sg);
    if (lid == 0u) {
        dbeta[c] = b;
        dgamma[c] = gg;
    }
}

@group(0) @binding(40) var<uniform> D: Train;
@group(0) @binding(41) var<storage, read> ddy: array<f32>;
@group(0) @binding(42) var<storage, read> dx_in: array<f32>;
@group(0) @binding(43) var<storage, read> d_gamma: array<f32>;
@group(0) @binding(44) var<storage, read> d_mean: array<f32>;
@group(0) @binding(45) var<storage, read> d_invstd: array<f32>;
@group(0) @binding(46) var<storage, read> d_dgamma: array<f32>;
@group(0) @binding(47) var<storage, read> d_dbeta: array<f32>;
@group(0) @binding(48) var<storage, read_write> ddx: array<f32>;

// dx = γ·invstd/M · (M·dy − dβ − x̂·dγ), M the elements per channel.
@compute @workgroup_size(256)
fn bn_grad_apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= D.n * D.channels * D.plane) { return; }
    let c = (i / D.plane) % D.channels;
    let count = f32(D.n * D.plane);
    let xhat = (dx_in[i] - d_mean[c]) * d_invstd[c];
    ddx[i] = d_gamma[c] * d_invstd[c] / count * (count * ddy[i] - d_dbeta[c] - xhat * d_dgamma[c]);
}
