//! Row-major layout: strides, strided copies and the views of slices, transposes and
//! broadcasts, the offsets of a batched operand's matrices, and output buffers reused across
//! runs. The reference semantics ([`crate::eval`]), the backends and the frontends share them;
//! what an op means is not decided here.

use crate::error::{invalid, Result};

/// `buf` with `n` elements of unspecified value, reusing its allocation: for code that writes
/// every element.
pub fn sized(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if n > buf.capacity() {
        // A new allocation: the old elements need not be copied into it.
        buf.clear();
        buf.reserve_exact(n);
    }
    buf.resize(n, 0.0);
    buf.truncate(n);
    buf
}

/// Row-major strides of `shape`.
pub fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Copies elements of `src` read at `offset + Σ idx[i]·strides[i]` for every index of `out_shape`.
pub fn strided_copy<T: Copy>(src: &[T], offset: isize, out_shape: &[usize], strides: &[isize]) -> Vec<T> {
    let n: usize = out_shape.iter().product();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    let r = out_shape.len();
    let mut idx = vec![0usize; r];
    let mut pos = offset;
    for _ in 0..n {
        out.push(src[pos as usize]);
        for d in (0..r).rev() {
            idx[d] += 1;
            pos += strides[d];
            if idx[d] < out_shape[d] {
                break;
            }
            pos -= strides[d] * out_shape[d] as isize;
            idx[d] = 0;
        }
    }
    out
}

/// Where a slice of a tensor of `shape` starts and the strides that read it: the slice is
/// `strided_copy(x, offset, out_shape, strides)`.
pub fn slice_view(
    shape: &[usize],
    axes: &[usize],
    starts: &[i64],
    ends: &[i64],
    steps: &[i64],
) -> Result<(isize, Vec<isize>)> {
    let st = strides_of(shape);
    let mut strides: Vec<isize> = st.iter().map(|&s| s as isize).collect();
    let mut off = 0isize;
    for i in 0..axes.len() {
        let (s, step, _) = slice_range(shape[axes[i]], starts[i], ends[i], steps[i])?;
        off += s as isize * st[axes[i]] as isize;
        strides[axes[i]] *= step as isize;
    }
    Ok((off, strides))
}

/// The strides that read a tensor of `shape` in the axis order `perm` (a transpose).
pub fn transpose_strides(shape: &[usize], perm: &[usize]) -> Vec<isize> {
    let st = strides_of(shape);
    perm.iter().map(|&p| st[p] as isize).collect()
}

/// Strides that read a tensor of `shape` broadcast to `out` (0 on broadcast axes).
pub fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<isize> {
    let st = strides_of(shape);
    let lead = out.len() - shape.len();
    (0..out.len()).map(|i| if i < lead || shape[i - lead] == 1 { 0 } else { st[i - lead] as isize }).collect()
}

/// Element offsets of each matrix of a batched operand of `shape` broadcast over `batch` axes.
pub fn batch_offsets(shape: &[usize], batch: &[usize], mat: usize) -> Vec<usize> {
    let lead = &shape[..shape.len() - 2];
    let count: usize = batch.iter().product();
    let idx: Vec<usize> = (0..lead.iter().product::<usize>().max(1)).map(|i| i * mat).collect();
    let strides = broadcast_strides(lead, batch);
    strided_copy(&idx, 0, batch, &strides).into_iter().take(count).collect::<Vec<_>>()
}

/// Resolves an ONNX-style slice on an axis of length `n`: returns (start, step, count).
pub fn slice_range(n: usize, start: i64, end: i64, step: i64) -> Result<(i64, i64, usize)> {
    if step == 0 {
        return invalid("slice step is 0");
    }
    let n = n as i64;
    let norm = |v: i64| if v < 0 { v.saturating_add(n) } else { v };
    let (s, e) = (norm(start), norm(end));
    // ceil(span / |step|) without forming span + |step| - 1, which overflows for steps near
    // i64::MAX (ONNX exporters write such steps to mean "one element").
    let count = |span: i64| if span > 0 { ((span as u64 - 1) / step.unsigned_abs() + 1) as i64 } else { 0 };
    let len =
        if step > 0 { count(e.clamp(0, n) - s.clamp(0, n)) } else { count(s.clamp(-1, n - 1) - e.clamp(-1, n - 1)) };
    let s = if step > 0 { s.clamp(0, n) } else { s.clamp(-1, n - 1) };
    // A slice of at most one element reads no second one: step 1 keeps strides from
    // overflowing when |step| is far beyond the axis.
    let step = if len <= 1 { 1 } else { step };
    Ok((s, step, len as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_follow_python_semantics() {
        // Expected values are Python's: len(list(range(10))[start:end:step]) and its first item.
        let cases = [
            (2, 8, 1, 2, 6),
            (-3, 100, 1, 7, 3),
            (8, 2, -2, 8, 3),
            (0, -1, 1, 0, 9),
            (5, 5, 1, 5, 0),
            (-1, -11, -1, 9, 10),
        ];
        for (s, e, st, first, len) in cases {
            let (b, _, n) = slice_range(10, s, e, st).unwrap();
            assert_eq!((n, if n > 0 { b } else { first }), (len, first), "[{s}:{e}:{st}]");
        }
        assert!(slice_range(10, 0, 5, 0).is_err());
        // Steps at the ends of i64 take one element, as ceil((end - start) / step) says (ONNX
        // Runtime gives 1 row for start 0, end 64, step 2^63 - 1).
        assert_eq!(slice_range(64, 0, 64, i64::MAX).unwrap(), (0, 1, 1));
        assert_eq!(slice_range(64, -1, i64::MIN, i64::MIN).unwrap(), (63, 1, 1));
        assert_eq!(slice_range(64, i64::MIN, i64::MAX, 1).unwrap(), (0, 1, 64));
    }
}
