//! Consumer groups: which exist, and how far behind each is.

pub mod lag;
pub mod list;
