//! Buffers and parallel work shared by the CPU kernels: reusing an arena buffer, per-image
//! parallelism with per-thread scratch, and outputs written by several tasks at once.

use rayon::prelude::*;

thread_local! {
    /// Per-thread im2col/col2im scratch, grown to the largest use and kept.
    static COL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f(b, out_b, col, par)` for each image `b` of a batch of `n`, `out_b` being its `per`
/// elements of `out` and `col` a per-thread scratch. Several images run in parallel, one per
/// thread, each single-threaded (`par` false): no thread waits on another's small product. A
/// single image runs alone with `par` true, its products and loops split across threads.
pub(crate) fn each_image(
    out: &mut [f32],
    n: usize,
    per: usize,
    f: impl Fn(usize, &mut [f32], &mut Vec<f32>, bool) + Sync + Send,
) {
    if n <= 1 || per == 0 {
        with_scratch(&COL, |c| f(0, out, c, true));
    } else {
        out.par_chunks_mut(per).enumerate().for_each(|(b, dst)| with_scratch(&COL, |c| f(b, dst, c, false)));
    }
}

/// Runs `f` with this thread's scratch buffer in `key`, or with a fresh one when the thread is
/// using it already: a rayon worker waiting inside one program's kernel may run another
/// program's kernel (programs run on the workers), which then needs scratch of its own.
pub(crate) fn with_scratch<R>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<Vec<f32>>>,
    f: impl FnOnce(&mut Vec<f32>) -> R,
) -> R {
    key.with(|c| match c.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut Vec::new()),
    })
}

/// `buf` as `n` zeros, reusing its allocation.
pub(crate) fn zeroed(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    buf.clear();
    buf.reserve_exact(n);
    buf.resize(n, 0.0);
    buf
}

pub(crate) use slimc_ir::layout::sized;

/// The first `n` elements of a scratch buffer, of unspecified value. The buffer keeps its
/// length between uses, so a smaller use does not shrink it and make the next larger one
/// zero-fill it again (as [`sized`] would).
pub(crate) fn scratch(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if buf.len() < n {
        sized(buf, n);
    }
    &mut buf[..n]
}

/// An output shared by parallel tasks that each write their own disjoint elements of it (the
/// columns of a tiled convolution, the inner positions of a softmax).
#[derive(Clone, Copy)]
pub(crate) struct Block(pub(crate) *mut f32);
// SAFETY: every user writes only elements no other task touches (see its call sites).
unsafe impl Send for Block {}
unsafe impl Sync for Block {}

/// Elements per parallel task of the elementwise kernels.
pub(crate) const CHUNK: usize = 1 << 14;
