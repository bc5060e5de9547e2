//! A scene's labels in Ultralytics' formats, all derived from what is visible of each product:
//! boxes (detect), the silhouette's outline as a polygon (segment), the rotated rectangle at the
//! product's own angle (OBB, 4 corners), and those corners plus their centre as keypoints (pose).

use crate::scene::Scene;
use crate::silhouette::{rotated_box, simplify, Point};

/// How far (in pixels) the polygon may stray from the silhouette's pixel-edge outline.
pub const POLYGON_TOLERANCE: f64 = 0.75;

/// Keypoints per instance: the rectangle's corners (top-left, top-right, bottom-right,
/// bottom-left in the product's own frame), then its centre.
pub const KEYPOINTS: usize = 5;

/// Where each keypoint goes under a horizontal flip (left and right corners swap).
pub const FLIP_IDX: [usize; KEYPOINTS] = [1, 0, 3, 2, 4];

/// One instance's labels, in scene pixels.
#[derive(Clone, Debug)]
pub struct Instance {
    /// Fashion-MNIST class.
    pub class: usize,
    /// Pixel-edge box of the visible silhouette: x0, y0, x1, y1.
    pub bbox: [f64; 4],
    /// The visible silhouette's outline, simplified.
    pub polygon: Vec<Point>,
    /// The rectangle at the product's angle enclosing the visible silhouette.
    pub corners: [Point; 4],
    /// Keypoints: the corners and the centre, each visible (true) unless a later product covers it.
    pub keypoints: [(Point, bool); KEYPOINTS],
    /// The share of the product that stays visible.
    pub visible_share: f64,
}

/// The labels of every product of `scene`, in drawing order.
pub fn instances(scene: &Scene) -> Vec<Instance> {
    let objects = &scene.objects;
    objects
        .iter()
        .enumerate()
        .filter_map(|(k, o)| {
            let b = o.visible.bbox()?;
            let outline: Vec<Point> = o.visible.outline().iter().map(|&(x, y)| (x as f64, y as f64)).collect();
            let corners = rotated_box(&outline, o.theta);
            let centre =
                (corners.iter().map(|c| c.0).sum::<f64>() / 4.0, corners.iter().map(|c| c.1).sum::<f64>() / 4.0);
            let covered =
                |p: Point| objects[k + 1..].iter().any(|a| a.full.get(p.0.floor() as i64, p.1.floor() as i64));
            let kp = |p: Point| (p, !covered(p));
            Some(Instance {
                class: o.class,
                bbox: b.map(|v| v as f64),
                polygon: simplify(&outline, POLYGON_TOLERANCE),
                corners,
                keypoints: [kp(corners[0]), kp(corners[1]), kp(corners[2]), kp(corners[3]), kp(centre)],
                visible_share: o.visible.count() as f64 / o.full.count() as f64,
            })
        })
        .collect()
}

/// The four label formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// `class cx cy w h`.
    Detect,
    /// `class x1 y1 … xn yn`.
    Segment,
    /// `class x1 y1 x2 y2 x3 y3 x4 y4`.
    Obb,
    /// `class cx cy w h` then `x y v` per keypoint (v 2 visible, 0 hidden).
    Pose,
}

impl Task {
    /// Every task, detection first.
    pub const ALL: [Task; 4] = [Task::Detect, Task::Segment, Task::Obb, Task::Pose];

    /// Ultralytics' name of the task.
    pub fn name(self) -> &'static str {
        match self {
            Task::Detect => "detect",
            Task::Segment => "segment",
            Task::Obb => "obb",
            Task::Pose => "pose",
        }
    }
}

/// The label file of `instances` for `task` in a scene of side `size`: one line per instance,
/// coordinates normalised to [0, 1] with 6 decimals.
pub fn label_file(instances: &[Instance], task: Task, size: usize) -> String {
    let s = size as f64;
    let mut out = String::new();
    let xy = |out: &mut String, p: Point| out.push_str(&format!(" {:.6} {:.6}", p.0 / s, p.1 / s));
    for inst in instances {
        out.push_str(&inst.class.to_string());
        let [x0, y0, x1, y1] = inst.bbox;
        let bbox = |out: &mut String| {
            xy(out, ((x0 + x1) / 2.0, (y0 + y1) / 2.0));
            xy(out, (x1 - x0, y1 - y0));
        };
        match task {
            Task::Detect => bbox(&mut out),
            Task::Segment => inst.polygon.iter().for_each(|&p| xy(&mut out, p)),
            Task::Obb => inst.corners.iter().for_each(|&p| xy(&mut out, p)),
            Task::Pose => {
                bbox(&mut out);
                for &(p, visible) in &inst.keypoints {
                    xy(&mut out, p);
                    out.push_str(if visible { " 2" } else { " 0" });
                }
            }
        }
        out.push('\n');
    }
    out
}
