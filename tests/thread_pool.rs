//! `init_thread_pool`: the calling thread joins rayon's global pool, once;
//! generation works the same from it. (Its own test binary: the global pool
//! can start only once per process.)

mod common;

use common::setting_name;
use specdec::backend::candle::init_thread_pool;
use specdec::{CandleModel, GenerateConfig, Generator};

#[test]
fn the_pool_starts_once_with_this_thread_in_it_and_generation_is_unchanged() {
    assert_eq!(
        setting_name(init_thread_pool(Some(0)).unwrap_err()),
        "threads"
    );
    init_thread_pool(Some(2)).unwrap();
    assert_eq!(rayon::current_num_threads(), 2);
    assert_eq!(
        rayon::current_thread_index(),
        Some(0),
        "this thread is worker 0"
    );
    // A second start is refused and names the setting.
    assert_eq!(
        setting_name(init_thread_pool(Some(2)).unwrap_err()),
        "threads"
    );

    let load = |name: &str| CandleModel::load(common::embedded(name)).unwrap();
    let mut g = Generator::new(load("py-s"), load("py-xs")).unwrap();
    let prompt = g.encode("def fibonacci(n):").unwrap();
    let config = |k| GenerateConfig {
        max_new_tokens: 24,
        k,
        ..GenerateConfig::default()
    };
    let plain = g.generate(&prompt, &config(1)).unwrap();
    // From another thread (not in the pool) the passes are handed over:
    // same tokens either way.
    let (target, draft) = g.into_parts();
    let other = std::thread::spawn(move || {
        let mut g = Generator::new(target, draft).unwrap();
        g.generate(&prompt, &config(12)).unwrap().tokens
    })
    .join()
    .unwrap();
    assert_eq!(other, plain.tokens);
}
