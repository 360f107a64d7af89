//! Fuzzes chat templates: arbitrary bytes split at NUL into a template and
//! the contents of the messages (roles cycle system, user, assistant),
//! rendered through `ChatTemplate` with both `add_generation_prompt`
//! values.
//!
//! Invariants: no panic, no stack overflow; a render ends within its fuel
//! (so in well under the 60 s timeout) and under 1 GB (`-rss_limit_mb`);
//! its text is never longer than the output cap.
//!
//!     cargo fuzz run chat_template fuzz/corpus/chat_template fuzz/seeds/chat_template \
//!         -- -rss_limit_mb=1024 -timeout=60    (from the repository root)
#![no_main]

use libfuzzer_sys::fuzz_target;
use specdec::{ChatMessage, ChatTemplate, GenerationPrompt};

/// The cap of a model of 16,384 positions.
const CAP: usize = 64 * 16_384;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0);
    let Some(source) = parts.next() else { return };
    let Ok(source) = std::str::from_utf8(source) else {
        return;
    };
    let roles = ["system", "user", "assistant"];
    let messages: Vec<ChatMessage> = parts
        .enumerate()
        .map(|(i, content)| {
            ChatMessage::new(roles[i % 3], String::from_utf8_lossy(content).into_owned())
        })
        .collect();
    let Ok(template) = ChatTemplate::new(source, "fuzz", "<s>", "</s>") else {
        return;
    };
    let template = template.with_max_output_bytes(CAP);
    for prompt in [GenerationPrompt::Add, GenerationPrompt::Omit] {
        if let Ok(text) = template.render(&messages, prompt) {
            assert!(text.len() <= CAP, "{} bytes past the cap", text.len());
        }
    }
});
