//! Bounded input of the HTTP surface: the longest strings a request may carry.

use actix_web::HttpResponse;

/// Longest user name (`who`) or bed id accepted, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest alarm id accepted (`bed:kind:rule:code:time`), in characters.
pub const MAX_ALARM_ID_CHARS: usize = 256;
/// Longest free text accepted (a reason), in characters.
pub const MAX_TEXT_CHARS: usize = 500;

/// The refusal (400, naming the field and its limit) of a request one of whose strings is
/// longer than allowed: `(field, value, most characters)`. Handlers call it first.
pub(crate) fn check_lengths(fields: &[(&str, &str, usize)]) -> Option<HttpResponse> {
    for &(field, value, max) in fields {
        let n = value.chars().count();
        if n > max {
            return Some(HttpResponse::BadRequest().body(format!(
                "'{field}' is {n} characters long; at most {max} are accepted\n"
            )));
        }
    }
    None
}
