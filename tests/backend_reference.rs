//! The candle backend against Hugging Face transformers' own outputs
//! (`../shared/models/reference.json`, `arch/reference.json`, f32 CPU).

mod common;

use specdec::{LanguageModel, Logits};

/// Greedy continuation by plain decoding, one token per forward.
fn greedy(model: &mut dyn LanguageModel, prompt: &[u32], n: usize) -> Vec<u32> {
    model.reset().unwrap();
    let mut logits: Logits = model.forward_last(prompt).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let row = logits.row(0);
        let next = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
            .unwrap() as u32;
        out.push(next);
        logits = model.forward_last(&[next]).unwrap();
    }
    out
}

#[test]
fn python_checkpoints_match_transformers() {
    let Some(dir) = common::shared_models() else {
        return;
    };
    let reference = common::json(dir.join("reference.json"));
    for name in ["py-m", "py-s", "py-xs"] {
        let mut model = common::load(dir.join(name), 256);
        for (case, r) in reference["models"][name]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let prompt = common::ids(&r["prompt_ids"]);
            model.reset().unwrap();
            let logits = model.forward(&prompt).unwrap();
            let mut worst = 0f32;
            for (pos, (top_ids, top_logits)) in r["top5_ids"]
                .as_array()
                .unwrap()
                .iter()
                .zip(r["top5_logits"].as_array().unwrap())
                .enumerate()
            {
                for (id, want) in common::ids(top_ids)
                    .iter()
                    .zip(top_logits.as_array().unwrap())
                {
                    let got = logits.row(pos)[*id as usize];
                    worst = worst.max((got - want.as_f64().unwrap() as f32).abs());
                }
            }
            assert!(
                worst < 1e-3,
                "{name} case {case}: top-5 logits differ by {worst}"
            );
            let want = common::ids(&r["greedy_48"]);
            assert_eq!(
                greedy(&mut model, &prompt, want.len()),
                want,
                "{name} case {case}: greedy continuation"
            );
            let text = model.tokenizer().unwrap().decode(&want).unwrap();
            assert_eq!(
                text,
                r["greedy_48_text"].as_str().unwrap(),
                "{name} case {case}: decoded text"
            );
        }
    }
}

#[test]
fn other_architectures_match_transformers() {
    let Some(dir) = common::shared_models() else {
        return;
    };
    let reference = common::json(dir.join("arch/reference.json"));
    for name in ["qwen2-tiny", "mistral-tiny", "llama3-tiny"] {
        let r = &reference["models"][name];
        let prompt = common::ids(&r["prompt_ids"]);
        let mut model = common::load(dir.join("arch").join(name), 1024);
        let logits = model.forward(&prompt).unwrap();
        let last = logits.row(prompt.len() - 1);
        let want: Vec<f32> = r["logits_last"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let worst = last
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-3, "{name}: last logits differ by {worst}");
        let want = common::ids(&r["greedy_16"]);
        assert_eq!(
            greedy(&mut model, &prompt, want.len()),
            want,
            "{name}: greedy continuation"
        );
    }
}
