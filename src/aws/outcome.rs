//! What a failed AWS request means for whoever sent it: may it be sent again? One rule for every SDK
//! call (the drain's effects, the CloudWatch publisher and the retry classifier that keeps the SDK from
//! sending PutMetricData twice), with the SDK's own list of throttling error codes.

use std::error::Error as StdError;

use aws_runtime::retries::classifiers::{THROTTLING_ERRORS, TRANSIENT_ERRORS};
use aws_smithy_runtime_api::client::interceptors::context::InterceptorContext;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::{ConnectorError, SdkError};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// What the caller of a failed request may do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Certainly not applied: nothing left this host (connection refused, no such host, connect
    /// timeout), or AWS answered without acting on it (throttling, 408, 429, 503). Safe to send again.
    NotApplied,
    /// May have been applied: the request may have reached AWS and the answer was lost (a timeout, a
    /// connection cut after it was established, an unreadable response), or AWS failed part way
    /// (500, 502, 504). Sending it again is safe only when applying it twice does no harm.
    MaybeApplied,
    /// Refused for good (validation, access denied, not found, a request that cannot be built):
    /// sending it again cannot help.
    Rejected,
}

/// The final error of an SDK call (after the SDK's own retries).
pub fn classify<E>(e: &SdkError<E, HttpResponse>) -> Outcome
where
    E: ProvideErrorMetadata,
{
    match e {
        // Before serialization: the same input fails the same way every time.
        SdkError::ConstructionFailure(_) => Outcome::Rejected,
        SdkError::TimeoutError(_) => Outcome::MaybeApplied,
        SdkError::DispatchFailure(d) => d
            .as_connector_error()
            .map_or(Outcome::MaybeApplied, connector_outcome),
        // A response came back but could not be read: the request reached AWS.
        SdkError::ResponseError(_) => Outcome::MaybeApplied,
        SdkError::ServiceError(s) => service_outcome(s.err().code(), s.raw().status().as_u16()),
        _ => Outcome::MaybeApplied,
    }
}

/// The same rule for one failed attempt inside the SDK's retry loop, where a retry classifier sees
/// the error before the SDK turns it into an [`SdkError`]. `E` is the operation's error type (for its
/// code). `None` when the attempt did not fail, or failed outside the request (an interceptor).
pub fn classify_attempt<E>(ctx: &InterceptorContext) -> Option<Outcome>
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let Some(Err(err)) = ctx.output_or_error() else {
        return None;
    };
    if err.is_timeout_error() || err.is_response_error() {
        return Some(Outcome::MaybeApplied);
    }
    if let Some(c) = err.as_connector_error() {
        return Some(connector_outcome(c));
    }
    let op = err.as_operation_error()?;
    let status = ctx.response()?.status().as_u16();
    let code = op.downcast_ref::<E>().and_then(|e| e.code());
    Some(service_outcome(code, status))
}

/// An HTTP error status. 408 (the request did not arrive whole), 429 (too many requests) and 503 (the
/// service did not take the request: AWS's ServiceUnavailable, EC2's RequestLimitExceeded) were not
/// applied; any other 5xx may have been (the service, or a gateway in front of it, failed after the
/// request arrived); every other status is a refusal.
fn status_outcome(status: u16) -> Outcome {
    match status {
        408 | 429 | 503 => Outcome::NotApplied,
        500..=599 => Outcome::MaybeApplied,
        _ => Outcome::Rejected,
    }
}

/// An error response: the SDK's throttling and transient error codes (whatever the status they come
/// with) were not applied, otherwise the status decides.
fn service_outcome(code: Option<&str>, status: u16) -> Outcome {
    let retryable = |c: &str| THROTTLING_ERRORS.contains(&c) || TRANSIENT_ERRORS.contains(&c);
    if code.is_some_and(retryable) {
        Outcome::NotApplied
    } else {
        status_outcome(status)
    }
}

/// A connection-level failure: not applied when nothing was sent, otherwise maybe applied.
fn connector_outcome(e: &ConnectorError) -> Outcome {
    if never_connected(e) {
        Outcome::NotApplied
    } else {
        Outcome::MaybeApplied
    }
}

/// Whether a connection failure happened before anything was sent: refused, or no such host.
fn never_connected(e: &(dyn StdError + 'static)) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(io.kind(), ConnectionRefused | AddrNotAvailable | NotFound) {
                return true;
            }
        }
        // hyper-util reports DNS failures as "dns error"; the resolver's own type is private.
        // A connect timeout (aws-smithy-http-client: "HTTP connect timeout occurred after …") also
        // sent nothing; a read timeout or the SDK's attempt timeout may have.
        let text = err.to_string();
        if text.contains("dns error")
            || text.contains("failed to lookup address")
            || text.contains("connect timeout")
        {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::io;

    use aws_sdk_cloudwatch::operation::put_metric_data::PutMetricDataError;
    use aws_smithy_runtime_api::client::interceptors::context::{Error, Input};
    use aws_smithy_runtime_api::client::orchestrator::OrchestratorError;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    use super::*;
    use Outcome::*;

    /// One way a request fails, built both as the SDK's final error and as a failed attempt.
    enum Failed {
        /// An error response: code (if any) and HTTP status.
        Service(Option<&'static str>, u16),
        Timeout,
        Dispatch(fn() -> ConnectorError),
        Unreadable,
        Unbuilt,
    }

    fn response(status: u16) -> HttpResponse {
        HttpResponse::new(status.try_into().expect("valid status"), SdkBody::empty())
    }

    fn operation_error(code: Option<&str>) -> PutMetricDataError {
        let mut meta = ErrorMetadata::builder().message("from the table");
        if let Some(code) = code {
            meta = meta.code(code);
        }
        PutMetricDataError::generic(meta.build())
    }

    fn sdk_error(f: &Failed) -> SdkError<PutMetricDataError, HttpResponse> {
        match f {
            Failed::Service(code, status) => {
                SdkError::service_error(operation_error(*code), response(*status))
            }
            Failed::Timeout => {
                SdkError::timeout_error("operation timeout (all attempts) after 30s")
            }
            Failed::Dispatch(connector) => SdkError::dispatch_failure(connector()),
            Failed::Unreadable => SdkError::response_error("unexpected end of body", response(200)),
            Failed::Unbuilt => SdkError::construction_failure("namespace is required"),
        }
    }

    /// The same failure as the SDK's retry classifiers see it; `None` for one that never gets there.
    fn attempt(f: &Failed) -> Option<InterceptorContext> {
        let mut ctx = InterceptorContext::new(Input::doesnt_matter());
        let err = match f {
            Failed::Service(code, status) => {
                ctx.set_response(response(*status));
                OrchestratorError::operation(Error::erase(operation_error(*code)))
            }
            Failed::Timeout => OrchestratorError::timeout("attempt timeout after 10s".into()),
            Failed::Dispatch(connector) => OrchestratorError::connector(connector()),
            Failed::Unreadable => {
                ctx.set_response(response(200));
                OrchestratorError::response("unexpected end of body".into())
            }
            Failed::Unbuilt => return None,
        };
        ctx.set_output_or_error(Err(err));
        Some(ctx)
    }

    fn refused() -> ConnectorError {
        ConnectorError::io(io::Error::from(io::ErrorKind::ConnectionRefused).into())
    }
    fn no_such_host() -> ConnectorError {
        ConnectorError::io(
            io::Error::other(
                "dns error: failed to lookup address information: Name or service not known",
            )
            .into(),
        )
    }
    fn connect_timeout() -> ConnectorError {
        ConnectorError::timeout("HTTP connect timeout occurred after 3s".into())
    }
    fn read_timeout() -> ConnectorError {
        ConnectorError::timeout("HTTP read timeout occurred after 10s".into())
    }
    fn reset_after_sending() -> ConnectorError {
        ConnectorError::io(io::Error::from(io::ErrorKind::ConnectionReset).into())
    }
    fn closed_mid_response() -> ConnectorError {
        ConnectorError::other("connection closed before message completed".into(), None)
    }

    #[test]
    fn every_failure_has_one_outcome_for_the_caller_and_the_retry_classifier() {
        let table: &[(&str, Failed, Outcome)] = &[
            // The SDK's throttling codes, whatever the status they come with.
            (
                "throttling",
                Failed::Service(Some("Throttling"), 400),
                NotApplied,
            ),
            (
                "ThrottlingException",
                Failed::Service(Some("ThrottlingException"), 400),
                NotApplied,
            ),
            (
                "ThrottledException",
                Failed::Service(Some("ThrottledException"), 400),
                NotApplied,
            ),
            (
                "TooManyRequestsException",
                Failed::Service(Some("TooManyRequestsException"), 429),
                NotApplied,
            ),
            (
                "EC2 RequestLimitExceeded",
                Failed::Service(Some("RequestLimitExceeded"), 503),
                NotApplied,
            ),
            (
                "LimitExceededException",
                Failed::Service(Some("LimitExceededException"), 400),
                NotApplied,
            ),
            (
                "throttling code on a 500",
                Failed::Service(Some("PriorRequestNotComplete"), 500),
                NotApplied,
            ),
            (
                "the SDK's transient code",
                Failed::Service(Some("RequestTimeout"), 400),
                NotApplied,
            ),
            // Statuses without such a code.
            ("429 without a code", Failed::Service(None, 429), NotApplied),
            (
                "408 request timeout",
                Failed::Service(None, 408),
                NotApplied,
            ),
            (
                "503 service unavailable",
                Failed::Service(Some("ServiceUnavailable"), 503),
                NotApplied,
            ),
            (
                "500 internal failure",
                Failed::Service(Some("InternalFailure"), 500),
                MaybeApplied,
            ),
            (
                "ECS ServerException",
                Failed::Service(Some("ServerException"), 500),
                MaybeApplied,
            ),
            ("502 bad gateway", Failed::Service(None, 502), MaybeApplied),
            (
                "504 gateway timeout",
                Failed::Service(None, 504),
                MaybeApplied,
            ),
            // Refusals.
            (
                "validation",
                Failed::Service(Some("ValidationError"), 400),
                Rejected,
            ),
            (
                "invalid parameter",
                Failed::Service(Some("InvalidParameterValue"), 400),
                Rejected,
            ),
            (
                "access denied",
                Failed::Service(Some("AccessDenied"), 403),
                Rejected,
            ),
            (
                "ECS ClientException",
                Failed::Service(Some("ClientException"), 400),
                Rejected,
            ),
            (
                "a quota, not a throttle",
                Failed::Service(Some("LimitExceeded"), 400),
                Rejected,
            ),
            ("not found", Failed::Service(None, 404), Rejected),
            // Without an answer.
            ("timeout", Failed::Timeout, MaybeApplied),
            ("connection refused", Failed::Dispatch(refused), NotApplied),
            ("no such host", Failed::Dispatch(no_such_host), NotApplied),
            (
                "connect timeout",
                Failed::Dispatch(connect_timeout),
                NotApplied,
            ),
            ("read timeout", Failed::Dispatch(read_timeout), MaybeApplied),
            (
                "reset after sending",
                Failed::Dispatch(reset_after_sending),
                MaybeApplied,
            ),
            (
                "closed mid-response",
                Failed::Dispatch(closed_mid_response),
                MaybeApplied,
            ),
            ("unreadable response", Failed::Unreadable, MaybeApplied),
            ("request cannot be built", Failed::Unbuilt, Rejected),
        ];
        for (case, failed, outcome) in table {
            assert_eq!(classify(&sdk_error(failed)), *outcome, "{case}");
            if let Some(ctx) = attempt(failed) {
                assert_eq!(
                    classify_attempt::<PutMetricDataError>(&ctx),
                    Some(*outcome),
                    "{case} (attempt)"
                );
            }
        }
    }

    #[test]
    fn an_attempt_that_succeeded_or_has_not_run_has_no_outcome() {
        let ctx = InterceptorContext::new(Input::doesnt_matter());
        assert_eq!(classify_attempt::<PutMetricDataError>(&ctx), None);
        let mut ctx = InterceptorContext::new(Input::doesnt_matter());
        ctx.set_output_or_error(Ok(
            aws_smithy_runtime_api::client::interceptors::context::Output::doesnt_matter(),
        ));
        assert_eq!(classify_attempt::<PutMetricDataError>(&ctx), None);
    }

    #[test]
    fn http_statuses() {
        let table: &[(u16, Outcome)] = &[
            (408, NotApplied),
            (429, NotApplied),
            (503, NotApplied),
            (500, MaybeApplied),
            (502, MaybeApplied),
            (504, MaybeApplied),
            (599, MaybeApplied),
            (400, Rejected),
            (401, Rejected),
            (403, Rejected),
            (404, Rejected),
        ];
        for (status, outcome) in table {
            assert_eq!(status_outcome(*status), *outcome, "{status}");
        }
    }
}
