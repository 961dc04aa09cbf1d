//! The config loader under arbitrary text: `Config::parse` must return `Ok` or `Err`, never panic,
//! and every problem it reports must carry a message and a line inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::config::Config;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = Config::parse(&text, "fuzz.yaml", &|_| Some("x".to_string())) {
        // YAML ends lines at LF, CR, CRLF, NEL, LS and PS; an error at the very end may be one past.
        let breaks = text.replace("\r\n", "\n").matches(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}']).count();
        let lines = breaks + 2;
        for p in &e.problems {
            assert!(!p.message.is_empty(), "an empty message: {p:?}");
            assert!(p.line.is_none_or(|l| l >= 1 && l <= lines), "line out of the file ({lines} lines): {p:?}");
        }
        let _ = e.to_string();
    }
});
