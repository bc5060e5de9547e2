// Prepended to every shader file: the element an invocation owns on a grid that may have been
// split into 2-D (a dispatch may not exceed 65,535 workgroups per dimension), the element count
// of the flat kernels, the strided view of a tensor of rank at most 8, the logistic function,
// log(1 + y) and a fixed-order workgroup sum.

const WG: u32 = 256u;

// The flat index of this invocation over a grid of `WG`-wide workgroups, laid out x then y.
fn flat_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * WG + lid;
}

// The element count of a flat kernel.
struct Count {
    n: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

// A view of up to 8 dimensions: sizes (row-major, outermost first) and per-operand element
// strides, which may be negative (reversed slices) or zero (broadcast axes).
struct View {
    numel: u32,
    rank: u32,
    a_offset: i32,
    b_offset: i32,
    out_offset: i32,
    code: u32,
    pad0: u32,
    pad1: u32,
    shape: array<vec4<u32>, 2>,
    a_strides: array<vec4<i32>, 2>,
    b_strides: array<vec4<i32>, 2>,
    out_strides: array<vec4<i32>, 2>,
}

// Element offsets of flat index `i` of `v`'s shape in operands a, b and the output.
fn view_offsets(v: View, i: u32) -> vec3<i32> {
    var rest = i;
    var off = vec3<i32>(v.a_offset, v.b_offset, v.out_offset);
    for (var k = i32(v.rank) - 1; k >= 0; k--) {
        let d = u32(k);
        let size = v.shape[d / 4u][d % 4u];
        let idx = i32(rest % size);
        rest = rest / size;
        off += idx * vec3<i32>(v.a_strides[d / 4u][d % 4u], v.b_strides[d / 4u][d % 4u], v.out_strides[d / 4u][d % 4u]);
    }
    return off;
}

// The logistic function.
fn sigmoid1(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

// log(1 + y), accurate for small y.
fn log1p_(y: f32) -> f32 {
    let u = 1.0 + y;
    if (u == 1.0) { return y; }
    return log(u) * y / (u - 1.0);
}

var<workgroup> wg_sum: array<f32, 256>;

// The sum over a 256-invocation workgroup of every invocation's `v`, in a fixed order (a tree),
// the same for every invocation.
fn workgroup_sum(lid: u32, v: f32) -> f32 {
    wg_sum[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) {
            wg_sum[lid] += wg_sum[lid + s];
        }
        workgroupBarrier();
    }
    let total = wg_sum[0];
    workgroupBarrier();
    return total;
}
