//! `slimc predict` and the validation plots, run as a user runs them, on a model that finds
//! trees (tests/fixtures/trees-trained: yolo11p trained by slimc, mAP50 0.298 at 160).

mod common;

use common::{fixture, scratch};
use slimc::data::dataset::parse_labels;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn slimc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_slimc"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model() -> PathBuf {
    fixture("trees-trained/yolo11p-trees.slim")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    t
}

/// (width, height) of an image file.
fn size(p: &Path) -> (u32, u32) {
    image::image_dimensions(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The first `n` trees val images, copied into `dir`.
fn some_images(dir: &Path, n: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let mut all: Vec<PathBuf> =
        std::fs::read_dir(root().join("datasets/trees/images/val")).unwrap().map(|e| e.unwrap().path()).collect();
    all.sort();
    all.iter()
        .take(n)
        .map(|p| {
            let to = dir.join(p.file_name().unwrap());
            std::fs::copy(p, &to).unwrap();
            to
        })
        .collect()
}

fn predictions(json: &Path) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(json).unwrap())
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn val_writes_ultralytics_plots_at_their_sizes_and_counts_every_label() {
    let d = scratch("val-plots");
    let t = ok(slimc()
        .arg("val")
        .arg(model())
        .args(["--data", "datasets/trees/trees.yaml", "--imgsz", "160", "--device", "cpu", "--name", "v"])
        .arg("--project")
        .arg(&*d));
    let dir = d.join("v");
    assert!(t.contains("plots and tables"), "{t}");
    for f in ["BoxPR_curve.png", "BoxF1_curve.png", "BoxP_curve.png", "BoxR_curve.png"] {
        assert_eq!(size(&dir.join(f)), (2250, 1500), "{f}: Ultralytics' 9x6 in at 250 dpi");
    }
    for f in ["confusion_matrix.png", "confusion_matrix_normalized.png"] {
        assert_eq!(size(&dir.join(f)), (3000, 2250), "{f}: 12x9 in at 250 dpi");
    }
    // 20 images in batches of 16: a 4x4 grid of tiles, then 4 images in 2x2; each tile is a
    // rect val batch's shape, ceil(160/32 + 0.5)·32 = 192.
    for kind in ["labels", "pred"] {
        assert_eq!(size(&dir.join(format!("val_batch0_{kind}.jpg"))), (768, 768));
        assert_eq!(size(&dir.join(format!("val_batch1_{kind}.jpg"))), (384, 384));
        assert!(!dir.join(format!("val_batch2_{kind}.jpg")).exists());
    }
    // The confusion matrix: every one of the 451 labels is either found (tree row) or missed
    // (background row); the background/background cell stays empty.
    let csv = std::fs::read_to_string(dir.join("confusion_matrix.csv")).unwrap();
    let rows: Vec<Vec<f64>> =
        csv.lines().skip(1).map(|l| l.split(',').skip(1).map(|v| v.parse().unwrap()).collect()).collect();
    assert_eq!(csv.lines().next().unwrap(), "predicted\\true,tree,background");
    assert_eq!(rows[0][0] + rows[1][0], 451.0, "{csv}");
    assert!(rows[0][0] > 0.0 && rows[0][1] > 0.0 && rows[1][1] == 0.0, "{csv}");
    // The curves' numbers: 1000 points of x in [0, 1], the PR curve's precision non-increasing.
    let pr = std::fs::read_to_string(dir.join("BoxPR_curve.csv")).unwrap();
    let pts: Vec<Vec<f64>> = pr.lines().skip(1).map(|l| l.split(',').map(|v| v.parse().unwrap()).collect()).collect();
    assert_eq!(pr.lines().next().unwrap(), "recall,tree,all");
    assert_eq!((pts.len(), pts[0][0], pts[999][0]), (1000, 0.0, 1.0));
    assert!(pts.windows(2).all(|w| w[1][1] <= w[0][1] + 1e-12), "a precision envelope never rises");
    // --no-plots writes nothing.
    ok(slimc()
        .arg("val")
        .arg(model())
        .args(["--data", "datasets/trees/trees.yaml", "--imgsz", "160", "--device", "cpu", "--name", "n", "--no-plots"])
        .arg("--project")
        .arg(&*d));
    assert!(!d.join("n").exists());
}

#[test]
fn predict_counts_a_corrupt_image_and_writes_the_others() {
    let d = scratch("predict-corrupt");
    let src = d.join("src");
    let images = some_images(&src, 3);
    let good = std::fs::read(&images[0]).unwrap();
    std::fs::write(src.join("broken.jpg"), &good[..good.len() / 3]).unwrap();
    let t = ok(slimc()
        .arg("predict")
        .arg(model())
        .arg("--source")
        .arg(&src)
        .args(["--save-json", "--device", "cpu", "--name", "p"])
        .arg("--project")
        .arg(&*d));
    assert!(t.contains("broken.jpg") && t.contains("1 of 4 images could not be read"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    for p in &images {
        let written = d.join("p").join(p.file_name().unwrap());
        assert_eq!(size(&written), size(p), "annotated images keep the original size");
        assert!(t.contains(&format!("{}: ", p.display())), "one line per image: {t}");
    }
    assert!(!d.join("p/broken.jpg").exists());
    let preds = predictions(&d.join("p/predictions.json"));
    assert!(!preds.is_empty(), "the model finds trees");
    assert!(preds.iter().all(|p| p["score"].as_f64().unwrap() > 0.25), "predict's confidence threshold");
    // Nothing readable at all is an error.
    std::fs::write(d.join("only.jpg"), b"not a jpeg").unwrap();
    let out = slimc().arg("predict").arg(model()).arg("--source").arg(d.join("only.jpg")).output().unwrap();
    assert!(!out.status.success() && text(&out).contains("only.jpg"), "{}", text(&out));
}

#[test]
fn saved_labels_read_back_reproduce_the_predictions() {
    let d = scratch("predict-labels");
    let src = d.join("src");
    some_images(&src, 4);
    for conf in [false, true] {
        let name = if conf { "c" } else { "n" };
        let mut cmd = slimc();
        cmd.arg("predict").arg(model()).arg("--source").arg(src.join("*.jpg"));
        cmd.args(["--save-txt", "--save-json", "--no-save", "--device", "cpu", "--name", name])
            .arg("--project")
            .arg(&*d);
        if conf {
            cmd.arg("--save-conf");
        }
        ok(&mut cmd);
        let preds = predictions(&d.join(name).join("predictions.json"));
        let mut checked = 0;
        for p in
            preds.iter().map(|p| p["image"].as_str().unwrap().to_string()).collect::<std::collections::BTreeSet<_>>()
        {
            let path = Path::new(&p);
            let (w, h) = size(path);
            let txt = std::fs::read_to_string(
                d.join(name).join("labels").join(path.file_name().unwrap()).with_extension("txt"),
            )
            .unwrap();
            let mine: Vec<&serde_json::Value> = preds.iter().filter(|q| q["image"] == p.as_str()).collect();
            let lines: Vec<&str> = txt.lines().collect();
            assert_eq!(lines.len(), mine.len());
            if conf {
                for (l, q) in lines.iter().zip(&mine) {
                    let c: f64 = l.split_whitespace().nth(5).unwrap().parse().unwrap();
                    assert!((c - q["score"].as_f64().unwrap()).abs() < 1e-6, "{l}");
                }
                continue;
            }
            // Read by the dataset reader, the labels are the predicted boxes (6 digits).
            let (labels, dups) = parse_labels(&txt, 1).unwrap();
            assert_eq!((labels.len(), dups), (mine.len(), 0));
            for (l, q) in labels.iter().zip(&mine) {
                let b: Vec<f64> = q["bbox"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                let want = [
                    (b[0] + b[2]) / 2.0 / w as f64,
                    (b[1] + b[3]) / 2.0 / h as f64,
                    (b[2] - b[0]) / w as f64,
                    (b[3] - b[1]) / h as f64,
                ];
                for (got, want) in l.xywh.iter().zip(want) {
                    assert!((*got as f64 - want).abs() < 1e-5, "{got} vs {want} in {txt}");
                }
                assert_eq!(l.cls, q["class"].as_u64().unwrap() as usize);
                checked += 1;
            }
        }
        assert!(conf || checked > 0, "no box was checked");
    }
}

#[test]
fn every_model_kind_predicts_the_same_boxes_and_compare_shows_two() {
    let d = scratch("predict-kinds");
    let src = d.join("src");
    let images = some_images(&src, 1);
    let onnx = d.join("m.onnx");
    ok(slimc().arg("export").arg(model()).args(["--imgsz", "320", "-o"]).arg(&onnx));
    let mut boxes = vec![];
    for (name, m) in [("slim", model()), ("onnx", onnx.clone())] {
        ok(slimc()
            .arg("predict")
            .arg(&m)
            .arg("--source")
            .arg(&images[0])
            .args(["--imgsz", "320", "--save-json", "--device", "cpu", "--name", name])
            .arg("--project")
            .arg(&*d));
        boxes.push(predictions(&d.join(name).join("predictions.json")));
    }
    assert!(!boxes[0].is_empty());
    assert_eq!(boxes[0].len(), boxes[1].len(), "the ONNX export finds what the model finds");
    for (a, b) in boxes[0].iter().zip(&boxes[1]) {
        assert!((a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() < 1e-4);
        for (x, y) in a["bbox"].as_array().unwrap().iter().zip(b["bbox"].as_array().unwrap()) {
            assert!((x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-2);
        }
    }
    // --compare: the image twice, side by side under a title band.
    ok(slimc()
        .arg("predict")
        .arg(model())
        .arg("--source")
        .arg(&images[0])
        .arg("--compare")
        .arg(&onnx)
        .args(["--imgsz", "320", "--device", "cpu", "--name", "cmp"])
        .arg("--project")
        .arg(&*d));
    let (w, h) = size(&d.join("cmp").join(images[0].file_name().unwrap()));
    assert!(w == 2 * 320 + 10 && h > 320, "{w}x{h}");
}

/// An Ultralytics checkpoint and its YAML with the same weights as a bare state dict predict the
/// same boxes (a 2-epoch model: few boxes above 0.001).
#[test]
fn a_checkpoint_and_its_yaml_with_weights_predict_alike() {
    let d = scratch("predict-pt");
    let src = d.join("src");
    let images = some_images(&src, 1);
    let ckpt = fixture("checkpoints/yolo11p-trees");
    let mut runs = vec![];
    for (name, model) in [("pt", vec![ckpt.join("best.pt")]), ("yaml", vec![fixture("yolo11p-nc2/yolo11p.yaml")])] {
        let mut cmd = slimc();
        cmd.arg("predict").args(&model).arg("--source").arg(&images[0]);
        if name == "yaml" {
            cmd.args(["--nc", "1", "--imgsz", "64", "--weights"]).arg(ckpt.join("state_dict.pt"));
        }
        ok(cmd
            .args(["--conf", "0.001", "--save-json", "--no-save", "--device", "cpu", "--name", name])
            .arg("--project")
            .arg(&*d));
        runs.push(predictions(&d.join(name).join("predictions.json")));
    }
    assert!(!runs[0].is_empty());
    assert_eq!(runs[0], runs[1]);
}

/// On a headless machine (no XDG_RUNTIME_DIR), probing GPU adapters makes the Vulkan and GL
/// drivers print "XDG_RUNTIME_DIR is invalid" from C; slimc keeps stderr clean unless
/// `--verbose` asks for the drivers' messages.
#[test]
fn headless_commands_keep_stderr_clean() {
    let d = scratch("headless");
    let image = some_images(&d.join("src"), 1).remove(0);
    let run = |args: &[&str]| {
        let out = slimc().args(args).env_remove("XDG_RUNTIME_DIR").output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    assert_eq!(run(&["info", "yolo11n.yaml"]), "");
    assert_eq!(run(&["info", "--devices"]), "");
    let model = model().display().to_string();
    let (img, project) = (image.display().to_string(), d.display().to_string());
    for device in ["auto", "gpu"] {
        let args = ["predict", &model, "--source", &img, "--no-save", "--project", &project, "--device", device];
        assert_eq!(run(&args), "", "--device {device}");
    }
}
