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
    Some(kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok()? * 1024)
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
    let e = render_err(
        "{% for i in range(100000) %}0123456789{% endfor %}",
        10_000,
    );
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
            0 => ChatMessage::user("a question of about this length, or a little longer?".repeat(4)),
            _ => ChatMessage::assistant("an answer, a little longer than the question was. ".repeat(8)),
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
