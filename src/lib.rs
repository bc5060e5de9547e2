//! slimc: network slimming of Ultralytics YOLO detectors (YOLO11, YOLOv8, YOLOv5u, YOLO12) as a compiler.
//!
//! Models (Ultralytics YAML or ONNX) are lowered to slimc's IR ([`slimc_ir`]), transformed by
//! passes ([`slimc_passes`]), run by backends ([`backend`]), trained ([`train`]), and emitted as ONNX ([`export`])
//! that is checked against the IR with tract and onnxruntime ([`verify`]).

pub mod backend;
pub mod bn_hist;
pub mod data;
pub mod device;
pub mod dist;
pub mod export;
pub mod frontend;
pub mod info;
pub mod io;
pub mod load;
pub mod pipeline;
pub mod plot;
pub mod predict;
pub mod prune;
pub mod train;
pub mod val;
pub mod verify;
