//! Frontends: Ultralytics YAML, ONNX files and Ultralytics `.pt` checkpoints lowered to slimc
//! IR, and weight loading.

pub mod checkpoint;
pub mod onnx;
pub mod pickle;
pub mod weights;
pub mod yaml;
pub mod yolo;
