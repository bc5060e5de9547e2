//! A pickle reader that builds data, never runs code.
//!
//! PyTorch checkpoints are pickle streams of arbitrary classes (`DetectionModel`,
//! `torch.nn.Conv2d`, `collections.OrderedDict`) whose tensors point into other files of the
//! archive through persistent ids. No Rust crate reads such streams without executing or
//! rejecting the classes, so this is a small pickle VM (protocols 0–5, the opcodes `torch.save`
//! and Python's pickler emit) over an arena of [`Value`]s: a class instance becomes an
//! [`Value::Object`] holding its class, constructor arguments and state; the few callables
//! whose result matters (`OrderedDict`, `set`, `_codecs.encode`, torch's tensor rebuilders,
//! `torch.Size`, NumPy scalars) are interpreted. Every length read from the stream is checked
//! against the bytes that remain, so nothing is allocated beyond the stream's own size.

mod opcodes;
mod torch;
mod value;
mod vm;
pub mod write;

pub use value::{visit_budget, Id, Pickle, StorageDtype, TensorRef, Value, MAX_DEPTH};
pub use vm::{load, PickleError};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_protocol_2_containers() {
        // pickle.dumps({'a': [1, 2.5, None, -3, 2**40], 'b': ('x', True),
        //               'c': OrderedDict([('k', {1, 2})])}, protocol=2)
        let bytes = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00NJ\xfd\xff\xff\xff\x8a\x06\x00\x00\x00\x00\x00\x01eX\x01\x00\x00\x00bq\x03X\x01\x00\x00\x00xq\x04\x88\x86q\x05X\x01\x00\x00\x00cq\x06ccollections\nOrderedDict\nq\x07)Rq\x08X\x01\x00\x00\x00kq\tc__builtin__\nset\nq\n]q\x0b(K\x01K\x02e\x85q\x0cRq\rsu.";
        let p = load(bytes).unwrap();
        let want = serde_json::json!({"a": [1, 2.5, null, -3, 1i64 << 40], "b": ["x", true], "c": {"k": [1, 2]}});
        assert_eq!(p.to_json(p.root()), want);
    }

    #[test]
    fn self_referencing_values_render_finitely() {
        // l = []; l.append(l); l.append(l); pickle.dumps(l, protocol=2)
        let p = load(b"\x80\x02]q\x00(h\x00h\x00e.").unwrap();
        let j = p.to_json(p.root()).to_string();
        assert!(j.contains("<too large>") && j.len() < 1 << 20, "{}", j.len());
    }

    #[test]
    fn rejects_unknown_opcodes_and_short_strings() {
        let e = load(b"\x80\x02\x82\x01.").unwrap_err();
        assert!(e.msg.contains("EXT1"), "{e}");
        let e = load(b"\x80\x02X\xff\xff\xff\x7fab.").unwrap_err();
        assert!(e.msg.contains("declares"), "{e}");
        let e = load(b"\x80\x02K\x01").unwrap_err();
        assert!(e.msg.contains("without STOP"), "{e}");
    }
}
