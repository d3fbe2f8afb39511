//! The upload API's file-name rule (`sluice_gateway::validate_filename`), which every
//! upload's name passes (JSON `filename`, `?filename=`, a form's field or part name).
//!
//! Input: the name (bytes that are not UTF-8 are replaced, as a lossy client would).
//!
//! Invariants: nothing panics; an accepted name is accepted unchanged the second time (the
//! rule is idempotent: a stored name is its own normal form), is NFC, 1–255 bytes, and has
//! none of what the rule refuses (separators, `..`, controls, bidi and invisible
//! characters, edge spaces, a trailing dot).
#![no_main]

use libfuzzer_sys::fuzz_target;
use unicode_normalization::UnicodeNormalization;

fuzz_target!(|data: &[u8]| {
    let name = String::from_utf8_lossy(data);
    let Ok(accepted) = sluice_gateway::validate_filename(&name) else {
        return;
    };
    assert_eq!(
        sluice_gateway::validate_filename(&accepted).ok().as_deref(),
        Some(accepted.as_str()),
        "{name:?} was accepted as {accepted:?}, which is not accepted unchanged"
    );
    assert_eq!(accepted.nfc().collect::<String>(), accepted);
    assert!(!accepted.is_empty() && accepted.len() <= 255);
    assert!(!accepted.contains(['/', '\\']) && !accepted.contains(".."));
    assert!(!accepted.chars().any(char::is_control));
    assert!(!accepted.starts_with(' ') && !accepted.ends_with(' ') && !accepted.ends_with('.'));
    assert!(!accepted.chars().any(|c| matches!(
        c,
        '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}' | '\u{FEFF}'
    )));
});
