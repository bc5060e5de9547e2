//! slimc's dataflow IR.
//!
//! A [`Graph`] is a list of [`Node`]s in topological order over SSA values. Every value has a
//! static [`TensorType`] (a symbolic batch dimension is allowed), ops form the closed [`Op`] enum
//! with typed attributes, and parameters are named tensors held beside the graph in a [`Model`].
//! The text form ([`print_graph`] / [`parse_graph`]) is stable and round-trips.
//!
//! This crate knows nothing of GPUs or of other file formats. It defines every op's meaning,
//! the training ops included: batch norm in training mode, the gradient ops, the detection
//! loss and the optimizer's update, accumulation, clipping and EMA.

#![warn(missing_docs)]

mod error;
pub mod eval;
mod graph;
mod infer;
pub mod layout;
pub mod memory;
pub mod model;
mod op;
pub mod step_scalars;
mod tensor;
mod text;
mod verifier;

pub use error::{IrError, Result};
pub use graph::{infer_all, infer_node_types};
pub use graph::{Graph, Node, NodeId, ParamKind, Value, ValueDef, ValueId, NEXT_SUFFIX};
pub use infer::infer_types;
pub use model::{write_atomic, Metadata, Model};
pub use op::{
    Anchors, Attr, Axis, BatchNorm, Binary, Collective, Conv2d, DetectLoss, Distill, Op, OpKind, ParamGroup, Pool,
    Reshape, ReshapeDim, Root, Slice, Split, Transpose, Unary, UnaryGrad, Update, Upsample, ALL_OP_KINDS,
};
pub use tensor::{checked_numel, le_bytes, DType, Dim, Tensor, TensorData, TensorType};
pub use text::{parse_graph, print_graph};
pub use verifier::verify;
