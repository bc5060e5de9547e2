//! The pickle writer: Python values to a protocol-2 stream, as `torch.save` writes them. Class
//! instances are written as protocol 2 reduces them (`cls.__new__(cls)`, then `BUILD` with their
//! state), tensors and parameters as torch's rebuild calls over storages named by persistent
//! ids, so `torch.load` reads them back into the same objects.

use super::opcodes as op;
use super::value::StorageDtype;

/// A Python value to write.
#[derive(Clone, Debug, PartialEq)]
pub enum Py {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An `int`.
    Int(i64),
    /// A `float`.
    Float(f64),
    /// A `str`.
    Str(String),
    /// A `tuple`.
    Tuple(Vec<Py>),
    /// A `list`.
    List(Vec<Py>),
    /// A `dict`, in insertion order.
    Dict(Vec<(Py, Py)>),
    /// A `collections.OrderedDict`.
    OrderedDict(Vec<(Py, Py)>),
    /// A `set`.
    Set(Vec<Py>),
    /// An instance of `module.name` made without its constructor, its `__dict__` set to `state`.
    Object {
        /// The class's module.
        module: String,
        /// The class's name.
        name: String,
        /// Its state (a dict of attributes).
        state: Box<Py>,
    },
    /// A tensor (or, with `parameter`, an `nn.Parameter`) viewing a whole contiguous storage.
    Tensor {
        /// The storage's key in the archive (`data/<key>`).
        key: String,
        /// Its element type.
        dtype: StorageDtype,
        /// The tensor's sizes.
        shape: Vec<usize>,
        /// An `nn.Parameter` (with `requires_grad`) rather than a plain tensor.
        parameter: bool,
    },
}

impl Py {
    /// A `str`.
    pub fn str(s: impl Into<String>) -> Py {
        Py::Str(s.into())
    }

    /// A `dict` with string keys.
    pub fn dict<'a>(items: impl IntoIterator<Item = (&'a str, Py)>) -> Py {
        Py::Dict(items.into_iter().map(|(k, v)| (Py::str(k), v)).collect())
    }

    /// A tuple of ints.
    pub fn ints(v: &[usize]) -> Py {
        Py::Tuple(v.iter().map(|&x| Py::Int(x as i64)).collect())
    }
}

/// The pickle stream of `value` (protocol 2).
pub fn dumps(value: &Py) -> Vec<u8> {
    let mut w = Writer { out: vec![op::PROTO, 2] };
    w.value(value);
    w.out.push(op::STOP);
    w.out
}

struct Writer {
    out: Vec<u8>,
}

impl Writer {
    fn global(&mut self, module: &str, name: &str) {
        self.out.push(op::GLOBAL);
        for part in [module, name] {
            self.out.extend_from_slice(part.as_bytes());
            self.out.push(b'\n');
        }
    }

    fn str(&mut self, s: &str) {
        self.out.push(op::BINUNICODE);
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: i64) {
        match v {
            0..=0xff => self.out.extend_from_slice(&[op::BININT1, v as u8]),
            0x100..=0xffff => {
                self.out.push(op::BININT2);
                self.out.extend_from_slice(&(v as u16).to_le_bytes());
            }
            _ if i32::try_from(v).is_ok() => {
                self.out.push(op::BININT);
                self.out.extend_from_slice(&(v as i32).to_le_bytes());
            }
            _ => {
                self.out.extend_from_slice(&[op::LONG1, 8]);
                self.out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }

    fn tuple(&mut self, items: &[Py]) {
        match items {
            [] => self.out.push(op::EMPTY_TUPLE),
            [a] => {
                self.value(a);
                self.out.push(op::TUPLE1);
            }
            [a, b] => {
                self.value(a);
                self.value(b);
                self.out.push(op::TUPLE2);
            }
            [a, b, c] => {
                self.value(a);
                self.value(b);
                self.value(c);
                self.out.push(op::TUPLE3);
            }
            _ => {
                self.out.push(op::MARK);
                items.iter().for_each(|v| self.value(v));
                self.out.push(op::TUPLE);
            }
        }
    }

    /// `MARK k v … SETITEMS` onto the dict on the stack.
    fn set_items(&mut self, items: &[(Py, Py)]) {
        if !items.is_empty() {
            self.out.push(op::MARK);
            for (k, v) in items {
                self.value(k);
                self.value(v);
            }
            self.out.push(op::SETITEMS);
        }
    }

    /// `OrderedDict()` called, then its items set.
    fn ordered_dict(&mut self, items: &[(Py, Py)]) {
        self.global("collections", "OrderedDict");
        self.out.extend_from_slice(&[op::EMPTY_TUPLE, op::REDUCE]);
        self.set_items(items);
    }

    fn value(&mut self, v: &Py) {
        match v {
            Py::None => self.out.push(op::NONE),
            Py::Bool(b) => self.out.push(if *b { op::NEWTRUE } else { op::NEWFALSE }),
            Py::Int(i) => self.int(*i),
            Py::Float(f) => {
                self.out.push(op::BINFLOAT);
                self.out.extend_from_slice(&f.to_be_bytes());
            }
            Py::Str(s) => self.str(s),
            Py::Tuple(items) => self.tuple(items),
            Py::List(items) => {
                self.out.push(op::EMPTY_LIST);
                if !items.is_empty() {
                    self.out.push(op::MARK);
                    items.iter().for_each(|v| self.value(v));
                    self.out.push(op::APPENDS);
                }
            }
            Py::Dict(items) => {
                self.out.push(op::EMPTY_DICT);
                self.set_items(items);
            }
            Py::OrderedDict(items) => self.ordered_dict(items),
            Py::Set(items) => {
                self.global("builtins", "set");
                self.tuple(&[Py::List(items.clone())]);
                self.out.push(op::REDUCE);
            }
            Py::Object { module, name, state } => {
                self.global(module, name);
                self.out.extend_from_slice(&[op::EMPTY_TUPLE, op::NEWOBJ]);
                self.value(state);
                self.out.push(op::BUILD);
            }
            Py::Tensor { key, dtype, shape, parameter } => {
                if *parameter {
                    self.global("torch._utils", "_rebuild_parameter");
                    self.out.push(op::MARK);
                }
                self.global("torch._utils", "_rebuild_tensor_v2");
                self.out.push(op::MARK);
                // The storage: a persistent id ('storage', class, key, location, numel).
                self.out.push(op::MARK);
                self.str("storage");
                self.global("torch", dtype.class());
                self.str(key);
                self.str("cpu");
                self.int(shape.iter().product::<usize>() as i64);
                self.out.extend_from_slice(&[op::TUPLE, op::BINPERSID]);
                self.int(0);
                self.tuple(&shape.iter().map(|&s| Py::Int(s as i64)).collect::<Vec<_>>());
                let mut stride = vec![1usize; shape.len()];
                for i in (0..shape.len().saturating_sub(1)).rev() {
                    stride[i] = stride[i + 1] * shape[i + 1];
                }
                self.tuple(&stride.iter().map(|&s| Py::Int(s as i64)).collect::<Vec<_>>());
                self.value(&Py::Bool(false));
                self.ordered_dict(&[]);
                self.out.extend_from_slice(&[op::TUPLE, op::REDUCE]);
                if *parameter {
                    self.value(&Py::Bool(true));
                    self.ordered_dict(&[]);
                    self.out.extend_from_slice(&[op::TUPLE, op::REDUCE]);
                }
            }
        }
    }
}
