//! Hostile text (issue 23): chat templates that loop or build huge strings,
//! prompt files that are huge or endless, and the messages the examples
//! give for them. Each gets one clear error, quickly, and never a hang, an
//! abort or gigabytes of memory.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use specdec::{ChatMessage, ChatTemplate, Error, GenerationPrompt};

/// A model of 16,384 positions' output cap (64 bytes a position).
const MIB: usize = 1 << 20;

/// This process's peak resident memory in bytes (Linux), for checking
/// that no hostile input got near a gigabyte.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    Some(
        kb.trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()?
            * 1024,
    )
}

/// Renders `source` over a short chat, returning the error and checking
/// that it came within `limit`.
fn render_err(source: &str, max_output: usize) -> String {
    let t = ChatTemplate::new(source, "hostile", "<s>", "</s>")
        .unwrap()
        .with_max_output_bytes(max_output);
    let started = Instant::now();
    let e = t
        .render(&[ChatMessage::user("hi")], GenerationPrompt::Add)
        .expect_err(source);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{source}: took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(e, Error::ChatTemplate { ref origin, .. } if origin == "hostile"),
        "{e}"
    );
    if let Some(peak) = peak_rss() {
        assert!(peak < 512 << 20, "{source}: peak RSS {peak} bytes");
    }
    e.to_string()
}

#[test]
fn templates_that_loop_or_grow_run_out_of_fuel() {
    // Each took over a minute, or 3-5 GB and an abort, before fuel.
    for source in [
        // nested loops: 10^10 steps
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        // doubling: 2^40 bytes
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        // one step, 1 GB
        "{{ ('x' * 1000000000)|length }}",
        // captured output (not the writer's) growing
        "{% set ns = namespace(s='') %}{% for i in range(100000) %}{% set ns.s = ns.s ~ 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' %}{% endfor %}{{ ns.s|length }}",
        // join over big ranges, nested
        "{% for i in range(100000) %}{{ (range(100000)|join(','))|length }}{% endfor %}",
        // a Python method building a string
        "{{ (','.join(range(100000)) ~ '')|length }}{% for i in range(100000) %}{{ ','.join(range(100000))|length }}{% endfor %}",
        // replace growing a string
        "{% set ns = namespace(s='xx') %}{% for i in range(40) %}{% set ns.s = ns.s.replace('x', 'xx') %}{% endfor %}{{ ns.s|length }}",
        // a captured block in a loop
        "{% for i in range(1000000) %}{% set b %}{{ 'y' * 10000 }}{% endset %}{% endfor %}",
    ] {
        let e = render_err(source, MIB);
        assert!(
            e.contains("fuel") || e.contains("too many") || e.contains("too large"),
            "{source}: {e}"
        );
    }
}

#[test]
fn huge_ranges_and_recursion_are_refused() {
    for source in [
        "{% for i in range(1000000000) %}{% endfor %}",
        "{{ range(1000000000)|list|length }}",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    ] {
        render_err(source, MIB);
    }
}

#[test]
fn output_longer_than_the_model_could_read_is_an_error() {
    let e = render_err("{% for i in range(100000) %}0123456789{% endfor %}", 10_000);
    assert!(
        e.contains("renders more than 10000 bytes") && e.contains("could read"),
        "{e}"
    );
    // Under the cap it renders.
    let t = ChatTemplate::new("{{ 'x' * 100 }}", "t", "", "")
        .unwrap()
        .with_max_output_bytes(100);
    assert_eq!(t.render(&[], GenerationPrompt::Add).unwrap().len(), 100);
}

fn smollm_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/smollm2-135m-instruct");
    dir.join("chat_template.jinja").is_file().then_some(dir)
}

/// The fuel real templates spend is far below the budget: the budget is
/// generous and a real chat never meets it.
#[test]
fn real_templates_spend_little_of_the_fuel() {
    let Some(dir) = smollm_dir() else {
        eprintln!("skipped: no SmolLM2 under ../shared/models");
        return;
    };
    let t = ChatTemplate::from_model_dir(&dir).unwrap().unwrap();
    let short = [
        ChatMessage::system("You are helpful."),
        ChatMessage::user("Hi!"),
        ChatMessage::assistant("Hello."),
    ];
    let (_, fuel_short) = t.render_measured(&short, GenerationPrompt::Add).unwrap();
    let long: Vec<ChatMessage> = (0..1000)
        .map(|i| match i % 2 {
            0 => {
                ChatMessage::user("a question of about this length, or a little longer?".repeat(4))
            }
            _ => ChatMessage::assistant(
                "an answer, a little longer than the question was. ".repeat(8),
            ),
        })
        .collect();
    let (text, fuel_long) = t.render_measured(&long, GenerationPrompt::Add).unwrap();
    eprintln!(
        "SmolLM2's template: {fuel_short} fuel for 3 messages, {fuel_long} for 1000 ({} bytes); budget {}",
        text.len(),
        t.fuel()
    );
    assert!(fuel_short < 1_000, "{fuel_short}");
    assert!(fuel_long * 10 < ChatTemplate::BASE_FUEL, "{fuel_long}");
}

#[test]
fn oversized_template_sources_are_refused() {
    let big = "x".repeat(ChatTemplate::MAX_SOURCE_BYTES + 1);
    let e = ChatTemplate::new(big, "big", "", "").unwrap_err();
    assert!(e.to_string().contains("more than the 1048576"), "{e}");
}

#[test]
fn text_longer_than_the_positions_is_refused_before_tokenizing() {
    let target = common::load(common::embedded("py-xs"), 64);
    let generator = specdec::Generator::new(target, specdec::NGram::new(2).unwrap()).unwrap();
    // 64 positions hold 4096 bytes at most.
    assert!(generator.encode(&"x".repeat(4096)).is_ok());
    let started = Instant::now();
    let e = generator.encode(&"x".repeat(50 << 20)).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        matches!(
            e,
            Error::TextTooLong {
                limit: 4096,
                n_positions: 64,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn candle_errors_print_without_their_backtrace() {
    let candle = candle_core::Error::WithBacktrace {
        inner: Box::new(candle_core::Error::Msg("boom".into()).context("loading x")),
        backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
    };
    let e = Error::Candle(candle).to_string();
    assert_eq!(e, "candle: loading x: boom");
}

// ---- the examples ----

/// `target/<profile>/examples/NAME`, beside this test binary's `deps/`.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// Runs an example, killed after 60 s; returns its exit code, stdout,
/// stderr and how long it ran.
fn run(name: &str, args: &[&str]) -> (i32, String, String, Duration) {
    use std::process::{Command, Stdio};
    let started = Instant::now();
    let mut child = Command::new(example(name))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the examples are built by cargo test");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let (mut o, mut e) = (Vec::new(), Vec::new());
        out.read_to_end(&mut o).unwrap();
        err.read_to_end(&mut e).unwrap();
        (o, e)
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("{name} {args:?} still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (o, e) = reader.join().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o).into(),
        String::from_utf8_lossy(&e).into(),
        started.elapsed(),
    )
}

/// Exit code 2, one line `error: ...` on stderr containing every one of
/// `says`, within 10 s.
fn one_line(name: &str, args: &[&str], says: &[&str]) -> String {
    let (code, _, stderr, took) = run(name, args);
    assert_eq!(code, 2, "{name} {args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{name} {args:?}: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for s in says {
        assert!(
            lines[0].contains(s),
            "{name} {args:?}: {stderr} (wanted {s:?})"
        );
    }
    assert!(took < Duration::from_secs(10), "{name} {args:?}: {took:?}");
    lines[0].to_string()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("specdec-hostile-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn prompt_files_are_read_only_as_far_as_the_model_could_read() {
    // py-s: 2048 positions, so 131072 bytes at most.
    one_line(
        "generate",
        &["--prompt-file", "/dev/zero"],
        &[
            "--prompt-file /dev/zero",
            "more than 131072 bytes",
            "n_positions = 2048",
        ],
    );
    let dir = scratch("prompt-files");
    let big = dir.join("big.txt");
    std::fs::write(&big, "x".repeat(131_073)).unwrap();
    let big = big.to_str().unwrap();
    one_line(
        "generate",
        &["--prompt-file", big],
        &[big, "more than 131072 bytes"],
    );
    let binary = dir.join("binary.txt");
    std::fs::write(&binary, b"def f\xff\xfe").unwrap();
    one_line(
        "generate",
        &["--prompt-file", binary.to_str().unwrap()],
        &["not UTF-8", "offset 5"],
    );
    one_line(
        "generate",
        &["--prompt-file", "/no/such/file"],
        &["--prompt-file /no/such/file"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn speedup_prompt_files_are_checked_before_any_run() {
    let dir = scratch("speedup");
    let s = common::embedded("py-s");
    let xs = common::embedded("py-xs");
    let (s, xs) = (s.to_str().unwrap(), xs.to_str().unwrap());
    let file = dir.join("prompts.json");
    let path = file.to_str().unwrap();
    let speedup = |extra: &[&str], says: &[&str]| {
        let mut args = vec![
            "--target",
            s,
            "--draft",
            xs,
            "--k",
            "2",
            "--max-new-tokens",
            "4",
        ];
        args.extend_from_slice(extra);
        one_line("speedup", &args, says)
    };
    speedup(
        &["--prompts", "/dev/zero"],
        &["--prompts /dev/zero", "more than"],
    );
    for (json, says) in [
        ("{\"a\": 1}", "expected a JSON list of strings"),
        ("[1, 2]", "expected a JSON list of strings"),
        ("[]", "need at least 2 prompts"),
        ("[\"def f\"]", "found 1"),
        (
            "[\"def f\", \"def g\", \"\"]",
            "prompt 3 of 3: the prompt is empty",
        ),
    ] {
        std::fs::write(&file, json).unwrap();
        speedup(&["--prompts", path], &[path, says]);
    }
    // The third of three does not fit: found before the first run (no
    // progress line on stderr, which would glue the error to it).
    let long = "x ".repeat(4000);
    std::fs::write(
        &file,
        serde_json::json!(["def f", "def g", long]).to_string(),
    )
    .unwrap();
    speedup(
        &["--prompts", path],
        &[path, "prompt 3 of 3", "n_positions = 2048"],
    );
    // Missing arguments are named; --ngram -1 gets its range.
    one_line("speedup", &["--target", s], &["--prompts"]);
    one_line(
        "speedup",
        &["--target", s, "--prompts", path, "--ngram", "-1"],
        &["-1 is out of range", "1..=1024"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn chat_templates_are_loaded_lazily_and_rendered_on_a_budget() {
    let dir = scratch("template");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(common::embedded("py-xs").join(f), dir.join(f)).unwrap();
    }
    let d = dir.to_str().unwrap();
    let jinja = dir.join("chat_template.jinja");
    let j = jinja.to_str().unwrap();
    // A template that does not parse stops --chat only.
    std::fs::write(&jinja, "{% for %}").unwrap();
    let (code, stdout, stderr, _) = run(
        "generate",
        &[
            "--target",
            d,
            "--prompt",
            "def f",
            "--max-new-tokens",
            "2",
            "--quiet",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.is_empty());
    one_line(
        "generate",
        &["--target", d, "--chat", "hi"],
        &[j, "syntax error"],
    );
    // Loops past any budget, and output past what 2048 positions hold.
    std::fs::write(
        &jinja,
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    )
    .unwrap();
    one_line("generate", &["--target", d, "--chat", "hi"], &[j, "fuel"]);
    std::fs::write(
        &jinja,
        "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}",
    )
    .unwrap();
    one_line(
        "generate",
        &["--target", d, "--chat", "hi"],
        &[j, "renders more than 131072 bytes"],
    );
    // A huge template file (sparse), and an endless one.
    std::fs::File::create(&jinja)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    one_line(
        "generate",
        &["--target", d, "--chat", "hi"],
        &[j, "the most a chat template may have"],
    );
    std::fs::remove_file(&jinja).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &jinja).unwrap();
    one_line(
        "generate",
        &["--target", d, "--chat", "hi"],
        &[j, "the most a chat template may have"],
    );
    one_line(
        "generate",
        &["--prompt", "x", "--ngram", "-1"],
        &["-1 is out of range", "1..=1024"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Found by `cargo fuzz run chat_template` (fuzz/regressions/chat_template):
/// a namespace that holds itself (`ns.s = (ns, ...)`) makes minijinja 3.1
/// print it recursively without end, and the stack overflows (an abort,
/// not an error). Not fixed yet: minijinja offers no hook on namespace
/// assignment; ignored until it is.
#[test]
#[ignore = "stack overflow in minijinja on a self-containing namespace (open)"]
fn a_namespace_that_holds_itself_is_an_error() {
    render_err(
        "{% set ns = namespace(s='x') %}{% set ns.s = ns, 1 %}{{ ns }}",
        MIB,
    );
}
