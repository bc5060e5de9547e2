//! The benchmark set: deterministic to the byte, and every label consistent with the scene it
//! describes (polygons inside their boxes, oriented boxes enclosing the silhouette, keypoints on
//! the box corners). Needs Debian's dataset-fashion-mnist (scripts/setup.sh installs it).

use slimc_benchset::fashion::{Fashion, Part, DEBIAN_DIR};
use slimc_benchset::labels::{instances, label_file, Task};
use slimc_benchset::scene::{compose, SceneParams};
use slimc_benchset::{generate, read_manifest, read_photos, scene_rng, Settings, Split};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn trees() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/trees")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("slimc-benchset-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Every file under `dir` by relative path, with its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn two_runs_give_the_same_bytes_and_a_larger_set_starts_with_a_smaller_one() {
    let (a, b, c) = (tmp("a"), tmp("b"), tmp("c"));
    let small = Settings { train: 5, val: 3, size: 96, seed: 7 };
    let big = Settings { train: 7, ..small.clone() };
    let fashion = Path::new(DEBIAN_DIR);
    generate(&a, &small, fashion, &trees()).unwrap();
    rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| {
        generate(&b, &small, fashion, &trees()).unwrap();
    });
    generate(&c, &big, fashion, &trees()).unwrap();
    let (fa, fb, fc) = (files(&a), files(&b), files(&c));
    // 8 scenes: an image and 4 label files each under 4 task folders, 4 YAMLs, the manifest.
    assert_eq!(fa.len(), 8 * 8 + 5);
    assert!(fa == fb, "a second run (one thread) wrote different bytes");
    for (p, bytes) in &fa {
        if p.to_string_lossy().contains("train_") || p.to_string_lossy().contains("val_") {
            assert_eq!(Some(bytes), fc.get(p), "{} differs in a larger set", p.display());
        }
    }
    let m = read_manifest(&a).unwrap();
    assert_eq!((m.train.images, m.val.images), (5, 3));
    assert_eq!(m.train.per_class.iter().sum::<usize>(), m.train.instances);
    for d in [a, b, c] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

/// Numbers of a label line after the class.
fn numbers(line: &str) -> Vec<f64> {
    line.split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect()
}

/// Whether `p` lies inside the convex quad `q` (clockwise on screen), within `tol`.
fn inside(q: &[(f64, f64)], p: (f64, f64), tol: f64) -> bool {
    (0..q.len()).all(|k| {
        let (a, b) = (q[k], q[(k + 1) % q.len()]);
        let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
        ((b.0 - a.0) * (p.1 - a.1) - (b.1 - a.1) * (p.0 - a.0)) / len >= -tol
    })
}

#[test]
fn labels_agree_with_the_silhouettes() {
    let fashion = Fashion::read(Path::new(DEBIAN_DIR), Part::Test).unwrap();
    let photos = read_photos(&trees().join("images/val")).unwrap();
    let size = 128;
    let params = SceneParams::new(size);
    let (mut total, mut occluded, mut hidden) = (0, 0, 0);
    for i in 0..60 {
        let scene = compose(&mut scene_rng(3, Split::Val, i), &photos, &fashion, &params);
        let insts = instances(&scene);
        assert_eq!(insts.len(), scene.objects.len());
        for (inst, obj) in insts.iter().zip(&scene.objects) {
            total += 1;
            occluded += usize::from(inst.visible_share < 1.0);
            assert!(inst.visible_share >= params.min_visible, "scene {i}: {:.2} visible", inst.visible_share);
            assert_eq!(obj.visible.components().len(), 1, "scene {i}: the visible part is one piece");
            // The oriented box encloses every corner of every visible pixel and stays in the image.
            for (k, _) in obj.visible.bits.iter().enumerate().filter(|(_, &b)| b) {
                let (x, y) = ((k % size) as f64, (k / size) as f64);
                for c in [(x, y), (x + 1.0, y), (x, y + 1.0), (x + 1.0, y + 1.0)] {
                    assert!(inside(&inst.corners, c, 1e-9), "scene {i}: pixel corner {c:?} outside {:?}", inst.corners);
                }
            }
            for c in inst.corners {
                assert!((0.0..=size as f64).contains(&c.0) && (0.0..=size as f64).contains(&c.1), "{c:?}");
            }
            // The polygon lies in the box; the keypoints are the box's corners and centre.
            let [x0, y0, x1, y1] = inst.bbox;
            assert!(inst.polygon.len() >= 3);
            assert!(inst.polygon.iter().all(|p| p.0 >= x0 && p.0 <= x1 && p.1 >= y0 && p.1 <= y1));
            for (k, c) in inst.corners.iter().enumerate() {
                assert_eq!(inst.keypoints[k].0, *c);
            }
            hidden += inst.keypoints.iter().filter(|k| !k.1).count();
        }
        // The label files say the same, normalised: one line per instance, the polygon and the
        // oriented box inside [0, 1], segment points inside the detection box.
        let det = label_file(&insts, Task::Detect, size);
        let seg = label_file(&insts, Task::Segment, size);
        let obb = label_file(&insts, Task::Obb, size);
        let pose = label_file(&insts, Task::Pose, size);
        for (((d, s), o), p) in det.lines().zip(seg.lines()).zip(obb.lines()).zip(pose.lines()) {
            let (d, s, o, p) = (numbers(d), numbers(s), numbers(o), numbers(p));
            assert_eq!((d.len(), o.len(), p.len()), (4, 8, 4 + 5 * 3));
            assert!(s.len() >= 6 && s.len() % 2 == 0);
            let (bx0, by0, bx1, by1) = (d[0] - d[2] / 2.0, d[1] - d[3] / 2.0, d[0] + d[2] / 2.0, d[1] + d[3] / 2.0);
            for xy in s.chunks(2) {
                let tol = 2e-6; // three 6-decimal roundings (centre, size, point)
                assert!(
                    xy[0] >= bx0 - tol && xy[0] <= bx1 + tol && xy[1] >= by0 - tol && xy[1] <= by1 + tol,
                    "{xy:?} outside [{bx0}, {by0}, {bx1}, {by1}]"
                );
            }
            assert!(o.iter().all(|v| (0.0..=1.0).contains(v)));
            assert_eq!(p[..4], d[..]);
            assert!(p[4..].chunks(3).all(|k| k[2] == 0.0 || k[2] == 2.0));
        }
        assert_eq!(det.lines().count(), insts.len());
    }
    assert!(total >= 60 * 3, "{total} products in 60 scenes");
    assert!(occluded > 0 && hidden > 0, "occlusion happens ({occluded} instances, {hidden} keypoints)");
}
