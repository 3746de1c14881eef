//! Runs the `attention` example's block (ferrinfer paged attention inside a candle model) so
//! CI checks that it still agrees with candle's own attention.
#[allow(dead_code)]
#[path = "../examples/attention.rs"]
mod example;

#[test]
fn example_block_matches_candle_attention() {
    let worst = example::run(20, 4, false).unwrap();
    assert!(worst <= example::TOLERANCE, "max diff {worst:.2e}");
}
