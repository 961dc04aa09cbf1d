//! Wire shapes: request fields, event classification across APIs and backend quirks, usage, bodies.

use super::*;

fn ev(data: &str) -> EventInfo {
    classify_event("", data.as_bytes())
}

fn usage(input: u64, output: u64, cached: u64, reasoning: u64) -> Option<Usage> {
    Some(Usage { input, output, cached_input: cached, reasoning })
}

#[test]
fn requests_give_model_stream_and_prompt_text() {
    let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"12345678"},{"role":"user","content":[{"type":"text","text":"abcd"},{"type":"image_url","image_url":{"url":"data:xxxxxxxxxxxxxxxx"}}]}]}"#;
    let v = parse_request(body).unwrap_or_default();
    assert_eq!(v.model.as_deref(), Some("m"));
    assert!(v.stream && v.include_usage);
    assert_eq!((v.messages, v.prompt_chars), (2, 12));
    assert_eq!(estimate_prompt_tokens(&v), 3 + 8);

    let v = parse_request(br#"{"model":"m","prompt":["ab","cd"],"max_tokens":3}"#).unwrap_or_default();
    assert_eq!((v.stream, v.include_usage, v.prompt_chars), (false, false, 4));
    assert!(parse_request(b"{\"model\": ").is_err());
    assert!(parse_request(b"not json").is_err());
    assert_eq!(parse_request(b"{}").map(|v| v.model.is_none()), Ok(true));
}

#[test]
fn rewrite_merges_stream_options_and_renames() {
    let out =
        rewrite_request(br#"{"model":"a","stream":true,"stream_options":{"x":1},"messages":[]}"#, Some("b"), true);
    let v: serde_json::Value = serde_json::from_slice(&out.unwrap_or_default()).unwrap_or_default();
    assert_eq!(v["model"], "b");
    assert_eq!(v["stream_options"], serde_json::json!({"x": 1, "include_usage": true}));
    // Field order is kept: the backend sees the client's body with only these fields changed.
    let out = rewrite_request(br#"{"z":1,"model":"a","a":2}"#, Some("b"), false).unwrap_or_default();
    assert_eq!(&out[..], br#"{"z":1,"model":"b","a":2}"#);
    assert!(rewrite_request(b"[1]", None, true).is_err());
    // Without stream options in the body, the field is spliced in and every other byte is kept.
    let body = br#" {"model":"m", "stream":true,"messages":[{"role":"user","content":"a\u00e9"}]}"#;
    let out = rewrite_request(body, None, true).unwrap_or_default();
    assert_eq!(&out[..], &br#" {"stream_options":{"include_usage":true},"model":"m", "stream":true,"messages":[{"role":"user","content":"a\u00e9"}]}"#[..]);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
    assert_eq!(v["stream_options"]["include_usage"], true);
    // "stream_options" anywhere (even inside a message) takes the full rewrite.
    let out =
        rewrite_request(br#"{"model":"m","messages":[{"content":"stream_options"}]}"#, None, true).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
    assert_eq!(v["stream_options"]["include_usage"], true);
    assert_eq!(v["messages"][0]["content"], "stream_options");
}

#[test]
fn chat_chunks() {
    // Role-only first chunk: not a token.
    assert_eq!(ev(r#"{"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#).token_choices, 0);
    assert_eq!(ev(r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#).token_choices, 0);
    assert_eq!(ev(r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#).token_choices, 1);
    assert_eq!(ev(r#"{"choices":[{"delta":{"reasoning_content":"th"}}]}"#).token_choices, 1);
    assert_eq!(ev(r#"{"choices":[{"delta":{"reasoning":"th"}}]}"#).token_choices, 1);
    assert_eq!(ev(r#"{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}"#).token_choices, 1);
    assert_eq!(ev(r#"{"choices":[{"delta":{"refusal":"no"}}]}"#).token_choices, 1);
    assert_eq!(ev(r#"{"choices":[{"delta":{"content":"a"}},{"delta":{"content":"b"}}]}"#).token_choices, 2);
    // Final chunk with empty delta and finish_reason.
    assert_eq!(ev(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#), EventInfo::default());
    assert!(ev("[DONE]").done);
}

#[test]
fn usage_chunks_and_quirks() {
    let u = r#""usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}"#;
    let info = ev(&format!(r#"{{"choices":[],{u}}}"#));
    assert_eq!(info.usage, usage(10, 5, 4, 2));
    assert!(info.usage_only);
    // vLLM: choices null or missing.
    assert!(ev(&format!(r#"{{"choices":null,{u}}}"#)).usage_only);
    assert!(ev(&format!(r#"{{{u}}}"#)).usage_only);
    // llama.cpp: usage on a content chunk is usage, but not a usage-only chunk to remove.
    let info = ev(&format!(r#"{{"choices":[{{"delta":{{"content":"x"}}}}],{u}}}"#));
    assert!(!info.usage_only && info.usage.is_some() && info.token_choices == 1);
    // `usage: null` on every chunk (vLLM continuous usage off) is no usage.
    assert_eq!(ev(r#"{"choices":[{"delta":{"content":"x"}}],"usage":null}"#).usage, None);
    // Azure: first chunk with empty choices and prompt_filter_results is not usage.
    let azure = ev(r#"{"choices":[],"prompt_filter_results":[{"prompt_index":0}]}"#);
    assert!(!azure.usage_only && azure.usage.is_none());
    // OpenAI obfuscation padding is ignored.
    assert_eq!(ev(r#"{"choices":[{"delta":{"content":"x"}}],"obfuscation":"aaaaaaaaaaaa"}"#).token_choices, 1);
}

#[test]
fn completions_responses_and_errors() {
    assert_eq!(ev(r#"{"object":"text_completion","choices":[{"text":" the","index":0}]}"#).token_choices, 1);
    let delta = classify_event(
        "response.output_text.delta",
        br#"{"type":"response.output_text.delta","delta":"Hi","sequence_number":3}"#,
    );
    assert_eq!(delta.token_choices, 1);
    let done = classify_event(
        "response.completed",
        br#"{"type":"response.completed","response":{"usage":{"input_tokens":7,"input_tokens_details":{"cached_tokens":1},"output_tokens":3,"output_tokens_details":{"reasoning_tokens":1}}}}"#,
    );
    assert!(done.done && !done.error);
    assert_eq!(done.usage, usage(7, 3, 1, 1));
    let failed = classify_event(
        "response.failed",
        br#"{"type":"response.failed","response":{"usage":{"input_tokens":7,"output_tokens":0}}}"#,
    );
    assert!(failed.done && failed.error && failed.usage.is_some());
    assert!(ev(r#"{"error":{"message":"boom"}}"#).error);
    assert!(classify_event("error", br#"{"type":"error","message":"x"}"#).error);
    assert!(ev("garbage").unparsed);
}

#[test]
fn bodies() {
    let chat = include_bytes!("../../tests/fixtures/llama-cpp-python/chat-nonstream.json");
    let b = parse_body(chat).unwrap_or_default();
    assert_eq!(b.usage, usage(16, 24, 0, 0));
    assert!(b.output_chars > 50);
    let comp = include_bytes!("../../tests/fixtures/llama-cpp-python/completions-nonstream.json");
    assert_eq!(parse_body(comp).and_then(|b| b.usage), usage(6, 16, 0, 0));
    let emb = br#"{"object":"list","data":[{"embedding":[0.1,0.2]}],"usage":{"prompt_tokens":9,"total_tokens":9}}"#;
    assert_eq!(parse_body(emb).and_then(|b| b.usage), usage(9, 0, 0, 0));
    let no_usage = br#"{"choices":[{"message":{"role":"assistant","content":"12345678"}}]}"#;
    assert_eq!(parse_body(no_usage), Some(BodyInfo { usage: None, output_chars: 8, error: false }));
    assert_eq!(parse_body(b"<html>"), None);
}

#[test]
fn error_json_is_openai_shaped() {
    let v: serde_json::Value = serde_json::from_slice(&error_json("m", "t", Some("p"), None)).unwrap_or_default();
    assert_eq!(v, serde_json::json!({"error": {"message": "m", "type": "t", "param": "p", "code": null}}));
}
