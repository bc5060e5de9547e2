//! A convolution's epilogue: the per-channel affine (an inference batch norm, the bias folded
//! in) and SiLU the convolution kernels apply to their results while they are in cache.

use super::simd::{self, simd_fn};
use rayon::prelude::*;

/// What a convolution applies to its result while it is still in cache: each output channel's
/// `a·x + c` (an inference batch norm; the convolution's bias is folded into `c`), then SiLU
/// when `silu`.
pub struct Epilogue {
    /// Per output channel, `[a, c]`.
    pub coef: Vec<[f32; 2]>,
    /// Whether SiLU follows the affine.
    pub silu: bool,
}

impl Epilogue {
    /// Applies channel `ch`'s epilogue to `o`, a stretch of that channel's plane.
    pub(crate) fn apply(&self, ch: usize, o: &mut [f32]) {
        let [a, c] = self.coef[ch];
        epilogue_plane(o, a, c, self.silu);
    }

    /// Applies it to every plane of `out` (`[n, coef.len(), plane]`), planes in parallel with
    /// `par`.
    pub(crate) fn planes(&self, out: &mut [f32], plane: usize, par: bool) {
        let c = self.coef.len();
        if par {
            out.par_chunks_mut(plane).enumerate().for_each(|(i, o)| self.apply(i % c, o));
        } else {
            out.chunks_mut(plane).enumerate().for_each(|(i, o)| self.apply(i % c, o));
        }
    }
}

simd_fn! {
    /// `o = a·o + c`, then `o = o·sigmoid(o)` with `silu`, in place.
    fn epilogue_plane(o: &mut [f32], a: f32, c: f32, silu: bool) {
        if silu {
            for v in o.iter_mut() {
                let y = a * *v + c;
                *v = y / (1.0 + simd::exp(-y));
            }
        } else {
            for v in o.iter_mut() {
                *v = a * *v + c;
            }
        }
    }
}

/// The epilogue a convolution applies: `epi` after the per-channel `bias`
/// (`a·(x + b) + c = a·x + (a·b + c)`), or the bias alone.
pub(crate) fn with_bias(epi: Option<Epilogue>, bias: Option<&[f32]>, cout: usize) -> Option<Epilogue> {
    match (epi, bias) {
        (Some(mut e), Some(b)) => {
            e.coef.iter_mut().zip(b).for_each(|([a, c], &b)| *c += *a * b);
            Some(e)
        }
        (None, Some(b)) => Some(Epilogue { coef: b.iter().map(|&b| [1.0, b]).collect(), silu: false }),
        (e, None) => e,
    }
    .inspect(|e| assert_eq!(e.coef.len(), cout, "epilogue channels"))
}
