//! The inline HTTP/1.1 transport: a [`ChatHttpRequest`] over [`H1Pool`].

use futures::StreamExt;
use http_body_util::Full;

use super::Answer;
use crate::llm::LlmError;
use crate::llm::h1::H1Pool;
use crate::llm::request::ChatHttpRequest;

/// Sends `request` on a kept or new connection of `h1`; the answer's body
/// is read by the task that polls it, and takes no lane place.
///
/// Errors: [`LlmError::Unavailable`] when the URL is not a valid HTTP URI
/// or no response head came (see [`H1Pool::send`]).
pub(super) async fn send(h1: &H1Pool, request: ChatHttpRequest<'_>) -> Result<Answer, LlmError> {
    let mut http_request = http::Request::post(request.url)
        .body(Full::new(request.body))
        .map_err(|e| LlmError::unavailable(format!("cannot build the request: {e}")))?;
    *http_request.headers_mut() = request.headers;
    let (parts, body) = h1.send(http_request).await.map_err(LlmError::unavailable)?;
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.boxed(),
        lane: None,
    })
}
