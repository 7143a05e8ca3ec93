//! Device protocol codecs of the ICU edge gateway.
pub mod mllp;
