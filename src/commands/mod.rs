//! What the subcommands do beyond the library's stages: model statistics (`info`), the BN gamma
//! histograms (`bn-hist`), pruning with its report, budgets and sweeps (`prune`), prediction on
//! image files (`predict`), the checks of an exported ONNX file (`verify`) and the whole slimming
//! recipe (`pipeline`). The command line (`src/cli/`) parses the arguments and calls these.

pub mod bn_hist;
pub mod info;
pub mod pipeline;
pub mod predict;
pub mod prune;
pub mod verify;
