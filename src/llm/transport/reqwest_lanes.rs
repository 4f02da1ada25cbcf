//! The reqwest transport: a [`ChatHttpRequest`] over a client of
//! [`HttpPool`]'s lanes.

use futures::StreamExt;

use super::Answer;
use crate::domain::error_chain;
use crate::llm::LlmError;
use crate::llm::pool::{HttpPool, LaneGuard};
use crate::llm::request::ChatHttpRequest;

/// Sends `request` with a client from [`HttpPool::stream_client`]
/// (`shared`: whether the stream takes a counted lane place, see there);
/// the answer holds the place until it is dropped.
///
/// Errors: [`LlmError::Unavailable`] with reqwest's error and its sources
/// when no response came (the URL does not parse, connection failure,
/// connect timeout).
pub(super) async fn send(http: &HttpPool, shared: bool, request: ChatHttpRequest<'_>) -> Result<Answer, LlmError> {
    let (client, lane) = http.stream_client(shared);
    let response = client
        .post(request.url)
        .headers(request.headers)
        .body(request.body)
        .send()
        .await
        .map_err(|e| LlmError::unavailable(error_chain(&e)))?;
    Ok(Answer::from_reqwest(response, lane))
}

impl Answer {
    /// `response` as an [`Answer`] holding `lane`; body errors are
    /// described with their sources.
    pub(in crate::llm) fn from_reqwest(response: reqwest::Response, lane: Option<LaneGuard>) -> Self {
        Self {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.bytes_stream().map(|r| r.map_err(|e| error_chain(&e))).boxed(),
            lane,
        }
    }
}
