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
    CandleModel, Eos, Error, GenerateConfig, Generator, LanguageModel, LoadOptions, Logits, Role,
    SamplingParams,
};

/// Removes the scratch directories of earlier runs whose process is gone
/// (each run makes dozens of 4 MB copies).
fn remove_stale_scratch() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if !cfg!(target_os = "linux") {
            return; // no /proc to tell a finished run from a running one
        }
        let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("specdec-errors-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            if let Some(pid) = pid {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
    });
}

/// A scratch copy of the embedded py-xs directory to break.
fn scratch(name: &str) -> PathBuf {
    remove_stale_scratch();
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
    NoRows,
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
                return Err(Error::Backend {
                    model: "faulty".into(),
                    message: "device lost".into(),
                })
            }
            Trouble::Nan => data[v + 2] = f32::NAN, // row 1, token 2
            Trouble::AllNegInf => data.iter_mut().for_each(|x| *x = f32::NEG_INFINITY),
            Trouble::NoRows => data.clear(),
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
                    role: Some(Role::Target),
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
                            role: Some(Role::Target),
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

/// A draft whose forward returns no rows is a shape error naming it, in
/// greedy drafting (which asks `forward_last_greedy`) as in sampled
/// drafting, never a panic.
#[test]
fn a_draft_returning_no_rows_is_a_shape_error() {
    for sampling in [
        SamplingParams::greedy(),
        SamplingParams::with_temperature(0.8),
    ] {
        let config = GenerateConfig {
            max_new_tokens: 10,
            k: 3,
            sampling,
            ..GenerateConfig::default()
        };
        // Draft forward 1 is the prefill; forward 3 is a draft pass.
        let mut g = Generator::new(Toy::new(5, 0.2), faulty(Trouble::NoRows, 3)).unwrap();
        let source = match g.generate(&[1, 2], &config).unwrap_err() {
            Error::Interrupted { source, .. } => *source,
            other => other,
        };
        match source {
            Error::Contract { message, .. } => assert!(message.contains("[0, 5]"), "{message}"),
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
    run_generate_with(args, Stdout::Read)
}

#[derive(PartialEq)]
enum Stdout {
    /// Read everything the program writes.
    Read,
    /// Close the pipe at once, as `| head -c0` would.
    Closed,
}

/// Runs examples/generate, killing it after two minutes (a hang fails the
/// test instead of stalling the suite).
fn run_generate_with(args: &[&str], stdout: Stdout) -> (i32, String, String) {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = Command::new(generate_binary())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("examples/generate is built by cargo test");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        if stdout == Stdout::Read {
            out.read_to_end(&mut text).unwrap();
        } else {
            drop(out);
        }
        let mut e = Vec::new();
        err.read_to_end(&mut e).unwrap();
        (text, e)
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("generate {args:?} still running after 120 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let (out, err) = reader.join().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out).into(),
        String::from_utf8_lossy(&err).into(),
    )
}

/// Exit code 2 and exactly one line on stderr, `error: ...`, with no panic;
/// returns that line.
fn one_error_line(args: &[&str]) -> String {
    let (code, _, stderr) = run_generate(args);
    assert_eq!(code, 2, "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
    assert!(lines[0].starts_with("error: "), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    lines[0].to_string()
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
        vec!["--prompt", "x", "--k", "abc"],
        vec!["--prompt", "x", "--no-such-flag"],
    ] {
        one_error_line(&args);
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

// Hostile checkpoints and settings (issue 13): each of these once crashed,
// hung, or loaded a wrong model without a word.

/// Tensors of a safetensors file: name -> (dtype, shape, bytes).
type Tensors = std::collections::BTreeMap<String, (serde_json::Value, Vec<usize>, Vec<u8>)>;

fn read_tensors(path: &Path) -> Tensors {
    let raw = fs::read(path).unwrap();
    let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&raw[8..8 + n]).unwrap();
    let data = &raw[8 + n..];
    header
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .map(|(name, t)| {
            let (a, b) = (
                t["data_offsets"][0].as_u64().unwrap() as usize,
                t["data_offsets"][1].as_u64().unwrap() as usize,
            );
            let shape = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (
                name.clone(),
                (t["dtype"].clone(), shape, data[a..b].to_vec()),
            )
        })
        .collect()
}

fn write_tensors(path: &Path, tensors: &Tensors) {
    let (mut header, mut bytes) = (serde_json::Map::new(), Vec::<u8>::new());
    for (name, (dtype, shape, data)) in tensors {
        let start = bytes.len();
        bytes.extend(data);
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, bytes.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(bytes);
    fs::write(path, out).unwrap();
}

fn config_field(dir: &Path, field: &str, value: serde_json::Value) {
    edit_json(&dir.join("config.json"), |v| v[field] = value);
}

#[test]
fn huge_sizes_in_config_json_are_refused_before_anything_is_allocated() {
    // Once: 10^12 layers aborted on a failed allocation, 2^64-1 panicked
    // with "capacity overflow", a head_dim near 2^63 wrapped past the shape
    // check, heads of 2^58 gave an overflowed "expected" shape.
    let cases: Vec<(Vec<(&str, serde_json::Value)>, &str)> = vec![
        (
            vec![("num_hidden_layers", 1_000_000_000_000u64.into())],
            "num_hidden_layers",
        ),
        (
            vec![("num_hidden_layers", u64::MAX.into())],
            "num_hidden_layers",
        ),
        (vec![("head_dim", ((1u64 << 63) - 2).into())], "head_dim"),
        (
            vec![
                ("num_attention_heads", (1u64 << 58).into()),
                ("num_key_value_heads", (1u64 << 58).into()),
            ],
            "head_dim",
        ),
        (vec![("vocab_size", (1u64 << 62).into())], "vocab_size"),
        (
            vec![("intermediate_size", u64::MAX.into())],
            "intermediate_size",
        ),
        (
            vec![
                ("hidden_size", (1u64 << 62).into()),
                ("head_dim", 64.into()),
            ],
            "hidden_size",
        ),
    ];
    for (edits, field) in cases {
        let dir = scratch(&format!("huge-{field}-{}", edits.len()));
        for (k, v) in &edits {
            config_field(&dir, k, v.clone());
        }
        match load_err(&dir) {
            Error::Config { field: f, .. } => assert_eq!(f, field, "{edits:?}"),
            other => panic!("{edits:?}: {other}"),
        }
    }
    // Sizes that fit but disagree with the tensors name the tensor, with
    // the shape config.json implies.
    let dir = scratch("huge-heads-fit");
    config_field(&dir, "num_attention_heads", (1u64 << 20).into());
    config_field(&dir, "num_key_value_heads", (1u64 << 20).into());
    config_field(&dir, "head_dim", 2.into());
    match load_err(&dir) {
        Error::ShapeMismatch { expected, got, .. } => {
            assert_eq!(expected, vec![1 << 21, 128]);
            assert_eq!(got, vec![128, 128]);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_huge_n_positions_is_refused_not_allocated() {
    for n in [usize::MAX, usize::MAX / 3, 1 << 40] {
        let options = specdec::LoadOptions {
            n_positions: Some(n),
            ..Default::default()
        };
        let e = CandleModel::load_with(common::embedded("py-xs"), &options).unwrap_err();
        assert_eq!(setting_name(e), "n_positions", "{n}");
    }
}

#[test]
fn a_degenerate_rope_theta_is_refused_at_load() {
    let dir = scratch("rope-theta");
    edit_json(&dir.join("config.json"), |v| {
        v["rope_parameters"]["rope_theta"] = 1e-300.into()
    });
    match load_err(&dir) {
        Error::Config { field, message, .. } => {
            assert_eq!(field, "rope_theta", "{message}")
        }
        other => panic!("{other}"),
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]
    /// No u64 in any size field of config.json makes loading panic or abort.
    #[test]
    fn no_u64_in_a_size_field_of_config_json_panics(
        field in proptest::sample::select(vec![
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings",
        ]),
        value in proptest::prop_oneof![
            proptest::num::u64::ANY,
            0u64..300,
            proptest::sample::select(vec![u64::MAX, u64::MAX - 1, 1 << 63, (1 << 63) - 2, 1 << 32, 1 << 58]),
        ],
    ) {
        let dir = scratch(&format!("prop-{field}"));
        config_field(&dir, field, value.into());
        let _ = CandleModel::load(&dir); // an error or a model, never a panic
    }
}

#[test]
fn caller_values_do_not_overflow() {
    // Once: prompt + max_new_tokens wrapped, so generation started and
    // failed later.
    let mut g = Generator::new(Toy::new(5, 0.1), Toy::new(5, 0.3)).unwrap();
    let config = GenerateConfig {
        max_new_tokens: usize::MAX,
        ..GenerateConfig::default()
    };
    assert_eq!(
        setting_name(g.generate(&[1, 2], &config).unwrap_err()),
        "max_new_tokens"
    );
    let line = one_error_line(&["--prompt", "x", "--max-new-tokens", &u64::MAX.to_string()]);
    assert!(line.contains("max_new_tokens"), "{line}");
}

#[test]
fn absurd_thread_counts_are_refused() {
    // Once: --threads 10000 started 10000 spinning workers and hung.
    match specdec::backend::candle::init_thread_pool(Some(10_000)) {
        Err(Error::InvalidSetting { name, expected, .. }) => {
            assert_eq!(name, "threads");
            assert!(expected.contains("per core"), "{expected}");
        }
        other => panic!("{other:?}"),
    }
    let line = one_error_line(&["--prompt", "x", "--threads", "10000"]);
    assert!(
        line.contains("10000") && line.contains("per core"),
        "{line}"
    );
}

/// `dir` with config.json saying `num_hidden_layers = layers`.
fn with_layers(name: &str, layers: u64) -> PathBuf {
    let dir = scratch(name);
    config_field(&dir, "num_hidden_layers", layers.into());
    dir
}

#[test]
fn every_tensor_of_the_checkpoint_is_accounted_for() {
    // Once: a config saying 1 layer for this 2-layer checkpoint loaded and
    // wrote different text with exit 0.
    match load_err(&with_layers("fewer-layers", 1)) {
        Error::UnusedTensor {
            tensor,
            count,
            hint,
            ..
        } => {
            assert!(tensor.starts_with("model.layers.1."), "{tensor}");
            assert_eq!(count, 9);
            assert!(hint.contains("num_hidden_layers = 1"), "{hint}");
        }
        other => panic!("{other}"),
    }
    match load_err(&with_layers("more-layers", 3)) {
        Error::Config { field, message, .. } => {
            assert_eq!(field, "num_hidden_layers");
            assert!(message.contains("2 layer"), "{message}");
        }
        other => panic!("{other}"),
    }
    // A bias the config does not enable.
    let dir = scratch("extra-bias");
    let path = dir.join("model.safetensors");
    let mut t = read_tensors(&path);
    let norm = t["model.norm.weight"].clone();
    t.insert("model.layers.0.self_attn.q_proj.bias".into(), norm);
    write_tensors(&path, &t);
    match load_err(&dir) {
        Error::UnusedTensor { tensor, hint, .. } => {
            assert_eq!(tensor, "model.layers.0.self_attn.q_proj.bias");
            assert!(hint.contains("attention_bias"), "{hint}");
        }
        other => panic!("{other}"),
    }
    // RoPE's saved inverse frequencies are recomputed from config.json:
    // safe to skip.
    let dir = scratch("inv-freq");
    let path = dir.join("model.safetensors");
    let mut t = read_tensors(&path);
    let (dtype, _, data) = t["model.norm.weight"].clone();
    t.insert(
        "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
        (dtype, vec![32], data[..64].to_vec()),
    );
    write_tensors(&path, &t);
    CandleModel::load(&dir).expect("inv_freq is skipped");

    let dir = with_layers("cli-fewer-layers", 1);
    let line = one_error_line(&["--prompt", "x", "--target", dir.to_str().unwrap()]);
    assert!(
        line.contains("model.layers.1.") && line.contains("not used"),
        "{line}"
    );
}

/// py-xs split into two shards by `weight_map`, with a stale copy of
/// `model.norm.weight` (zeros) left in the second shard, which sorts last.
fn sharded_with_stale_copy(name: &str) -> PathBuf {
    let dir = scratch(name);
    let mut all = read_tensors(&dir.join("model.safetensors"));
    fs::remove_file(dir.join("model.safetensors")).unwrap();
    let embed = all.remove("model.embed_tokens.weight").unwrap();
    let (dtype, shape, data) = all["model.norm.weight"].clone();
    let (a, b) = (
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    );
    let mut map: serde_json::Map<String, serde_json::Value> =
        all.keys().map(|k| (k.clone(), a.into())).collect();
    map.insert("model.embed_tokens.weight".into(), b.into());
    write_tensors(&dir.join(a), &all);
    let second: Tensors = [
        ("model.embed_tokens.weight".to_string(), embed),
        (
            "model.norm.weight".to_string(),
            (dtype, shape, vec![0; data.len()]),
        ),
    ]
    .into();
    write_tensors(&dir.join(b), &second);
    fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    dir
}

#[test]
fn shards_are_read_as_weight_map_says() {
    // Once: shards were read in file-name order, so a stale copy in a later
    // shard replaced the real weights.
    let mut sharded = CandleModel::load(sharded_with_stale_copy("stale-shard")).unwrap();
    let mut single = CandleModel::load(common::embedded("py-xs")).unwrap();
    assert_eq!(
        sharded.forward(&[1, 2, 3]).unwrap(),
        single.forward(&[1, 2, 3]).unwrap()
    );

    // A shard name must not leave the model directory.
    let dir = sharded_with_stale_copy("escaping-shard");
    edit_json(&dir.join("model.safetensors.index.json"), |v| {
        v["weight_map"]["model.norm.weight"] = "../py-xs/model.safetensors".into()
    });
    match load_err(&dir) {
        Error::Config { field, .. } => assert_eq!(field, "weight_map.model.norm.weight"),
        other => panic!("{other}"),
    }
    // The shard the index names must hold the tensor.
    let dir = sharded_with_stale_copy("wrong-shard");
    edit_json(&dir.join("model.safetensors.index.json"), |v| {
        v["weight_map"]["model.layers.0.mlp.up_proj.weight"] =
            "model-00002-of-00002.safetensors".into()
    });
    match load_err(&dir) {
        Error::MissingTensor { path, tensor } => {
            assert!(path.ends_with("model-00002-of-00002.safetensors"));
            assert!(tensor.starts_with("model.layers.0.mlp.up_proj.weight"));
        }
        other => panic!("{other}"),
    }
}

/// py-xs with an untied output head (a copy of the embedding) and the
/// embedding row of `poisoned` set to NaN: any forward that reads that
/// token's embedding gives NaN logits; others are py-xs's.
fn untied_with_nan_row(name: &str, poisoned: Option<u32>) -> PathBuf {
    let dir = scratch(name);
    config_field(&dir, "tie_word_embeddings", false.into());
    let path = dir.join("model.safetensors");
    let mut t = read_tensors(&path);
    let embed = t["model.embed_tokens.weight"].clone();
    t.insert("lm_head.weight".into(), embed.clone());
    if let Some(token) = poisoned {
        let (_, shape, data) = t.get_mut("model.embed_tokens.weight").unwrap();
        let row = 2 * shape[1]; // bf16
        let start = token as usize * row;
        for x in data[start..start + row].chunks_mut(2) {
            x.copy_from_slice(&0x7fc0u16.to_le_bytes()); // bf16 NaN
        }
    }
    write_tensors(&path, &t);
    dir
}

#[test]
fn a_model_fault_mid_generation_keeps_committed_tokens_and_blames_the_model() {
    let config = GenerateConfig {
        max_new_tokens: 16,
        k: 1,
        ..GenerateConfig::default()
    };
    let clean = common::load(untied_with_nan_row("fault-clean", None), 64);
    let draft = || common::load(common::embedded("py-xs"), 64);
    let mut g = Generator::new(clean, draft()).unwrap();
    let prompt = g.encode("def add(a, b):").unwrap();
    let baseline = g.generate(&prompt, &config).unwrap().tokens;
    // The first generated token (after two) that the prompt and the tokens
    // before it do not contain: feeding it is the fault.
    let j = (2..baseline.len())
        .find(|&j| !prompt.contains(&baseline[j]) && !baseline[..j].contains(&baseline[j]))
        .expect("a new token");
    let dir = untied_with_nan_row("fault-nan", Some(baseline[j]));
    let mut g = Generator::new(common::load(&dir, 64), draft()).unwrap();
    let e = g.generate(&prompt, &config).unwrap_err();
    assert!(e.is_model_fault(), "{e}");
    match &e {
        Error::Interrupted { committed, source } => {
            // Committed tokens are still there, and they are the real ones.
            assert_eq!(committed[..], baseline[..=j]);
            assert!(
                matches!(
                    **source,
                    Error::NonFiniteLogits {
                        role: Some(Role::Target),
                        ..
                    }
                ),
                "{source}"
            );
        }
        other => panic!("{other}"),
    }
    // The cause is said once, not twice, when the chain is printed.
    let cause = e.root_cause().to_string();
    let chain = format!("{:#}", anyhow::Error::from(e));
    assert_eq!(chain.matches(&cause).count(), 1, "{chain}");

    // Through the example: the text so far on stdout, one line, exit 2.
    let (code, stdout, stderr) = run_generate(&[
        "--prompt",
        "def add(a, b):",
        "--target",
        dir.to_str().unwrap(),
        "--k",
        "1",
        "--max-new-tokens",
        "16",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("target model returned a non-finite logit"),
        "{stderr}"
    );
    assert!(stderr.contains(dir.to_str().unwrap()), "{stderr}");
    let text = g.tokenizer().unwrap().decode(&baseline[..j]).unwrap();
    assert!(
        stdout.starts_with(&format!("def add(a, b):{text}")),
        "{stdout:?}"
    );
}

#[test]
fn eos_ids_must_be_in_the_vocabulary_and_leave_something_to_generate() {
    let dir = scratch("eos-outside");
    config_field(&dir, "eos_token_id", 99_999.into());
    fs::remove_file(dir.join("generation_config.json")).unwrap();
    assert!(
        matches!(load_err(&dir), Error::Config { field, path, .. } if field == "eos_token_id" && path.ends_with("config.json"))
    );
    let dir = scratch("gen-eos-outside");
    edit_json(&dir.join("generation_config.json"), |v| {
        v["eos_token_id"] = serde_json::json!([0, 8192])
    });
    assert!(
        matches!(load_err(&dir), Error::Config { field, path, .. } if field == "eos_token_id" && path.ends_with("generation_config.json"))
    );
    // Every id an EOS id: the target's file is at fault, not the draft.
    let dir = scratch("gen-eos-all");
    edit_json(&dir.join("generation_config.json"), |v| {
        v["eos_token_id"] = (0..8192).collect::<Vec<u32>>().into()
    });
    match load_err(&dir) {
        Error::Config { path, message, .. } => {
            assert!(path.ends_with("generation_config.json"));
            assert!(message.contains("every one of the 8192 ids"), "{message}");
        }
        other => panic!("{other}"),
    }
    let line = one_error_line(&[
        "--prompt",
        "x",
        "--target",
        dir.to_str().unwrap(),
        "--ignore-eos",
    ]);
    assert!(
        line.contains(dir.to_str().unwrap()) && !line.contains("draft"),
        "{line}"
    );
    // The same through the API with models that do not check at load.
    let mut target = Toy::new(5, 0.3);
    target.eos = (0..5).collect();
    let mut g = Generator::new(target, Toy::new(5, 0.5)).unwrap();
    let config = GenerateConfig {
        eos: Eos::Ignore,
        max_new_tokens: 4,
        ..GenerateConfig::default()
    };
    assert!(matches!(
        g.generate(&[1], &config),
        Err(Error::EmptyDistribution {
            role: Some(Role::Target),
            ..
        })
    ));
}

#[test]
fn negative_numbers_reach_the_range_checks() {
    // Once: clap took `-1` for an unknown flag ("unexpected argument '-1' found").
    for (flag, value, says) in [
        ("--k", "-1", "1..=64"),
        ("--threads", "-2", "per core"),
        ("--max-new-tokens", "-5", "out of range"),
        ("--top-k", "-3", "out of range"),
        ("--min-draft-confidence", "-0.5", "min_draft_confidence"),
        ("--min-p", "-0.1", "min_p"),
        ("--temperature", "-1", "temperature"),
    ] {
        let line = one_error_line(&["--prompt", "x", flag, value]);
        assert!(!line.contains("unexpected argument"), "{line}");
        assert!(
            line.contains(value) && line.contains(says),
            "{flag}: {line}"
        );
    }
}

#[test]
fn settings_are_checked_before_any_model_is_loaded() {
    let bad = ["--target", "/no/such/model"];
    for (setting, value, name) in [
        ("--k", "0", "--k"),
        ("--min-draft-confidence", "2", "min_draft_confidence"),
        ("--stop", "", "stop_strings"),
        ("--top-p", "0", "top_p"),
    ] {
        let mut args = vec!["--prompt", "x", setting, value];
        args.extend(bad);
        let line = one_error_line(&args);
        assert!(line.contains(name) && !line.contains("/no/such"), "{line}");
    }
    // And through the API, with no model at all.
    for config in [
        GenerateConfig {
            k: 0,
            ..GenerateConfig::default()
        },
        GenerateConfig {
            min_draft_confidence: 2.0,
            ..GenerateConfig::default()
        },
        GenerateConfig {
            stop_strings: vec![String::new()],
            ..GenerateConfig::default()
        },
    ] {
        assert!(config.validate().is_err(), "{config:?}");
    }
    assert!(GenerateConfig::default().validate().is_ok());
}

#[test]
fn missing_tokenizers_are_named() {
    let dir = scratch("draft-no-tokenizer");
    fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let target = CandleModel::load(common::embedded("py-s")).unwrap();
    match Generator::new(target, CandleModel::load(&dir).unwrap()) {
        Err(Error::NoTokenizer { role, .. }) => assert_eq!(role, Role::Draft),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a draft whose vocabulary cannot be checked was accepted"),
    }
    let line = one_error_line(&["--prompt", "x", "--draft", dir.to_str().unwrap()]);
    assert!(
        line.contains("draft") && line.contains("tokenizer.json"),
        "{line}"
    );

    // A target without one: encoding text names what is missing.
    let g = Generator::new(
        CandleModel::load(&dir).unwrap(),
        CandleModel::load(&dir).unwrap(),
    )
    .unwrap();
    let e = g.encode("x").unwrap_err();
    assert!(matches!(
        e,
        Error::NoTokenizer {
            role: Role::Target,
            ..
        }
    ));
    assert!(e.to_string().contains("tokenizer.json"), "{e}");
    let line = one_error_line(&[
        "--prompt",
        "x",
        "--target",
        dir.to_str().unwrap(),
        "--draft",
        dir.to_str().unwrap(),
    ]);
    let missing = dir.join("tokenizer.json");
    assert!(line.contains(missing.to_str().unwrap()), "{line}");
}

#[test]
fn symlink_loops_are_reported_as_such() {
    let base = scratch("symlink-loop");
    let looped = base.join("loop");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    match load_err(&looped) {
        Error::Io { path, source } => {
            assert_eq!(path, looped);
            assert_eq!(source.raw_os_error(), Some(40), "{source}"); // ELOOP
        }
        other => panic!("{other}"),
    }
    // A config.json that loops, inside a real directory.
    let dir = scratch("symlink-loop-config");
    fs::remove_file(dir.join("config.json")).unwrap();
    std::os::unix::fs::symlink(dir.join("config.json"), dir.join("config.json")).unwrap();
    assert!(matches!(load_err(&dir), Error::Io { .. }));
    let line = one_error_line(&["--prompt", "x", "--target", looped.to_str().unwrap()]);
    assert!(line.contains("symbolic links"), "{line}");
}

#[test]
fn a_closed_stdout_ends_quietly() {
    // As `generate ... | head -c0`: the reader is gone before the first write.
    let (code, _, stderr) = run_generate_with(
        &["--prompt", "def f(x):", "--max-new-tokens", "64"],
        Stdout::Closed,
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !stderr.contains("error") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn the_fuzz_entry_point_runs_the_real_loading_path() {
    // fuzz/fuzz_targets/load_checkpoint.rs is only as good as this path:
    // a real checkpoint must load through it, single-file and sharded.
    let dir = common::embedded("py-xs");
    let read = |f: &str| fs::read(dir.join(f)).unwrap();
    let (config, weights) = (read("config.json"), read("model.safetensors"));
    let generation = read("generation_config.json");
    let load = specdec::backend::candle::fuzz_load;
    load(&config, &weights, None, Some(&generation), 16).unwrap();
    let map: serde_json::Map<String, serde_json::Value> =
        read_tensors(&dir.join("model.safetensors"))
            .into_keys()
            .map(|name| (name, "model.safetensors".into()))
            .collect();
    let index = serde_json::json!({ "weight_map": map }).to_string();
    load(&config, &weights, Some(index.as_bytes()), None, 16).unwrap();
    // And it refuses what loading a directory refuses.
    let one_layer = String::from_utf8(config.clone())
        .unwrap()
        .replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1");
    assert!(matches!(
        load(one_layer.as_bytes(), &weights, None, None, 16),
        Err(Error::UnusedTensor { .. })
    ));
    assert!(load(&config, &weights[..1000], None, None, 16).is_err());
}

#[test]
fn cuda_graph_widths_out_of_range_are_refused_by_name() {
    for bad in [0usize, specdec::backend::candle::MAX_GRAPH_WIDTH + 1] {
        let options = LoadOptions {
            cuda_graph_widths: vec![8, bad],
            ..LoadOptions::default()
        };
        let err = CandleModel::load_with(common::embedded("py-xs"), &options).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, Error::InvalidSetting { .. })
                && text.contains("cuda_graph_widths")
                && text.contains(&bad.to_string()),
            "{text}"
        );
    }
}
