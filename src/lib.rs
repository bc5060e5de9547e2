//! slimc: network slimming of Ultralytics YOLO detectors (YOLO11, YOLOv8, YOLOv5u, YOLO12) as a compiler.
//!
//! Models (Ultralytics `.pt` checkpoints, YAML or ONNX) are lowered to slimc's IR ([`slimc_ir`])
//! by the [`frontend`]s, transformed by passes ([`slimc_passes`]), run by backends ([`backend`]),
//! trained ([`train`]), and emitted as ONNX or `.pt` ([`export`]) that is checked against the IR
//! with tract and onnxruntime ([`commands::verify`]). [`commands`] holds what the subcommands
//! do beyond that; [`io`], [`load`] and [`device`] are what they share.

pub mod backend;
pub mod commands;
pub mod data;
pub mod device;
pub mod distributed;
pub mod export;
pub mod frontend;
pub mod io;
pub mod load;
pub mod plot;
pub mod train;
pub mod val;
