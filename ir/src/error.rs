use thiserror::Error;

/// Errors raised by the IR: malformed graphs, bad shapes, unparsable text, bad model files.
#[derive(Debug, Error)]
pub enum IrError {
    /// Shape inference or the verifier found an inconsistency; the message names the node.
    #[error("{0}")]
    Invalid(String),
    /// The text form could not be parsed; `line` is 1-based.
    #[error("line {line}: {msg}")]
    Parse {
        /// The line (1-based).
        line: usize,
        /// What is wrong there.
        msg: String,
    },
    /// A model file could not be read or written.
    #[error("{0}")]
    File(String),
}

/// Result with [`IrError`].
pub type Result<T> = std::result::Result<T, IrError>;

/// Shorthand for an [`IrError::Invalid`] error.
pub(crate) fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(IrError::Invalid(msg.into()))
}
