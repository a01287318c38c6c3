//! [`QuizError`]: what a request can fail with, one variant per HTTP status
//! of the contract (the transport maps it to a status or an `error`
//! message).

use crate::store::StoreError;

/// Errors of the service, one per HTTP status of the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuizError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    RateLimited(String),
    #[error("{0}")]
    Unavailable(String),
    /// 503 `unavailable` too, refused by admission control before
    /// anything was written: the client retries after a `Retry-After`
    /// spread over 1–3 s (see `admission.rs`).
    #[error("{0}")]
    Busy(String),
    /// 409 with its own code: the quiz has `max_players_per_quiz` players.
    #[error("{0}")]
    QuizFull(String),
}

impl QuizError {
    pub fn code(&self) -> &'static str {
        match self {
            QuizError::Invalid(_) => "invalid",
            QuizError::Unauthorized(_) => "unauthorized",
            QuizError::Forbidden(_) => "forbidden",
            QuizError::NotFound(_) => "not_found",
            QuizError::Conflict(_) => "conflict",
            QuizError::TooLarge(_) => "too_large",
            QuizError::RateLimited(_) => "rate_limited",
            QuizError::Unavailable(_) | QuizError::Busy(_) => "unavailable",
            QuizError::QuizFull(_) => "quiz_full",
        }
    }
}

impl From<StoreError> for QuizError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => QuizError::Conflict(m),
            StoreError::NotFound(m) => QuizError::NotFound(m),
            StoreError::Unavailable(m) => QuizError::Unavailable(format!("store: {m}")),
            StoreError::Full(m) => QuizError::QuizFull(format!(
                "{m}: no more players can join (max_players_per_quiz)"
            )),
        }
    }
}
