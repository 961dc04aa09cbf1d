//! Reading a simulator request: the capped body, its fields, and OpenAI-shaped errors.

use super::*;

/// An error response: its status and its OpenAI-shaped JSON body.
pub(super) struct ApiError(pub(super) StatusCode, pub(super) Value);

impl ApiError {
    pub(super) fn new(status: u16, param: Option<&str>, code: Option<&str>, message: String) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        let kind = "invalid_request_error";
        let error = json!({"message": message, "type": kind, "param": param, "code": code});
        Self(status, json!({ "error": error }))
    }
}

pub(super) fn error(status: u16, param: Option<&str>, message: impl Into<String>) -> ApiError {
    ApiError::new(status, param, None, message.into())
}

pub(super) fn bad(param: &str, message: impl Into<String>) -> ApiError {
    error(400, Some(param), message)
}

/// Reads the whole request body, refusing more than `MAX_BODY` bytes without buffering them.
pub(super) async fn read_body<B>(body: B) -> Result<Vec<u8>, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let too_large = || error(413, None, "The request body exceeds 32 MiB");
    if body.size_hint().lower() > MAX_BODY as u64 {
        return Err(too_large());
    }
    let mut body = std::pin::pin!(body);
    let mut buf = Vec::new();
    while let Some(frame) = body.as_mut().frame().await {
        let unreadable = |e: B::Error| error(400, None, format!("Unreadable body: {e}"));
        if let Ok(data) = frame.map_err(unreadable)?.into_data() {
            if buf.len() + data.len() > MAX_BODY {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

/// The strings inside a content, prompt or input value: the value itself if it is a string, else
/// the strings and the "text" of the parts of an array.
pub(super) fn texts(v: Option<&Value>) -> impl Iterator<Item = &str> {
    fn part(x: &Value) -> Option<&str> {
        x.as_str().or_else(|| x.get("text").and_then(Value::as_str))
    }
    v.and_then(Value::as_str).into_iter().chain(array(v).iter().filter_map(part))
}

pub(super) fn array(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

pub(super) fn string_or_strings(v: Option<&Value>) -> bool {
    match v {
        Some(Value::String(_)) => true,
        Some(Value::Array(items)) => !items.is_empty() && items.iter().all(Value::is_string),
        _ => false,
    }
}

/// `body[key]` unless it is absent or null, which OpenAI treats alike.
pub(super) fn field<'a>(body: &'a Value, key: &str) -> Option<&'a Value> {
    body.get(key).filter(|v| !v.is_null())
}

pub(super) fn flag(body: &Value, key: &str, param: &'static str) -> Result<bool, ApiError> {
    match field(body, key) {
        None => Ok(false),
        Some(v) => v.as_bool().ok_or_else(|| bad(param, format!("Bad '{key}'"))),
    }
}
