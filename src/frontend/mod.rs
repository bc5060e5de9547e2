//! Frontends: Ultralytics YAML and ONNX files lowered to slimc IR, and weight loading.

pub mod onnx;
pub mod weights;
pub mod yaml;
pub mod yolo;
