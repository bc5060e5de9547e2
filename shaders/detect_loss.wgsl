// Ultralytics' v8DetectionLoss and its gradient: DFL decoding, the task-aligned assigner
// (top 10 by score^0.5·CIoU^6 among anchors inside the box, one box per anchor by overlap,
// scores normalised by each box's best overlap), BCE over classes, CIoU and DFL on the assigned
// anchors, all divided by the sum of assigned scores. Same order of decisions as
// `slimc_ir::eval::detect_loss`; every reduction runs in a fixed order.
//
// `pred` holds every level's map as [image, anchor, channel] (4·reg_max distribution logits,
// then the class logits); target rows are (image, class, cx, cy, w, h), normalised. A box is
// identified by its target row, so the boxes of an image are the rows naming it, in row order.
// `work` holds the intermediate arrays at the offsets `L` gives.

struct Loss {
    batch: u32,
    na: u32,
    nc: u32,
    reg_max: u32,
    rows: u32,
    levels: u32,
    // Offsets into `work`.
    dec: u32,
    ov: u32,
    al: u32,
    pos: u32,
    asg: u32,
    row_max: u32,
    part: u32,
    sums: u32,
    img_w: f32,
    img_h: f32,
    gains: vec4<f32>,
    // Per level: first anchor, width (x) and its stride.
    level_first: vec4<u32>,
    level_w: vec4<u32>,
    level_stride: vec4<f32>,
}

@group(0) @binding(0) var<uniform> L: Loss;
@group(0) @binding(1) var<storage, read> pred: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<f32>;
@group(0) @binding(3) var<storage, read_write> work: array<f32>;
@group(0) @binding(4) var<storage, read_write> items: array<f32>;
@group(0) @binding(5) var<storage, read_write> total: array<f32>;
@group(0) @binding(6) var<storage, read_write> gpred: array<f32>;

const EPS: f32 = 1e-7;
const FOUR_OVER_PI2: f32 = 0.40528473456935108578;

// Every entry point binds the same buffers (auto layouts keep only what an entry uses).
fn bind_all() {
    if (L.batch == 0xffffffffu) {
        let t = pred[0] + targets[0] + work[0] + items[0] + total[0] + gpred[0];
        work[0] = t;
    }
}

fn no() -> u32 {
    return 4u * L.reg_max + L.nc;
}

// The level of anchor `a`.
fn level_of(a: u32) -> u32 {
    var l = 0u;
    for (var k = 1u; k < L.levels; k++) {
        if (a >= L.level_first[k]) { l = k; }
    }
    return l;
}

// Anchor `a`'s point in grid units (x, y) and its stride.
fn anchor(a: u32) -> vec3<f32> {
    let l = level_of(a);
    let i = a - L.level_first[l];
    let w = L.level_w[l];
    return vec3<f32>(f32(i % w) + 0.5, f32(i / w) + 0.5, L.level_stride[l]);
}

// Target row j's box in pixels (x1, y1, x2, y2).
fn gt_box(j: u32) -> vec4<f32> {
    let r = j * 6u;
    let cx = targets[r + 2u] * L.img_w;
    let cy = targets[r + 3u] * L.img_h;
    let w = targets[r + 4u] * L.img_w;
    let h = targets[r + 5u] * L.img_h;
    return vec4<f32>(cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0);
}

fn gt_image(j: u32) -> u32 {
    return u32(targets[j * 6u]);
}

fn gt_class(j: u32) -> u32 {
    return u32(targets[j * 6u + 1u]);
}

fn logit(b: u32, a: u32, c: u32) -> f32 {
    return pred[(b * L.na + a) * no() + 4u * L.reg_max + c];
}

// The predicted box of (image, anchor) in grid units.
fn box_of(b: u32, a: u32) -> vec4<f32> {
    let d = L.dec + (b * L.na + a) * 8u;
    return vec4<f32>(work[d], work[d + 1u], work[d + 2u], work[d + 3u]);
}

struct Ciou {
    value: f32,
    inter: f32,
    union_: f32,
    w1: f32,
    h1: f32,
    iw: f32,
    ih: f32,
    cw: f32,
    ch: f32,
    c2: f32,
    rho2: f32,
    alpha: f32,
    delta: f32,
}

fn ciou(a: vec4<f32>, b: vec4<f32>) -> Ciou {
    var r: Ciou;
    r.w1 = a.z - a.x;
    r.h1 = a.w - a.y + EPS;
    let w2 = b.z - b.x;
    let h2 = b.w - b.y + EPS;
    r.iw = min(a.z, b.z) - max(a.x, b.x);
    r.ih = min(a.w, b.w) - max(a.y, b.y);
    r.inter = max(r.iw, 0.0) * max(r.ih, 0.0);
    r.union_ = r.w1 * r.h1 + w2 * h2 - r.inter + EPS;
    let iou = r.inter / r.union_;
    r.cw = max(a.z, b.z) - min(a.x, b.x);
    r.ch = max(a.w, b.w) - min(a.y, b.y);
    r.c2 = r.cw * r.cw + r.ch * r.ch + EPS;
    let sx = b.x + b.z - a.x - a.z;
    let sy = b.y + b.w - a.y - a.w;
    r.rho2 = (sx * sx + sy * sy) / 4.0;
    r.delta = atan(w2 / h2) - atan(r.w1 / r.h1);
    let v = FOUR_OVER_PI2 * r.delta * r.delta;
    r.alpha = v / (v - iou + (1.0 + EPS));
    r.value = iou - (r.rho2 / r.c2 + v * r.alpha);
    return r;
}

fn share(wins: bool, tie: bool) -> f32 {
    if (tie) { return 0.5; }
    if (wins) { return 1.0; }
    return 0.0;
}

// d CIoU / d a (alpha held constant, as Ultralytics computes it without gradient).
fn ciou_grad(c: Ciou, a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    var g = vec4<f32>(0.0);
    let sums = vec2<f32>(b.x + b.z - a.x - a.z, b.y + b.w - a.y - a.w);
    let r = c.w1 * c.w1 + c.h1 * c.h1;
    let dv_dlen = vec2<f32>(-2.0 * FOUR_OVER_PI2 * c.delta * c.h1 / r, 2.0 * FOUR_OVER_PI2 * c.delta * c.w1 / r);
    let lens = vec2<f32>(c.w1, c.h1);
    let raws = vec2<f32>(c.iw, c.ih);
    let spans = vec2<f32>(c.cw, c.ch);
    for (var axis = 0u; axis < 2u; axis++) {
        let lo = axis;
        let hi = axis + 2u;
        let other_side = max(raws[1u - axis], 0.0);
        var open = 0.0;
        if (raws[axis] >= 0.0) { open = 1.0; }
        let dinter = vec2<f32>(
            -share(a[lo] > b[lo], a[lo] == b[lo]) * open * other_side,
            share(a[hi] < b[hi], a[hi] == b[hi]) * open * other_side,
        );
        let dlen = vec2<f32>(-1.0, 1.0);
        let dspan = vec2<f32>(-share(a[lo] < b[lo], a[lo] == b[lo]), share(a[hi] > b[hi], a[hi] == b[hi]));
        for (var k = 0u; k < 2u; k++) {
            let di = dinter[k];
            let du = lens[1u - axis] * dlen[k] - di;
            let diou = di / c.union_ - c.inter / (c.union_ * c.union_) * du;
            let dc2 = 2.0 * spans[axis] * dspan[k];
            let drho2 = -sums[axis] / 2.0;
            let dv = dv_dlen[axis] * dlen[k];
            let v = diou - (drho2 / c.c2 - c.rho2 * dc2 / (c.c2 * c.c2)) - c.alpha * dv;
            if (k == 0u) { g[lo] = v; } else { g[hi] = v; }
        }
    }
    return g;
}

// Pass 1, per (image, anchor): the distributions' log-sum-exp and expectations, the box.
@compute @workgroup_size(256)
fn dl_decode(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    bind_all();
    let i = flat_index(wg, nwg, lid);
    if (i >= L.batch * L.na) { return; }
    let a = i % L.na;
    let base = i * no();
    var dist = vec4<f32>(0.0);
    for (var s = 0u; s < 4u; s++) {
        let at = base + s * L.reg_max;
        var m = bitcast<f32>(0xff800000u);
        for (var k = 0u; k < L.reg_max; k++) { m = max(m, pred[at + k]); }
        var sum = 0.0;
        for (var k = 0u; k < L.reg_max; k++) { sum += exp(pred[at + k] - m); }
        var d = 0.0;
        for (var k = 0u; k < L.reg_max; k++) { d += exp(pred[at + k] - m) / sum * f32(k); }
        dist[s] = d;
        work[L.dec + i * 8u + 4u + s] = m + log(sum);
    }
    let p = anchor(a);
    let o = L.dec + i * 8u;
    work[o] = p.x - dist.x;
    work[o + 1u] = p.y - dist.y;
    work[o + 2u] = p.x + dist.z;
    work[o + 3u] = p.y + dist.w;
}

// Pass 2, per (box, anchor of its image): inside the box (pos = 1 for now), overlap and the
// alignment metric.
@compute @workgroup_size(256)
fn dl_metrics(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    bind_all();
    let i = flat_index(wg, nwg, lid);
    if (i >= L.rows * L.na) { return; }
    let j = i / L.na;
    let a = i % L.na;
    let g = gt_box(j);
    var ov = 0.0;
    var al = 0.0;
    var inside = 0.0;
    if (g.x + g.y + g.z + g.w > 0.0) {
        let p = anchor(a);
        let px = p.x * p.z;
        let py = p.y * p.z;
        let d = min(min(px - g.x, py - g.y), min(g.z - px, g.w - py));
        if (d > 1e-9) {
            inside = 1.0;
            let b = gt_image(j);
            ov = max(ciou(g, box_of(b, a) * p.z).value, 0.0);
            let u2 = ov * ov;
            let u4 = u2 * u2;
            al = sqrt(sigmoid1(logit(b, a, gt_class(j)))) * (u4 * u2);
        }
    }
    work[L.ov + i] = ov;
    work[L.al + i] = al;
    work[L.pos + i] = inside;
}

// Whether anchor (value v, index a) comes before (tv, ti) in the order: larger first, ties by
// index.
fn before(v: f32, a: u32, tv: f32, ti: u32) -> bool {
    return v > tv || (v == tv && a < ti);
}

// Pass 3, per box: its 10 best anchors by the metric (ties to the lower index) stay positive
// when inside.
@compute @workgroup_size(64)
fn dl_topk(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    bind_all();
    let j = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (j >= L.rows) { return; }
    let row = j * L.na;
    // The 10th anchor in the order, found by stepping through the first ten.
    var tv = bitcast<f32>(0x7f800000u);
    var ti = 0u;
    var found = 0u;
    for (var k = 0u; k < 10u && k < L.na; k++) {
        var bv = bitcast<f32>(0xff800000u);
        var bi = 0xffffffffu;
        for (var a = 0u; a < L.na; a++) {
            let v = work[L.al + row + a];
            if ((k == 0u || before(tv, ti, v, a)) && (bi == 0xffffffffu || before(v, a, bv, bi))) {
                bv = v;
                bi = a;
            }
        }
        tv = bv;
        ti = bi;
        found++;
    }
    for (var a = 0u; a < L.na; a++) {
        let chosen = found < 10u || !before(tv, ti, work[L.al + row + a], a);
        if (!chosen) {
            work[L.pos + row + a] = 0.0;
        }
    }
}

// Pass 4, per (image, anchor): an anchor claimed by several boxes goes to the box it overlaps
// most (of all the image's boxes, the first on ties); its box, or -1.
@compute @workgroup_size(256)
fn dl_resolve(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    bind_all();
    let i = flat_index(wg, nwg, lid);
    if (i >= L.batch * L.na) { return; }
    let b = i / L.na;
    let a = i % L.na;
    var claims = 0u;
    var best = 0xffffffffu;
    for (var j = 0u; j < L.rows; j++) {
        if (gt_image(j) != b) { continue; }
        if (work[L.pos + j * L.na + a] != 0.0) { claims++; }
        if (best == 0xffffffffu || work[L.ov + j * L.na + a] > work[L.ov + best * L.na + a]) { best = j; }
    }
    var gt = -1.0;
    for (var j = 0u; j < L.rows; j++) {
        if (gt_image(j) != b) { continue; }
        if (claims > 1u) {
            work[L.pos + j * L.na + a] = select(0.0, 1.0, j == best);
        }
        if (gt < 0.0 && work[L.pos + j * L.na + a] != 0.0) { gt = f32(j); }
    }
    work[L.asg + i * 2u] = gt;
}

// Pass 5, per box: the best metric and the best overlap among its positive anchors.
@compute @workgroup_size(64)
fn dl_row_max(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    bind_all();
    let j = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (j >= L.rows) { return; }
    var pa = 0.0;
    var po = 0.0;
    for (var a = 0u; a < L.na; a++) {
        let k = j * L.na + a;
        if (work[L.pos + k] != 0.0) {
            pa = max(pa, work[L.al + k]);
            po = max(po, work[L.ov + k]);
        }
    }
    work[L.row_max + j * 2u] = pa;
    work[L.row_max + j * 2u + 1u] = po;
}

// The DFL target of side s: (lower bin, its weight, the upper bin's weight).
fn dfl_target(p: vec3<f32>, t: vec4<f32>, s: u32) -> vec3<f32> {
    var d: f32;
    switch s {
        case 0u: { d = p.x - t.x; }
        case 1u: { d = p.y - t.y; }
        case 2u: { d = t.z - p.x; }
        default: { d = t.w - p.y; }
    }
    let v = clamp(d, 0.0, f32(L.reg_max) - 1.0 - 0.01);
    let tl = floor(v);
    let wl = tl + 1.0 - v;
    return vec3<f32>(tl, wl, 1.0 - wl);
}

// Pass 6, per (image, anchor): the assigned score and the anchor's share of each loss
// (box, class, DFL, before dividing by the score sum) and its score, into `part`.
@compute @workgroup_size(256)
fn dl_score(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    bind_all();
    let i = flat_index(wg, nwg, lid);
    if (i >= L.batch * L.na) { return; }
    let b = i / L.na;
    let a = i % L.na;
    let gt = work[L.asg + i * 2u];
    var score = 0.0;
    var cls = 0xffffffffu;
    if (gt >= 0.0) {
        for (var j = 0u; j < L.rows; j++) {
            let k = j * L.na + a;
            if (gt_image(j) == b && work[L.pos + k] != 0.0) {
                score = max(score, work[L.al + k] * work[L.row_max + j * 2u + 1u] / (work[L.row_max + j * 2u] + 1e-9));
            }
        }
        cls = gt_class(u32(gt));
    }
    work[L.asg + i * 2u + 1u] = score;
    var lcls = 0.0;
    for (var c = 0u; c < L.nc; c++) {
        let x = logit(b, a, c);
        let t = select(0.0, score, c == cls);
        lcls += max(x, 0.0) - x * t + log1p_(exp(-abs(x)));
    }
    var lbox = 0.0;
    var ldfl = 0.0;
    if (gt >= 0.0) {
        let p = anchor(a);
        let t = gt_box(u32(gt)) / p.z;
        lbox = (1.0 - ciou(box_of(b, a), t).value) * score;
        var dfl = 0.0;
        for (var s = 0u; s < 4u; s++) {
            let d = dfl_target(p, t, s);
            let at = (i * no()) + s * L.reg_max;
            let lse = work[L.dec + i * 8u + 4u + s];
            let tl = u32(d.x);
            dfl += (lse - pred[at + tl]) * d.y + (lse - pred[at + tl + 1u]) * d.z;
        }
        ldfl = dfl / 4.0 * score;
    }
    let o = L.part + i * 4u;
    work[o] = lbox;
    work[o + 1u] = lcls;
    work[o + 2u] = ldfl;
    work[o + 3u] = score;
}

var<workgroup> red: array<vec4<f32>, 256>;

// Pass 7, one workgroup: the four sums over every (image, anchor), in a fixed order.
@compute @workgroup_size(256)
fn dl_sum(@builtin(local_invocation_index) lid: u32) {
    bind_all();
    var s = vec4<f32>(0.0);
    for (var i = lid; i < L.batch * L.na; i += 256u) {
        let o = L.part + i * 4u;
        s += vec4<f32>(work[o], work[o + 1u], work[o + 2u], work[o + 3u]);
    }
    red[lid] = s;
    workgroupBarrier();
    for (var k = 128u; k > 0u; k >>= 1u) {
        if (lid < k) { red[lid] += red[lid + k]; }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let r = red[0];
        let tss = max(r.w, 1.0);
        work[L.sums] = tss;
        let it = vec3<f32>(r.x / tss * L.gains.x, r.y / tss * L.gains.y, r.z / tss * L.gains.z);
        items[0] = it.x;
        items[1] = it.y;
        items[2] = it.z;
        total[0] = (it.x + it.y + it.z) * f32(L.batch);
    }
}

// The gradient, per (image, anchor): into `gpred` laid out as `pred`.
@compute @workgroup_size(256)
fn dl_grad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    bind_all();
    let i = flat_index(wg, nwg, lid);
    if (i >= L.batch * L.na) { return; }
    let b = i / L.na;
    let a = i % L.na;
    let scale = f32(L.batch) / work[L.sums];
    let g = L.gains.xyz * scale;
    let gt = work[L.asg + i * 2u];
    let score = work[L.asg + i * 2u + 1u];
    var cls = 0xffffffffu;
    if (gt >= 0.0) { cls = gt_class(u32(gt)); }
    let base = i * no();
    for (var c = 0u; c < L.nc; c++) {
        let t = select(0.0, score, c == cls);
        gpred[base + 4u * L.reg_max + c] = (sigmoid1(logit(b, a, c)) - t) * g.y;
    }
    if (gt < 0.0) {
        for (var k = 0u; k < 4u * L.reg_max; k++) { gpred[base + k] = 0.0; }
        return;
    }
    let p = anchor(a);
    let t = gt_box(u32(gt)) / p.z;
    let pb = box_of(b, a);
    let dbox = -ciou_grad(ciou(pb, t), pb, t) * score * g.x;
    let ddist = vec4<f32>(-dbox.x, -dbox.y, dbox.z, dbox.w);
    let cf = score * g.z / 4.0;
    for (var s = 0u; s < 4u; s++) {
        let d = dfl_target(p, t, s);
        let tl = u32(d.x);
        let at = base + s * L.reg_max;
        let lse = work[L.dec + i * 8u + 4u + s];
        var dist = 0.0;
        for (var k = 0u; k < L.reg_max; k++) { dist += exp(pred[at + k] - lse) * f32(k); }
        for (var k = 0u; k < L.reg_max; k++) {
            let pr = exp(pred[at + k] - lse);
            var hot = 0.0;
            if (k == tl) { hot = d.y; } else if (k == tl + 1u) { hot = d.z; }
            gpred[at + k] = pr * (f32(k) - dist) * ddist[s] + cf * (pr - hot);
        }
    }
}
