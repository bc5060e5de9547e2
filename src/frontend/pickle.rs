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

use std::collections::HashMap;
use std::fmt;

/// Index of a value in a [`Pickle`]'s arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Id(pub usize);

/// The element types of torch storages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageDtype {
    /// `torch.HalfStorage`.
    F16,
    /// `torch.BFloat16Storage`.
    BF16,
    /// `torch.FloatStorage`.
    F32,
    /// `torch.DoubleStorage`.
    F64,
    /// `torch.LongStorage`.
    I64,
    /// `torch.IntStorage`.
    I32,
    /// `torch.ShortStorage`.
    I16,
    /// `torch.CharStorage`.
    I8,
    /// `torch.ByteStorage`.
    U8,
    /// `torch.BoolStorage`.
    Bool,
}

impl StorageDtype {
    /// The dtype of a storage class name (`HalfStorage`), if torch has one of that name.
    pub fn from_class(name: &str) -> Option<StorageDtype> {
        Some(match name {
            "HalfStorage" => StorageDtype::F16,
            "BFloat16Storage" => StorageDtype::BF16,
            "FloatStorage" => StorageDtype::F32,
            "DoubleStorage" => StorageDtype::F64,
            "LongStorage" => StorageDtype::I64,
            "IntStorage" => StorageDtype::I32,
            "ShortStorage" => StorageDtype::I16,
            "CharStorage" => StorageDtype::I8,
            "ByteStorage" => StorageDtype::U8,
            "BoolStorage" => StorageDtype::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageDtype::F64 | StorageDtype::I64 => 8,
            StorageDtype::F32 | StorageDtype::I32 => 4,
            StorageDtype::F16 | StorageDtype::BF16 | StorageDtype::I16 => 2,
            StorageDtype::I8 | StorageDtype::U8 | StorageDtype::Bool => 1,
        }
    }

    /// Whether the elements are floating point.
    pub fn is_float(self) -> bool {
        matches!(self, StorageDtype::F16 | StorageDtype::BF16 | StorageDtype::F32 | StorageDtype::F64)
    }
}

/// A tensor as `torch._utils._rebuild_tensor_v2` describes it: a strided view of a storage.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    /// The storage's key in the archive (`data/<key>`).
    pub key: String,
    /// Element type of the storage.
    pub dtype: StorageDtype,
    /// Elements the storage declares.
    pub storage_numel: u64,
    /// Offset of the first element, in elements.
    pub offset: u64,
    /// Sizes.
    pub size: Vec<u64>,
    /// Strides, in elements.
    pub stride: Vec<u64>,
}

/// One value built by the pickle stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// A bool.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// An integer too large for 64 bits (kept only as a marker).
    BigInt,
    /// A float.
    Float(f64),
    /// A `str`.
    Str(String),
    /// `bytes`.
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Vec<Id>),
    /// A list.
    List(Vec<Id>),
    /// A dict or `OrderedDict`, in insertion order.
    Dict(Vec<(Id, Id)>),
    /// A set or frozenset.
    Set(Vec<Id>),
    /// A global reference (`module.name`), before it is called.
    Global {
        /// Module path.
        module: String,
        /// Attribute name.
        name: String,
    },
    /// An instance of a class the reader does not interpret.
    Object {
        /// `module.name` of its class.
        class: String,
        /// Constructor (or reduce) arguments.
        args: Vec<Id>,
        /// State given by BUILD (usually the instance `__dict__`).
        state: Option<Id>,
        /// Items set on it (dict subclasses).
        items: Vec<(Id, Id)>,
    },
    /// A persistent id (what torch stores for a storage).
    PersistentId(Id),
    /// A tensor view of an archive storage.
    Tensor(TensorRef),
}

/// Why a pickle stream could not be read.
#[derive(Clone, Debug, PartialEq)]
pub struct PickleError {
    /// Byte offset in the stream.
    pub at: usize,
    /// What went wrong.
    pub msg: String,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pickle byte {}: {}", self.at, self.msg)
    }
}

impl std::error::Error for PickleError {}

/// A decoded pickle: the arena of values and the root the stream returned.
#[derive(Clone, Debug, Default)]
pub struct Pickle {
    values: Vec<Value>,
    /// The value `STOP` returned.
    pub root: Option<Id>,
}

/// Deepest nesting the helpers follow (a hostile stream can nest or loop without bound).
pub const MAX_DEPTH: usize = 256;

/// How many values a walk over a pickle may visit: a few times the arena, since a value can be
/// shared (a DAG of shared lists visits exponentially many paths, which this stops).
pub fn visit_budget(p: &Pickle) -> usize {
    4 * p.values.len() + 1024
}

impl Pickle {
    /// The value with id `id`.
    pub fn get(&self, id: Id) -> &Value {
        &self.values[id.0]
    }

    /// The root value.
    pub fn root(&self) -> Id {
        self.root.unwrap_or(Id(0))
    }

    /// The string value of `id`, if it is a `str`.
    pub fn str(&self, id: Id) -> Option<&str> {
        match self.get(id) {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The entries of `id` if it is a dict (or an object whose state or items are a dict).
    pub fn dict(&self, id: Id) -> Option<&[(Id, Id)]> {
        match self.get(id) {
            Value::Dict(d) => Some(d),
            Value::Object { items, state: None, .. } => Some(items),
            _ => None,
        }
    }

    /// Looks `key` up in the dict `id`.
    pub fn dict_get(&self, id: Id, key: &str) -> Option<Id> {
        self.dict(id)?.iter().find(|(k, _)| self.str(*k) == Some(key)).map(|(_, v)| *v)
    }

    /// The `__dict__` of an object (its BUILD state, or the dict part of a `(dict, slots)` state).
    pub fn object_state(&self, id: Id) -> Option<Id> {
        match self.get(id) {
            Value::Object { state: Some(s), .. } => match self.get(*s) {
                Value::Dict(_) => Some(*s),
                Value::Tuple(t) if t.len() == 2 && matches!(self.get(t[0]), Value::Dict(_)) => Some(t[0]),
                _ => None,
            },
            _ => None,
        }
    }

    /// An attribute of an object (a key of its `__dict__`).
    pub fn attr(&self, id: Id, name: &str) -> Option<Id> {
        self.dict_get(self.object_state(id)?, name)
    }

    /// The class (`module.name`) of an object.
    pub fn class(&self, id: Id) -> Option<&str> {
        match self.get(id) {
            Value::Object { class, .. } => Some(class),
            _ => None,
        }
    }

    /// A short human-readable rendering (for metadata), `None` past [`MAX_DEPTH`].
    pub fn to_json(&self, id: Id) -> serde_json::Value {
        self.json_at(id, 0, &mut visit_budget(self))
    }

    fn json_at(&self, id: Id, depth: usize, budget: &mut usize) -> serde_json::Value {
        use serde_json::Value as J;
        if depth > MAX_DEPTH || *budget == 0 {
            return J::String("<too large>".into());
        }
        *budget -= 1;
        let mut list = |ids: &[Id]| J::Array(ids.iter().map(|&i| self.json_at(i, depth + 1, budget)).collect());
        match self.get(id) {
            Value::None => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::BigInt => J::String("<int>".into()),
            Value::Float(f) => serde_json::Number::from_f64(*f).map(J::Number).unwrap_or(J::String(f.to_string())),
            Value::Str(s) => J::String(s.clone()),
            Value::Bytes(b) => J::String(format!("<{} bytes>", b.len())),
            Value::Tuple(t) | Value::List(t) | Value::Set(t) => list(t),
            Value::Dict(d) => {
                let mut out = serde_json::Map::new();
                for (k, v) in d {
                    let key = match self.get(*k) {
                        Value::Str(s) => s.clone(),
                        _ => self.json_at(*k, depth + 1, budget).to_string(),
                    };
                    let v = self.json_at(*v, depth + 1, budget);
                    out.insert(key, v);
                }
                J::Object(out)
            }
            Value::Global { module, name } => J::String(format!("{module}.{name}")),
            Value::Object { class, state, .. } => match (class.as_str(), state) {
                ("ultralytics.utils.IterableSimpleNamespace" | "types.SimpleNamespace", Some(s)) => {
                    self.json_at(*s, depth + 1, budget)
                }
                _ => J::String(format!("<{class}>")),
            },
            Value::PersistentId(_) => J::String("<persistent id>".into()),
            Value::Tensor(t) => J::String(format!("<tensor {:?}>", t.size)),
        }
    }
}

/// The name of a pickle opcode, for errors.
fn opcode_name(op: u8) -> &'static str {
    match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        _ => "unknown",
    }
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    at: usize,
    values: Vec<Value>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
}

type R<T> = std::result::Result<T, PickleError>;

impl<'a> Vm<'a> {
    fn err<T>(&self, msg: impl Into<String>) -> R<T> {
        Err(PickleError { at: self.at, msg: msg.into() })
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        if n > self.data.len() - self.pos {
            return self.err(format!(
                "{} needs {n} bytes, {} remain",
                opcode_name(self.data[self.at]),
                self.data.len() - self.pos
            ));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> R<u16> {
        Ok(u16::from_le_bytes([self.take(1)?[0], self.take(1)?[0]]))
    }

    fn u32(&mut self) -> R<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> R<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn line(&mut self) -> R<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return self.err(format!("{} has no end of line", opcode_name(self.data[self.at])));
        };
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).or_else(|_| self.err("text argument is not UTF-8"))
    }

    fn len_arg(&mut self, n: u64) -> R<usize> {
        let remaining = (self.data.len() - self.pos) as u64;
        if n > remaining {
            return self.err(format!("{} declares {n} bytes, {remaining} remain", opcode_name(self.data[self.at])));
        }
        Ok(n as usize)
    }

    fn push(&mut self, v: Value) {
        self.values.push(v);
        self.stack.push(Id(self.values.len() - 1));
    }

    fn pop(&mut self) -> R<Id> {
        match self.stack.pop() {
            Some(id) => Ok(id),
            None => self.err(format!("{} on an empty stack", opcode_name(self.data[self.at]))),
        }
    }

    fn top(&self) -> R<Id> {
        match self.stack.last() {
            Some(id) => Ok(*id),
            None => self.err(format!("{} on an empty stack", opcode_name(self.data[self.at]))),
        }
    }

    fn pop_mark(&mut self) -> R<Vec<Id>> {
        let Some(m) = self.marks.pop() else {
            return self.err(format!("{} without a MARK", opcode_name(self.data[self.at])));
        };
        if m > self.stack.len() {
            return self.err("MARK beyond the stack");
        }
        Ok(self.stack.split_off(m))
    }

    fn memo_get(&mut self, k: u64) -> R<()> {
        match self.memo.get(&k) {
            Some(&id) => {
                self.stack.push(id);
                Ok(())
            }
            None => self.err(format!("memo key {k} was never stored")),
        }
    }

    fn memo_put(&mut self, k: u64) -> R<()> {
        let id = self.top()?;
        self.memo.insert(k, id);
        Ok(())
    }

    fn str_value(&self, id: Id) -> Option<&str> {
        match &self.values[id.0] {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    fn int_value(&self, id: Id) -> Option<i64> {
        match &self.values[id.0] {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    fn ints(&self, id: Id, what: &str) -> R<Vec<u64>> {
        let items = match &self.values[id.0] {
            Value::Tuple(t) | Value::List(t) => t.clone(),
            _ => return self.err(format!("tensor {what} is not a tuple")),
        };
        items
            .iter()
            .map(|&i| match self.int_value(i) {
                Some(v) if v >= 0 => Ok(v as u64),
                _ => self.err(format!("tensor {what} holds a value that is not a non-negative integer")),
            })
            .collect()
    }

    fn tuple_items(&self, id: Id) -> Vec<Id> {
        match &self.values[id.0] {
            Value::Tuple(t) | Value::List(t) => t.clone(),
            _ => vec![],
        }
    }

    /// Calls `callable(*args)` for the callables whose results matter; anything else becomes
    /// an [`Value::Object`].
    fn call(&mut self, callable: Id, args: Id) -> R<Value> {
        let (module, name) = match &self.values[callable.0] {
            Value::Global { module, name } => (module.clone(), name.clone()),
            Value::Object { class, .. } => return self.err(format!("calling an instance of {class} is not supported")),
            other => return self.err(format!("REDUCE on a value that is not a class or function: {other:?}")),
        };
        let a = self.tuple_items(args);
        Ok(match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") | ("builtins" | "__builtin__", "dict") => {
                let mut items = vec![];
                if let Some(&first) = a.first() {
                    for pair in self.tuple_items(first) {
                        if let [k, v] = self.tuple_items(pair)[..] {
                            items.push((k, v));
                        }
                    }
                }
                Value::Dict(items)
            }
            ("builtins" | "__builtin__", "set" | "frozenset") => {
                Value::Set(a.first().map(|&l| self.tuple_items(l)).unwrap_or_default())
            }
            ("builtins" | "__builtin__", "list") => {
                Value::List(a.first().map(|&l| self.tuple_items(l)).unwrap_or_default())
            }
            ("builtins" | "__builtin__", "tuple") | ("torch", "Size") => {
                Value::Tuple(a.first().map(|&l| self.tuple_items(l)).unwrap_or_default())
            }
            ("_codecs", "encode") => {
                let s = a.first().and_then(|&s| self.str_value(s)).unwrap_or_default();
                let mut out = Vec::with_capacity(s.len());
                for c in s.chars() {
                    match u8::try_from(u32::from(c)) {
                        Ok(b) => out.push(b),
                        Err(_) => return self.err("_codecs.encode of a character outside latin-1"),
                    }
                }
                Value::Bytes(out)
            }
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => self.rebuild_tensor(&a)?,
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => match a.first() {
                Some(&t) if matches!(self.values[t.0], Value::Tensor(_)) => self.values[t.0].clone(),
                _ => return self.err("_rebuild_parameter without a tensor"),
            },
            ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => self.numpy_scalar(&a, &module, &name),
            _ => Value::Object { class: format!("{module}.{name}"), args: a, state: None, items: vec![] },
        })
    }

    fn rebuild_tensor(&self, a: &[Id]) -> R<Value> {
        if a.len() < 4 {
            return self.err("_rebuild_tensor_v2 needs storage, offset, size and stride");
        }
        let Value::PersistentId(pid) = &self.values[a[0].0] else {
            return self.err("tensor storage is not a persistent id");
        };
        let fields = self.tuple_items(*pid);
        // ('storage', torch.<Type>Storage, key, location, numel)
        if fields.len() < 5 || self.str_value(fields[0]) != Some("storage") {
            return self.err("persistent id is not ('storage', type, key, location, numel)");
        }
        let dtype = match &self.values[fields[1].0] {
            Value::Global { module, name } if module == "torch" => match StorageDtype::from_class(name) {
                Some(d) => d,
                None => return self.err(format!("unsupported storage type torch.{name}")),
            },
            other => return self.err(format!("storage type is not a torch storage class: {other:?}")),
        };
        let key = match &self.values[fields[2].0] {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            _ => return self.err("storage key is not a string"),
        };
        let storage_numel = match self.int_value(fields[4]) {
            Some(n) if n >= 0 => n as u64,
            _ => return self.err(format!("storage {key} has no valid element count")),
        };
        let offset = match self.int_value(a[1]) {
            Some(o) if o >= 0 => o as u64,
            _ => return self.err("tensor storage offset is not a non-negative integer"),
        };
        let size = self.ints(a[2], "size")?;
        let stride = self.ints(a[3], "stride")?;
        if size.len() != stride.len() {
            return self.err(format!("tensor size {size:?} and stride {stride:?} differ in rank"));
        }
        Ok(Value::Tensor(TensorRef { key, dtype, storage_numel, offset, size, stride }))
    }

    /// `numpy.core.multiarray.scalar(dtype, bytes)` for the float and integer dtypes.
    fn numpy_scalar(&self, a: &[Id], module: &str, name: &str) -> Value {
        let opaque =
            || Value::Object { class: format!("{module}.{name}"), args: a.to_vec(), state: None, items: vec![] };
        let (Some(&dt), Some(&raw)) = (a.first(), a.get(1)) else { return opaque() };
        let code = match &self.values[dt.0] {
            Value::Object { args, .. } => args.first().and_then(|&c| self.str_value(c)).unwrap_or_default().to_string(),
            _ => return opaque(),
        };
        let Value::Bytes(b) = &self.values[raw.0] else { return opaque() };
        match (code.as_str(), b.len()) {
            ("f8", 8) => Value::Float(f64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]))),
            ("f4", 4) => Value::Float(f32::from_le_bytes(b[..4].try_into().unwrap_or([0; 4])) as f64),
            ("i8", 8) => Value::Int(i64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]))),
            ("i4", 4) => Value::Int(i32::from_le_bytes(b[..4].try_into().unwrap_or([0; 4])) as i64),
            _ => opaque(),
        }
    }

    fn build(&mut self) -> R<()> {
        let state = self.pop()?;
        let obj = self.top()?;
        match &mut self.values[obj.0] {
            Value::Object { state: s, .. } => *s = Some(state),
            // Tensors and parameters carry no state that matters for their data; dicts rebuilt
            // by OrderedDict get their items through SETITEMS.
            Value::Tensor(_) | Value::Dict(_) => {}
            other => {
                let what = format!("{other:?}");
                return self.err(format!("BUILD on a value that is not an object: {what}"));
            }
        }
        Ok(())
    }

    fn set_items(&mut self, target: Id, pairs: Vec<Id>) -> R<()> {
        if pairs.len() % 2 != 0 {
            return self.err("SETITEMS with an odd number of values");
        }
        let kv = pairs.chunks_exact(2).map(|c| (c[0], c[1]));
        match &mut self.values[target.0] {
            Value::Dict(d) => {
                for (k, v) in kv {
                    d.push((k, v));
                }
            }
            Value::Object { items, .. } => items.extend(kv),
            _ => return self.err("SETITEM on a value that is not a dict"),
        }
        Ok(())
    }

    fn append(&mut self, target: Id, items: Vec<Id>) -> R<()> {
        match &mut self.values[target.0] {
            Value::List(l) | Value::Set(l) => l.extend(items),
            Value::Object { args, .. } => args.extend(items),
            _ => return self.err("APPEND on a value that is not a list"),
        }
        Ok(())
    }

    fn run(&mut self) -> R<Id> {
        loop {
            self.at = self.pos;
            if self.pos >= self.data.len() {
                return self.err("the stream ends without STOP");
            }
            let op = self.u8()?;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return self.err(format!("pickle protocol {p} is newer than 5"));
                    }
                }
                0x95 => {
                    self.u64()?;
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.stack.push(t);
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64));
                }
                b'I' | b'L' => {
                    let line = self.line()?.trim_end_matches('L');
                    let v = match line {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => s.parse::<i64>().map(Value::Int).unwrap_or(Value::BigInt),
                    };
                    self.push(v);
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.u8()? as u64 } else { self.u32()? as u64 };
                    let n = self.len_arg(n)?;
                    let b = self.take(n)?;
                    let v = if n <= 8 {
                        let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) { 0xff } else { 0 };
                        let mut a = [fill; 8];
                        a[..n].copy_from_slice(b);
                        Value::Int(i64::from_le_bytes(a))
                    } else {
                        Value::BigInt
                    };
                    self.push(v);
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Value::Float(f64::from_be_bytes(a)));
                }
                b'F' => {
                    let line = self.line()?;
                    match line.trim().parse::<f64>() {
                        Ok(f) => self.push(Value::Float(f)),
                        Err(_) => return self.err(format!("FLOAT `{line}` is not a number")),
                    }
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()? as u64,
                        0x8c => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let n = self.len_arg(n)?;
                    let b = self.take(n)?;
                    match std::str::from_utf8(b) {
                        Ok(s) => self.push(Value::Str(s.to_string())),
                        Err(_) => return self.err("string is not UTF-8"),
                    }
                }
                b'V' => {
                    let s = self.line()?.to_string();
                    self.push(Value::Str(s));
                }
                b'T' | b'U' | b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'T' | b'B' => self.u32()? as u64,
                        b'U' | b'C' => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let n = self.len_arg(n)?;
                    let b = self.take(n)?.to_vec();
                    // Python 2 strings (BINSTRING) are text in practice; keep them as str when
                    // they decode, as Python 3's default `encoding="ASCII"` load does.
                    let v = match (op, String::from_utf8(b)) {
                        (b'T' | b'U', Ok(s)) => Value::Str(s),
                        (_, Ok(s)) => Value::Bytes(s.into_bytes()),
                        (_, Err(e)) => Value::Bytes(e.into_bytes()),
                    };
                    self.push(v);
                }
                b'S' => {
                    let s = self.line()?.trim_matches(|c| c == '\'' || c == '"').to_string();
                    self.push(Value::Str(s));
                }
                b')' => self.push(Value::Tuple(vec![])),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items));
                }
                0x85 | 0x86 | 0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return self.err(format!("{} needs {n} values on the stack", opcode_name(op)));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(items));
                }
                b']' => self.push(Value::List(vec![])),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items));
                }
                b'a' => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    self.append(l, vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let l = self.top()?;
                    self.append(l, items)?;
                }
                b'}' => self.push(Value::Dict(vec![])),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(vec![]));
                    let d = self.top()?;
                    self.set_items(d, items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.set_items(d, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let d = self.top()?;
                    self.set_items(d, items)?;
                }
                0x8f => self.push(Value::Set(vec![])),
                0x90 => {
                    let items = self.pop_mark()?;
                    let s = self.top()?;
                    self.append(s, items)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Value::Set(items));
                }
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    self.push(Value::Global { module, name });
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (self.str_value(module), self.str_value(name)) {
                        (Some(m), Some(n)) => {
                            let v = Value::Global { module: m.to_string(), name: n.to_string() };
                            self.push(v);
                        }
                        _ => return self.err("STACK_GLOBAL needs two strings"),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(callable, args)?;
                    self.push(v);
                }
                0x81 | 0x92 => {
                    if op == 0x92 {
                        self.pop()?; // kwargs
                    }
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.call(cls, args)?;
                    self.push(v);
                }
                b'b' => self.build()?,
                b'Q' => {
                    let pid = self.pop()?;
                    self.push(Value::PersistentId(pid));
                }
                b'P' => {
                    let s = self.line()?.to_string();
                    self.push(Value::Str(s));
                    let pid = self.pop()?;
                    self.push(Value::PersistentId(pid));
                }
                b'q' => {
                    let k = self.u8()? as u64;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()? as u64;
                    self.memo_put(k)?;
                }
                b'p' => {
                    let line = self.line()?;
                    let Ok(k) = line.parse::<u64>() else { return self.err(format!("PUT key `{line}`")) };
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u64;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.u32()? as u64;
                    self.memo_get(k)?;
                }
                b'g' => {
                    let line = self.line()?;
                    let Ok(k) = line.parse::<u64>() else { return self.err(format!("GET key `{line}`")) };
                    self.memo_get(k)?;
                }
                other => {
                    return self.err(format!("unsupported pickle opcode 0x{other:02x} ({})", opcode_name(other)));
                }
            }
        }
    }
}

/// Decodes a pickle stream into an arena of values.
pub fn load(data: &[u8]) -> Result<Pickle, PickleError> {
    let mut vm = Vm { data, pos: 0, at: 0, values: vec![], stack: vec![], marks: vec![], memo: HashMap::new() };
    let root = vm.run()?;
    Ok(Pickle { values: vm.values, root: Some(root) })
}

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
