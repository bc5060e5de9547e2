//! Datasets in Ultralytics' YOLO format: scanning and checking, images and augmentation, and
//! the batch loaders of training and validation.

pub mod augment;
pub mod dataset;
pub mod image;
pub mod loader;
