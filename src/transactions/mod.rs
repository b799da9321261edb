//! Transaction outcomes (the transaction service's log), read from `payment_transactions`.

pub mod log;
