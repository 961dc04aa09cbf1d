//! The wire readers under arbitrary bytes: every event the SSE parser dispatches goes through
//! `classify_event`, and the whole input through `parse_body`, `parse_request` and `rewrite_request`.
//! None may panic, and the results must be self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::openai::{EventInfo, classify_event, parse_body, parse_request, rewrite_request};
use tollgate::sse::SseParser;

fn check_event(info: &EventInfo) {
    assert!(!info.usage_only || info.usage.is_some(), "usage_only without usage: {info:?}");
    assert!(!info.unparsed || (info.usage.is_none() && info.token_choices == 0), "unparsed yet read: {info:?}");
}

fuzz_target!(|data: &[u8]| {
    let mut parser = SseParser::new(1 << 20);
    parser.feed(data, &mut |event, _| {
        if let Some(ev) = event {
            check_event(&classify_event(ev.event, ev.data));
        }
    });
    parser.finish();
    // The input as one event's data too, with the event names that change the meaning.
    for name in ["", "error", "response.completed", "response.output_text.delta"] {
        check_event(&classify_event(name, data));
    }

    let _ = parse_body(data);

    let Ok(view) = parse_request(data) else { return };
    // A request the proxy accepts can always be rewritten for the backend, and the rewrite keeps
    // everything the meter reads while forcing the usage chunk and renaming the model.
    let Ok(rewritten) = rewrite_request(data, Some("upstream-model"), true) else {
        // Not a JSON object (a derived struct also reads a JSON array), or JSON that the struct
        // reader skips over but a `Value` refuses: the proxy answers those with a 400.
        return;
    };
    let again = parse_request(&rewritten).unwrap_or_else(|e| panic!("the rewritten request does not parse: {e}"));
    assert_eq!(again.model.as_deref(), Some("upstream-model"));
    assert!(again.include_usage);
    assert_eq!((again.stream, again.messages, again.prompt_chars), (view.stream, view.messages, view.prompt_chars));
});
