//! Adapters and the device: which GPUs wgpu sees, which one slimc picks, and the device slimc
//! opens on it once per process (its limits are the adapter's own).

use super::kernels::Entry;
use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Whether GPU drivers may print while slimc probes adapters (`--verbose`).
static DRIVER_MESSAGES: AtomicBool = AtomicBool::new(false);

/// Lets GPU drivers print to stderr while adapters are probed (off by default: on a headless
/// machine the GL probe prints `XDG_RUNTIME_DIR is invalid` and the like, which reads as a
/// failure).
pub fn show_driver_messages(show: bool) {
    DRIVER_MESSAGES.store(show, Ordering::Relaxed);
}

/// Sends the process's stderr to /dev/null until dropped (drivers print from C, so only the
/// file descriptor can be redirected); a no-op where that fails or is not Unix.
struct QuietStderr {
    #[cfg(unix)]
    saved: Option<i32>,
}

impl QuietStderr {
    fn new() -> QuietStderr {
        #[cfg(unix)]
        {
            if DRIVER_MESSAGES.load(Ordering::Relaxed) {
                return QuietStderr { saved: None };
            }
            // SAFETY: plain descriptor calls; every descriptor opened here is closed or kept in
            // `saved` to be restored.
            unsafe {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
                if null < 0 {
                    return QuietStderr { saved: None };
                }
                let saved = libc::dup(2);
                let ok = saved >= 0 && libc::dup2(null, 2) >= 0;
                libc::close(null);
                if !ok {
                    if saved >= 0 {
                        libc::close(saved);
                    }
                    return QuietStderr { saved: None };
                }
                QuietStderr { saved: Some(saved) }
            }
        }
        #[cfg(not(unix))]
        QuietStderr {}
    }
}

impl Drop for QuietStderr {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(saved) = self.saved.take() {
            // SAFETY: `saved` is the descriptor `new` duplicated from stderr.
            unsafe {
                libc::dup2(saved, 2);
                libc::close(saved);
            }
        }
    }
}

/// One adapter as `slimc info --devices` lists it.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// The adapter's name (`llvmpipe (LLVM 15.0.6, 256 bits)`, `NVIDIA H200`).
    pub name: String,
    /// The graphics API (Vulkan, Metal, Dx12, Gl).
    pub backend: String,
    /// Discrete, integrated, virtual, CPU (a software rasteriser) or other.
    pub kind: String,
    /// The driver and its version.
    pub driver: String,
    /// Whether it is real hardware rather than a software rasteriser.
    pub hardware: bool,
    /// The largest storage-buffer binding, in bytes.
    pub max_binding: u64,
    /// The largest buffer, in bytes.
    pub max_buffer: u64,
    /// Workgroups per grid dimension.
    pub max_workgroups: u32,
    /// Workgroup memory, in bytes.
    pub workgroup_memory: u32,
}

/// Whether the adapter is a GPU rather than a software rasteriser (lavapipe, llvmpipe, WARP).
fn is_hardware(info: &wgpu::AdapterInfo) -> bool {
    matches!(
        info.device_type,
        wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu | wgpu::DeviceType::VirtualGpu
    )
}

fn summary(a: &wgpu::Adapter) -> AdapterSummary {
    let (info, l) = (a.get_info(), a.limits());
    AdapterSummary {
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        kind: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
        hardware: is_hardware(&info),
        max_binding: l.max_storage_buffer_binding_size as u64,
        max_buffer: l.max_buffer_size,
        max_workgroups: l.max_compute_workgroups_per_dimension,
        workgroup_memory: l.max_compute_workgroup_storage_size,
    }
}

/// The adapters wgpu finds (`WGPU_BACKEND` narrows them), best first: hardware before
/// software, discrete before integrated. Vulkan, Metal and DX12 are probed first and GL only
/// when they find nothing (GL's probe is slow and, headless, noisy); drivers stay quiet on
/// stderr unless [`show_driver_messages`].
fn enumerate() -> Vec<wgpu::Adapter> {
    let _quiet = QuietStderr::new();
    // One instance per family: creating an instance with GL in it already opens EGL.
    let probe = |family: wgpu::Backends| {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends &= family;
        if desc.backends.is_empty() {
            return vec![];
        }
        pollster::block_on(wgpu::Instance::new(desc).enumerate_adapters(family))
    };
    let mut all = probe(wgpu::Backends::PRIMARY);
    if all.is_empty() {
        all = probe(wgpu::Backends::GL);
    }
    let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    all.sort_by_key(rank);
    all
}

/// The adapters, for `slimc info --devices`.
pub fn adapters() -> Vec<AdapterSummary> {
    enumerate().iter().map(summary).collect()
}

/// Which adapter, best first, [`Context::get`] opens ([`use_adapter`]).
static ADAPTER: AtomicUsize = AtomicUsize::new(0);

/// Makes [`Context::get`] open the `index`-th adapter, best first (a data-parallel rank takes
/// the adapter of its local rank); to be called before the first use.
pub fn use_adapter(index: usize) {
    ADAPTER.store(index, Ordering::Relaxed);
}

/// Whether a hardware GPU is present (what `--device auto` asks).
pub fn hardware_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| adapters().iter().any(|a| a.hardware))
}

/// An open device: the queue, the adapter's description and limits, and the compute pipelines
/// built so far.
pub struct Context {
    /// The wgpu device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// The adapter it runs on.
    pub adapter: AdapterSummary,
    /// The device's limits (the adapter's own).
    pub limits: wgpu::Limits,
    pipelines: Mutex<HashMap<(Entry, u32), Arc<wgpu::ComputePipeline>>>,
}

impl Context {
    /// The best adapter's device, opened once per process: a hardware GPU, else (for
    /// `--device gpu`, which asks for any) a software one such as lavapipe.
    pub fn get() -> Result<Arc<Context>> {
        static CONTEXT: OnceLock<Result<Arc<Context>, String>> = OnceLock::new();
        CONTEXT
            .get_or_init(|| Context::open().map(Arc::new).map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(|e| anyhow!(e))
    }

    fn open() -> Result<Context> {
        let all = enumerate();
        if all.is_empty() {
            bail!(
                "--device gpu: no GPU adapter found (Vulkan, Metal, DX12 or GL); install a driver \
                 (on Debian without a GPU, mesa-vulkan-drivers gives lavapipe) or use --device cpu"
            );
        }
        let at = ADAPTER.load(Ordering::Relaxed);
        let count = all.len();
        let Some(adapter) = all.into_iter().nth(at) else {
            bail!("--device gpu: adapter {at} was asked for, {count} found");
        };
        let limits = adapter.limits();
        let desc =
            wgpu::DeviceDescriptor { label: Some("slimc"), required_limits: limits.clone(), ..Default::default() };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| anyhow!("--device gpu: opening {}: {e}", adapter.get_info().name))?;
        // Errors are collected by error scopes around each use; nothing should reach this
        // handler, and if something does it is reported rather than aborting the process.
        device.on_uncaptured_error(Arc::new(|e: wgpu::Error| eprintln!("slimc: GPU error: {e}")));
        Ok(Context { device, queue, adapter: summary(&adapter), limits, pipelines: Mutex::new(HashMap::new()) })
    }

    /// The compute pipeline of kernel `entry` with its file's `MODE` override constant set to
    /// `mode` when the file declares one, built on first use.
    pub fn pipeline(&self, entry: Entry, mode: u32) -> Arc<wgpu::ComputePipeline> {
        let mut cache = self.pipelines.lock().expect("pipeline cache");
        if let Some(p) = cache.get(&(entry, mode)) {
            return p.clone();
        }
        let file = entry.file();
        let source = super::kernels::source(file);
        let constants = [("MODE", mode as f64)];
        let constants: &[(&str, f64)] = if source.contains("override MODE") { &constants } else { &[] };
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(file),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let p = Arc::new(self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry.name()),
            layout: None,
            module: &module,
            entry_point: Some(entry.name()),
            compilation_options: wgpu::PipelineCompilationOptions { constants, ..Default::default() },
            cache: None,
        }));
        cache.insert((entry, mode), p.clone());
        p
    }

    /// Runs `f`, turning any validation or out-of-memory error wgpu reports meanwhile into an
    /// error that says what was being done.
    pub fn checked<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let invalid = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let r = f();
        let errors = [pollster::block_on(invalid.pop()), pollster::block_on(oom.pop())];
        if let Some(e) = errors.into_iter().flatten().next() {
            bail!("{what} on {}: {e}", self.adapter.name);
        }
        r
    }
}
