//! Validation as Ultralytics 8.3.253 computes it: NMS, matching of detections to labels, and
//! AP / P / R / mAP.

pub mod confusion;
pub mod metrics;
pub mod nms;
pub mod validate;
