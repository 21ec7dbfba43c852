//! A response edgeward makes instead of an upstream's: a filter's own (its local response)
//! or edgeward's JSON error when a filter failed; and the JSON errors every answer of
//! edgeward's shares. Below the conductor, so that `builtin: filters` origins answer as the
//! proxy does.

use bytes::Bytes;
use http::{header, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::prelude::*;

use crate::wasm::{FilterFailure, LocalResponse};

/// The request id header: sent upstream, and on every answer of edgeward's.
pub(crate) const REQUEST_ID: &str = "x-request-id";

/// A response edgeward writes instead of the upstream's.
#[derive(Debug)]
pub(crate) enum Answer {
    Local(LocalResponse),
    FilterFailed(FilterFailure),
}

impl Answer {
    pub(crate) fn status(&self) -> u16 {
        match self {
            Answer::Local(response) => response.status,
            Answer::FilterFailed(failure) => failure.status,
        }
    }

    /// The error code for the access log, when a filter failed.
    pub(crate) fn error_code(&self) -> Option<&'static str> {
        match self {
            Answer::Local(_) => None,
            Answer::FilterFailed(failure) => Some(failure.code),
        }
    }

    /// What `response.code_details` says of it: the details the filter gave its response
    /// (spaces made `_`, as Envoy requires), else `filter_local_reply`; or the failure's code.
    pub(crate) fn code_details(&self) -> String {
        match self {
            Answer::Local(local) if local.details.trim().is_empty() => {
                "filter_local_reply".to_string()
            }
            Answer::Local(local) => local
                .details
                .trim()
                .chars()
                .map(|c| if c.is_whitespace() { '_' } else { c })
                .collect(),
            Answer::FilterFailed(failure) => failure.code.to_string(),
        }
    }

    /// The head and body: the filter's own response, or edgeward's JSON error naming the
    /// filter.
    pub(crate) fn response(&self, request_id: &HeaderValue) -> Result<(ResponseHeader, Bytes)> {
        match self {
            Answer::Local(local) => {
                let mut head = ResponseHeader::build(local.status, Some(local.headers.len() + 1))?;
                for (name, value) in &local.headers {
                    if let (Ok(name), Ok(value)) = (
                        http::HeaderName::from_bytes(name),
                        HeaderValue::from_bytes(value),
                    ) {
                        head.append_header(name, value)?;
                    }
                }
                head.remove_header(&header::TRANSFER_ENCODING);
                head.set_content_length(local.body.len())?;
                Ok((head, Bytes::copy_from_slice(&local.body)))
            }
            Answer::FilterFailed(failure) => {
                let mut body =
                    error_body(failure.code, failure.status, &failure.message, request_id);
                body["filter"] = failure.filter.as_str().into();
                json(failure.status, &body, request_id)
            }
        }
    }
}

/// The fields every JSON error of edgeward's has.
pub(crate) fn error_body(
    code: &str,
    status: u16,
    message: &str,
    request_id: &HeaderValue,
) -> serde_json::Value {
    serde_json::json!({
        "error": code,
        "status": status,
        "message": message,
        "request_id": request_id.to_str().unwrap_or_default(),
    })
}

/// A JSON answer of edgeward's own: never cached, tagged with the request id.
pub(crate) fn json(
    status: u16,
    body: &serde_json::Value,
    request_id: &HeaderValue,
) -> Result<(ResponseHeader, Bytes)> {
    let body = body.to_string();
    let mut head = ResponseHeader::build(status, Some(4))?;
    head.insert_header(header::CONTENT_TYPE, "application/json")?;
    head.insert_header(header::CACHE_CONTROL, "no-store")?;
    head.insert_header(REQUEST_ID, request_id.clone())?;
    head.set_content_length(body.len())?;
    Ok((head, Bytes::from(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_details_name_what_answered() {
        let local = |details: &str| {
            Answer::Local(LocalResponse {
                status: 403,
                headers: Vec::new(),
                body: Vec::new(),
                details: details.to_string(),
            })
        };
        assert_eq!(local("").code_details(), "filter_local_reply");
        assert_eq!(
            local(" denied by policy ").code_details(),
            "denied_by_policy"
        );
        let failed = Answer::FilterFailed(FilterFailure {
            filter: "f".into(),
            status: 504,
            code: "filter_timeout",
            message: String::new(),
        });
        assert_eq!(failed.code_details(), "filter_timeout");
    }
}
