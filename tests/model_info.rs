//! `slimc info` against Ultralytics' own numbers for every scale of every family (640).

mod common;
use slimc::commands::info::model_info;

#[test]
fn parameters_layers_and_gflops_match_ultralytics() {
    // (scale, parameters, layers, unfused GFLOPs) as Ultralytics 8.3.253 reports them.
    let expected = [
        ("n", 2_624_080, 181, 6.61),
        ("s", 9_458_752, 181, 21.71),
        ("m", 20_114_688, 231, 68.52),
        ("l", 25_372_160, 357, 87.61),
        ("x", 56_966_176, 357, 195.95),
    ];
    for (s, params, layers, gflops) in expected {
        let m = common::yaml_model(&format!("yolo11{s}.yaml"), None, 640);
        let i = model_info(&m, None).unwrap();
        assert_eq!(i.parameters, params, "yolo11{s} parameters");
        assert_eq!(i.gradients, params - 16, "yolo11{s} gradients (DFL frozen)");
        assert_eq!(i.layers, layers, "yolo11{s} layers");
        assert!((i.gflops - gflops).abs() / gflops < 0.01, "yolo11{s} GFLOPs {} vs {gflops}", i.gflops);
    }
}

#[test]
fn other_families_match_ultralytics_parameters_exactly_and_gflops_within_one_percent() {
    // (file name, nc, parameters, GFLOPs at 640) from Ultralytics 8.3.253's
    // `DetectionModel(name, nc=nc)` and `get_flops(model, 640)` (benches/families.py).
    let expected = [
        ("yolov8n.yaml", 80, 3_157_200, 8.8551),
        ("yolov8n.yaml", 1, 3_011_043, 8.1917),
        ("yolov8s.yaml", 80, 11_166_560, 28.8119),
        ("yolov8s.yaml", 1, 11_135_987, 28.642),
        ("yolov8l.yaml", 80, 43_691_520, 165.7347),
        ("yolov8l.yaml", 1, 43_630_611, 165.3949),
        ("yolov8m.yaml", 80, 25_902_640, 79.3137),
        ("yolov8m.yaml", 1, 25_856_899, 79.0588),
        ("yolov8x.yaml", 80, 68_229_648, 258.537),
        ("yolov8x.yaml", 1, 68_153_571, 258.1123),
        ("yolov8n-p2.yaml", 80, 3_354_144, 17.4288),
        ("yolov8n-p2.yaml", 1, 2_926_692, 12.3525),
        ("yolov8s-p2.yaml", 80, 10_884_336, 39.6701),
        ("yolov8s-p2.yaml", 1, 10_637_236, 36.9358),
        ("yolov8l-p2.yaml", 80, 42_888_080, 206.2662),
        ("yolov8l-p2.yaml", 1, 42_847_316, 205.5786),
        ("yolov8m-p2.yaml", 80, 25_082_496, 98.9808),
        ("yolov8m-p2.yaml", 1, 25_051_844, 98.4651),
        ("yolov8x-p2.yaml", 80, 66_637_536, 317.9809),
        ("yolov8x-p2.yaml", 1, 66_586_660, 317.1214),
        ("yolov8n-p6.yaml", 80, 4_984_352, 8.8455),
        ("yolov8n-p6.yaml", 1, 4_783_332, 8.1766),
        ("yolov8s-p6.yaml", 80, 17_911_792, 28.7263),
        ("yolov8s-p6.yaml", 1, 17_871_028, 28.5544),
        ("yolov8l-p6.yaml", 80, 62_384_016, 167.8493),
        ("yolov8l-p6.yaml", 1, 62_302_804, 167.5055),
        ("yolov8m-p6.yaml", 80, 44_887_488, 83.4603),
        ("yolov8m-p6.yaml", 1, 44_826_500, 83.2025),
        ("yolov8x-p6.yaml", 80, 97_423_072, 261.836),
        ("yolov8x-p6.yaml", 1, 97_321_636, 261.4062),
        ("yolov5nu.yaml", 80, 2_654_816, 7.8389),
        ("yolov5nu.yaml", 1, 2_508_659, 7.1755),
        ("yolov5su.yaml", 80, 9_153_152, 24.2105),
        ("yolov5su.yaml", 1, 9_122_579, 24.0406),
        ("yolov5lu.yaml", 80, 53_225_024, 135.62),
        ("yolov5lu.yaml", 1, 53_164_115, 135.2803),
        ("yolov5mu.yaml", 80, 25_111_456, 64.6028),
        ("yolov5mu.yaml", 1, 25_065_715, 64.348),
        ("yolov5xu.yaml", 80, 97_276_448, 247.3129),
        ("yolov5xu.yaml", 1, 97_200_371, 246.8882),
        ("yolo12n.yaml", 80, 2_602_288, 6.6536),
        ("yolo12n.yaml", 1, 2_568_243, 6.4798),
        ("yolo12s.yaml", 80, 9_284_096, 21.692),
        ("yolo12s.yaml", 1, 9_253_523, 21.5221),
        ("yolo12l.yaml", 80, 26_450_784, 89.7577),
        ("yolo12l.yaml", 1, 26_389_875, 89.418),
        ("yolo12m.yaml", 80, 20_199_168, 68.0793),
        ("yolo12m.yaml", 1, 20_138_259, 67.7395),
        ("yolo12x.yaml", 80, 59_210_784, 200.3399),
        ("yolo12x.yaml", 1, 59_119_539, 199.8303),
    ];
    for (name, nc, params, gflops) in expected {
        let m = common::yaml_model(name, Some(nc), 640);
        let i = model_info(&m, None).unwrap();
        assert_eq!(i.parameters, params, "{name} nc {nc} parameters");
        assert_eq!(i.gradients, params - 16, "{name} nc {nc} gradients (DFL frozen)");
        assert!((i.gflops - gflops).abs() / gflops < 0.01, "{name} nc {nc}: GFLOPs {} vs {gflops}", i.gflops);
    }
}

/// Built-in names resolve as Ultralytics' `yaml_model_load` resolves them: the old P6 name, the
/// "u" and plain YOLOv5 names, and an unknown name is one line that lists what is built in.
#[test]
fn builtin_names_resolve_as_ultralytics_does() {
    let params = |name: &str| model_info(&common::yaml_model(name, Some(1), 128), None).unwrap().parameters;
    assert_eq!(params("yolov8n6.yaml"), params("yolov8n-p6.yaml"));
    assert_eq!(params("yolov5n.yaml"), params("yolov5nu.yaml"));
    assert_eq!(params("yolov8s-p2.yaml"), 10_637_236);
    // The model's name: the file's, with the scale letter added where the file name has none.
    let name = |path: &str| model_info(&common::yaml_model(path, None, 128), None).unwrap().name;
    assert_eq!(name("yolov8n-p2.yaml"), "yolov8n-p2");
    assert_eq!(name("yolo11.yaml"), "yolo11n");
    assert_eq!(name(common::fixture("yolo11p-nc2/yolo11p.yaml").to_str().unwrap()), "yolo11p");
    let err = common::fails(&["info", "yolov9n.yaml"]);
    assert!(err.contains("yolov9n.yaml: no such file") && err.contains("yolov8-p6.yaml"), "{err}");
}
