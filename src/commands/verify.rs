//! Independent checks of an exported ONNX file: tract and onnxruntime run it, slimc's
//! interpreter runs the IR, and the outputs are compared.

use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use slimc_ir::Tensor;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Runs an ONNX file with tract on one f32 input. A panic inside tract (it has some on
/// degenerate graphs) becomes an error naming the file.
pub fn run_tract(path: &Path, input: &Tensor) -> Result<Vec<Tensor>> {
    // tract's panics are expected failures here, not slimc's internal errors: keep them off the
    // process's panic hook while it runs.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(|| tract_outputs(path, input));
    std::panic::set_hook(hook);
    r.unwrap_or_else(|_| bail!("tract failed on {}: it panicked on this graph", path.display()))
}

fn tract_outputs(path: &Path, input: &Tensor) -> Result<Vec<Tensor>> {
    use tract_onnx::prelude::*;
    let fact = InferenceFact::dt_shape(f32::datum_type(), input.shape.clone());
    let plan = tract_onnx::onnx()
        .model_for_path(path)
        .and_then(|m| m.with_input_fact(0, fact))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(|e| anyhow!("tract cannot load {}: {e}", path.display()))?;
    let x = tract_onnx::prelude::Tensor::from_shape(&input.shape, input.f32s()?)
        .map_err(|e| anyhow!("tract input: {e}"))?;
    let outs = plan.run(tvec!(x.into())).map_err(|e| anyhow!("tract failed on {}: {e}", path.display()))?;
    outs.iter()
        .map(|o| {
            let a = o.to_plain_array_view::<f32>().map_err(|e| anyhow!("tract output: {e}"))?;
            Ok(slimc_ir::Tensor::from_f32(a.shape().to_vec(), a.iter().copied().collect())?)
        })
        .collect()
}

/// The onnxruntime shared library: `ORT_DYLIB_PATH`, else `.ort/` beside the working directory
/// (where `scripts/setup.sh` puts it).
pub fn ort_dylib() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("ORT_DYLIB_PATH") {
        return Ok(PathBuf::from(p));
    }
    let dir = Path::new(".ort");
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("libonnxruntime.so.") {
                return Ok(e.path());
            }
        }
    }
    bail!("onnxruntime not found: set ORT_DYLIB_PATH (scripts/setup.sh installs it into .ort/)")
}

fn ort_env() -> Result<&'static ort::environment::Environment> {
    static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = ort_dylib().map_err(|e| e.to_string())?;
        ort::init_from(&path)
            .map_err(|e| format!("cannot load onnxruntime from {}: {e}", path.display()))?
            .with_name("slimc")
            .build()
            .map_err(|e| format!("onnxruntime: {e}"))
    })
    .as_ref()
    .map_err(|e| anyhow!("{e}"))
}

/// An onnxruntime session on one ONNX file with two intra-op threads.
pub struct OrtSession {
    session: ort::session::Session,
    path: PathBuf,
}

impl OrtSession {
    /// Loads `path` into onnxruntime with graph optimisations off, so that the arithmetic is the
    /// file's own (for verification).
    pub fn new(path: &Path) -> Result<OrtSession> {
        Self::open(path, false)
    }

    /// Loads `path` as a deployment would (all graph optimisations), for timing.
    pub fn for_latency(path: &Path) -> Result<OrtSession> {
        Self::open(path, true)
    }

    fn open(path: &Path, deploy: bool) -> Result<OrtSession> {
        use ort::session::{builder::GraphOptimizationLevel, Session};
        let env = ort_env()?;
        let level = if deploy { GraphOptimizationLevel::All } else { GraphOptimizationLevel::Disable };
        let mut b = Session::builder(env)
            .map_err(|e| anyhow!("onnxruntime: {e}"))?
            .with_optimization_level(level)
            .map_err(|e| anyhow!("onnxruntime: {e}"))?
            .with_intra_threads(2)
            .map_err(|e| anyhow!("onnxruntime: {e}"))?;
        let session =
            b.commit_from_file(path).map_err(|e| anyhow!("onnxruntime cannot load {}: {e}", path.display()))?;
        Ok(OrtSession { session, path: path.to_path_buf() })
    }

    /// Runs the session on one f32 input.
    pub fn run(&mut self, input: &Tensor) -> Result<Vec<Tensor>> {
        let err = |e: ort::Error| anyhow!("onnxruntime on {}: {e}", self.path.display());
        let x = ort::value::Tensor::from_array((input.shape.clone(), input.f32s()?.to_vec())).map_err(err)?;
        let outs =
            self.session.run(ort::inputs![x]).map_err(|e| anyhow!("onnxruntime on {}: {e}", self.path.display()))?;
        let mut res = vec![];
        for (_, v) in outs.iter() {
            let (shape, data) = v.try_extract_tensor::<f32>().map_err(|e| anyhow!("onnxruntime output: {e}"))?;
            res.push(Tensor::from_f32(shape.iter().map(|&d| d as usize).collect(), data.to_vec())?);
        }
        Ok(res)
    }
}

/// Runs an ONNX file once with onnxruntime on one f32 input.
pub fn run_ort(path: &Path, input: &Tensor) -> Result<Vec<Tensor>> {
    OrtSession::new(path)?.run(input)
}

/// One engine's agreement with the reference on one output.
#[derive(Clone, Debug, Serialize)]
pub struct Agreement {
    /// `tract` or `onnxruntime`.
    pub engine: String,
    /// Output index.
    pub output: usize,
    /// Largest absolute difference.
    pub max_abs: f32,
    /// `max_abs` over the largest |reference| value.
    pub max_rel: f32,
    /// Whether `max_rel` is within the tolerance.
    pub ok: bool,
}

/// Compares `got` with `want`: max abs error and that error relative to max |want|.
pub fn compare(got: &Tensor, want: &Tensor) -> Result<(f32, f32)> {
    if got.shape != want.shape {
        bail!("output shape {:?} differs from the reference {:?}", got.shape, want.shape);
    }
    let (a, b) = (got.f32s()?, want.f32s()?);
    let max_abs =
        a.iter().zip(b).fold(0.0f32, |m, (x, y)| if (x - y).is_nan() { f32::INFINITY } else { m.max((x - y).abs()) });
    let scale = b.iter().fold(0.0f32, |m, y| m.max(y.abs()));
    Ok((max_abs, if scale > 0.0 { max_abs / scale } else { max_abs }))
}

/// Runs `onnx` with tract and onnxruntime and compares each output with `reference`.
pub fn verify_onnx(onnx: &Path, input: &Tensor, reference: &[Tensor], tol: f32) -> Result<Vec<Agreement>> {
    let mut rows = vec![];
    for (engine, outs) in [("tract", run_tract(onnx, input)?), ("onnxruntime", run_ort(onnx, input)?)] {
        if outs.len() != reference.len() {
            bail!("{engine} gives {} outputs, the reference {}", outs.len(), reference.len());
        }
        for (i, (o, r)) in outs.iter().zip(reference).enumerate() {
            let (max_abs, max_rel) = compare(o, r).map_err(|e| anyhow!("{engine} output {i}: {e}"))?;
            rows.push(Agreement { engine: engine.into(), output: i, max_abs, max_rel, ok: max_rel <= tol });
        }
    }
    Ok(rows)
}

/// Median onnxruntime latency (ms) of each of `onnx` on a grey image of `imgsz` (h, w), batch 1,
/// with onnxruntime's graph optimisations as deployed. The files are timed in turns, `rounds`
/// rounds of a block of twelve runs each (the first two of a block are warm-up and not counted:
/// ten samples per round), so that a change in machine load affects all of them alike.
pub fn ort_latencies(onnx: &[PathBuf], imgsz: [usize; 2], rounds: usize) -> Result<Vec<f64>> {
    let x = Tensor::full(&[1, 3, imgsz[0], imgsz[1]], 0.5);
    let mut sessions = onnx.iter().map(|p| OrtSession::for_latency(p)).collect::<Result<Vec<_>>>()?;
    let mut times = vec![vec![]; sessions.len()];
    for _ in 0..rounds.max(1) {
        for (s, t) in sessions.iter_mut().zip(&mut times) {
            for k in 0..12 {
                let t0 = std::time::Instant::now();
                s.run(&x)?;
                if k >= 2 {
                    t.push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
    }
    Ok(times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect())
}
