//! `payctl payments show`: one payment.

use serde::Serialize;

use crate::exit::refuse;
use crate::output::{self, Output, Rendered, Report};
use crate::payments::{Payment, PaymentKind, PaymentRequest, PaymentStatus, ProcessingStatus};
use crate::store::Redis;

/// Show a payment (exit 1 when there is none with that id).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  payctl payments show 7d1c2a9e-0b7f-4a53-8f58-7c1f1c3e9a10 --output json"
)]
pub struct Args {
    pub id: String,
}

/// A payment as `--output json` prints it: the amount a string with the
/// currency's digits (`"9.90"`); `payment:{id}` keeps its number.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Payment)]
pub struct PaymentView<'a> {
    pub payment_id: &'a str,
    pub user_id: &'a str,
    pub plan: &'a str,
    pub amount: String,
    pub currency: &'a str,
    pub kind: PaymentKind,
    pub processing_status: ProcessingStatus,
    pub payment_status: PaymentStatus,
    pub created_at: &'a str,
    pub updated_at: &'a str,
    pub requested_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'a str>,
}

impl<'a> From<&'a Payment> for PaymentView<'a> {
    fn from(p: &'a Payment) -> Self {
        PaymentView {
            payment_id: &p.payment_id,
            user_id: &p.user_id,
            plan: &p.plan,
            amount: output::amount_text(p.amount, Some(&p.currency)),
            currency: &p.currency,
            kind: p.kind,
            processing_status: p.processing_status,
            payment_status: p.payment_status,
            created_at: &p.created_at,
            updated_at: &p.updated_at,
            requested_ms: p.requested_ms,
            detail: p.detail.as_deref(),
        }
    }
}

/// A payment request as `payments submit --output json` prints it: the
/// amount a string (the request on the topic keeps its number).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = PaymentRequest)]
pub struct RequestView<'a> {
    pub payment_id: &'a str,
    pub user_id: &'a str,
    pub plan: &'a str,
    pub amount: String,
    pub currency: &'a str,
    pub kind: PaymentKind,
    pub requested_at: Option<&'a str>,
    pub requested_ms: Option<u64>,
}

/// Serializes a request for output, as [`RequestView`]: for
/// `#[serde(serialize_with)]` on output structs that hold a [`PaymentRequest`].
pub fn serialize_request<S: serde::Serializer>(
    r: &PaymentRequest,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    RequestView {
        payment_id: &r.payment_id,
        user_id: &r.user_id,
        plan: &r.plan,
        amount: output::amount_text(r.amount, Some(&r.currency)),
        currency: &r.currency,
        kind: r.kind,
        requested_at: r.requested_at.as_deref(),
        requested_ms: r.requested_ms,
    }
    .serialize(serializer)
}

/// One payment, printed.
pub struct Shown(pub Payment);

impl Serialize for Shown {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        PaymentView::from(&self.0).serialize(serializer)
    }
}

impl Report for Shown {
    fn render(&self) -> Rendered {
        self.0.render()
    }
}

pub async fn run(args: Args, redis: &mut Redis, output: Output) -> anyhow::Result<()> {
    match super::get(redis, &args.id).await? {
        Some(payment) => output.emit(&Shown(payment)),
        None => Err(refuse(format!(
            "no payment {}",
            output::id_for_message(&args.id)
        ))),
    }
}
