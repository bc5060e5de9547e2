//! A model: graph + named tensors + metadata, and slimc's model file (`.slim`).
//!
//! The file is the 8-byte magic `SLIMC\0v1` followed by one protobuf message. The graph is
//! stored in its text form (stable, versioned with the file), tensors as little-endian bytes.
//! Protobuf lets later versions add fields (training state, pruning history) that older
//! readers skip. Files are written atomically: a temporary file in the same folder, synced,
//! then renamed over the target.

use crate::error::{IrError, Result};
use crate::graph::{Graph, ValueDef};
use crate::tensor::{Tensor, TensorData};
use crate::text::{parse_graph, print_graph};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 8] = b"SLIMC\0v1";

/// Facts about a model that travel with it (and into exported ONNX metadata).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Metadata {
    /// Class names, index = class id.
    pub names: Vec<String>,
    /// Detect-head strides per level (e.g. 8, 16, 32).
    pub strides: Vec<f32>,
    /// Image size (h, w) the model was imported or trained at.
    pub imgsz: [usize; 2],
    /// Where the model came from (a YAML name, an ONNX file).
    pub source: String,
    /// The Ultralytics scale letter, when known.
    pub scale: String,
    /// Facts about the file the model was imported from (an Ultralytics checkpoint's version,
    /// date, training arguments and metrics), as text by key.
    pub origin: BTreeMap<String, String>,
    /// The Ultralytics model YAML the graph was built from (with its `scale`, `nc` and
    /// `yaml_file`), as YAML text; empty for a model without one (an ONNX import). Writing an
    /// Ultralytics checkpoint needs it.
    pub architecture: String,
}

/// A graph with its tensors and metadata.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Model {
    /// The dataflow graph.
    pub graph: Graph,
    /// Every parameter tensor, by name.
    pub tensors: BTreeMap<String, Tensor>,
    /// Metadata.
    pub meta: Metadata,
    /// Opaque training state (optimizer, EMA, epoch), kept across stages; empty when none.
    pub training_state: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ModelFileMsg {
    #[prost(string, tag = "1")]
    graph_text: String,
    #[prost(message, repeated, tag = "2")]
    tensors: Vec<TensorMsg>,
    #[prost(message, optional, tag = "3")]
    meta: Option<MetaMsg>,
    #[prost(bytes = "vec", tag = "4")]
    training_state: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TensorMsg {
    #[prost(string, tag = "1")]
    name: String,
    /// 1 = f32, 2 = i64.
    #[prost(uint32, tag = "2")]
    dtype: u32,
    #[prost(uint64, repeated, tag = "3")]
    dims: Vec<u64>,
    #[prost(bytes = "vec", tag = "4")]
    data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MetaMsg {
    #[prost(string, repeated, tag = "1")]
    names: Vec<String>,
    #[prost(float, repeated, tag = "2")]
    strides: Vec<f32>,
    #[prost(uint64, repeated, tag = "3")]
    imgsz: Vec<u64>,
    #[prost(string, tag = "4")]
    source: String,
    #[prost(string, tag = "5")]
    scale: String,
    #[prost(btree_map = "string, string", tag = "6")]
    origin: BTreeMap<String, String>,
    #[prost(string, tag = "7")]
    architecture: String,
}

impl Model {
    /// Checks that the graph verifies, that every parameter has a tensor of its declared type,
    /// and that the metadata agrees with the graph (one name per class of the Detect head,
    /// positive finite strides).
    pub fn check(&self) -> Result<()> {
        crate::verify(&self.graph)?;
        let m = &self.meta;
        if m.strides.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(IrError::Invalid(format!("metadata strides {:?} must be positive and finite", m.strides)));
        }
        if let Some(nc) = self.head_classes() {
            if !m.names.is_empty() && m.names.len() != nc {
                return Err(IrError::Invalid(format!(
                    "{} class names for a Detect head of {nc} classes",
                    m.names.len()
                )));
            }
        }
        for &p in &self.graph.params {
            let v = self.graph.value(p);
            let t = self
                .tensors
                .get(&v.name)
                .ok_or_else(|| IrError::Invalid(format!("parameter %{} has no tensor", v.name)))?;
            if t.ty() != v.ty {
                return Err(IrError::Invalid(format!("tensor {} is {}, the graph declares {}", v.name, t.ty(), v.ty)));
            }
        }
        Ok(())
    }

    /// The class count of a Detect head (an `anchors` node, output `[N, 4 + nc, A]`), if any.
    pub fn head_classes(&self) -> Option<usize> {
        let g = &self.graph;
        g.nodes.iter().find(|n| matches!(n.op, crate::Op::Anchors(_)))?;
        let out = g.ty(*g.outputs.first()?);
        (out.rank() == 3).then(|| out.shape[1].fixed()).flatten().and_then(|c| c.checked_sub(4))
    }

    /// Drops tensors no parameter refers to (after passes removed their users).
    pub fn prune_tensors(&mut self) {
        self.graph.compact();
        let keep: std::collections::HashSet<&str> =
            self.graph.values.iter().filter(|v| matches!(v.def, ValueDef::Param(_))).map(|v| v.name.as_str()).collect();
        self.tensors.retain(|k, _| keep.contains(k.as_str()));
    }

    /// Serialises the model to bytes (magic + protobuf).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![];
        self.write_to(&mut out).expect("writing to memory cannot fail");
        out
    }

    /// Writes the model file's bytes (magic + protobuf, the same bytes as one encoded message)
    /// to `w`, the tensors' data and the training state straight from memory: a checkpoint with
    /// optimizer state (about 50 MB for yolo11n) is not copied into an encoded buffer first.
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
        use prost::Message;
        // A length-delimited field's key and length.
        let field = |tag: u32, len: usize, buf: &mut Vec<u8>| {
            encode_key(tag, WireType::LengthDelimited, buf);
            encode_varint(len as u64, buf);
        };
        let field_len =
            |tag: u32, len: usize| if len == 0 { 0 } else { key_len(tag) + encoded_len_varint(len as u64) + len };
        w.write_all(MAGIC)?;
        // The fields in tag order, as prost writes them; a message's encoding followed by another's
        // is the message with both sets of fields.
        let graph = ModelFileMsg { graph_text: print_graph(&self.graph), ..Default::default() };
        w.write_all(&graph.encode_to_vec())?;
        let mut head = vec![];
        for (name, t) in &self.tensors {
            let data = t.data.le_bytes();
            // The tensor without its data (tag 4, the last), then the data's key and length.
            let msg = tensor_msg(name, t, vec![]);
            head.clear();
            field(2, msg.encoded_len() + field_len(4, data.len()), &mut head);
            msg.encode(&mut head).expect("a Vec grows as needed");
            if !data.is_empty() {
                field(4, data.len(), &mut head);
            }
            w.write_all(&head)?;
            w.write_all(&data)?;
        }
        let meta = ModelFileMsg { meta: Some(meta_msg(&self.meta)), ..Default::default() };
        w.write_all(&meta.encode_to_vec())?;
        if !self.training_state.is_empty() {
            head.clear();
            field(4, self.training_state.len(), &mut head);
            w.write_all(&head)?;
            w.write_all(&self.training_state)?;
        }
        Ok(())
    }

    /// Reads a model from bytes; `what` names the source in errors.
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Model> {
        let ferr = |m: String| IrError::File(format!("{what}: {m}"));
        if bytes.len() < 8 || &bytes[..8] != MAGIC {
            return Err(ferr("not a slimc model file (bad magic)".into()));
        }
        let msg: ModelFileMsg =
            prost::Message::decode(&bytes[8..]).map_err(|e| ferr(format!("corrupt model file: {e}")))?;
        let graph = parse_graph(&msg.graph_text).map_err(|e| ferr(format!("graph: {e}")))?;
        let mut tensors = BTreeMap::new();
        for t in msg.tensors {
            let shape: Vec<usize> = t.dims.iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
            let bad = || ferr(format!("tensor {} has a bad type or size", t.name));
            let n = crate::tensor::checked_numel(&shape).ok_or_else(bad)?;
            let tensor = match t.dtype {
                1 if t.data.len() == 4 * n => Tensor {
                    shape,
                    data: TensorData::F32(
                        t.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                    ),
                },
                2 if t.data.len() == 8 * n => {
                    let le = |c: &[u8]| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                    Tensor { shape, data: TensorData::I64(t.data.chunks_exact(8).map(le).collect()) }
                }
                _ => return Err(bad()),
            };
            if tensors.insert(t.name.clone(), tensor).is_some() {
                return Err(ferr(format!("tensor {} is stored twice", t.name)));
            }
        }
        let m = msg.meta.unwrap_or_default();
        let imgsz = match m.imgsz.as_slice() {
            [h, w] => [*h as usize, *w as usize],
            _ => [0, 0],
        };
        let model = Model {
            graph,
            tensors,
            meta: Metadata {
                names: m.names,
                strides: m.strides,
                imgsz,
                source: m.source,
                scale: m.scale,
                origin: m.origin,
                architecture: m.architecture,
            },
            training_state: msg.training_state,
        };
        model.check().map_err(|e| ferr(e.to_string()))?;
        Ok(model)
    }

    /// Writes the model file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic_with(path, |f| {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            self.write_to(&mut w)?;
            w.flush()
        })
    }

    /// Reads a model file.
    pub fn load(path: &Path) -> Result<Model> {
        let bytes = std::fs::read(path).map_err(|e| IrError::File(format!("{}: {e}", path.display())))?;
        Model::from_bytes(&bytes, &path.display().to_string())
    }
}

/// A tensor's message, with `data` as its bytes.
fn tensor_msg(name: &str, t: &Tensor, data: Vec<u8>) -> TensorMsg {
    let dtype = match t.data {
        TensorData::F32(_) => 1,
        TensorData::I64(_) => 2,
    };
    TensorMsg { name: name.to_string(), dtype, dims: t.shape.iter().map(|&d| d as u64).collect(), data }
}

/// The metadata's message.
fn meta_msg(m: &Metadata) -> MetaMsg {
    MetaMsg {
        names: m.names.clone(),
        strides: m.strides.clone(),
        imgsz: m.imgsz.iter().map(|&d| d as u64).collect(),
        source: m.source.clone(),
        scale: m.scale.clone(),
        origin: m.origin.clone(),
        architecture: m.architecture.clone(),
    }
}

/// Writes `bytes` to `path` atomically: a synced temporary file in the same folder renamed over it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// [`write_atomic`] with the contents written by `write` into the temporary file.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>) -> Result<()> {
    let ferr = |e: std::io::Error| IrError::File(format!("{}: {e}", path.display()));
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let fname = path.file_name().ok_or_else(|| IrError::File(format!("{}: not a file path", path.display())))?;
    let prefix = format!(".{}.", fname.to_string_lossy());
    remove_stale_temporaries(dir, &prefix);
    let tmp = dir.join(format!("{prefix}{}.tmp", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        write(&mut f)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(ferr)
}

/// Removes `<prefix><pid>.tmp` files in `dir` left by writers that were killed: those whose
/// process no longer runs (where `/proc` tells; elsewhere only this process's own).
fn remove_stale_temporaries(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let proc_fs = Path::new("/proc/self").exists();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name.strip_prefix(prefix).and_then(|r| r.strip_suffix(".tmp")) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        let dead = pid == std::process::id() || (proc_fs && !Path::new(&format!("/proc/{pid}")).exists());
        if dead {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streamed file is byte for byte prost's encoding of the whole message, for tensors of
    /// both element types, an empty one, lengths over one varint byte, with and without state.
    #[test]
    fn streamed_file_is_the_encoded_message() {
        let mut m = Model::default();
        let f32s = |n: usize| (0..n).map(|i| i as f32 * 0.37 - 5.0).collect::<Vec<f32>>();
        m.tensors.insert("a".into(), Tensor::from_f32(vec![2, 3], f32s(6)).unwrap());
        m.tensors.insert("big".into(), Tensor::from_f32(vec![10, 10], f32s(100)).unwrap());
        m.tensors.insert("empty".into(), Tensor::from_f32(vec![0, 4], vec![]).unwrap());
        m.tensors.insert("steps".into(), Tensor::from_i64(vec![2], vec![-3, 1 << 40]).unwrap());
        m.meta.names = vec!["tree".into()];
        m.meta.imgsz = [320, 256];
        for state in [vec![], vec![9u8; 300]] {
            m.training_state = state;
            let whole = ModelFileMsg {
                graph_text: print_graph(&m.graph),
                tensors: m.tensors.iter().map(|(n, t)| tensor_msg(n, t, t.data.le_bytes().into_owned())).collect(),
                meta: Some(meta_msg(&m.meta)),
                training_state: m.training_state.clone(),
            };
            let expected = [MAGIC.to_vec(), prost::Message::encode_to_vec(&whole)].concat();
            assert_eq!(m.to_bytes(), expected);
        }
    }
}
