//! The simulator's behaviour: timing under paused time, streams and bodies, errors, in-flight counts.

use super::*;
use http_body_util::{BodyExt, Full};

fn model(name: &str, ttft_ms: u64, tps: f64, out: u32) -> SimModel {
    SimModel {
        name: name.to_owned(),
        ttft: Duration::from_millis(ttft_ms),
        tokens_per_second: tps,
        output_tokens: out,
        jitter_ratio: 0.0,
        accuracy: 0.0,
    }
}

fn sim(models: Vec<SimModel>) -> Arc<Simulator> {
    Arc::new(Simulator::new(models, 42))
}

fn req(method: Method, path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::builder().method(method).uri(path).body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

/// A chat request body for `model` with one user message, plus the fields of `extra`.
fn chat(model: &str, content: Value, extra: Value) -> Value {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": content}]});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

fn post(path: &str, body: Value) -> Request<Full<Bytes>> {
    req(Method::POST, path, &body.to_string())
}

/// Reads every frame, recording how long after `t0` it arrived.
async fn frames(resp: Response<SimBody>, t0: Instant) -> Vec<(Duration, String)> {
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        out.push((t0.elapsed(), String::from_utf8(data.to_vec()).unwrap()));
    }
    out
}

fn event(frame: &str) -> Value {
    assert!(frame.starts_with("data: ") && frame.ends_with("\n\n"), "not one SSE event: {frame:?}");
    serde_json::from_str(&frame[6..frame.len() - 2]).unwrap()
}

async fn json_body(resp: Response<SimBody>) -> Value {
    serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn streaming_chat_timing_shape_and_usage() {
    for include_usage in [false, true] {
        let s = sim(vec![model("m", 200, 50.0, 5)]);
        let t0 = Instant::now();
        let options = json!({"include_usage": include_usage});
        let body = chat("m", json!("hello"), json!({"stream": true, "stream_options": options}));
        let resp = s.clone().handle(post("/v1/chat/completions", body.clone())).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[CONTENT_TYPE], "text/event-stream");
        assert_eq!(resp.headers()[CACHE_CONTROL], "no-cache");
        assert_eq!(t0.elapsed(), Duration::ZERO);
        let f = frames(resp, t0).await;
        assert_eq!(f.len(), if include_usage { 9 } else { 8 });

        let role = event(&f[0].1);
        assert_eq!(f[0].0, Duration::ZERO);
        assert_eq!(role["id"], "chatcmpl-sim-1");
        assert_eq!(role["object"], "chat.completion.chunk");
        assert_eq!(role["model"], "m");
        assert_eq!(role["choices"][0]["delta"], json!({"role": "assistant"}));
        assert_eq!(role["choices"][0]["finish_reason"], Value::Null);

        let mut content = String::new();
        for (i, (at, frame)) in f[1..=5].iter().enumerate() {
            let expected = Duration::from_millis(200 + 20 * i as u64);
            assert_eq!(*at, expected, "token {i}");
            let e = event(frame);
            assert_eq!(e["choices"][0]["finish_reason"], Value::Null);
            let tok = e["choices"][0]["delta"]["content"].as_str().unwrap();
            assert_eq!(tok.starts_with(' '), i > 0);
            content.push_str(tok);
        }
        let fin = event(&f[6].1);
        assert_eq!(f[6].0, f[5].0);
        assert_eq!(fin["choices"][0]["delta"], json!({}));
        assert_eq!(fin["choices"][0]["finish_reason"], "stop");
        if include_usage {
            let u = event(&f[7].1);
            assert_eq!(u["choices"], json!([]));
            assert_eq!(u["usage"], json!({"prompt_tokens": 6, "completion_tokens": 5, "total_tokens": 11}));
        }
        assert_eq!(f.last().unwrap().1, "data: [DONE]\n\n");
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.requests_for("m"), 1);

        // A fresh simulator with the same seed numbers its first request alike, so the text matches.
        let s2 = sim(vec![model("m", 200, 50.0, 5)]);
        let mut plain = body;
        plain["stream"] = json!(false);
        let t1 = Instant::now();
        let resp = s2.handle(post("/v1/chat/completions", plain)).await;
        assert_eq!(t1.elapsed(), Duration::from_millis(280));
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        let v = json_body(resp).await;
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["choices"][0]["message"]["content"], content.as_str());
        assert_eq!(v["usage"]["total_tokens"], 11);
    }
}

#[tokio::test(start_paused = true)]
async fn completions_stream_and_plain_with_max_tokens() {
    let s = sim(vec![model("c", 100, 100.0, 10)]);
    let t0 = Instant::now();
    let body = json!({"model": "c", "prompt": ["abcd", "abcde"], "max_tokens": 4, "stream": true,
        "stream_options": {"include_usage": true}});
    let f = frames(s.clone().handle(post("/v1/completions", body)).await, t0).await;
    assert_eq!(f.len(), 4 + 3);
    assert_eq!(f[0].0, Duration::from_millis(100));
    assert_eq!(f[3].0, Duration::from_millis(130));
    let first = event(&f[0].1);
    assert_eq!(first["id"], "cmpl-sim-1");
    assert_eq!(first["object"], "text_completion");
    let text: String =
        f[..4].iter().map(|(_, fr)| event(fr)["choices"][0]["text"].as_str().unwrap().to_owned()).collect();
    assert_eq!(text.split(' ').count(), 4);
    let fin = event(&f[4].1);
    assert_eq!(fin["choices"][0]["text"], "");
    assert_eq!(fin["choices"][0]["finish_reason"], "length");
    assert_eq!(event(&f[5].1)["usage"], json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}));

    let t1 = Instant::now();
    let v = json_body(s.clone().handle(post("/v1/completions", json!({"model": "c", "prompt": "hi"}))).await).await;
    assert_eq!(t1.elapsed(), Duration::from_millis(190));
    assert_eq!(v["id"], "cmpl-sim-2");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["choices"][0]["text"].as_str().unwrap().split(' ').count(), 10);
    assert_eq!(v["usage"], json!({"prompt_tokens": 1, "completion_tokens": 10, "total_tokens": 11}));
    assert_eq!(s.requests_for("c"), 2);
}

#[tokio::test(start_paused = true)]
async fn chat_max_tokens_caps_and_max_completion_tokens_wins() {
    let s = sim(vec![model("m", 10, 10.0, 5)]);
    let cases = [
        (json!({"max_tokens": 3}), 3, "length"),
        (json!({"max_tokens": 5}), 5, "stop"),
        (json!({"max_tokens": 50}), 5, "stop"),
        (json!({"max_tokens": 4, "max_completion_tokens": 2}), 2, "length"),
    ];
    for (extra, n, finish) in cases {
        let body = chat("m", json!([{"type": "text", "text": "abcdefgh"}]), extra);
        let v = json_body(s.clone().handle(post("/v1/chat/completions", body)).await).await;
        assert_eq!(v["usage"], json!({"prompt_tokens": 6, "completion_tokens": n, "total_tokens": 6 + n}));
        assert_eq!(v["choices"][0]["finish_reason"], finish);
        assert_eq!(v["choices"][0]["message"]["content"].as_str().unwrap().split(' ').count(), n as usize);
    }
    let bad = post("/v1/chat/completions", chat("m", json!("x"), json!({"max_tokens": 0})));
    let resp = s.clone().handle(bad).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_body(resp).await["error"]["param"], "max_tokens");
}

#[tokio::test(start_paused = true)]
async fn embeddings_usage_and_vectors() {
    let s = sim(vec![model("e", 100, 10.0, 5)]);
    let t0 = Instant::now();
    let resp = s
        .clone()
        .handle(post("/v1/embeddings", json!({"model": "e", "input": ["hello world", "abc", "hello world"]})))
        .await;
    assert_eq!(t0.elapsed(), Duration::from_millis(10));
    let v = json_body(resp).await;
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "e");
    assert_eq!(v["usage"], json!({"prompt_tokens": 7, "total_tokens": 7}));
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data[1]["index"], 1);
    assert_eq!(data[1]["object"], "embedding");
    assert_eq!(data[0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(data[0]["embedding"], data[2]["embedding"]);
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);

    let v = json_body(
        s.clone()
            .handle(post("/v1/embeddings", json!({"model": "e", "input": "x", "encoding_format": "base64"})))
            .await,
    )
    .await;
    assert_eq!(v["data"][0]["embedding"].as_str().unwrap().len(), 44);
    assert_eq!(v["usage"]["prompt_tokens"], 1);
    assert_eq!(base64_encode(b"foob"), "Zm9vYg==");
    assert_eq!(base64_encode(b"fooba"), "Zm9vYmE=");
    assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    assert_eq!(s.requests_for("e"), 2);
}

#[tokio::test]
async fn errors_are_openai_shaped() {
    let s = sim(vec![model("m", 0, 10.0, 1)]);
    let resp = s.clone().handle(post("/v1/chat/completions", json!({"model": "nope", "messages": []}))).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        json_body(resp).await,
        json!({"error": {
            "message": "The model `nope` does not exist", "type": "invalid_request_error",
            "param": "model", "code": "model_not_found"}})
    );
    let cases = [
        (req(Method::POST, "/v1/chat/completions", "{not json"), StatusCode::BAD_REQUEST),
        (
            post("/v1/chat/completions", json!({"messages": [{"role": "user", "content": "x"}]})),
            StatusCode::BAD_REQUEST,
        ),
        (post("/v1/chat/completions", json!({"model": "m"})), StatusCode::BAD_REQUEST),
        (post("/v1/completions", json!({"model": "m", "prompt": 7})), StatusCode::BAD_REQUEST),
        (
            post("/v1/chat/completions", json!({"model": "m", "messages": [{}], "stream": "yes"})),
            StatusCode::BAD_REQUEST,
        ),
        (post("/v1/embeddings", json!({"model": "m", "input": []})), StatusCode::BAD_REQUEST),
        (req(Method::GET, "/v1/chat/completions", ""), StatusCode::METHOD_NOT_ALLOWED),
        (req(Method::POST, "/v1/models", ""), StatusCode::METHOD_NOT_ALLOWED),
        (req(Method::GET, "/v2/nothing", ""), StatusCode::NOT_FOUND),
    ];
    for (request, status) in cases {
        let resp = s.clone().handle(request).await;
        assert_eq!(resp.status(), status);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        let v = json_body(resp).await;
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let resp = s.clone().handle(req(Method::GET, "/v1/chat/completions", "")).await;
    assert_eq!(resp.headers()[ALLOW], "POST");
    // An unread body still counts as in flight.
    assert_eq!(s.in_flight(), 1);
    drop(resp);
    assert_eq!(s.requests_for("m"), 0);
    assert_eq!(s.in_flight(), 0);
}

#[tokio::test]
async fn oversized_body_is_413() {
    let s = sim(vec![model("m", 0, 10.0, 1)]);
    let big = vec![b' '; MAX_BODY + 1];
    let resp = s.handle(Request::post("/v1/completions").body(Full::new(Bytes::from(big))).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn lists_models() {
    let s = sim(vec![model("a", 0, 10.0, 1), model("b", 0, 10.0, 1)]);
    let v = json_body(s.handle(req(Method::GET, "/v1/models", "")).await).await;
    assert_eq!(
        v,
        json!({"object": "list", "data": [
            {"id": "a", "object": "model", "created": 0, "owned_by": "tollgate-simulator"},
            {"id": "b", "object": "model", "created": 0, "owned_by": "tollgate-simulator"}]})
    );
}

#[test]
fn prompt_token_rule() {
    let parts = json!([{"type": "text", "text": "héllo"}, {"type": "image_url"}]);
    let messages = json!([
        {"role": "system", "content": "abcd"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": null},
        {"role": "user", "content": parts},
    ]);
    // 4 per message, then ceil(chars / 4) of "abcd", "hello" and "héllo" (5 characters, 6 bytes).
    assert_eq!(prompt_tokens(&json!({ "messages": messages })), 4 * 4 + 1 + 2 + 2);
    assert_eq!(prompt_tokens(&json!({"prompt": "abcdefghi"})), 3);
    assert_eq!(prompt_tokens(&json!({"prompt": ["a", "b"]})), 2);
    assert_eq!(prompt_tokens(&json!({"prompt": ""})), 1);
    assert_eq!(prompt_tokens(&json!({})), 1);
}

#[tokio::test(start_paused = true)]
async fn jitter_stays_within_ratio() {
    let mut m = model("j", 100, 10.0, 20);
    m.jitter_ratio = 0.5;
    let s = sim(vec![m]);
    let t0 = Instant::now();
    let body = json!({"model": "j", "prompt": "x", "stream": true});
    let f = frames(s.handle(post("/v1/completions", body)).await, t0).await;
    assert!(f[0].0 >= Duration::from_millis(50) && f[0].0 <= Duration::from_millis(151));
    let gaps: Vec<Duration> = f[..20].windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(gaps.iter().all(|g| *g >= Duration::from_millis(49) && *g <= Duration::from_millis(151)), "{gaps:?}");
    assert!(gaps.iter().any(|g| *g != gaps[0]));
}

#[tokio::test(start_paused = true)]
async fn in_flight_counts_streams_until_finished_or_dropped() {
    let s = sim(vec![model("m", 50, 100.0, 3)]);
    let body = chat("m", json!("x"), json!({"stream": true}));
    let mut bodies = Vec::new();
    for _ in 0..3 {
        bodies.push(s.clone().handle(post("/v1/chat/completions", body.clone())).await.into_body());
    }
    assert_eq!((s.in_flight(), s.max_in_flight()), (3, 3));
    let mut c = bodies.pop().unwrap();
    let mut b = bodies.pop().unwrap();
    let a = bodies.pop().unwrap();
    a.collect().await.unwrap();
    assert_eq!(s.in_flight(), 2);
    b.frame().await.unwrap().unwrap();
    b.frame().await.unwrap().unwrap();
    drop(b);
    assert_eq!(s.in_flight(), 1);
    while c.frame().await.is_some() {}
    assert_eq!((s.in_flight(), s.max_in_flight()), (0, 3));

    // A non-streaming request counts while it waits, and stops counting when its future is dropped.
    let plain = chat("m", json!("x"), json!({}));
    let pending = tokio::spawn(s.clone().handle(post("/v1/chat/completions", plain)));
    tokio::task::yield_now().await;
    assert_eq!(s.in_flight(), 1);
    pending.abort();
    assert!(pending.await.unwrap_err().is_cancelled());
    assert_eq!(s.in_flight(), 0);
}

#[tokio::test]
async fn serves_http1_and_h2c_over_tcp() {
    use hyper_util::client::legacy::Client;
    let s = sim(vec![model("m", 5, 1000.0, 8)]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, s.clone(), async move {
        let _ = stopped.await;
    }));
    for h2 in [false, true] {
        let client = Client::builder(TokioExecutor::new()).http2_only(h2).build_http::<Full<Bytes>>();
        let options = json!({"include_usage": true});
        let body = chat("m", json!("hi"), json!({"stream": true, "stream_options": options}));
        let request = Request::post(format!("http://{addr}/v1/chat/completions"))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let resp = client.request(request).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), if h2 { http::Version::HTTP_2 } else { http::Version::HTTP_11 });
        assert_eq!(resp.headers()[CONTENT_TYPE], "text/event-stream");
        let mut incoming = resp.into_body();
        let mut text = String::new();
        while let Some(frame) = incoming.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                text.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
        let events: Vec<&str> = text.split_terminator("\n\n").collect();
        assert_eq!(events.len(), 1 + 8 + 1 + 1 + 1);
        assert_eq!(*events.last().unwrap(), "data: [DONE]");
        let usage: Value = serde_json::from_str(&events[10][6..]).unwrap();
        assert_eq!(usage["usage"]["completion_tokens"], 8);

        let models = client.get(format!("http://{addr}/v1/models").parse().unwrap()).await.unwrap();
        let bytes = models.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap()["data"][0]["id"], "m");
    }
    assert_eq!(s.requests_for("m"), 2);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
}

/// A chat request carrying an expected answer in the simulation header.
fn with_expected(body: Value, expected: &str) -> Request<Full<Bytes>> {
    Request::post("/v1/chat/completions")
        .header(EXPECTED_HEADER, expected)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// The streamed content and the reported completion tokens of an SSE response.
async fn streamed(resp: Response<SimBody>) -> (String, Value) {
    let mut content = String::new();
    let mut usage = Value::Null;
    for (_, frame) in frames(resp, Instant::now()).await {
        if frame == "data: [DONE]\n\n" {
            continue;
        }
        let e = event(&frame);
        if let Some(text) = e["choices"][0]["delta"]["content"].as_str() {
            content.push_str(text);
        }
        if !e["usage"].is_null() {
            usage = e["usage"].clone();
        }
    }
    (content, usage)
}

#[tokio::test(start_paused = true)]
async fn accuracy_answers_with_the_expected_text() {
    let mut m = model("m", 10, 100.0, 6);
    m.accuracy = 1.0;
    let s = sim(vec![m]);
    // Percent-encoded UTF-8 with a quote, a newline and a non-ASCII character.
    let header = "%7B%22city%22%3A %22Z%C3%BCrich%22%7D%0Anext";
    let expected = "{\"city\": \"Zürich\"}\nnext";
    let options = json!({"stream": true, "stream_options": {"include_usage": true}});
    let resp = s.clone().handle(with_expected(chat("m", json!("q"), options.clone()), header)).await;
    let (content, usage) = streamed(resp).await;
    assert_eq!(content, expected);
    // Word tokens: `{"city":`, ` "Zürich"}`, `\nnext`.
    assert_eq!(usage["completion_tokens"], 3);
    assert_eq!(usage["total_tokens"], usage["prompt_tokens"].as_u64().unwrap() + 3);

    // Non-streamed: the same text and count.
    let resp = s.clone().handle(with_expected(chat("m", json!("q"), json!({})), header)).await;
    let reply = json_body(resp).await;
    assert_eq!(reply["choices"][0]["message"]["content"], expected);
    assert_eq!(reply["usage"]["completion_tokens"], 3);
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");

    // max_tokens cuts the answer like any other output.
    let resp = s.clone().handle(with_expected(chat("m", json!("q"), json!({"max_tokens": 2})), header)).await;
    let reply = json_body(resp).await;
    assert_eq!(reply["choices"][0]["message"]["content"], "{\"city\": \"Zürich\"}");
    assert_eq!(reply["usage"]["completion_tokens"], 2);
    assert_eq!(reply["choices"][0]["finish_reason"], "length");

    // Without the header: filler of the configured length.
    let resp = s.clone().handle(post("/v1/chat/completions", chat("m", json!("q"), options))).await;
    let (content, usage) = streamed(resp).await;
    assert_eq!(content.split(' ').count(), 6);
    assert_eq!(usage["completion_tokens"], 6);
}

#[tokio::test(start_paused = true)]
async fn accuracy_is_a_per_request_probability() {
    for (accuracy, low, high) in [(0.0, 0, 0), (0.75, 130, 170), (1.0, 200, 200)] {
        let mut m = model("m", 1, 1000.0, 4);
        m.accuracy = accuracy;
        let s = sim(vec![m]);
        let mut correct = 0;
        for _ in 0..200 {
            // The same prompt every time: correctness is drawn per request, not per prompt.
            let resp = s.clone().handle(with_expected(chat("m", json!("same"), json!({})), "Paris")).await;
            correct += u32::from(json_body(resp).await["choices"][0]["message"]["content"] == "Paris");
        }
        assert!((low..=high).contains(&correct), "accuracy {accuracy}: {correct}/200 correct");
    }
}

#[test]
fn word_tokens_and_percent_decoding() {
    assert_eq!(word_tokens("a  b\nc "), ["a", "  b", "\nc"]);
    assert_eq!(word_tokens("  lead"), ["  lead"]);
    assert!(word_tokens(" \n").is_empty());
    assert_eq!(percent_decode(b"100%25 sure%2"), "100% sure%2");
    assert_eq!(percent_decode(b"%C3%A9t%C3%A9"), "été");
    assert_eq!(percent_decode(b"%zz"), "%zz");
}
