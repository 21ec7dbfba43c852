//! One request's composition: which parts are still out, what came back, and the answer once
//! it is decided. SDK-free, tested natively.

use serde::de::IgnoredAny;

use crate::config::Composition;
use crate::template::Source;

/// Why a part has no value in the document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A placeholder had no value in the request (and no default).
    MissingValue(Source),
    /// Filled in, the path would have a `.` or `..` segment.
    DotSegment,
    /// The host refused the callout (`BAD_ARGUMENT`: an upstream not in `callouts`).
    Refused,
    /// No answer within the part's timeout (or the upstream's own timeouts).
    Timeout,
    /// The callout failed otherwise: refused connection, no healthy endpoint, ...
    Unavailable,
    /// An answer whose status is not 2xx (the status as the upstream sent it).
    Status(String),
    NotJson,
    /// An answer body over `max_part_bytes`.
    TooLarge(usize),
    /// The answers kept so far plus this one would pass `max_document_bytes`.
    DocumentTooLarge(usize),
}

impl Failure {
    /// The `reason` of the part's entry in `errors` (and of the error answer for a required
    /// part). Says nothing of the upstream's addresses: the client reads it.
    pub fn reason(&self) -> String {
        match self {
            Failure::MissingValue(source) => format!("no value for {source}"),
            Failure::DotSegment => "a value makes a `.` or `..` path segment".to_owned(),
            Failure::Refused => "the callout was refused".to_owned(),
            Failure::Timeout => "timed out".to_owned(),
            Failure::Unavailable => "upstream unavailable".to_owned(),
            Failure::Status(status) => format!("upstream answered {status}"),
            Failure::NotJson => "the answer is not JSON".to_owned(),
            Failure::TooLarge(max) => format!("the answer is over {max} bytes"),
            Failure::DocumentTooLarge(max) => format!("the document would be over {max} bytes"),
        }
    }

    /// What a required part failing this way answers: the status and JSON error code.
    fn answer(&self) -> (u16, &'static str) {
        match self {
            Failure::MissingValue(_) | Failure::DotSegment => (400, "bad_request"),
            Failure::Timeout => (504, "part_timeout"),
            _ => (502, "part_failed"),
        }
    }
}

/// What the host's failure message (`proxy_get_status`, `reason: detail`) means.
pub fn callout_failure(message: &str) -> Failure {
    if message.starts_with("timeout") {
        Failure::Timeout
    } else {
        Failure::Unavailable
    }
}

/// Checks an answer's `:status`: three digits, 2xx.
pub fn check_status(status: Option<&[u8]>) -> Result<(), Failure> {
    match status {
        Some([b'2', b'0'..=b'9', b'0'..=b'9']) => Ok(()),
        Some(other) => Err(Failure::Status(String::from_utf8_lossy(other).into_owned())),
        None => Err(Failure::Status("without a status".to_owned())),
    }
}

/// The filter's answer to the client.
#[derive(Debug, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug)]
enum State {
    /// Not dispatched yet.
    Unsent,
    /// The callout with this token is out.
    Pending(u32),
    /// A JSON answer, as it came.
    Answered(Vec<u8>),
    Failed(Failure),
}

/// The parts of one request, in the composition's order.
#[derive(Debug)]
pub struct Composer {
    states: Vec<State>,
    /// Bytes of the answers kept.
    document_bytes: usize,
    /// The answer was given: later callout answers change nothing.
    finished: bool,
}

impl Composer {
    pub fn new(parts: usize) -> Composer {
        Composer {
            states: (0..parts).map(|_| State::Unsent).collect(),
            document_bytes: 0,
            finished: false,
        }
    }

    /// Part `index`'s callout is out, with `token`.
    pub fn dispatched(&mut self, index: usize, token: u32) {
        if let Some(state) = self.states.get_mut(index) {
            *state = State::Pending(token);
        }
    }

    /// Part `index` failed before its callout went out.
    pub fn failed(&mut self, index: usize, failure: Failure) {
        if let Some(state) = self.states.get_mut(index) {
            *state = State::Failed(failure);
        }
    }

    /// The part whose callout has `token`, while it is out.
    pub fn part_of(&self, token: u32) -> Option<usize> {
        self.states
            .iter()
            .position(|state| matches!(state, State::Pending(t) if *t == token))
    }

    /// The answer to part `index`'s callout: a body of a 2xx answer within `max_part_bytes`,
    /// or the failure. The body must be JSON and fit in the document. Returns the failure
    /// the part ends with, if any.
    pub fn settle(
        &mut self,
        index: usize,
        answer: Result<Vec<u8>, Failure>,
        composition: &Composition,
    ) -> Option<Failure> {
        let state = match answer {
            Ok(body) if serde_json::from_slice::<IgnoredAny>(&body).is_err() => {
                State::Failed(Failure::NotJson)
            }
            Ok(body) if self.document_bytes + body.len() > composition.max_document_bytes => {
                State::Failed(Failure::DocumentTooLarge(composition.max_document_bytes))
            }
            Ok(body) => {
                self.document_bytes += body.len();
                State::Answered(body)
            }
            Err(failure) => State::Failed(failure),
        };
        let failure = match &state {
            State::Failed(failure) => Some(failure.clone()),
            _ => None,
        };
        if let Some(slot) = self.states.get_mut(index) {
            *slot = state;
        }
        failure
    }

    /// The answer, once it is decided: a required part failed (an error), or every part is
    /// settled (the document). Given once; `None` before and after. `request_id` goes into
    /// error answers.
    pub fn response(
        &mut self,
        composition: &Composition,
        request_id: &str,
    ) -> Option<LocalResponse> {
        if self.finished {
            return None;
        }
        let required_failure =
            composition
                .parts
                .iter()
                .zip(&self.states)
                .find_map(|(part, state)| match state {
                    State::Failed(failure) if part.required => Some((part, failure)),
                    _ => None,
                });
        let response = match required_failure {
            Some((part, failure)) => {
                let (status, code) = failure.answer();
                let body = serde_json::json!({
                    "error": code,
                    "status": status,
                    "part": part.name,
                    "reason": failure.reason(),
                    "request_id": request_id,
                });
                LocalResponse {
                    status,
                    headers: json_headers("no-store"),
                    body: body.to_string().into_bytes(),
                }
            }
            None if self
                .states
                .iter()
                .any(|s| matches!(s, State::Unsent | State::Pending(_))) =>
            {
                return None
            }
            None => self.document(composition),
        };
        self.finished = true;
        Some(response)
    }

    /// `{"<part>": <answer or null>, ..., "errors": [{"part", "reason"}, ...]}`, the answers
    /// copied as they came; `errors` only when a part failed.
    fn document(&self, composition: &Composition) -> LocalResponse {
        let mut body = Vec::with_capacity(self.document_bytes + 64 * self.states.len());
        let mut errors = Vec::new();
        body.push(b'{');
        for (i, (part, state)) in composition.parts.iter().zip(&self.states).enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(json_string(&part.name).as_bytes());
            body.push(b':');
            match state {
                State::Answered(answer) => body.extend_from_slice(answer.trim_ascii()),
                State::Failed(failure) => {
                    body.extend_from_slice(b"null");
                    errors.push(serde_json::json!({"part": part.name, "reason": failure.reason()}));
                }
                // `response` asks for the document only once every part is settled.
                State::Unsent | State::Pending(_) => body.extend_from_slice(b"null"),
            }
        }
        let cache_control = if errors.is_empty() {
            composition.cache_control.as_deref()
        } else {
            body.extend_from_slice(b",\"errors\":");
            body.extend_from_slice(serde_json::Value::from(errors).to_string().as_bytes());
            // A document with a hole is never kept by a cache.
            Some("no-store")
        };
        body.push(b'}');
        let mut headers = vec![("content-type", "application/json".to_owned())];
        if let Some(value) = cache_control {
            headers.push(("cache-control", value.to_owned()));
        }
        LocalResponse {
            status: 200,
            headers,
            body,
        }
    }
}

fn json_headers(cache_control: &str) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".to_owned()),
        ("cache-control", cache_control.to_owned()),
    ]
}

fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn composition(extra: &str) -> Composition {
        let json = format!(
            r#"{{"parts": {{
                "user": {{"from": "users", "path": "/users/{{path.2}}"}},
                "orders": {{"from": "orders", "path": "/orders"}},
                "prefs": {{"from": "prefs", "path": "/prefs", "required": true}}
            }}{extra}}}"#
        );
        Composition::parse(Some(json.as_bytes())).unwrap()
    }

    /// Parts in name order: orders 0, prefs 1, user 2.
    fn dispatched_all() -> Composer {
        let mut composer = Composer::new(3);
        for (i, token) in [(0, 10), (1, 11), (2, 12)] {
            composer.dispatched(i, token);
        }
        composer
    }

    fn body(response: &LocalResponse) -> Value {
        serde_json::from_slice(&response.body).unwrap()
    }

    #[test]
    fn the_document_is_given_once_every_part_answered() {
        let composition = composition(r#", "cache_control": "public, max-age=30""#);
        let mut composer = dispatched_all();
        assert_eq!(composer.part_of(12), Some(2));
        assert_eq!(
            composer.settle(2, Ok(br#" {"id": 7} "#.to_vec()), &composition),
            None
        );
        assert_eq!(composer.part_of(12), None, "settled");
        assert_eq!(
            composer.response(&composition, "r"),
            None,
            "two parts still out"
        );
        composer.settle(0, Ok(b"[1,2]".to_vec()), &composition);
        composer.settle(1, Ok(b"\"dark\"".to_vec()), &composition);
        let response = composer.response(&composition, "r").unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(
            response.headers,
            [
                ("content-type", "application/json".to_owned()),
                ("cache-control", "public, max-age=30".to_owned())
            ]
        );
        assert_eq!(
            String::from_utf8(response.body.clone()).unwrap(),
            r#"{"orders":[1,2],"prefs":"dark","user":{"id": 7}}"#
        );
        assert_eq!(composer.response(&composition, "r"), None, "given once");
    }

    #[test]
    fn failed_parts_are_null_with_an_entry_in_errors() {
        let composition = composition("");
        let mut composer = dispatched_all();
        assert_eq!(
            composer.settle(0, Err(Failure::Timeout), &composition),
            Some(Failure::Timeout)
        );
        assert_eq!(
            composer.settle(2, Ok(b"{not json".to_vec()), &composition),
            Some(Failure::NotJson)
        );
        composer.settle(1, Ok(b"{}".to_vec()), &composition);
        let response = composer.response(&composition, "r").unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(
            response.headers[1],
            ("cache-control", "no-store".to_owned())
        );
        assert_eq!(
            body(&response),
            json!({
                "orders": null, "prefs": {}, "user": null,
                "errors": [
                    {"part": "orders", "reason": "timed out"},
                    {"part": "user", "reason": "the answer is not JSON"}
                ]
            })
        );
    }

    #[test]
    fn a_required_part_failing_answers_at_once() {
        let composition = composition("");
        for (failure, status, code) in [
            (Failure::Status("500".into()), 502, "part_failed"),
            (Failure::Unavailable, 502, "part_failed"),
            (Failure::Timeout, 504, "part_timeout"),
            (
                Failure::MissingValue(Source::PathSegment(2)),
                400,
                "bad_request",
            ),
        ] {
            let mut composer = dispatched_all();
            composer.settle(1, Err(failure.clone()), &composition);
            let response = composer.response(&composition, "req-1").unwrap();
            assert_eq!(response.status, status);
            assert_eq!(
                body(&response),
                json!({"error": code, "status": status, "part": "prefs",
                       "reason": failure.reason(), "request_id": "req-1"})
            );
            assert_eq!(composer.response(&composition, "req-1"), None);
        }
    }

    #[test]
    fn parts_that_fail_before_dispatch_count_as_settled() {
        let composition = composition("");
        let mut composer = Composer::new(3);
        composer.failed(0, Failure::Refused);
        composer.failed(2, Failure::DotSegment);
        assert_eq!(
            composer.response(&composition, "r"),
            None,
            "prefs is unsent"
        );
        composer.dispatched(1, 5);
        composer.settle(1, Ok(b"1".to_vec()), &composition);
        let response = composer.response(&composition, "r").unwrap();
        assert_eq!(body(&response)["prefs"], json!(1));
        assert_eq!(body(&response)["errors"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn the_document_size_is_bounded() {
        let composition = composition(r#", "max_document_bytes": 10"#);
        let mut composer = dispatched_all();
        assert_eq!(
            composer.settle(0, Ok(b"[1,2,3,4]".to_vec()), &composition),
            None
        );
        assert_eq!(
            composer.settle(2, Ok(b"[5,6]".to_vec()), &composition),
            Some(Failure::DocumentTooLarge(10))
        );
        assert_eq!(composer.settle(1, Ok(b"0".to_vec()), &composition), None);
        let response = composer.response(&composition, "r").unwrap();
        assert_eq!(
            body(&response)["errors"],
            json!([{"part": "user", "reason": "the document would be over 10 bytes"}])
        );
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(check_status(Some(b"200")), Ok(()));
        assert_eq!(check_status(Some(b"204")), Ok(()));
        assert_eq!(
            check_status(Some(b"404")),
            Err(Failure::Status("404".into()))
        );
        assert_eq!(
            check_status(Some(b"2000")),
            Err(Failure::Status("2000".into()))
        );
        assert_eq!(
            check_status(Some(b"2x0")),
            Err(Failure::Status("2x0".into()))
        );
        assert_eq!(
            check_status(None),
            Err(Failure::Status("without a status".into()))
        );
        assert_eq!(
            callout_failure("timeout: no answer within 100ms"),
            Failure::Timeout
        );
        assert_eq!(
            callout_failure("refused: connecting to 127.0.0.1:1"),
            Failure::Unavailable
        );
        assert_eq!(callout_failure(""), Failure::Unavailable);
    }

    #[test]
    fn hostile_answers_stay_inside_their_part() {
        // An answer that tries to close the document early is not JSON, nor is an empty one.
        let composition = composition("");
        let mut composer = dispatched_all();
        assert_eq!(
            composer.settle(
                0,
                Ok(br#"1}, "admin": true, "x": {"#.to_vec()),
                &composition
            ),
            Some(Failure::NotJson)
        );
        assert_eq!(
            composer.settle(1, Ok(Vec::new()), &composition),
            Some(Failure::NotJson)
        );
        // Deep nesting is checked without recursion (no stack to exhaust) and is JSON.
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert_eq!(
            composer.settle(2, Ok(deep.into_bytes()), &composition),
            None
        );
    }
}
