//! `payctl payments submit` and `payctl payments refund`: requests to the
//! `payments` topic (the subscription payment pipeline).

use serde::Serialize;

use crate::exit::refuse;
use crate::kafka::{produce_all, Outgoing};
use crate::money::{Currency, Money};
use crate::output::{Output, Rendered, Report};
use crate::payments::{self, check_id, check_plan, PaymentKind, PaymentRequest};
use crate::store::Redis;

/// Ask to pay for a subscription. Refused (exit 1) while the user has an active one.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  payctl payments submit --user alice --plan premium --amount 9.99\n  payctl payments submit --user bob --plan basic --amount 499 --currency RUB"
)]
pub struct SubmitArgs {
    #[arg(long)]
    pub user: String,
    #[arg(long)]
    pub plan: String,
    /// Exact decimal amount.
    #[arg(long, allow_hyphen_values = true)]
    pub amount: String,
    #[arg(long, default_value = "USD")]
    pub currency: String,
}

/// Ask for a refund of the active subscription. Refused (exit 1) without one.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  payctl payments refund --user alice")]
pub struct RefundArgs {
    #[arg(long)]
    pub user: String,
}

/// A request made, printed.
#[derive(Serialize)]
pub struct Submitted {
    #[serde(flatten, serialize_with = "super::show::serialize_request")]
    pub request: PaymentRequest,
}

impl Report for Submitted {
    fn render(&self) -> Rendered {
        Rendered::Line(self.request.payment_id.clone())
    }
}

fn new_request(user: &str, plan: &str, amount: Money, kind: PaymentKind) -> PaymentRequest {
    PaymentRequest {
        payment_id: uuid::Uuid::new_v4().to_string(),
        user_id: user.to_string(),
        plan: plan.to_string(),
        amount: amount.to_decimal(),
        currency: amount.currency().code().into(),
        kind,
        requested_at: Some(crate::clock::now_rfc3339()),
        requested_ms: Some(crate::clock::now_millis()),
    }
}

/// Publishes `request` to `topic`, keyed by its user.
async fn publish(
    request: PaymentRequest,
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
) -> anyhow::Result<PaymentRequest> {
    let message = Outgoing {
        topic: topic.to_string(),
        key: Some(request.user_id.clone()),
        payload: serde_json::to_vec(&request)?,
        headers: Vec::new(),
    };
    produce_all(producer, &[message]).await?;
    Ok(request)
}

/// Asks to pay `amount` for `plan`: refused (a [`crate::exit::Refusal`])
/// while `user` has an active subscription, else published to `topic`.
pub async fn pay(
    redis: &mut Redis,
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    user: &str,
    plan: &str,
    amount: Money,
) -> anyhow::Result<PaymentRequest> {
    check_id("the user", user).map_err(anyhow::Error::msg)?;
    check_plan("the plan", plan).map_err(anyhow::Error::msg)?;
    if let Some(active) = payments::active_subscription(redis, user).await? {
        let plan = active.get("plan").cloned().unwrap_or_default();
        return Err(refuse(format!(
            "{user} already has an active subscription ({plan}); nothing was submitted"
        )));
    }
    let request = new_request(user, plan, amount, PaymentKind::Payment);
    publish(request, producer, topic).await
}

/// Asks for a refund of `user`'s active subscription, for its plan and
/// amount: refused (a [`crate::exit::Refusal`]) without one.
pub async fn refund_active(
    redis: &mut Redis,
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    user: &str,
) -> anyhow::Result<PaymentRequest> {
    check_id("the user", user).map_err(anyhow::Error::msg)?;
    let Some(subscription) = payments::active_subscription(redis, user).await? else {
        return Err(refuse(format!(
            "{user} has no active subscription to refund"
        )));
    };
    let field = |name: &str| {
        subscription
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("subscription of {user} has no {name}"))
    };
    // The hash may have been written by another service: check what it says.
    let plan = field("plan")?;
    check_plan("its plan", &plan)
        .map_err(|e| anyhow::anyhow!("the subscription of {user} is unusable: {e}"))?;
    let currency = Currency::parse(&field("currency")?)?;
    let amount = Money::parse_amount(&field("amount")?, currency)?;
    let request = new_request(user, &plan, amount, PaymentKind::Refund);
    publish(request, producer, topic).await
}

pub async fn submit(
    args: SubmitArgs,
    redis: &mut Redis,
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    output: Output,
) -> anyhow::Result<()> {
    check_id("--user", &args.user).map_err(anyhow::Error::msg)?;
    check_plan("--plan", &args.plan).map_err(anyhow::Error::msg)?;
    let amount = Money::parse_amount(&args.amount, Currency::parse(&args.currency)?)?;
    let request = pay(redis, producer, topic, &args.user, &args.plan, amount).await?;
    output.emit(&Submitted { request })
}

pub async fn refund(
    args: RefundArgs,
    redis: &mut Redis,
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    output: Output,
) -> anyhow::Result<()> {
    check_id("--user", &args.user).map_err(anyhow::Error::msg)?;
    let request = refund_active(redis, producer, topic, &args.user).await?;
    output.emit(&Submitted { request })
}
