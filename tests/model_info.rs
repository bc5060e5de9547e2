//! `slimc info` against Ultralytics' own numbers for every YOLO11 scale (nc 80, 640).

mod common;
use slimc::info::model_info;

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
