//! Vector code for the elementwise loops: a branch-free `exp` the compiler vectorises (the C
//! library's `expf` is a scalar call), and [`simd_fn!`], which compiles a loop once per vector
//! level (AVX-512, AVX2 + FMA, the baseline) and runs the one [`super::isa`] picks, so one binary
//! uses 16-wide vectors where the CPU has them. (The GEMM crate dispatches its own kernels the
//! same way.)

/// `e^x` within 2 ulp for x in [-87, 88]; outside, x is clamped there (e^-87 ≈ 1.6e-38,
/// e^88 ≈ 1.7e38). NaN propagates through the callers' other uses of x, not through this.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer in the low bits.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.max(-87.0).min(88.0);
    let t = x * std::f32::consts::LOG2_E + SHIFT;
    let n = t - SHIFT;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // e^r for |r| <= ln2/2 by its Taylor series to r^7 (truncation below 1e-8 relative).
    let mut p = 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    let n = t.to_bits() as i32 - SHIFT.to_bits() as i32;
    p * f32::from_bits(((n + 127) << 23) as u32)
}

/// The logistic function with [`exp`].
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Defines a function whose body is compiled once per vector level of [`super::isa`] (AVX-512
/// and AVX2 + FMA on x86-64, besides the baseline) and runs the copy for [`isa::active`]. Write
/// the body as a plain loop over slices; the compiler vectorises each copy for its target.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[allow(unused_imports)] // Isa names the x86 levels only.
            use $crate::backend::cpu::isa::{self, Isa};
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            let level = isa::active();
            isa::note(level);
            match level {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => {
                    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                    fn avx512($($arg: $ty),*) $(-> $ret)? {
                        imp($($arg),*)
                    }
                    // SAFETY: `active` only returns a level the CPU supports.
                    unsafe { avx512($($arg),*) }
                }
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => {
                    #[target_feature(enable = "avx2,fma")]
                    fn avx2($($arg: $ty),*) $(-> $ret)? {
                        imp($($arg),*)
                    }
                    // SAFETY: as above.
                    unsafe { avx2($($arg),*) }
                }
                _ => imp($($arg),*),
            }
        }
    };
}
pub(crate) use simd_fn;

/// Lanes of the f64 accumulators: independent partial sums the compiler can keep in vectors (a
/// single running sum is a chain it may not reorder).
const LANES: usize = 8;

simd_fn! {
    /// `(Σa, Σa·b)` in f64 (`b = a` gives the sum and the sum of squares).
    pub fn sum_and_dot(a: &[f32], b: &[f32]) -> [f64; 2] {
        let (mut s, mut d) = ([0.0f64; LANES], [0.0f64; LANES]);
        let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for k in 0..LANES {
                let v = x[k] as f64;
                s[k] += v;
                d[k] += v * y[k] as f64;
            }
        }
        let mut out = [s.iter().sum::<f64>(), d.iter().sum::<f64>()];
        for (&x, &y) in ra.iter().zip(rb) {
            out[0] += x as f64;
            out[1] += x as f64 * y as f64;
        }
        out
    }
}

simd_fn! {
    /// `Σ a·b` in f32, in [`LANES`] partial sums.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut s = [0.0f32; LANES];
        let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
        for (x, y) in ca.zip(cb) {
            for k in 0..LANES {
                s[k] += x[k] * y[k];
            }
        }
        s.iter().sum::<f32>() + tail
    }
}

simd_fn! {
    /// `o += x`.
    pub fn add_into(o: &mut [f32], x: &[f32]) {
        for (o, &v) in o.iter_mut().zip(x) {
            *o += v;
        }
    }
}

simd_fn! {
    /// `o += a·x`.
    pub fn axpy(o: &mut [f32], x: &[f32], a: f32) {
        for (o, &v) in o.iter_mut().zip(x) {
            *o += a * v;
        }
    }
}

simd_fn! {
    /// `o = a·x + c`.
    pub fn affine(o: &mut [f32], x: &[f32], a: f32, c: f32) {
        for (o, &v) in o.iter_mut().zip(x) {
            *o = a * v + c;
        }
    }
}

simd_fn! {
    /// `o = a·x + b·y + c`.
    pub fn affine2(o: &mut [f32], x: &[f32], y: &[f32], a: f32, b: f32, c: f32) {
        for ((o, &u), &v) in o.iter_mut().zip(x).zip(y) {
            *o = a * u + b * v + c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_the_c_library() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        assert!(worst < 2.5e-7, "relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1e-37);
        assert!(exp(1000.0).is_finite());
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
    }
}
