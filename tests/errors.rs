//! Every bad input gets a specific error, never a panic: model directories,
//! vocabularies, generation settings, misbehaving backends, and the same
//! through `examples/generate` (exit code 2, one line on stderr).

mod common;

use std::fs;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use common::setting_name;
use common::toy::Toy;
use specdec::{
    CandleModel, Eos, Error, GenerateConfig, Generator, LanguageModel, Logits, Role, SamplingParams,
};

/// A scratch copy of the embedded py-xs directory to break.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("specdec-errors-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
    ] {
        fs::copy(common::embedded("py-xs").join(f), dir.join(f)).unwrap();
    }
    dir
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

/// Rewrites model.safetensors with `edit` applied to its header.
fn edit_header(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("model.safetensors");
    let raw = fs::read(&path).unwrap();
    let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&raw[8..8 + n]).unwrap();
    edit(&mut header);
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(&raw[8 + n..]);
    fs::write(path, out).unwrap();
}

fn load_err(dir: &Path) -> Error {
    CandleModel::load(dir).expect_err("loading should fail")
}

#[test]
fn model_directory_problems_name_the_path() {
    let missing = std::env::temp_dir().join("specdec-no-such-dir");
    assert!(
        matches!(load_err(&missing), Error::ModelDir { reason, .. } if reason.contains("does not exist"))
    );
    let file = scratch("file").join("config.json");
    assert!(
        matches!(load_err(&file), Error::ModelDir { reason, .. } if reason.contains("not a directory"))
    );
    let dir = scratch("noconfig");
    fs::remove_file(dir.join("config.json")).unwrap();
    assert!(
        matches!(load_err(&dir), Error::ModelDir { reason, .. } if reason.contains("config.json"))
    );
    let dir = scratch("noweights");
    fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert!(
        matches!(load_err(&dir), Error::ModelDir { reason, .. } if reason.contains("no weights"))
    );
}

#[test]
fn config_problems_name_the_field() {
    let dir = scratch("notjson");
    fs::write(dir.join("config.json"), "{ this is not json").unwrap();
    let e = load_err(&dir);
    assert!(
        matches!(&e, Error::Json { path, .. } if path.ends_with("config.json")),
        "{e}"
    );

    for (field, edit) in [
        (
            "hidden_size",
            Box::new(|v: &mut serde_json::Value| {
                v.as_object_mut().unwrap().remove("hidden_size");
            }) as Box<dyn Fn(&mut serde_json::Value)>,
        ),
        (
            "model_type",
            Box::new(|v: &mut serde_json::Value| v["model_type"] = "gpt_neox".into()),
        ),
        (
            "hidden_act",
            Box::new(|v: &mut serde_json::Value| v["hidden_act"] = "gelu_new".into()),
        ),
        (
            "num_attention_heads",
            Box::new(|v: &mut serde_json::Value| v["num_attention_heads"] = (-2).into()),
        ),
        (
            "rope_parameters.rope_type",
            Box::new(|v: &mut serde_json::Value| {
                v["rope_parameters"]["rope_type"] = "dynamic".into()
            }),
        ),
    ] {
        let dir = scratch(field);
        edit_json(&dir.join("config.json"), |v| edit(v));
        match load_err(&dir) {
            Error::Config {
                field: f,
                path,
                message,
            } => {
                assert_eq!(f, field, "{message}");
                assert!(path.ends_with("config.json"));
            }
            other => panic!("{field}: {other}"),
        }
    }
}

#[test]
fn weight_problems_name_the_tensor() {
    let dir = scratch("truncated");
    let path = dir.join("model.safetensors");
    let raw = fs::read(&path).unwrap();
    fs::write(&path, &raw[..raw.len() / 2]).unwrap();
    assert!(matches!(load_err(&dir), Error::Weights { .. }));

    let dir = scratch("garbage");
    fs::write(
        dir.join("model.safetensors"),
        b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage",
    )
    .unwrap();
    assert!(matches!(load_err(&dir), Error::Weights { .. }));

    let dir = scratch("missing-tensor");
    edit_header(&dir, |h| {
        let t = h.remove("model.norm.weight").unwrap();
        h.insert("model.renamed.weight".into(), t);
    });
    assert!(
        matches!(load_err(&dir), Error::MissingTensor { tensor, .. } if tensor == "model.norm.weight")
    );

    let dir = scratch("wrong-shape");
    edit_header(&dir, |h| {
        h["model.norm.weight"]["shape"] = serde_json::json!([64, 2])
    });
    match load_err(&dir) {
        Error::ShapeMismatch {
            tensor,
            expected,
            got,
            ..
        } => {
            assert_eq!(tensor, "model.norm.weight");
            assert_eq!((expected, got), (vec![128], vec![64, 2]));
        }
        other => panic!("{other}"),
    }

    let dir = scratch("wrong-dtype");
    edit_header(&dir, |h| {
        h["model.norm.weight"]["dtype"] = "I16".into();
    });
    assert!(
        matches!(load_err(&dir), Error::UnsupportedDtype { tensor, .. } if tensor == "model.norm.weight")
    );

    let dir = scratch("sharded");
    fs::rename(
        dir.join("model.safetensors"),
        dir.join("model-00001-of-00002.safetensors"),
    )
    .unwrap();
    fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors", "lm_head.weight": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    assert!(
        matches!(load_err(&dir), Error::ModelDir { reason, .. } if reason.contains("model-00002-of-00002.safetensors"))
    );
}

#[test]
fn sharded_checkpoints_load() {
    // The same weights split over two shards load and give the same logits.
    let dir = scratch("two-shards");
    let raw = fs::read(dir.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&raw[8..8 + n]).unwrap();
    let data = &raw[8 + n..];
    let mut map = serde_json::Map::new();
    let names: Vec<&String> = header.keys().filter(|k| *k != "__metadata__").collect();
    for (shard, part) in names.chunks(names.len() / 2 + 1).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", shard + 1);
        let (mut h, mut bytes) = (serde_json::Map::new(), Vec::<u8>::new());
        for name in part {
            let t = &header[name.as_str()];
            let (a, b) = (
                t["data_offsets"][0].as_u64().unwrap() as usize,
                t["data_offsets"][1].as_u64().unwrap() as usize,
            );
            let start = bytes.len();
            bytes.extend(&data[a..b]);
            h.insert((*name).clone(), serde_json::json!({"dtype": t["dtype"], "shape": t["shape"], "data_offsets": [start, bytes.len()]}));
            map.insert((*name).clone(), file.clone().into());
        }
        let mut hb = serde_json::to_vec(&h).unwrap();
        while hb.len() % 8 != 0 {
            hb.push(b' ');
        }
        let mut out = (hb.len() as u64).to_le_bytes().to_vec();
        out.extend(hb);
        out.extend(bytes);
        fs::write(dir.join(&file), out).unwrap();
    }
    fs::remove_file(dir.join("model.safetensors")).unwrap();
    fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"weight_map": map}).to_string(),
    )
    .unwrap();
    let mut sharded = CandleModel::load(&dir).unwrap();
    let mut single = CandleModel::load(common::embedded("py-xs")).unwrap();
    assert_eq!(
        sharded.forward(&[1, 2, 3]).unwrap(),
        single.forward(&[1, 2, 3]).unwrap()
    );
}

#[test]
fn tokenizers_with_the_same_size_but_other_tokens_are_refused() {
    let dir = scratch("swapped-vocab");
    edit_json(&dir.join("tokenizer.json"), |t| {
        let vocab = t["model"]["vocab"].as_object_mut().unwrap();
        let (a, b) = (vocab["!"].clone(), vocab["\""].clone());
        vocab.insert("!".into(), b);
        vocab.insert("\"".into(), a);
    });
    let draft = CandleModel::load(&dir).unwrap();
    let target = CandleModel::load(common::embedded("py-s")).unwrap();
    assert_eq!(draft.vocab_size(), target.vocab_size());
    match Generator::new(target, draft) {
        Err(Error::VocabularyMismatch { message }) => {
            assert!(message.contains("token id 1"), "{message}")
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("accepted a different vocabulary"),
    }
    assert!(matches!(
        Generator::new(Toy::new(5, 0.1), Toy::new(6, 0.1)),
        Err(Error::VocabularyMismatch { .. })
    ));
}

#[test]
fn the_drafts_eos_ids_do_not_change_the_output() {
    // Only the target's EOS ids end a sequence; a draft that disagrees can
    // only propose worse, never change what is emitted.
    let target = Toy::new(5, 0.4).with_eos(4);
    let config = GenerateConfig {
        max_new_tokens: 12,
        k: 3,
        ..GenerateConfig::default()
    };
    let a = Generator::new(target.clone(), Toy::new(5, 0.9).with_eos(4))
        .unwrap()
        .generate(&[1], &config)
        .unwrap();
    let b = Generator::new(target, Toy::new(5, 0.9).with_eos(2))
        .unwrap()
        .generate(&[1], &config)
        .unwrap();
    assert_eq!((a.tokens, a.stop_reason), (b.tokens, b.stop_reason));
}

#[test]
fn bad_generation_settings_are_named() {
    let mut g = Generator::new(Toy::new(5, 0.1), Toy::new(5, 0.3)).unwrap();
    let ok = GenerateConfig {
        max_new_tokens: 4,
        ..GenerateConfig::default()
    };
    assert!(matches!(g.generate(&[], &ok), Err(Error::EmptyPrompt)));
    let long = vec![1u32; 70];
    assert!(matches!(
        g.generate(&long, &ok),
        Err(Error::TooLong {
            role: Role::Target,
            prompt: 70,
            limit: 64,
            ..
        })
    ));
    assert!(
        g.generate(&[1; 60], &ok).is_ok(),
        "60 + 4 = 64 fits exactly"
    );
    assert!(matches!(
        g.generate(&[1; 61], &ok),
        Err(Error::TooLong { needed: 65, .. })
    ));
    let cases: Vec<(GenerateConfig, &str)> = vec![
        (GenerateConfig { k: 0, ..ok.clone() }, "k"),
        (
            GenerateConfig {
                k: 65,
                ..ok.clone()
            },
            "k",
        ),
        (
            GenerateConfig {
                sampling: SamplingParams::with_temperature(-0.5),
                ..ok.clone()
            },
            "temperature",
        ),
        (
            GenerateConfig {
                sampling: SamplingParams::with_temperature(f32::NAN),
                ..ok.clone()
            },
            "temperature",
        ),
        (
            GenerateConfig {
                sampling: SamplingParams::with_temperature(f32::INFINITY),
                ..ok.clone()
            },
            "temperature",
        ),
        (
            GenerateConfig {
                sampling: SamplingParams {
                    top_p: Some(0.0),
                    ..SamplingParams::with_temperature(1.0)
                },
                ..ok.clone()
            },
            "top_p",
        ),
        (
            GenerateConfig {
                sampling: SamplingParams {
                    top_p: Some(1.01),
                    ..SamplingParams::with_temperature(1.0)
                },
                ..ok.clone()
            },
            "top_p",
        ),
        (
            GenerateConfig {
                sampling: SamplingParams {
                    top_k: Some(0),
                    ..SamplingParams::with_temperature(1.0)
                },
                ..ok.clone()
            },
            "top_k",
        ),
        (
            GenerateConfig {
                min_draft_confidence: -0.1,
                ..ok.clone()
            },
            "min_draft_confidence",
        ),
        (
            GenerateConfig {
                min_draft_confidence: f32::NAN,
                ..ok.clone()
            },
            "min_draft_confidence",
        ),
        (
            GenerateConfig {
                min_draft_confidence: 1.5,
                ..ok.clone()
            },
            "min_draft_confidence",
        ),
        (
            GenerateConfig {
                stop_strings: vec![String::new()],
                ..ok.clone()
            },
            "stop_strings",
        ),
        (
            GenerateConfig {
                stop_strings: vec!["x".into()],
                ..ok.clone()
            },
            "stop_strings",
        ), // toy has no tokenizer
    ];
    for (config, name) in cases {
        assert_eq!(
            setting_name(g.generate(&[1], &config).unwrap_err()),
            name,
            "{config:?}"
        );
    }
    assert_eq!(
        setting_name(g.generate(&[9], &ok).unwrap_err()),
        "prompt",
        "token id outside the vocabulary"
    );
}

/// Returns scripted trouble on the `fail_at`-th forward.
struct Faulty {
    inner: Toy,
    calls: usize,
    fail_at: usize,
    trouble: Trouble,
}

#[derive(Clone, Copy)]
enum Trouble {
    Error,
    Nan,
    AllNegInf,
}

impl LanguageModel for Faulty {
    fn forward(&mut self, tokens: &[u32]) -> specdec::Result<Logits> {
        self.calls += 1;
        let logits = self.inner.forward(tokens)?;
        if self.calls != self.fail_at {
            return Ok(logits);
        }
        let mut data = logits.as_slice().to_vec();
        let v = logits.vocab();
        match self.trouble {
            Trouble::Error => {
                return Err(Error::Shape {
                    model: "faulty".into(),
                    message: "device lost".into(),
                })
            }
            Trouble::Nan => data[v + 2] = f32::NAN, // row 1, token 2
            Trouble::AllNegInf => data.iter_mut().for_each(|x| *x = f32::NEG_INFINITY),
        }
        Ok(Logits::new(data, v))
    }
    fn truncate(&mut self, len: usize) -> specdec::Result<()> {
        self.inner.truncate(len)
    }
    fn cached_len(&self) -> usize {
        self.inner.cached_len()
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn n_positions(&self) -> usize {
        self.inner.n_positions()
    }
}

fn faulty(trouble: Trouble, fail_at: usize) -> Faulty {
    Faulty {
        inner: Toy::new(5, 0.2),
        calls: 0,
        fail_at,
        trouble,
    }
}

#[test]
fn misbehaving_backends_surface_errors_and_keep_committed_tokens() {
    let config = GenerateConfig {
        max_new_tokens: 20,
        k: 3,
        ..GenerateConfig::default()
    };
    // Target forward 1 is the prefill; forward 4 is the third window.
    let mut g = Generator::new(faulty(Trouble::Error, 4), Toy::new(5, 0.6)).unwrap();
    match g.generate(&[1, 2], &config) {
        Err(Error::Interrupted { committed, source }) => {
            assert!(
                !committed.is_empty(),
                "two windows were committed before the failure"
            );
            assert!(source.to_string().contains("device lost"));
            // The generator is reusable, and the committed tokens were the real ones.
            let again = g.generate(&[1, 2], &config).unwrap();
            assert_eq!(&again.tokens[..committed.len()], &committed[..]);
        }
        other => panic!("{other:?}"),
    }

    let mut g = Generator::new(faulty(Trouble::Nan, 3), Toy::new(5, 0.6)).unwrap();
    match g.generate(&[1, 2], &config).unwrap_err() {
        Error::Interrupted { source, .. } => assert!(
            matches!(
                *source,
                Error::NonFiniteLogits {
                    role: Role::Target,
                    position: 1,
                    token: 2,
                    ..
                }
            ),
            "{source}"
        ),
        other => panic!("{other}"),
    }

    for sampling in [
        SamplingParams::greedy(),
        SamplingParams {
            top_p: Some(0.5),
            ..SamplingParams::with_temperature(1.0)
        },
    ] {
        let mut g = Generator::new(faulty(Trouble::AllNegInf, 2), Toy::new(5, 0.6)).unwrap();
        match g
            .generate(
                &[1, 2],
                &GenerateConfig {
                    sampling,
                    ..config.clone()
                },
            )
            .unwrap_err()
        {
            Error::Interrupted { source, .. } => {
                assert!(
                    matches!(
                        *source,
                        Error::EmptyDistribution {
                            role: Role::Target,
                            ..
                        }
                    ),
                    "{source}"
                )
            }
            other => panic!("{other}"),
        }
    }
}

#[test]
fn eos_suppression_and_custom_eos() {
    let target = Toy::new(4, 0.3).with_eos(3);
    let mut g = Generator::new(target.clone(), Toy::new(4, 0.8)).unwrap();
    let base = GenerateConfig {
        max_new_tokens: 25,
        k: 4,
        sampling: SamplingParams::with_temperature(1.0),
        seed: 3,
        ..GenerateConfig::default()
    };
    let ignored = g
        .generate(
            &[1],
            &GenerateConfig {
                eos: Eos::Ignore,
                ..base.clone()
            },
        )
        .unwrap();
    assert_eq!(ignored.tokens.len(), 25);
    assert!(!ignored.tokens.contains(&3));
    let custom = g
        .generate(
            &[1],
            &GenerateConfig {
                eos: Eos::Tokens(vec![2]),
                ..base
            },
        )
        .unwrap();
    assert!(!custom.tokens.contains(&2));
}

/// Greedy-decodes a fixed script of token ids; comes with the embedded tokenizer.
struct Scripted {
    script: Vec<u32>,
    len: usize,
    prompt: usize,
    tokenizer: specdec::Tokenizer,
}

impl LanguageModel for Scripted {
    fn forward(&mut self, tokens: &[u32]) -> specdec::Result<Logits> {
        let vocab = self.tokenizer.vocab_size();
        let mut data = vec![0f32; tokens.len() * vocab];
        for i in 0..tokens.len() {
            let pos = self.len + i + 1 - self.prompt;
            let next = self.script.get(pos).copied().unwrap_or(0);
            data[i * vocab + next as usize] = 10.0;
        }
        self.len += tokens.len();
        Ok(Logits::new(data, vocab))
    }
    fn truncate(&mut self, len: usize) -> specdec::Result<()> {
        self.len = len;
        Ok(())
    }
    fn cached_len(&self) -> usize {
        self.len
    }
    fn vocab_size(&self) -> usize {
        self.tokenizer.vocab_size()
    }
    fn n_positions(&self) -> usize {
        256
    }
    fn tokenizer(&self) -> Option<&specdec::Tokenizer> {
        Some(&self.tokenizer)
    }
    fn eos_token_ids(&self) -> &[u32] {
        &[0]
    }
}

#[test]
fn streaming_never_splits_a_character_and_stop_strings_cut_the_text() {
    let tokenizer =
        specdec::Tokenizer::from_file(common::embedded("py-xs").join("tokenizer.json")).unwrap();
    let text = "x = 'héllo 😀 wörld' # done\nmore";
    let ids = tokenizer.encode(text).unwrap();
    assert!(ids.len() > 8);
    let prompt = tokenizer.encode("s").unwrap();
    let script = ids.clone();
    let model = |tokenizer: &specdec::Tokenizer| Scripted {
        script: script.clone(),
        len: 0,
        prompt: prompt.len(),
        tokenizer: tokenizer.clone(),
    };
    let mut g = Generator::new(model(&tokenizer), model(&tokenizer)).unwrap();
    let config = GenerateConfig {
        max_new_tokens: ids.len(),
        k: 3,
        ..GenerateConfig::default()
    };
    let mut chunks = Vec::new();
    let out = g
        .generate_stream(&prompt, &config, |c| {
            chunks.push(c.text.to_string());
            ControlFlow::Continue(())
        })
        .unwrap();
    assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')), "{chunks:?}");
    assert_eq!(chunks.concat(), text);
    assert_eq!(out.text.as_deref(), Some(text));
    // A character split across tokens really happened.
    assert!(ids
        .iter()
        .any(|&i| tokenizer.decode(&[i]).unwrap().contains('\u{FFFD}')));

    let stop = GenerateConfig {
        stop_strings: vec!["# do".into()],
        ..config.clone()
    };
    let mut streamed = String::new();
    let out = g
        .generate_stream(&prompt, &stop, |c| {
            streamed.push_str(c.text);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(out.text.as_deref(), Some("x = 'héllo 😀 wörld' "));
    assert_eq!(streamed, "x = 'héllo 😀 wörld' ");
    assert_eq!(
        out.stop_reason,
        specdec::StopReason::StopString("# do".into())
    );

    let mut seen = 0;
    let out = g
        .generate_stream(&prompt, &config, |_| {
            seen += 1;
            ControlFlow::Break(())
        })
        .unwrap();
    assert_eq!((seen, out.stop_reason), (1, specdec::StopReason::Cancelled));
    assert!(out.tokens.len() <= 3);
}

/// `target/<profile>/examples/generate`, beside this test binary's `deps/`.
fn generate_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("examples")
        .join(format!("generate{}", std::env::consts::EXE_SUFFIX))
}

fn run_generate(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(generate_binary())
        .args(args)
        .output()
        .expect("examples/generate is built by cargo test");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn the_generate_example_reports_bad_input_in_one_line_with_exit_code_2() {
    let bad_config = scratch("cli-config");
    edit_json(&bad_config.join("config.json"), |v| {
        v["model_type"] = "bert".into()
    });
    let bad_config = bad_config.to_str().unwrap().to_string();
    for args in [
        vec!["--prompt", "x", "--target", "/no/such/model"],
        vec!["--prompt", "x", "--draft", bad_config.as_str()],
        vec!["--prompt", "x", "--temperature", "-1"],
        vec!["--prompt", "x", "--top-p", "2"],
        vec!["--prompt", "x", "--k", "0"],
        vec!["--prompt", "x", "--stop", ""],
        vec!["--prompt-file", "/no/such/prompt.txt"],
        vec!["--prompt", ""],
        vec!["--prompt", "x", "--max-new-tokens", "5000"],
        vec![],
    ] {
        let (code, _, stderr) = run_generate(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
            "{args:?}: {stderr}"
        );
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
    }
}

#[test]
fn the_generate_example_prints_one_json_object() {
    let (code, stdout, stderr) = run_generate(&[
        "--prompt",
        "import os\n",
        "--max-new-tokens",
        "12",
        "--json",
        "--k",
        "3",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["token_ids"].as_array().unwrap().len(), 12);
    assert_eq!(v["stop_reason"], "max_new_tokens");
    for key in [
        "k",
        "target_calls",
        "draft_calls",
        "drafted",
        "accepted",
        "acceptance_rate",
        "tokens_per_target_call",
        "ms_per_token",
        "prefill_ms",
        "decode_ms",
        "draft_ms",
        "verify_ms",
    ] {
        assert!(v["stats"].get(key).is_some(), "stats.{key}");
    }
    assert!(v["text"].is_string() && v["prompt_tokens"].as_u64().unwrap() > 0);
}
