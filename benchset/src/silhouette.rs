//! Binary masks over the image grid and the label geometry derived from them: 8-connected
//! components, the outer outline along pixel edges, its simplification to a polygon, and the
//! rotated rectangle that encloses it.

/// A point in image pixels (x right, y down; pixel `(i, j)` covers `[i, i+1) × [j, j+1)`).
pub type Point = (f64, f64);

/// A binary mask over a `w × h` grid, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Mask {
    /// Width in pixels.
    pub w: usize,
    /// Height in pixels.
    pub h: usize,
    /// One flag per pixel.
    pub bits: Vec<bool>,
}

/// The eight neighbours of a pixel.
const NEIGHBOURS: [(i64, i64); 8] = [(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)];

impl Mask {
    /// An empty `w × h` mask.
    pub fn new(w: usize, h: usize) -> Mask {
        Mask { w, h, bits: vec![false; w * h] }
    }

    /// Whether pixel `(x, y)` is set; false outside the grid.
    pub fn get(&self, x: i64, y: i64) -> bool {
        x >= 0
            && y >= 0
            && (x as usize) < self.w
            && (y as usize) < self.h
            && self.bits[y as usize * self.w + x as usize]
    }

    /// The number of set pixels.
    pub fn count(&self) -> usize {
        self.bits.iter().filter(|&&b| b).count()
    }

    /// The pixel-edge bounding box `[x0, y0, x1, y1]` (exclusive ends) of the set pixels.
    pub fn bbox(&self) -> Option<[usize; 4]> {
        let mut b: Option<[usize; 4]> = None;
        for (i, _) in self.bits.iter().enumerate().filter(|(_, &v)| v) {
            let (x, y) = (i % self.w, i / self.w);
            let e = b.get_or_insert([x, y, x + 1, y + 1]);
            *e = [e[0].min(x), e[1].min(y), e[2].max(x + 1), e[3].max(y + 1)];
        }
        b
    }

    /// The set pixels' 8-connected components, each as the list of its pixel indices, in the
    /// order of their first pixel in raster order.
    pub fn components(&self) -> Vec<Vec<usize>> {
        let mut seen = vec![false; self.bits.len()];
        let mut out = vec![];
        for start in 0..self.bits.len() {
            if !self.bits[start] || seen[start] {
                continue;
            }
            seen[start] = true;
            let (mut stack, mut comp) = (vec![start], vec![]);
            while let Some(i) = stack.pop() {
                comp.push(i);
                let (x, y) = ((i % self.w) as i64, (i / self.w) as i64);
                for (dx, dy) in NEIGHBOURS {
                    if self.get(x + dx, y + dy) {
                        let j = (y + dy) as usize * self.w + (x + dx) as usize;
                        if !seen[j] {
                            seen[j] = true;
                            stack.push(j);
                        }
                    }
                }
            }
            out.push(comp);
        }
        out
    }

    /// The largest 8-connected component alone (the first of equal ones in raster order).
    pub fn largest_component(&self) -> Mask {
        let mut out = Mask::new(self.w, self.h);
        let comps = self.components();
        if let Some(c) = comps.iter().rev().max_by_key(|c| c.len()) {
            for &i in c {
                out.bits[i] = true;
            }
        }
        out
    }

    /// The outer outline of the mask's one 8-connected component: the pixel corners where the
    /// boundary turns, clockwise on screen, starting at the top-left corner of its first pixel in
    /// raster order. Every set pixel lies inside the polygon (holes are not followed). Empty
    /// for an empty mask.
    pub fn outline(&self) -> Vec<(i64, i64)> {
        let Some(first) = self.bits.iter().position(|&b| b) else { return vec![] };
        let start = ((first % self.w) as i64, (first / self.w) as i64);
        // Walk the pixel edges with the component on the right: at each corner, a pixel ahead
        // on the left means turn left (which joins diagonal neighbours: 8-connectivity), one
        // ahead on the right means go straight, neither means turn right.
        // The start corner touches only its pixel (nothing is set above the first pixel's row or
        // left of it in its row), so the walk passes it once: it leaves east along the pixel's
        // top edge and comes back north along its left edge, a turn.
        let mut corners = vec![start];
        let (mut at, mut d) = ((start.0 + 1, start.1), (1i64, 0i64));
        while at != start {
            let right = (-d.1, d.0);
            // The pixels ahead of corner `at`: centres at at + d/2 ∓ right/2.
            let ahead = |side: i64| {
                let cx2 = 2 * at.0 + d.0 + side * right.0;
                let cy2 = 2 * at.1 + d.1 + side * right.1;
                self.get(cx2.div_euclid(2), cy2.div_euclid(2))
            };
            let next = if ahead(-1) {
                (d.1, -d.0)
            } else if ahead(1) {
                d
            } else {
                right
            };
            if next != d {
                corners.push(at);
            }
            d = next;
            at = (at.0 + d.0, at.1 + d.1);
        }
        corners
    }
}

/// The distance from `p` to the segment `a`–`b`.
fn segment_distance(p: Point, a: Point, b: Point) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 == 0.0 { 0.0 } else { (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0) };
    ((p.0 - a.0 - t * dx).powi(2) + (p.1 - a.1 - t * dy).powi(2)).sqrt()
}

/// Douglas–Peucker on the open chain `pts[lo..=hi]`: marks the points kept.
fn douglas_peucker(pts: &[Point], lo: usize, hi: usize, eps: f64, keep: &mut [bool]) {
    if hi <= lo + 1 {
        return;
    }
    let (mut far, mut dist) = (lo, -1.0);
    for (i, &p) in pts.iter().enumerate().take(hi).skip(lo + 1) {
        let d = segment_distance(p, pts[lo], pts[hi]);
        if d > dist {
            (far, dist) = (i, d);
        }
    }
    if dist > eps {
        keep[far] = true;
        douglas_peucker(pts, lo, far, eps, keep);
        douglas_peucker(pts, far, hi, eps, keep);
    }
}

/// The closed polygon `pts` simplified by Douglas–Peucker to within `eps` pixels, split at its
/// first point and the point farthest from it (both kept), order preserved.
pub fn simplify(pts: &[Point], eps: f64) -> Vec<Point> {
    if pts.len() <= 4 {
        return pts.to_vec();
    }
    let far = (1..pts.len())
        .max_by(|&i, &j| {
            let d = |k: usize| (pts[k].0 - pts[0].0).powi(2) + (pts[k].1 - pts[0].1).powi(2);
            d(i).total_cmp(&d(j)).then(j.cmp(&i))
        })
        .unwrap_or(1);
    let mut ring = pts.to_vec();
    ring.push(pts[0]);
    let mut keep = vec![false; ring.len()];
    (keep[0], keep[far], keep[ring.len() - 1]) = (true, true, true);
    douglas_peucker(&ring, 0, far, eps, &mut keep);
    douglas_peucker(&ring, far, ring.len() - 1, eps, &mut keep);
    ring.pop();
    ring.into_iter().zip(keep).filter(|(_, k)| *k).map(|(p, _)| p).collect()
}

/// The rectangle at angle `theta` (its first axis `(cos θ, sin θ)` in image pixels) that
/// encloses `pts`: corners top-left, top-right, bottom-right, bottom-left in the rectangle's own
/// frame (its second axis `(−sin θ, cos θ)` pointing "down").
pub fn rotated_box(pts: &[Point], theta: f64) -> [Point; 4] {
    let (c, s) = (theta.cos(), theta.sin());
    let (mut u0, mut u1, mut v0, mut v1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        let (u, v) = (x * c + y * s, -x * s + y * c);
        (u0, u1, v0, v1) = (u0.min(u), u1.max(u), v0.min(v), v1.max(v));
    }
    let at = |u: f64, v: f64| (u * c - v * s, u * s + v * c);
    [at(u0, v0), at(u1, v0), at(u1, v1), at(u0, v1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(rows: &[&str]) -> Mask {
        let (w, h) = (rows[0].len(), rows.len());
        let bits = rows.iter().flat_map(|r| r.bytes().map(|b| b == b'#')).collect();
        Mask { w, h, bits }
    }

    /// The shoelace area of a closed polygon.
    fn area(p: &[(i64, i64)]) -> i64 {
        let n = p.len();
        (0..n).map(|i| p[i].0 * p[(i + 1) % n].1 - p[(i + 1) % n].0 * p[i].1).sum::<i64>() / 2
    }

    #[test]
    fn outline_of_a_square_is_its_four_corners() {
        let m = mask(&["....", ".##.", ".##.", "...."]);
        assert_eq!(m.outline(), vec![(1, 1), (3, 1), (3, 3), (1, 3)]);
    }

    #[test]
    fn outline_joins_diagonal_neighbours_and_skips_holes() {
        // Two pixels touching at a corner, and a ring around a hole.
        let d = mask(&["#.", ".#"]);
        let o = d.outline();
        assert_eq!(area(&o), 2, "{o:?}");
        let ring = mask(&["###", "#.#", "###"]);
        assert_eq!(ring.outline(), vec![(0, 0), (3, 0), (3, 3), (0, 3)]);
        let l = mask(&["#..", "##.", "###"]);
        assert_eq!(area(&l.outline()), 6);
    }

    #[test]
    fn components_are_eight_connected() {
        let m = mask(&["#..#", ".#..", "...#"]);
        let sizes: Vec<usize> = m.components().iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![2, 1, 1]);
        assert_eq!(m.largest_component().count(), 2);
    }

    #[test]
    fn simplify_keeps_corners_and_drops_collinear_steps() {
        let pts: Vec<Point> = vec![(0.0, 0.0), (5.0, 0.0), (10.0, 0.1), (10.0, 10.0), (0.0, 10.0)];
        assert_eq!(simplify(&pts, 0.5), vec![(0.0, 0.0), (10.0, 0.1), (10.0, 10.0), (0.0, 10.0)]);
    }

    #[test]
    fn rotated_box_encloses_its_points() {
        let pts = [(1.0, 2.0), (4.0, 3.0), (2.0, 6.0), (5.0, 7.0)];
        let b = rotated_box(&pts, 0.4);
        for p in pts {
            // Inside a clockwise (on screen) convex quad: every edge has p on its right.
            for k in 0..4 {
                let (a, c) = (b[k], b[(k + 1) % 4]);
                let cross = (c.0 - a.0) * (p.1 - a.1) - (c.1 - a.1) * (p.0 - a.0);
                assert!(cross >= -1e-9, "{p:?} outside edge {k} of {b:?}");
            }
        }
    }
}
