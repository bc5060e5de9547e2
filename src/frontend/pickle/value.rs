//! The value model of a decoded pickle: an arena of [`Value`]s addressed by [`Id`], tensors as
//! references into the archive's storages, and helpers that walk it within bounds.

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
    /// Every dtype with its torch storage class name.
    const CLASSES: [(StorageDtype, &'static str); 10] = [
        (StorageDtype::F16, "HalfStorage"),
        (StorageDtype::BF16, "BFloat16Storage"),
        (StorageDtype::F32, "FloatStorage"),
        (StorageDtype::F64, "DoubleStorage"),
        (StorageDtype::I64, "LongStorage"),
        (StorageDtype::I32, "IntStorage"),
        (StorageDtype::I16, "ShortStorage"),
        (StorageDtype::I8, "CharStorage"),
        (StorageDtype::U8, "ByteStorage"),
        (StorageDtype::Bool, "BoolStorage"),
    ];

    /// The dtype of a storage class name (`HalfStorage`), if torch has one of that name.
    pub fn from_class(name: &str) -> Option<StorageDtype> {
        Self::CLASSES.iter().find(|(_, n)| *n == name).map(|(d, _)| *d)
    }

    /// The torch storage class name of the dtype (`HalfStorage`).
    pub fn class(self) -> &'static str {
        Self::CLASSES.iter().find(|(d, _)| *d == self).map(|(_, n)| *n).expect("every dtype is in the table")
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

/// A decoded pickle: the arena of values and the root the stream returned.
#[derive(Clone, Debug, Default)]
pub struct Pickle {
    pub(super) values: Vec<Value>,
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
