//! Payments on a Redis Cluster, where a payment's record, its user's
//! subscription and claims, and the status sets live in different hash
//! slots, so the one-script steps of a single server (`claim.lua`,
//! `answer.lua`) become short sequences of steps, each atomic within one
//! slot and safe to run again.
//!
//! | slot | keys |
//! |---|---|
//! | the payment's | `payment:ID` (the record: the source of truth) |
//! | the user's | `subscription:USER`, and the claims `{TAG}payments:claim:KIND:USER` (TAG puts them in the subscription's slot) |
//! | one each | the status sets, `payments:unannounced`, `payments`, `payments:user:USER` (indices) |
//!
//! The invariant of one charge per subscription lives in the user's slot:
//! a payment goes to the processor only if it holds its user's claim, taken
//! (`USER_CLAIM`) only when the subscription allows it and no live payment
//! holds the claim. The claim is given up (`USER_ANSWER`) in the step that
//! applies the answer to the subscription, so the subscription changes
//! once per claim. The status sets follow the records and are repaired
//! from them when a crash left them behind.
//!
//! Steps and what a crash between two of them leaves:
//! - claim: user step, then record `new → in_processing`, then the sets.
//!   After the user step: the claim is held by a payment still `new`; the
//!   next pass claims it again (the claim is already its own) and goes on.
//! - answer: queued in `payments:unannounced`, then record
//!   `in_processing → processed`, then the user step, then the sets.
//!   After the queueing: the announce step skips a record not yet
//!   answered, and the payment is sent again. After the record: the
//!   announce step of the next pass applies the user step first; a later
//!   payment of the same user finishes it before its own claim.

use std::collections::HashMap;
use std::sync::LazyLock;

use anyhow::Context as _;

use crate::payments::{keys, Payment, PaymentKind, PaymentStatus, ProcessingStatus};
use crate::store::{invoke_each, query_each, slot, slot_tag, Redis, Script};

/// Takes a user's claim for a payment if the subscription allows it.
/// KEYS: claim, subscription, the user's answered payments. ARGV: id, kind,
/// a holder known to hold nothing any more ('' if none). Returns {1, ''}
/// claimed (or held by this payment already), {2, reason} refused by the
/// subscription, {3, holder} held by another payment (the caller looks at
/// it and asks again), {4, ''} this payment was answered already.
static USER_CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local id, kind, stale = ARGV[1], ARGV[2], ARGV[3]
if redis.call('SISMEMBER', KEYS[3], id) == 1 then return {4, ''} end
local holder = redis.call('GET', KEYS[1])
if holder == id then return {1, ''} end
if holder and holder ~= stale then return {3, holder} end
local subscription = redis.call('HMGET', KEYS[2], 'status', 'payment_id')
local active = subscription[1] == 'active'
if kind == 'payment' and active then
  return {2, 'the subscription is already paid (payment ' .. (subscription[2] or 'unknown') .. ')'}
elseif kind == 'refund' and not active then
  return {2, 'no active subscription to refund'}
end
redis.call('SET', KEYS[1], id)
return {1, ''}
"#,
    )
});

/// Applies a payment's answer to its subscription and gives up its claim,
/// only while the payment holds the claim, and once per payment (its id
/// joins the user's answered payments in the same step).
/// KEYS: subscription, claim, the user's answered payments. ARGV: id,
/// change ('activate', 'end' or ''), plan, amount, currency, now. Returns 1
/// the claim given up (and the change applied, the first time), 0 the
/// claim is not held.
static USER_ANSWER: LazyLock<Script> = LazyLock::new(|| {
    let body = r#"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if redis.call('SADD', KEYS[3], ARGV[1]) == 1 then
  change_subscription(KEYS[1], ARGV[2], ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
end
redis.call('DEL', KEYS[2])
return 1
"#;
    Script::new(&[include_str!("subscription.lua"), body].concat())
});

/// Moves a record from one processing status to another, if it is still
/// the user's payment of that kind in `from`.
/// KEYS: payment. ARGV: from, to, user, kind, the record as `to`.
/// Returns 1 moved, 2 already in `to`, 0 neither (nothing written).
static RECORD_MOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local ok, payment = pcall(cjson.decode, current)
if not ok or type(payment) ~= 'table' or payment.user_id ~= ARGV[3] or payment.kind ~= ARGV[4] then
  return 0
end
if payment.processing_status == ARGV[2] then return 2 end
if payment.processing_status ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[5])
return 1
"#,
    )
});

/// A user's claim for `kind` on a cluster: in the slot of the user's
/// subscription, whatever braces the user id holds (the tag comes first).
pub fn claim_key(kind: PaymentKind, user: &str) -> String {
    let subscription = keys::subscription(user);
    let tag = slot_tag(slot(subscription.as_bytes()));
    format!("{tag}{}", keys::claim(kind, user))
}

/// The ids of a user's payments whose answer reached the subscription, in
/// the subscription's slot: a payment is never claimed, nor its answer
/// applied, a second time.
fn answered_key(user: &str) -> String {
    let subscription = keys::subscription(user);
    let tag = slot_tag(slot(subscription.as_bytes()));
    format!("{tag}payments:answered:{user}")
}

/// What an answer changes in the subscription: see `answer.lua`.
pub fn subscription_change(payment: &Payment) -> &'static str {
    match (payment.kind, payment.payment_status) {
        (PaymentKind::Payment, PaymentStatus::Accepted) => "activate",
        (PaymentKind::Refund, PaymentStatus::Accepted) => "end",
        _ => "",
    }
}

fn user_claim(payment: &Payment, stale: &str) -> redis::ScriptInvocation<'static> {
    let mut call = USER_CLAIM.invocation();
    call.key(claim_key(payment.kind, &payment.user_id))
        .key(keys::subscription(&payment.user_id))
        .key(answered_key(&payment.user_id))
        .arg(&payment.payment_id)
        .arg(payment.kind.as_str())
        .arg(stale);
    call
}

/// The user step of `payment`'s answer (change '' only gives up the claim).
fn user_answer(payment: &Payment, change: &str) -> redis::ScriptInvocation<'static> {
    let mut call = USER_ANSWER.invocation();
    call.key(keys::subscription(&payment.user_id))
        .key(claim_key(payment.kind, &payment.user_id))
        .key(answered_key(&payment.user_id))
        .arg(&payment.payment_id)
        .arg(change)
        .arg(&payment.plan)
        .arg(payment.amount.to_string())
        .arg(&payment.currency)
        .arg(&payment.updated_at);
    call
}

fn record_move(
    payment: &Payment,
    from: ProcessingStatus,
    to: &Payment,
) -> anyhow::Result<redis::ScriptInvocation<'static>> {
    let mut call = RECORD_MOVE.invocation();
    call.key(keys::payment(&payment.payment_id))
        .arg(from.as_str())
        .arg(to.processing_status.as_str())
        .arg(&payment.user_id)
        .arg(payment.kind.as_str())
        .arg(serde_json::to_vec(to)?);
    Ok(call)
}

/// Runs invocations and answers each, failing on the first error.
async fn invoke_all<T: redis::FromRedisValue>(
    redis: &mut Redis,
    calls: Vec<redis::ScriptInvocation<'static>>,
    doing: &str,
) -> anyhow::Result<Vec<T>> {
    if calls.is_empty() {
        return Ok(Vec::new());
    }
    invoke_each::<T>(redis, calls)
        .await
        .with_context(|| doing.to_string())?
        .into_iter()
        .map(|answer| answer.with_context(|| doing.to_string()))
        .collect()
}

/// Runs commands, each about one key, failing on the first error.
async fn query_all(
    redis: &mut Redis,
    commands: Vec<redis::Cmd>,
    doing: &str,
) -> anyhow::Result<()> {
    if commands.is_empty() {
        return Ok(());
    }
    for answer in query_each::<redis::Value>(redis, commands)
        .await
        .with_context(|| doing.to_string())?
    {
        answer.with_context(|| doing.to_string())?;
    }
    Ok(())
}

/// Moves payments between status sets: `SADD to id…` first, and only once
/// those are done `SREM from id…`, so a crash between the two leaves a
/// payment in both sets (repaired from its record), never in neither.
pub(super) async fn move_in_sets(
    redis: &mut Redis,
    moved: &[(ProcessingStatus, ProcessingStatus, &str)],
    doing: &str,
) -> anyhow::Result<()> {
    let mut by_pair: HashMap<(ProcessingStatus, ProcessingStatus), Vec<&str>> = HashMap::new();
    for &(from, to, id) in moved {
        by_pair.entry((from, to)).or_default().push(id);
    }
    let commands =
        |name: &str, set: fn(&(ProcessingStatus, ProcessingStatus)) -> ProcessingStatus| {
            by_pair
                .iter()
                .map(|(pair, ids)| {
                    redis::cmd(name)
                        .arg(keys::by_status(set(pair)))
                        .arg(ids)
                        .to_owned()
                })
                .collect()
        };
    query_all(redis, commands("SADD", |(_, to)| *to), doing).await?;
    query_all(redis, commands("SREM", |(from, _)| *from), doing).await
}

/// Claims `tried` (a chunk in claim order: each user's payments together,
/// the one to try first first) as `claim.lua` does on one server. Answers
/// per payment: (1, '') claimed, (2, reason) duplicated, (0, '') changed
/// under us (nothing done).
pub async fn claim(
    redis: &mut Redis,
    tried: &[(ProcessingStatus, Payment)],
    now: &str,
) -> anyhow::Result<Vec<(i64, String)>> {
    // A user's payments of one kind share a claim: they are asked in
    // rounds, the first of every user at once, then the second, … so the
    // one to try first is asked first.
    let mut round = Vec::with_capacity(tried.len());
    let mut asked: HashMap<(&str, PaymentKind), usize> = HashMap::new();
    for (_, payment) in tried {
        let n = asked.entry((&payment.user_id, payment.kind)).or_default();
        round.push(*n);
        *n += 1;
    }
    let mut verdicts = vec![(0, String::new()); tried.len()];
    for r in 0..asked.values().copied().max().unwrap_or(0) {
        let members: Vec<usize> = (0..tried.len()).filter(|&i| round[i] == r).collect();
        let answers = claim_users(redis, tried, &members).await?;
        for (i, verdict) in members.into_iter().zip(answers) {
            verdicts[i] = verdict;
        }
    }

    // The records follow the user steps; then the sets follow the records.
    let mut moves = Vec::new();
    let mut moving = Vec::new();
    for (i, ((from, payment), (verdict, reason))) in tried.iter().zip(&verdicts).enumerate() {
        let to = match verdict {
            1 if *from == ProcessingStatus::InProcessing => continue,
            1 => Payment {
                processing_status: ProcessingStatus::InProcessing,
                updated_at: now.to_string(),
                detail: None,
                ..payment.clone()
            },
            2 => Payment {
                processing_status: ProcessingStatus::Duplicated,
                updated_at: now.to_string(),
                detail: Some(reason.clone()),
                ..payment.clone()
            },
            _ => continue,
        };
        moves.push(record_move(payment, *from, &to)?);
        moving.push((i, to.processing_status));
    }
    let moved: Vec<i64> = invoke_all(redis, moves, "moving payment records").await?;
    let mut sets = Vec::new();
    let mut changed = Vec::new();
    for (&(i, to), moved) in moving.iter().zip(moved) {
        let (from, payment) = &tried[i];
        if moved == 1 {
            sets.push((*from, to, payment.payment_id.as_str()));
            continue;
        }
        // Changed under us (another run, by hand): a claim taken for it is
        // dealt with below, unless the record is already with the
        // processor (then it needs it).
        if verdicts[i].0 == 1 && moved == 0 {
            changed.push(i);
        }
        verdicts[i] = (0, String::new());
    }
    give_back(redis, tried, &changed).await?;
    move_in_sets(redis, &sets, "moving payments between status sets").await?;
    Ok(verdicts)
}

/// Claims taken for payments whose record changed under us: an answered
/// one finishes its subscription step (the claim stands for that step, so
/// it must not be dropped without it); any other gives the claim back.
async fn give_back(
    redis: &mut Redis,
    tried: &[(ProcessingStatus, Payment)],
    changed: &[usize],
) -> anyhow::Result<()> {
    if changed.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = changed
        .iter()
        .map(|&i| tried[i].1.payment_id.clone())
        .collect();
    let now = super::get_each(redis, &ids).await?;
    let calls = changed
        .iter()
        .zip(now)
        .filter_map(|(&i, record)| match record {
            Some(r) if r.processing_status == ProcessingStatus::InProcessing => None,
            Some(r) if answered(&r) => Some(user_answer(&r, subscription_change(&r))),
            _ => Some(user_answer(&tried[i].1, "")),
        })
        .collect();
    invoke_all::<i64>(redis, calls, "giving back claims").await?;
    Ok(())
}

fn answered(payment: &Payment) -> bool {
    matches!(
        payment.processing_status,
        ProcessingStatus::Processed | ProcessingStatus::Completed
    )
}

/// The user steps of `members` of `tried`; a claim held by another payment
/// is looked at: a live one (`new` or `in_processing`) keeps it, an
/// answered one is finished first, and one that can hold nothing any more
/// (`duplicated`, no record) is taken over.
async fn claim_users(
    redis: &mut Redis,
    tried: &[(ProcessingStatus, Payment)],
    members: &[usize],
) -> anyhow::Result<Vec<(i64, String)>> {
    let calls = members
        .iter()
        .map(|&i| user_claim(&tried[i].1, ""))
        .collect();
    let mut verdicts: Vec<(i64, String)> = invoke_all(redis, calls, "claiming payments").await?;
    for verdict in &mut verdicts {
        if verdict.0 == 4 {
            // Answered already (a stale read): nothing to claim.
            *verdict = (0, String::new());
        }
    }
    let held: Vec<usize> = (0..members.len()).filter(|&k| verdicts[k].0 == 3).collect();
    if held.is_empty() {
        return Ok(verdicts);
    }
    let holders: Vec<String> = held.iter().map(|&k| verdicts[k].1.clone()).collect();
    let stored = super::records(redis, &holders).await?;
    let mut finish = Vec::new();
    let mut again = Vec::new();
    for (&k, (holder, json)) in held.iter().zip(holders.iter().zip(stored)) {
        let payment = &tried[members[k]].1;
        let record = json.as_deref().map(serde_json::from_str::<Payment>);
        let status = match &record {
            None => None,
            Some(Ok(r)) => Some(r.processing_status),
            // A holder whose record cannot be read may be with the
            // processor: it keeps the claim.
            Some(Err(_)) => Some(ProcessingStatus::InProcessing),
        };
        match status {
            Some(ProcessingStatus::New | ProcessingStatus::InProcessing) => {
                verdicts[k] = (
                    2,
                    format!(
                        "{} {holder} of this user is with the processor",
                        payment.kind.as_str()
                    ),
                );
                continue;
            }
            Some(ProcessingStatus::Processed | ProcessingStatus::Completed) => {
                let Some(Ok(answered)) = record else {
                    unreachable!("a status comes from a record")
                };
                finish.push(user_answer(&answered, subscription_change(&answered)));
            }
            Some(ProcessingStatus::Duplicated) | None => {}
        }
        again.push((k, user_claim(payment, holder)));
    }
    invoke_all::<i64>(redis, finish, "finishing answered payments").await?;
    let (ks, calls): (Vec<usize>, Vec<_>) = again.into_iter().unzip();
    let answers: Vec<(i64, String)> = invoke_all(redis, calls, "claiming payments").await?;
    for (k, (verdict, text)) in ks.into_iter().zip(answers) {
        verdicts[k] = match verdict {
            4 => (0, String::new()),
            3 => (
                2,
                format!("payment {text} of this user is with the processor"),
            ),
            _ => (verdict, text),
        };
    }
    Ok(verdicts)
}

/// Stores answers as `answer.lua` does on one server. Answers 1 per
/// payment stored, 0 per payment not `in_processing` (nothing written).
pub async fn answer(redis: &mut Redis, payments: &[Payment]) -> anyhow::Result<Vec<i64>> {
    if payments.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = payments.iter().map(|p| p.payment_id.as_str()).collect();
    // Queued first: announcing skips a record not answered yet, and a
    // queued answer is never lost.
    query_all(
        redis,
        vec![redis::cmd("SADD")
            .arg(keys::UNANNOUNCED)
            .arg(&ids)
            .to_owned()],
        "queueing answers for announcement",
    )
    .await?;
    let moves = payments
        .iter()
        .map(|p| record_move(p, ProcessingStatus::InProcessing, p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let moved: Vec<i64> = invoke_all(redis, moves, "storing processor answers").await?;
    let mut users = Vec::new();
    let mut sets = Vec::new();
    let mut unqueued = Vec::new();
    for (payment, &moved) in payments.iter().zip(&moved) {
        match moved {
            1 => {
                users.push(user_answer(payment, subscription_change(payment)));
                sets.push((
                    ProcessingStatus::InProcessing,
                    ProcessingStatus::Processed,
                    payment.payment_id.as_str(),
                ));
            }
            2 => {}
            _ => unqueued.push(payment.payment_id.as_str()),
        }
    }
    invoke_all::<i64>(redis, users, "applying answers to subscriptions").await?;
    move_in_sets(redis, &sets, "moving payments between status sets").await?;
    if !unqueued.is_empty() {
        let unqueue = redis::cmd("SREM")
            .arg(keys::UNANNOUNCED)
            .arg(&unqueued)
            .to_owned();
        query_all(redis, vec![unqueue], "updating the announce queue").await?;
    }
    Ok(moved.into_iter().map(|m| i64::from(m == 1)).collect())
}

/// Finishes the user step of answered payments (a crash may have come
/// between their record and their subscription): applied only where the
/// payment still holds its claim.
pub async fn finish_answers(redis: &mut Redis, payments: &[Payment]) -> anyhow::Result<()> {
    let calls = payments
        .iter()
        .filter(|p| {
            matches!(
                p.processing_status,
                ProcessingStatus::Processed | ProcessingStatus::Completed
            )
        })
        .map(|p| user_answer(p, subscription_change(p)))
        .collect();
    invoke_all::<i64>(redis, calls, "finishing answered payments").await?;
    Ok(())
}

/// Puts payments listed in `listed`'s set but whose records say otherwise
/// into the set of their status (a crash came between a record and its
/// sets).
pub async fn repair_sets(
    redis: &mut Redis,
    listed: ProcessingStatus,
    found: &[(String, ProcessingStatus)],
) -> anyhow::Result<()> {
    let moved: Vec<_> = found
        .iter()
        .filter(|(_, status)| *status != listed)
        .map(|(id, status)| (listed, *status, id.as_str()))
        .collect();
    move_in_sets(redis, &moved, "repairing payment status sets").await
}

/// Saves records not saved before (`SET NX` in the record's slot), then
/// lists each in the indices. A record found saved and still `new` is
/// listed again (a crash may have come before its indices). Answers 1 per
/// record saved now, 0 per one there already.
pub async fn save(redis: &mut Redis, records: &[(&Payment, &[u8])]) -> anyhow::Result<Vec<i64>> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let sets = records
        .iter()
        .map(|(payment, json)| {
            redis::cmd("SET")
                .arg(keys::payment(&payment.payment_id))
                .arg(*json)
                .arg("NX")
                .to_owned()
        })
        .collect();
    let stored: Vec<Option<String>> = query_each::<Option<String>>(redis, sets)
        .await
        .context("saving payments")?
        .into_iter()
        .collect::<Result<_, _>>()
        .context("saving payments")?;
    let earlier: Vec<String> = records
        .iter()
        .zip(&stored)
        .filter(|(_, ok)| ok.is_none())
        .map(|((p, _), _)| p.payment_id.clone())
        .collect();
    let mut found = super::get_each(redis, &earlier).await?.into_iter();
    let mut index = Vec::new();
    let mut new = Vec::new();
    for ((payment, _), ok) in records.iter().zip(&stored) {
        let listed = if ok.is_some() {
            true
        } else {
            found.next().flatten().is_some_and(|p| {
                p.processing_status == ProcessingStatus::New && p.user_id == payment.user_id
            })
        };
        if listed {
            let id = payment.payment_id.as_str();
            index.push(
                redis::cmd("ZADD")
                    .arg(keys::PAYMENTS)
                    .arg(payment.requested_ms)
                    .arg(id)
                    .to_owned(),
            );
            index.push(
                redis::cmd("ZADD")
                    .arg(keys::by_user(&payment.user_id))
                    .arg(payment.requested_ms)
                    .arg(id)
                    .to_owned(),
            );
            new.push(id);
        }
    }
    if !new.is_empty() {
        index.push(
            redis::cmd("SADD")
                .arg(keys::by_status(ProcessingStatus::New))
                .arg(&new)
                .to_owned(),
        );
    }
    query_all(redis, index, "listing saved payments").await?;
    Ok(stored.iter().map(|ok| i64::from(ok.is_some())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_claims_share_the_slot_of_the_subscription_whatever_the_id_holds() {
        for user in ["alice", "a{b}c", "{x}", "}{", "{}"] {
            let subscription = slot(keys::subscription(user).as_bytes());
            for kind in [PaymentKind::Payment, PaymentKind::Refund] {
                assert_eq!(
                    slot(claim_key(kind, user).as_bytes()),
                    subscription,
                    "{user}"
                );
                assert_eq!(slot(answered_key(user).as_bytes()), subscription, "{user}");
            }
        }
    }
}
