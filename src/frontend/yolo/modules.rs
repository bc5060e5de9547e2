//! The Ultralytics modules a model YAML may name: one list, which the frontend lowers module by
//! module and the `.pt` writer (`crate::export::pt`) pickles module by module, each with an
//! exhaustive match, so a new module is decided in both places or neither compiles.

/// The Python module of Ultralytics' convolution modules (`Conv`, `DWConv`, `Concat`).
pub const CONV_PY: &str = "ultralytics.nn.modules.conv";
/// The Python module of Ultralytics' blocks.
pub const BLOCK_PY: &str = "ultralytics.nn.modules.block";
/// The Python module of Ultralytics' heads.
pub const HEAD_PY: &str = "ultralytics.nn.modules.head";

/// An Ultralytics module a YAML layer names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Module {
    /// `Conv`: convolution, batch norm, SiLU.
    Conv,
    /// `C2f`: YOLOv8's CSP block with two convolutions.
    C2f,
    /// `C3`: the CSP bottleneck with three convolutions (YOLOv5).
    C3,
    /// `C2`: the CSP bottleneck with two convolutions.
    C2,
    /// `C3k2`: YOLO11's C2f with C3k (or bottleneck) blocks.
    C3k2,
    /// `C3k`: a C3 with a custom kernel size.
    C3k,
    /// `SPPF`: spatial pyramid pooling, fast.
    Sppf,
    /// `C2PSA`: the C2f-style block with position-sensitive attention.
    C2psa,
    /// `A2C2f`: YOLO12's block of area attention (or C3k) blocks.
    A2C2f,
    /// `nn.Upsample`: nearest-neighbour upsampling.
    Upsample,
    /// `Concat`: concatenation along the channels.
    Concat,
    /// `Detect`: the detection head.
    Detect,
}

impl Module {
    /// Every module, in the order messages list them.
    pub const ALL: [Module; 12] = [
        Module::Conv,
        Module::C2f,
        Module::C3,
        Module::C2,
        Module::C3k2,
        Module::C3k,
        Module::Sppf,
        Module::C2psa,
        Module::A2C2f,
        Module::Upsample,
        Module::Concat,
        Module::Detect,
    ];

    /// The name Ultralytics' YAML files give the module.
    pub fn name(self) -> &'static str {
        match self {
            Module::Conv => "Conv",
            Module::C2f => "C2f",
            Module::C3 => "C3",
            Module::C2 => "C2",
            Module::C3k2 => "C3k2",
            Module::C3k => "C3k",
            Module::Sppf => "SPPF",
            Module::C2psa => "C2PSA",
            Module::A2C2f => "A2C2f",
            Module::Upsample => "nn.Upsample",
            Module::Concat => "Concat",
            Module::Detect => "Detect",
        }
    }

    /// The module a YAML layer names (`Upsample` is read as `nn.Upsample`).
    pub fn parse(name: &str) -> Option<Module> {
        match name {
            "Upsample" => Some(Module::Upsample),
            _ => Module::ALL.into_iter().find(|m| m.name() == name),
        }
    }

    /// Where the module's class is defined: the Python module and the class name.
    pub fn class(self) -> (&'static str, &'static str) {
        match self {
            Module::Conv | Module::Concat => (CONV_PY, self.name()),
            Module::C2f | Module::C3 | Module::C2 | Module::C3k2 | Module::C3k => (BLOCK_PY, self.name()),
            Module::Sppf | Module::C2psa | Module::A2C2f => (BLOCK_PY, self.name()),
            Module::Upsample => ("torch.nn.modules.upsampling", "Upsample"),
            Module::Detect => (HEAD_PY, "Detect"),
        }
    }

    /// Whether a model with this module before its head has Ultralytics' current Detect head
    /// (YOLO11's C3k2, YOLO12's A2C2f) rather than the `legacy` one of v3/v5/v8/v9.
    pub fn has_current_head(self) -> bool {
        match self {
            Module::C3k2 | Module::A2C2f => true,
            Module::Conv | Module::C2f | Module::C3 | Module::C2 | Module::C3k | Module::Sppf => false,
            Module::C2psa | Module::Upsample | Module::Concat | Module::Detect => false,
        }
    }
}
