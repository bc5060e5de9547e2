//! The uniform blocks the WGSL kernels read, laid out as WGSL lays them out: the strided
//! [`View`] of `common.wgsl` and one block per kernel family, each checked at compile time to be
//! whole 16-byte rows and by the unit tests to have its WGSL struct's size.

use anyhow::{anyhow, bail, Result};
use bytemuck::{Pod, Zeroable};
use slimc_ir::eval::nn::ConvGeometry;
use slimc_ir::Conv2d;

/// Most dimensions a [`View`] holds.
pub const MAX_RANK: usize = 8;

/// `View` of `common.wgsl`: a strided view over up to 8 dimensions, for operands a, b and the
/// output.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct View {
    numel: u32,
    rank: u32,
    a_offset: i32,
    b_offset: i32,
    out_offset: i32,
    /// What the kernel does with the elements (the arithmetic op).
    pub code: u32,
    pad: [u32; 2],
    shape: [u32; MAX_RANK],
    a_strides: [i32; MAX_RANK],
    b_strides: [i32; MAX_RANK],
    out_strides: [i32; MAX_RANK],
}

/// An operand's place in a [`View`]: its first element and its stride per view dimension.
pub struct Strided<'a> {
    /// Offset of the view's first element.
    pub offset: isize,
    /// Element strides, one per view dimension.
    pub strides: &'a [isize],
}

/// Row-major strides of a contiguous tensor of `shape`.
pub fn contiguous(shape: &[usize]) -> Vec<isize> {
    slimc_ir::layout::strides_of(shape).into_iter().map(|s| s as isize).collect()
}

fn small(v: isize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow::anyhow!("{what} {v} exceeds the GPU kernels' 32-bit indexing"))
}

impl View {
    /// The view of `shape` with operands `a`, `b` (absent: unused) and `out`.
    pub fn new(shape: &[usize], a: &Strided, b: Option<&Strided>, out: &Strided) -> Result<View> {
        if shape.len() > MAX_RANK {
            bail!("a view of rank {} (the GPU kernels take at most {MAX_RANK})", shape.len());
        }
        let numel: usize = shape.iter().product();
        let mut v = View::zeroed();
        v.numel = u32::try_from(numel).map_err(|_| anyhow::anyhow!("{numel} elements exceed 32-bit indexing"))?;
        v.rank = shape.len() as u32;
        v.a_offset = small(a.offset, "offset")?;
        v.out_offset = small(out.offset, "offset")?;
        for (d, &n) in shape.iter().enumerate() {
            v.shape[d] = n as u32;
            v.a_strides[d] = small(a.strides[d], "stride")?;
            v.out_strides[d] = small(out.strides[d], "stride")?;
        }
        if let Some(b) = b {
            v.b_offset = small(b.offset, "offset")?;
            for d in 0..shape.len() {
                v.b_strides[d] = small(b.strides[d], "stride")?;
            }
        }
        Ok(v)
    }

    /// A copy of the view of `shape` from `src` into `dst`.
    pub fn copy(shape: &[usize], src: &Strided, dst: &Strided) -> Result<View> {
        View::new(shape, src, None, dst)
    }
}

/// `v` as a kernel's 32-bit size, or an error saying it is too large.
pub fn size32(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| anyhow!("size {v} exceeds the kernels' 32-bit indexing"))
}

/// A convolution's sizes as the kernels read them: batch, input channels, height, width, output
/// channels, input and output channels per group, kernel height and width, output height and
/// width, strides, leading paddings, dilations.
pub fn conv_sizes(geo: &ConvGeometry, c: &Conv2d) -> Result<[u32; 17]> {
    let v = [
        geo.n,
        geo.cin,
        geo.h,
        geo.w,
        geo.cout,
        geo.cg,
        geo.og,
        geo.kh,
        geo.kw,
        geo.oh,
        geo.ow,
        c.stride[0],
        c.stride[1],
        c.pad[0],
        c.pad[1],
        c.dilation[0],
        c.dilation[1],
    ];
    let mut out = [0; 17];
    for (o, v) in out.iter_mut().zip(v) {
        *o = size32(v)?;
    }
    Ok(out)
}

/// `Conv` of `conv.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct ConvParams {
    pub n: u32,
    pub cin: u32,
    pub h: u32,
    pub w: u32,
    pub cout: u32,
    pub cg: u32,
    pub kh: u32,
    pub kw: u32,
    pub oh: u32,
    pub ow: u32,
    pub og: u32,
    pub m_tiles: u32,
    pub sh: u32,
    pub sw: u32,
    pub ph: u32,
    pub pw: u32,
    pub dh: u32,
    pub dw: u32,
    pub act: u32,
    pub pad0: u32,
    pub gm: u32,
    pub gn: u32,
    pub gk: u32,
    pub chunk: u32,
}

/// `Packed` of `conv_packed.wgsl`: the convolution, then what one packing, GEMM or col2im
/// dispatch does (see the shader).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct PackedParams {
    pub n: u32,
    pub cin: u32,
    pub h: u32,
    pub w: u32,
    pub cout: u32,
    pub cg: u32,
    pub og: u32,
    pub kh: u32,
    pub kw: u32,
    pub oh: u32,
    pub ow: u32,
    pub sh: u32,
    pub sw: u32,
    pub ph: u32,
    pub pw: u32,
    pub dh: u32,
    pub dw: u32,
    pub act: u32,
    pub group: u32,
    pub n0: u32,
    pub cols: u32,
    pub rows: u32,
    pub valid_cols: u32,
    pub rows_p: u32,
    pub cols_p: u32,
    pub transposed: u32,
    pub source: u32,
    pub off: u32,
    pub rs: u32,
    pub cs: u32,
    pub gm: u32,
    pub gn: u32,
    pub gk: u32,
    pub accumulate: u32,
    pub pad: [u32; 2],
}

/// `Fold` of `conv.wgsl`: where a convolution's epilogue coefficients come from.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct FoldParams {
    pub cout: u32,
    pub has_bias: u32,
    pub has_bn: u32,
    pub eps: f32,
}

/// `Pool` of `pooling.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct PoolParams {
    pub n_planes: u32,
    pub h: u32,
    pub w: u32,
    pub oh: u32,
    pub ow: u32,
    pub kh: u32,
    pub kw: u32,
    pub sh: u32,
    pub sw: u32,
    pub ph: u32,
    pub pw: u32,
    pub pad0: u32,
}

/// `Norm` of `batch_norm.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct NormParams {
    pub numel: u32,
    pub channels: u32,
    pub plane: u32,
    pub eps: f32,
}

/// `Mm` of `matmul.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct MatMulParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub batches: u32,
}

/// `Lines` of `softmax.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct LineParams {
    pub outer: u32,
    pub n: u32,
    pub inner: u32,
    pub pad0: u32,
}

/// `Count` of `activation.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct CountParams {
    pub n: u32,
    pub pad: [u32; 3],
}

/// `Chunks` of `conv.wgsl`: the weight gradient's partial sums.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct ChunkParams {
    pub numel: u32,
    pub chunks: u32,
    pub pad: [u32; 2],
}

/// `Train` of `batch_norm.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct TrainParams {
    pub n: u32,
    pub channels: u32,
    pub plane: u32,
    pub eps: f32,
    pub momentum: f32,
    pub unbias: f32,
    pub pad: [u32; 2],
}

/// `Fill` of `layout.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct FillParams {
    pub n: u32,
    pub value: f32,
    pub pad: [u32; 2],
}

/// `Blocks` of `layout.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockParams {
    pub n_planes: u32,
    pub h: u32,
    pub w: u32,
    pub sy: u32,
    pub sx: u32,
    pub pad: [u32; 3],
}

/// `Update` of `optimizer.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct UpdateParams {
    pub n: u32,
    pub group: u32,
    pub weight_decay: f32,
    pub max_norm: f32,
    pub prox: u32,
    pub keep: u32,
    pub beta1: f32,
    pub pad0: u32,
}

/// `Squares` of `optimizer.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct SquaresParams {
    pub n: u32,
    pub first: u32,
    pub total: u32,
    pub pad0: u32,
}

/// `Loss` of `detect_loss.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct LossParams {
    pub batch: u32,
    pub na: u32,
    pub nc: u32,
    pub reg_max: u32,
    pub rows: u32,
    pub levels: u32,
    pub dec: u32,
    pub ov: u32,
    pub al: u32,
    pub pos: u32,
    pub asg: u32,
    pub row_max: u32,
    pub part: u32,
    pub sums: u32,
    pub img_w: f32,
    pub img_h: f32,
    pub gains: [f32; 4],
    pub level_first: [u32; 4],
    pub level_w: [u32; 4],
    pub level_stride: [f32; 4],
}

/// `Kd` of `distill.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct DistillParams {
    pub batch: u32,
    pub na: u32,
    pub nc: u32,
    pub reg_max: u32,
    pub temperature: f32,
    pub gain_cls: f32,
    pub gain_box: f32,
    pub grad: u32,
    pub part: u32,
    pub sums: u32,
    pub pad: [u32; 2],
}

/// `Level` of `anchors.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct LevelParams {
    pub h: u32,
    pub w: u32,
    pub first: u32,
    pub total: u32,
    pub offset: f32,
    pub stride: f32,
    pub pad: [u32; 2],
}

/// A uniform block that mirrors a WGSL struct: only these bind as uniforms ([`uniform`]). Each
/// is checked at compile time to be whole 16-byte rows (WGSL's uniform layout) and by the unit
/// tests to have its WGSL struct's size.
pub trait Uniform: Pod {}

/// `u` bound as the shader's uniform variable `name`.
pub fn uniform<'a, U: Uniform>(name: &'a str, u: &'a U) -> (&'a str, &'a [u8]) {
    (name, bytemuck::bytes_of(u))
}

macro_rules! uniforms {
    ($($rust:ident => $file:literal $wgsl:literal),* $(,)?) => {
        $(
            impl Uniform for $rust {}
            const _: () = assert!(std::mem::size_of::<$rust>() % 16 == 0, "a uniform block is whole 16-byte rows");
        )*
        /// Every uniform block: (Rust size, shader file, WGSL struct).
        #[cfg(test)]
        const UNIFORMS: &[(usize, &str, &str)] = &[$((std::mem::size_of::<$rust>(), $file, $wgsl)),*];
    };
}

uniforms! {
    View => "common" "View",
    ConvParams => "conv" "Conv",
    PackedParams => "conv_packed" "Packed",
    FoldParams => "conv" "Fold",
    ChunkParams => "conv" "Chunks",
    PoolParams => "pooling" "Pool",
    NormParams => "batch_norm" "Norm",
    TrainParams => "batch_norm" "Train",
    MatMulParams => "matmul" "Mm",
    LineParams => "softmax" "Lines",
    CountParams => "common" "Count",
    FillParams => "layout" "Fill",
    BlockParams => "layout" "Blocks",
    UpdateParams => "optimizer" "Update",
    SquaresParams => "optimizer" "Squares",
    LossParams => "detect_loss" "Loss",
    DistillParams => "distill" "Kd",
    LevelParams => "anchors" "Level",
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::gpu::kernels::{source, SHADERS};
    use wgpu::naga;

    #[test]
    fn every_uniform_block_has_its_wgsl_structs_size() {
        for &(size, file, name) in UNIFORMS {
            let src = if file == "common" { source("activation") } else { source(file) };
            let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{file}.wgsl: {e}"));
            let span = module.types.iter().find_map(|(_, t)| match (&t.name, &t.inner) {
                (Some(n), naga::TypeInner::Struct { span, .. }) if n == name => Some(*span as usize),
                _ => None,
            });
            assert_eq!(span, Some(size), "{file}.wgsl struct {name}: WGSL size {span:?}, Rust size {size}");
        }
        // Every shader's uniform structs are covered.
        for (file, _) in SHADERS {
            let module = naga::front::wgsl::parse_str(&source(file)).unwrap();
            for (_, var) in module.global_variables.iter() {
                if var.space == naga::AddressSpace::Uniform {
                    let name = module.types[var.ty].name.clone().unwrap_or_default();
                    assert!(
                        UNIFORMS.iter().any(|u| u.2 == name),
                        "{file}.wgsl: uniform struct {name} has no Rust block"
                    );
                }
            }
        }
    }
}
