//! Adapters and the device: which GPUs wgpu sees, which one slimc picks, and the device slimc
//! opens on it once per process (its limits are the adapter's own).

use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

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

/// Every adapter wgpu finds (Vulkan, Metal, DX12 and GL; `WGPU_BACKEND` narrows them),
/// best first: hardware before software, discrete before integrated, Vulkan/Metal/DX12 before GL.
fn enumerate() -> Vec<wgpu::Adapter> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let mut all = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let rank = |a: &wgpu::Adapter| {
        let info = a.get_info();
        let kind = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Cpu => 3,
            wgpu::DeviceType::Other => 4,
        };
        (kind, info.backend == wgpu::Backend::Gl)
    };
    all.sort_by_key(rank);
    all
}

/// The adapters, for `slimc info --devices`.
pub fn adapters() -> Vec<AdapterSummary> {
    enumerate().iter().map(summary).collect()
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
    pipelines: Mutex<HashMap<(&'static str, u32), Arc<wgpu::ComputePipeline>>>,
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
        let Some(adapter) = enumerate().into_iter().next() else {
            bail!(
                "--device gpu: no GPU adapter found (Vulkan, Metal, DX12 or GL); install a driver \
                 (on Debian without a GPU, mesa-vulkan-drivers gives lavapipe) or use --device cpu"
            );
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

    /// The compute pipeline of `entry` in shader file `file` (one of [`super::kernels::SHADERS`])
    /// with its `MODE` override constant set to `mode` when the file declares one, built on first
    /// use.
    pub fn pipeline(&self, file: &'static str, entry: &'static str, mode: u32) -> Arc<wgpu::ComputePipeline> {
        let mut cache = self.pipelines.lock().expect("pipeline cache");
        if let Some(p) = cache.get(&(entry, mode)) {
            return p.clone();
        }
        let source = super::kernels::source(file);
        let constants = [("MODE", mode as f64)];
        let constants: &[(&str, f64)] = if source.contains("override MODE") { &constants } else { &[] };
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(file),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let p = Arc::new(self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module: &module,
            entry_point: Some(entry),
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
