//! Transaction outcomes (seed 004's transaction log), read from `payment_transactions`.

pub mod log;
