//! Matrix products: the `gemm` crate's kernels (chosen at run time for the CPU's vector
//! width) behind strided operands, and the batched matmul op.

use super::buffers::sized;

/// A matrix operand: data with a row stride and a column stride (a transpose swaps them).
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Distance between consecutive rows.
    pub rs: usize,
    /// Distance between consecutive columns.
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major matrix with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Mat<'a> {
        Mat { data, rs: cols, cs: 1 }
    }
    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(data: &'a [f32], cols: usize) -> Mat<'a> {
        Mat { data, rs: 1, cs: cols }
    }
    fn fits(&self, r: usize, c: usize) -> bool {
        r == 0 || c == 0 || (r - 1) * self.rs + (c - 1) * self.cs < self.data.len()
    }
}

/// `c[m×n] = a[m×k] · b[k×n]` (or `c += a·b` with `accumulate`); `c` is row-major. With
/// `par`, a large product is split across threads.
#[allow(clippy::too_many_arguments)]
pub fn gemm_into(m: usize, n: usize, k: usize, a: Mat, b: Mat, c: &mut [f32], accumulate: bool, par: bool) {
    assert!(a.fits(m, k) && b.fits(k, n) && c.len() >= m * n, "gemm operand sizes");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    let par = if par && m * n * k >= 1 << 18 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: `fits` and the length check above keep every strided access inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// `c[m×n] = a[m×k] · b[k×n]`, row-major, overwriting `c`; `par` as in [`gemm_into`].
pub fn sgemm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32], par: bool) {
    gemm_into(m, n, k, Mat::rows(a, k), Mat::rows(b, n), c, false, par);
}

/// Batched matrix product over the last two axes with broadcast batch axes, into `out`.
pub fn matmul(out: &mut Vec<f32>, a: &[f32], sa: &[usize], b: &[f32], sb: &[usize], out_shape: &[usize]) {
    let r = out_shape.len();
    let (m, n, k) = (out_shape[r - 2], out_shape[r - 1], sa[sa.len() - 1]);
    let batch = &out_shape[..r - 2];
    let oa = slimc_ir::layout::batch_offsets(sa, batch, m * k);
    let ob = slimc_ir::layout::batch_offsets(sb, batch, k * n);
    let out = sized(out, out_shape.iter().product());
    if m * n == 0 {
        return;
    }
    for (i, dst) in out.chunks_mut(m * n).enumerate() {
        sgemm(m, n, k, &a[oa[i]..oa[i] + m * k], &b[ob[i]..ob[i] + k * n], dst, true);
    }
}
