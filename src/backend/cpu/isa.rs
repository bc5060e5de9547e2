//! Which vector instruction set slimc's own CPU kernels run with, chosen at run time: the
//! widest the CPU has (AVX-512, AVX2 + FMA, or the baseline: SSE2 on x86-64, NEON on aarch64),
//! or the one `SLIMC_CPU_KERNELS` names. Every kernel written with `simd_fn!` is compiled once
//! per level and dispatches on [`active`]; the `gemm` crate picks its own micro-kernels the same
//! way (its AVX-512 ones with the `x86-v4` feature). The kernel tests run every level the CPU
//! has against the IR's scalar reference definitions.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// A vector instruction set the kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// The target's baseline: SSE2 (4 lanes) on x86-64, NEON (4 lanes) on aarch64.
    Baseline = 1,
    /// AVX2 with FMA: 8 lanes.
    Avx2 = 2,
    /// AVX-512 F/BW/DQ/VL with FMA: 16 lanes.
    Avx512 = 3,
}

/// Every level, narrowest first.
pub const ALL: [Isa; 3] = [Isa::Baseline, Isa::Avx2, Isa::Avx512];

impl Isa {
    /// The name `SLIMC_CPU_KERNELS` and `slimc info --cpu` use.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline if cfg!(target_arch = "aarch64") => "neon",
            Isa::Baseline => "baseline",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// What the level is, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Isa::Baseline if cfg!(target_arch = "aarch64") => "NEON, 4 f32 lanes",
            Isa::Baseline if cfg!(target_arch = "x86_64") => "SSE2, 4 f32 lanes",
            Isa::Baseline => "the target's baseline",
            Isa::Avx2 => "AVX2 + FMA, 8 f32 lanes",
            Isa::Avx512 => "AVX-512 F/BW/DQ/VL + FMA, 16 f32 lanes",
        }
    }

    /// Whether this CPU can run the level.
    pub fn supported(self) -> bool {
        match self {
            Isa::Baseline => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.supported()
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512dq")
                    && std::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    fn from_u8(v: u8) -> Isa {
        match v {
            3 => Isa::Avx512,
            2 => Isa::Avx2,
            _ => Isa::Baseline,
        }
    }
}

/// The levels this CPU can run, narrowest first.
pub fn supported() -> Vec<Isa> {
    ALL.into_iter().filter(|l| l.supported()).collect()
}

/// The widest level this CPU can run.
pub fn widest() -> Isa {
    *supported().last().expect("the baseline is always supported")
}

/// The level in use; 0 until first asked.
static ACTIVE: AtomicU8 = AtomicU8::new(0);

/// The level the kernels run with now: `SLIMC_CPU_KERNELS` if set (see [`from_env`]), else the
/// widest the CPU has.
#[inline]
pub fn active() -> Isa {
    match ACTIVE.load(Ordering::Relaxed) {
        0 => {
            let l = from_env().ok().flatten().unwrap_or_else(widest);
            ACTIVE.store(l as u8, Ordering::Relaxed);
            l
        }
        v => Isa::from_u8(v),
    }
}

/// The level `SLIMC_CPU_KERNELS` asks for (None when unset): an error for an unknown name or one
/// this CPU cannot run (the binary checks this at start, so a typo is not silently ignored).
pub fn from_env() -> Result<Option<Isa>, String> {
    let Ok(v) = std::env::var("SLIMC_CPU_KERNELS") else { return Ok(None) };
    let names: Vec<_> = ALL.iter().map(|l| l.name()).collect();
    let Some(l) = ALL.into_iter().find(|l| l.name() == v.trim()) else {
        return Err(format!("SLIMC_CPU_KERNELS={v}: not a kernel level (one of {})", names.join(", ")));
    };
    if !l.supported() {
        let have: Vec<_> = supported().iter().map(|l| l.name()).collect();
        return Err(format!("SLIMC_CPU_KERNELS={v}: this CPU cannot run it (it has {})", have.join(", ")));
    }
    Ok(Some(l))
}

/// Runs the kernels with `level` from now on (for tests and benchmarks that compare levels).
///
/// # Panics
/// If the CPU cannot run `level`.
pub fn force(level: Isa) {
    assert!(level.supported(), "this CPU cannot run {} kernels", level.name());
    ACTIVE.store(level as u8, Ordering::Relaxed);
}

/// Which levels have run a kernel in this process, by `Isa as usize`.
static RAN: [AtomicBool; 4] = [const { AtomicBool::new(false) }; 4];

/// Notes that a kernel ran with `level` (read first, so the shared flag is written once).
#[inline]
pub fn note(level: Isa) {
    let f = &RAN[level as usize];
    if !f.load(Ordering::Relaxed) {
        f.store(true, Ordering::Relaxed);
    }
}

/// Whether a kernel has run with `level` in this process.
pub fn ran(level: Isa) -> bool {
    RAN[level as usize].load(Ordering::Relaxed)
}

/// The CPU's model name as the OS reports it (`/proc/cpuinfo` on Linux), or the architecture.
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with("model name") || l.starts_with("Model") || l.starts_with("CPU part"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// What the GEMM kernels (the `gemm` crate's, dispatched by itself at run time) use on this CPU.
pub fn gemm_kernels() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if Isa::Avx512.supported() {
            return "gemm crate, AVX-512 micro-kernels (x86-v4)";
        }
        if Isa::Avx2.supported() {
            return "gemm crate, AVX2 + FMA micro-kernels (x86-v3)";
        }
        "gemm crate, SSE2 micro-kernels"
    }
    #[cfg(target_arch = "aarch64")]
    {
        "gemm crate, NEON micro-kernels"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "gemm crate, scalar kernels"
    }
}
