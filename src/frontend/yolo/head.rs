//! The Detect head: box and class branches, DFL and box decoding.

use super::lowering::{Lowering, REG_MAX};
use anyhow::Result;
use slimc_ir::{Anchors, Axis, Binary, Reshape, Slice, Split, Transpose, Unary};
use slimc_ir::{Conv2d, Op, ParamKind, ReshapeDim, ValueId};

impl Lowering<'_> {
    /// The `Detect` head: the class branch depthwise-separable (YOLO11, YOLO12) or, with
    /// `legacy` (Ultralytics' head for v3/v5/v8/v9), two 3×3 convs; then DFL and box decoding.
    /// Returns the decoded output `[N, 4+nc, A]` (boxes as cx, cy, w, h in input pixels, then
    /// sigmoid class scores). The raw level maps are values named `{scope}.feat.{i}`.
    pub fn detect(&mut self, xs: &[ValueId], nc: usize, strides: &[f32], legacy: bool, scope: &str) -> Result<ValueId> {
        let ch0 = self.channels(xs[0]);
        let c2 = 16.max(ch0 / 4).max(REG_MAX * 4);
        let c3 = ch0.max(nc.min(100));
        let no = 4 * REG_MAX + nc;
        let mut flat = vec![];
        for (i, &x) in xs.iter().enumerate() {
            let ci = self.channels(x);
            let b = format!("{scope}.cv2.{i}");
            let y = self.conv(x, c2, 3, 1, None, 1, true, &format!("{b}.0"))?;
            let y = self.conv(y, c2, 3, 1, None, 1, true, &format!("{b}.1"))?;
            let box_ = self.conv2d(y, 4 * REG_MAX, 1, 1, 0, 1, Some(vec![1.0; 4 * REG_MAX]), &format!("{b}.2"))?;
            let c = format!("{scope}.cv3.{i}");
            let y = if legacy {
                let y = self.conv(x, c3, 3, 1, None, 1, true, &format!("{c}.0"))?;
                self.conv(y, c3, 3, 1, None, 1, true, &format!("{c}.1"))?
            } else {
                let y = self.conv(x, ci, 3, 1, None, ci, true, &format!("{c}.0.0"))?;
                let y = self.conv(y, c3, 1, 1, None, 1, true, &format!("{c}.0.1"))?;
                let y = self.conv(y, c3, 3, 1, None, c3, true, &format!("{c}.1.0"))?;
                self.conv(y, c3, 1, 1, None, 1, true, &format!("{c}.1.1"))?
            };
            let cls_bias = (5.0 / nc as f64 / (640.0 / strides[i] as f64).powi(2)).ln() as f32;
            let cls = self.conv2d(y, nc, 1, 1, 0, 1, Some(vec![cls_bias; nc]), &format!("{c}.2"))?;
            let feat = self.concat(&[box_, cls], &format!("{scope}.feat.{i}"), scope)?;
            let view = Op::Reshape(Reshape {
                shape: vec![ReshapeDim::Of { input: 0, axis: 0 }, ReshapeDim::Fixed(no), ReshapeDim::Infer],
            });
            flat.push((feat, self.g.add1(view, &[feat], &format!("{scope}.flat.{i}"), scope)?));
        }
        let feats: Vec<ValueId> = flat.iter().map(|f| f.0).collect();
        let all: Vec<ValueId> = flat.iter().map(|f| f.1).collect();
        let x = self.g.add1(Op::Concat(Axis { axis: 2 }), &all, &format!("{scope}.cat"), scope)?;
        let parts = self.g.add_node(
            Op::Split(Split { axis: 1, sizes: vec![4 * REG_MAX, nc] }),
            &[x],
            &[&format!("{scope}.box"), &format!("{scope}.cls")],
            scope,
        )?;
        // DFL: softmax over the 16 bins of each side, expectation by a fixed 1x1 conv.
        let dfl = format!("{scope}.dfl");
        let b0 = ReshapeDim::Of { input: 0, axis: 0 };
        let v = self.g.add1(
            Op::Reshape(Reshape {
                shape: vec![b0.clone(), ReshapeDim::Fixed(4), ReshapeDim::Fixed(REG_MAX), ReshapeDim::Infer],
            }),
            &[parts[0]],
            &format!("{dfl}.view"),
            &dfl,
        )?;
        let v = self.g.add1(
            Op::Transpose(Transpose { perm: vec![0, 2, 1, 3] }),
            &[v],
            &format!("{dfl}.transpose"),
            &dfl,
        )?;
        let v = self.g.add1(Op::Softmax(Axis { axis: 1 }), &[v], &format!("{dfl}.softmax"), &dfl)?;
        let w = self.param(
            &format!("{dfl}.conv.weight"),
            &[1, REG_MAX, 1, 1],
            ParamKind::Frozen,
            (0..REG_MAX).map(|i| i as f32).collect(),
        );
        let op = Op::Conv2d(Conv2d { stride: [1, 1], pad: [0; 4], dilation: [1, 1], groups: 1 });
        let v = self.g.add1(op, &[v, w], &format!("{dfl}.conv"), &format!("{dfl}.conv"))?;
        let dist = self.g.add1(
            Op::Reshape(Reshape { shape: vec![b0, ReshapeDim::Fixed(4), ReshapeDim::Infer] }),
            &[v],
            &format!("{dfl}.dist"),
            &dfl,
        )?;
        // dist2bbox (xywh) times stride.
        let slice = |s: i64, e: i64| Op::Slice(Slice { axes: vec![1], starts: vec![s], ends: vec![e], steps: vec![1] });
        let lt = self.g.add1(slice(0, 2), &[dist], &format!("{scope}.lt"), scope)?;
        let rb = self.g.add1(slice(2, 4), &[dist], &format!("{scope}.rb"), scope)?;
        let anc = self.g.add_node(
            Op::Anchors(Anchors { strides: strides.to_vec(), offset: 0.5 }),
            &feats,
            &[&format!("{scope}.anchors"), &format!("{scope}.strides")],
            scope,
        )?;
        let x1y1 = self.g.add1(Op::Binary(Binary::Sub), &[anc[0], lt], &format!("{scope}.x1y1"), scope)?;
        let x2y2 = self.g.add1(Op::Binary(Binary::Add), &[anc[0], rb], &format!("{scope}.x2y2"), scope)?;
        let sum = self.g.add1(Op::Binary(Binary::Add), &[x1y1, x2y2], &format!("{scope}.sum"), scope)?;
        let two = self.scalar(&format!("{scope}.two"), 2.0);
        let c_xy = self.g.add1(Op::Binary(Binary::Div), &[sum, two], &format!("{scope}.c_xy"), scope)?;
        let wh = self.g.add1(Op::Binary(Binary::Sub), &[x2y2, x1y1], &format!("{scope}.wh"), scope)?;
        let xywh = self.concat(&[c_xy, wh], &format!("{scope}.xywh"), scope)?;
        let dbox = self.g.add1(Op::Binary(Binary::Mul), &[xywh, anc[1]], &format!("{scope}.dbox"), scope)?;
        let cls = self.g.add1(Op::Unary(Unary::Sigmoid), &[parts[1]], &format!("{scope}.scores"), scope)?;
        Ok(self.concat(&[dbox, cls], "output0", scope)?)
    }
}
