//! Transfers on a Redis Cluster, where a transfer's record and its two
//! accounts live in different hash slots: four steps, each one Lua script
//! within one slot and idempotent by transfer id, so that a crash or a
//! redelivery at any point resumes and finishes without applying any step
//! twice.
//!
//! | step | slot | effect |
//! |---|---|---|
//! | debit | the sender's | balance − amount and `{account:S}:debits[id] = d\|amount\|receiver`, or a refusal `r\|reason` |
//! | credit | the receiver's | balance + amount and `{account:R}:credits[id] = c\|amount`, or a refusal `x\|reason` |
//! | settle / refund | the sender's | `s\|…` once credited; on a refused credit the amount back and `f\|amount\|receiver\|reason` |
//! | complete | the transfer's | the record completed (or rejected), only if it is still the record read |
//!
//! The markers are the one place each decision is made: a second worker
//! on the same transfer meets the first one's marker and follows it. A
//! marker key takes its account's key as hash tag (`{account:alice}:debits`
//! hashes exactly as `account:alice`), so it shares the account's slot while
//! the account keeps its name.
//!
//! Account ids cannot hold `|` (see `accounts::validate_id`), so it
//! separates a marker's fields.
//!
//! Money in flight is the debits (`d|`) whose credit has not happened: the
//! sum of balances plus those amounts never changes ([`audit`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use anyhow::Context as _;

use crate::failure::{classify_redis, Class};
use crate::store::{keys, Redis, Script};

/// The debits marker of an account: `{account:ID}:debits`.
pub fn debits_key(account: &str) -> String {
    crate::store::beside(&keys::account(account), "debits")
}

/// The credits marker of an account: `{account:ID}:credits`.
pub fn credits_key(account: &str) -> String {
    crate::store::beside(&keys::account(account), "credits")
}

static DEBIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- KEYS: sender account, its debits. ARGV: id, amount (minor units),
-- currency, largest balance, receiver id, a reason decided before ('' none)
-- Returns {'debited'} | {'settled'} | {'rejected', reason}
local marker = redis.call('HGET', KEYS[2], ARGV[1])
if marker then
  local kind, rest = string.sub(marker, 1, 1), string.sub(marker, 3)
  if kind == 'd' then return {'debited'} end
  if kind == 's' then return {'settled'} end
  if kind == 'r' then return {'rejected', rest} end
  if kind == 'f' then return {'rejected', string.match(rest, '^[^|]*|[^|]*|(.*)$') or rest} end
  return redis.error_reply('ERR unreadable debit marker ' .. marker)
end
local function refuse(reason)
  redis.call('HSET', KEYS[2], ARGV[1], 'r|' .. reason)
  return {'rejected', reason}
end
if ARGV[6] ~= '' then return refuse(ARGV[6]) end
local account = redis.call('HMGET', KEYS[1], 'currency', 'balance')
if not account[1] then return refuse('unknown account') end
local text = account[2]
if type(text) ~= 'string' or #text > 17
   or (text ~= '0' and not string.match(text, '^%-?[1-9]%d*$')) then
  return refuse('invalid balance on ' .. string.sub(KEYS[1], 9))
end
if account[1] ~= ARGV[3] then return refuse('currency mismatch') end
local amount = tonumber(ARGV[2])
if tonumber(text) < amount then return refuse('insufficient funds') end
redis.call('HINCRBY', KEYS[1], 'balance', '-' .. ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], 'd|' .. ARGV[2] .. '|' .. ARGV[5])
return {'debited'}
"#,
    )
});

static CREDIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- KEYS: receiver account, its credits. ARGV: id, amount, currency, largest balance
-- Returns {'credited'} | {'refused', reason}
local marker = redis.call('HGET', KEYS[2], ARGV[1])
if marker then
  if string.sub(marker, 1, 1) == 'c' then return {'credited'} end
  return {'refused', string.sub(marker, 3)}
end
local function refuse(reason)
  redis.call('HSET', KEYS[2], ARGV[1], 'x|' .. reason)
  return {'refused', reason}
end
-- A receiver key of another type (written by another service) is refused,
-- not an error: the sender is debited already, and a refusal refunds it.
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'hash' and kind ~= 'none' then
  return refuse(string.sub(KEYS[1], 9) .. ' is not an account (a ' .. kind .. ')')
end
local account = redis.call('HMGET', KEYS[1], 'currency', 'balance')
if not account[1] then return refuse('unknown account') end
local text = account[2]
if type(text) ~= 'string' or #text > 17
   or (text ~= '0' and not string.match(text, '^%-?[1-9]%d*$')) then
  return refuse('invalid balance on ' .. string.sub(KEYS[1], 9))
end
if account[1] ~= ARGV[3] then return refuse('currency mismatch') end
if tonumber(text) + tonumber(ARGV[2]) > tonumber(ARGV[4]) then
  return refuse('receiver balance limit')
end
redis.call('HINCRBY', KEYS[1], 'balance', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], 'c|' .. ARGV[2])
return {'credited'}
"#,
    )
});

static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- KEYS: sender account, its debits. ARGV: id, 'settle' or 'refund', reason
-- Returns {'settled'} | {'rejected', reason}
local marker = redis.call('HGET', KEYS[2], ARGV[1])
if not marker then return redis.error_reply('ERR no debit to settle for ' .. ARGV[1]) end
local kind, rest = string.sub(marker, 1, 1), string.sub(marker, 3)
if kind == 's' then return {'settled'} end
if kind == 'f' then return {'rejected', string.match(rest, '^[^|]*|[^|]*|(.*)$') or rest} end
if kind ~= 'd' then return redis.error_reply('ERR debit marker ' .. marker .. ' cannot be settled') end
if ARGV[2] == 'settle' then
  redis.call('HSET', KEYS[2], ARGV[1], 's|' .. rest)
  return {'settled'}
end
local amount = string.match(rest, '^(%d+)|')
redis.call('HINCRBY', KEYS[1], 'balance', amount)
redis.call('HSET', KEYS[2], ARGV[1], 'f|' .. rest .. '|' .. ARGV[3])
return {'rejected', ARGV[3]}
"#,
    )
});

static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- KEYS: the transfer record, its claim. ARGV: the record as read ('' = none)
-- Returns 1 when claimed (the record is still the one read), 0 otherwise.
-- A claimed transfer's money may be moving: an initiate whose publish
-- failed does not remove it (see discard_one).
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], '1')
return 1
"#,
    )
});

static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- KEYS: the transfer record, its claim. ARGV: the record as read ('' = none), the decided record
-- Returns 1 when written, 0 when the record changed since it was read.
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
return 1
"#,
    )
});

static INITIATE: LazyLock<Script> = LazyLock::new(|| {
    let body = r#"
-- KEYS: the transfer record, its publishing mark, its adoption mark.
-- ARGV: the new record's JSON, sender, receiver, amount (decimal text), currency
-- Returns {'created'} | {'earlier', record} | {'adopted', record} | {'different'}
-- A record with the same id exists only when the id comes from an
-- idempotency key: then it is the key's transfer, compared by value.
-- canonical(text) comes from canonical.lua, prepended.
local stored = redis.call('GET', KEYS[1])
if not stored then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], '1')
  return {'created'}
end
local ok, t = pcall(cjson.decode, stored)
if not ok or type(t) ~= 'table' then return redis.error_reply('ERR the stored transfer is not JSON') end
local amount = string.match(stored, '"amount"%s*:%s*"?([^,}"]*)')
local same = t.sender_id == ARGV[2] and t.receiver_id == ARGV[3] and t.currency == ARGV[5]
  and canonical(amount) ~= nil and canonical(amount) == canonical(ARGV[4])
if not same then return {'different'} end
if t.status == 'initiated' and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[3], '1')
  return {'adopted', stored}
end
return {'earlier', stored}
"#;
    Script::new(&[include_str!("canonical.lua"), body].concat())
});

static DISCARD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- KEYS: the transfer record, its claim, its publishing mark, its adoption mark.
-- ARGV: the record as stored by initiate
-- Removes a transfer whose message the broker did not acknowledge, unless
-- a worker claimed or decided it (a copy reached the broker after all), a
-- replay of its idempotency key adopted it, or another publish of it was
-- acknowledged (the publishing mark is gone). Returns 1 when removed, 0
-- when it stays.
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[4]) == 1
   or redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[3])
return 1
"#,
    )
});

static RESEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- resend.lua on a cluster, within the record's slot.
-- KEYS: the transfer record, its publishing mark, its adoption mark.
-- Returns {'send', record} | {'decided', status} | {'gone'} | {'unreadable', why}.
-- A transfer still being published by its initiate is marked adopted, so
-- that initiate keeps it if its own publish fails.
local stored = redis.call('GET', KEYS[1])
if not stored then return {'gone'} end
local ok, t = pcall(cjson.decode, stored)
if not ok or type(t) ~= 'table' then return {'unreadable', 'not JSON'} end
if type(t.status) ~= 'string' then return {'unreadable', 'no status'} end
if t.status ~= 'initiated' then return {'decided', t.status} end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('SET', KEYS[3], '1') end
return {'send', stored}
"#,
    )
});

/// The step of `transfer resend` for one transfer on a cluster (see
/// `resend.lua`): the indices of a decided or vanished transfer are
/// dropped by the caller, each in its own slot.
pub fn resend(id: &str) -> redis::ScriptInvocation<'static> {
    let mut call = RESEND.invocation();
    call.key(keys::transfer(id))
        .key(publishing_key(id))
        .key(adopted_key(id));
    call
}

/// The commands that drop `id` from the indices of undecided and
/// unpublished transfers, each about one key.
pub fn forget_commands(id: &str) -> Vec<redis::Cmd> {
    vec![
        redis::cmd("ZREM")
            .arg(keys::PENDING_TRANSFERS)
            .arg(id)
            .to_owned(),
        redis::cmd("SREM")
            .arg(keys::UNPUBLISHED_TRANSFERS)
            .arg(id)
            .to_owned(),
    ]
}

/// The commands that note `id`'s message acknowledged (see [`published`]).
pub fn published_commands(id: &str) -> Vec<redis::Cmd> {
    vec![
        redis::cmd("DEL")
            .arg(publishing_key(id))
            .arg(adopted_key(id))
            .to_owned(),
        redis::cmd("SREM")
            .arg(keys::UNPUBLISHED_TRANSFERS)
            .arg(id)
            .to_owned(),
    ]
}

/// `{transfer:ID}:publishing`: set while initiate publishes the transfer.
fn publishing_key(id: &str) -> String {
    crate::store::beside(&keys::transfer(id), "publishing")
}

/// `{transfer:ID}:adopted`: a replay of the idempotency key took over an
/// unfinished publish.
fn adopted_key(id: &str) -> String {
    crate::store::beside(&keys::transfer(id), "adopted")
}

/// The transfer id an idempotency key gives on a Redis Cluster: a UUID
/// (version 5) of the key, so that the key and its transfer are one record
/// in one slot, and a replay finds it with one atomic step.
pub fn id_for_key(key: &str) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x7061_7963_746c_4000_8000_6964_656d_706f);
    uuid::Uuid::new_v5(&NAMESPACE, key.as_bytes()).to_string()
}

/// What storing a new transfer found.
pub enum Stored {
    /// Stored now, marked as being published.
    Created,
    /// The idempotency key's earlier transfer, as stored.
    Earlier(Vec<u8>),
    /// The same, still being published by a run that did not finish: this
    /// caller publishes it, and that run will not remove it.
    Adopted(Vec<u8>),
    /// The key's transfer has other parameters.
    Different,
}

/// Stores a new transfer's record (or finds its key's earlier one) in one
/// atomic step in the record's slot, then indexes a new one (each index in
/// its own slot). A crash between the two leaves a record no index names
/// and marked as being published: a replay of its key adopts and publishes
/// it; without a key it is never published, so never applied.
pub async fn store_new(
    redis: &mut Redis,
    transfer: &crate::transfer::Transfer,
    json: &[u8],
    score: u64,
) -> anyhow::Result<Stored> {
    let id = &transfer.transfer_id;
    let reply: Vec<Vec<u8>> = INITIATE
        .invocation()
        .key(keys::transfer(id))
        .key(publishing_key(id))
        .key(adopted_key(id))
        .arg(json)
        .arg(&transfer.sender_id)
        .arg(&transfer.receiver_id)
        .arg(transfer.amount.to_string())
        .arg(transfer.currency.as_deref().unwrap_or(""))
        .invoke_async(redis)
        .await
        .with_context(|| format!("storing transfer {id}"))?;
    let mut reply = reply.into_iter();
    let answer = reply.next().unwrap_or_default();
    let record = reply.next().unwrap_or_default();
    Ok(match answer.as_slice() {
        b"created" => {
            let commands = [
                ("ZADD", keys::TRANSFERS, Some(score)),
                ("ZADD", keys::PENDING_TRANSFERS, Some(score)),
                ("SADD", keys::UNPUBLISHED_TRANSFERS, None),
            ];
            for (command, key, score) in commands {
                let mut cmd = redis::cmd(command);
                cmd.arg(key);
                if let Some(score) = score {
                    cmd.arg(score);
                }
                let _: i64 = cmd
                    .arg(id)
                    .query_async(redis)
                    .await
                    .with_context(|| format!("indexing transfer {id} in {key}"))?;
            }
            Stored::Created
        }
        b"earlier" => Stored::Earlier(record),
        b"adopted" => Stored::Adopted(record),
        b"different" => Stored::Different,
        other => anyhow::bail!(
            "unexpected answer {:?} from the initiate script",
            String::from_utf8_lossy(other)
        ),
    })
}

/// Notes that `id`'s message is acknowledged.
pub async fn published(redis: &mut Redis, id: &str) -> anyhow::Result<()> {
    for command in published_commands(id) {
        let _: i64 = command
            .query_async(redis)
            .await
            .with_context(|| format!("noting that transfer {id} is published"))?;
    }
    Ok(())
}

/// Removes a just-initiated transfer whose publish failed, unless a worker
/// claimed or decided it, or a replay adopted it; then its index entries.
/// `true` when it was removed.
pub async fn discard_one(redis: &mut Redis, id: &str, stored: &[u8]) -> anyhow::Result<bool> {
    let removed: i64 = DISCARD
        .invocation()
        .key(keys::transfer(id))
        .key(claim_key(id))
        .key(publishing_key(id))
        .key(adopted_key(id))
        .arg(stored)
        .invoke_async(redis)
        .await
        .with_context(|| format!("removing unpublished transfer {id}"))?;
    if removed == 1 {
        for (command, key) in [
            ("ZREM", keys::TRANSFERS),
            ("ZREM", keys::PENDING_TRANSFERS),
            ("SREM", keys::UNPUBLISHED_TRANSFERS),
        ] {
            let _: i64 = redis::cmd(command)
                .arg(key)
                .arg(id)
                .query_async(redis)
                .await
                .with_context(|| format!("updating {key}"))?;
        }
    }
    Ok(removed == 1)
}

/// The claim of a transfer being applied: `{transfer:ID}:claim`, in the
/// record's slot.
pub fn claim_key(id: &str) -> String {
    crate::store::beside(&keys::transfer(id), "claim")
}

/// One transfer to apply.
pub struct Step<'a> {
    pub id: &'a str,
    pub sender: &'a str,
    pub receiver: &'a str,
    /// The record as read (`None`: there was none).
    pub read: Option<&'a str>,
    /// `ledger`, `status-only` or `reject`.
    pub mode: &'a str,
    pub amount_minor: i64,
    pub currency: &'a str,
    /// The record to store once completed.
    pub completed: &'a [u8],
    /// The reason of a `reject`.
    pub reason: &'a str,
    /// Balances move (not the versioned transfer service's status-only mode): a `reject` is then
    /// also recorded beside the sender's balance, so that no other worker
    /// debits the transfer later.
    pub ledger: bool,
}

/// A script's answer: its first word and the detail after it.
async fn run(
    redis: &mut Redis,
    invocation: &mut redis::ScriptInvocation<'_>,
) -> redis::RedisResult<(String, String)> {
    let reply: Vec<String> = invocation.invoke_async(redis).await?;
    let mut reply = reply.into_iter();
    Ok((
        reply.next().unwrap_or_default(),
        reply.next().unwrap_or_default(),
    ))
}

/// Applies one transfer step by step, as described above; answers as the
/// single-server script does: `completed`/`rejected` with the reason,
/// `stale` when the record changed since it was read (another worker
/// decided it, following the same markers), or `error` when a key of its
/// own cannot be used (a key of another type). A connection failure is an
/// `Err`: every step can be run again.
pub async fn apply(redis: &mut Redis, step: &Step<'_>) -> anyhow::Result<(String, String)> {
    match apply_steps(redis, step).await {
        Ok(answer) => Ok(answer),
        Err(e) if classify_redis(&e) == Class::Permanent => Ok(("error".into(), e.to_string())),
        Err(e) => Err(anyhow::Error::new(e).context("applying a transfer on the Redis Cluster")),
    }
}

async fn apply_steps(redis: &mut Redis, step: &Step<'_>) -> redis::RedisResult<(String, String)> {
    let max = crate::money::MAX_MINOR_UNITS;
    let read = step.read.unwrap_or("");
    let claimed: i64 = CLAIM
        .invocation()
        .key(keys::transfer(step.id))
        .key(claim_key(step.id))
        .arg(read)
        .invoke_async(redis)
        .await?;
    if claimed == 0 {
        return Ok(("stale".into(), String::new()));
    }
    let (outcome, reason) = match step.mode {
        "ledger" | "reject" if step.ledger => {
            let (debit, why) = run(
                redis,
                DEBIT
                    .invocation()
                    .key(keys::account(step.sender))
                    .key(debits_key(step.sender))
                    .arg(step.id)
                    .arg(step.amount_minor)
                    .arg(step.currency)
                    .arg(max)
                    .arg(step.receiver)
                    .arg(step.reason),
            )
            .await?;
            match debit.as_str() {
                "rejected" => ("rejected", why),
                "settled" => ("completed", String::new()),
                _ => {
                    let (credit, why) = run(
                        redis,
                        CREDIT
                            .invocation()
                            .key(keys::account(step.receiver))
                            .key(credits_key(step.receiver))
                            .arg(step.id)
                            .arg(step.amount_minor)
                            .arg(step.currency)
                            .arg(max),
                    )
                    .await?;
                    let how = if credit == "credited" {
                        "settle"
                    } else {
                        "refund"
                    };
                    let (settled, why) = run(
                        redis,
                        SETTLE
                            .invocation()
                            .key(keys::account(step.sender))
                            .key(debits_key(step.sender))
                            .arg(step.id)
                            .arg(how)
                            .arg(why),
                    )
                    .await?;
                    if settled == "settled" {
                        ("completed", String::new())
                    } else {
                        ("rejected", why)
                    }
                }
            }
        }
        "reject" => ("rejected", step.reason.to_string()),
        _ => ("completed", String::new()),
    };
    let record = if outcome == "completed" {
        step.completed.to_vec()
    } else {
        rejected_record(step.completed, &reason)
    };
    let written: i64 = COMPLETE
        .invocation()
        .key(keys::transfer(step.id))
        .key(claim_key(step.id))
        .arg(read)
        .arg(record)
        .invoke_async(redis)
        .await?;
    if written == 0 {
        return Ok(("stale".into(), String::new()));
    }
    let _: i64 = redis::cmd("ZREM")
        .arg(keys::PENDING_TRANSFERS)
        .arg(step.id)
        .query_async(redis)
        .await?;
    Ok((outcome.into(), reason))
}

/// The completed record as rejected with `reason` (as process.lua makes it).
fn rejected_record(completed: &[u8], reason: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(completed).replacen(
        "\"status\":\"completed\"",
        "\"status\":\"rejected\"",
        1,
    );
    let reason = serde_json::to_string(reason).expect("a string serializes");
    format!("{},\"reason\":{reason}}}", &text[..text.len() - 1]).into_bytes()
}

/// What [`audit`] found.
#[derive(Debug, Default, serde::Serialize)]
pub struct Audit {
    /// Per currency, the sum of balances (minor units).
    pub balances: BTreeMap<String, i64>,
    /// Per currency, the amounts debited and not yet credited.
    pub in_flight: BTreeMap<String, i64>,
    /// Transfers in flight: id → (sender, receiver, amount). An amount is
    /// negative for a credit seen before its debit (see [`audit`]).
    pub transfers_in_flight: Vec<(String, String, String, i64)>,
    /// Markers that break the rules (a credit with no debit, say).
    pub anomalies: Vec<String>,
}

/// Reads one account's balance and both its marker hashes in one step (they
/// share the account's slot), so a read of an account is never halfway
/// through one of its steps.
static AUDIT_READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- KEYS: the account, its debits, its credits.
return {redis.call('HGET', KEYS[1], 'balance') or '', redis.call('HGETALL', KEYS[2]),
        redis.call('HGETALL', KEYS[3])}
"#,
    )
});

/// Reads every account with its markers: the sum of balances, the money in
/// flight, and whatever does not add up; exact while transfers flow.
///
/// Each account is read in one step, but two accounts at two moments, so a
/// transfer can be seen credited to its receiver and not yet debited from
/// its sender (the sender read first), or settled and not yet credited (the
/// receiver read first). Both are checked again: the side read first is
/// read anew, and must show the step the other side implies (a debit
/// before any credit, a credit before any settle). Confirmed, the amount
/// is counted in flight (negative for a credit whose debit the first read
/// missed): the balances as read plus the money in flight then equal the
/// total at every instant. Not confirmed, it is an anomaly.
pub async fn audit(
    redis: &mut Redis,
    accounts: &[crate::accounts::Account],
) -> anyhow::Result<Audit> {
    let mut report = Audit::default();
    let mut currency_of = HashMap::new();
    let mut debits: Vec<(String, HashMap<String, String>)> = Vec::new();
    let mut credits: HashMap<String, HashMap<String, String>> = HashMap::new();
    let reads = accounts
        .iter()
        .map(|a| {
            let mut call = AUDIT_READ.invocation();
            call.key(keys::account(&a.id))
                .key(debits_key(&a.id))
                .key(credits_key(&a.id));
            call
        })
        .collect();
    type Read = (String, HashMap<String, String>, HashMap<String, String>);
    let mut read = crate::store::invoke_each::<Read>(redis, reads)
        .await
        .context("reading accounts and their transfer markers")?
        .into_iter();
    for account in accounts {
        let (balance, d, c) = read
            .next()
            .expect("one answer per account")
            .with_context(|| format!("reading account {} and its markers", account.id))?;
        let code = account.currency.code().to_string();
        let balance = balance.parse::<i64>().unwrap_or_else(|_| {
            report.anomalies.push(format!(
                "account {}: balance {balance:?} is not whole minor units",
                account.id
            ));
            account.balance.minor_units()
        });
        *report.balances.entry(code.clone()).or_default() += balance;
        currency_of.insert(account.id.clone(), code);
        debits.push((account.id.clone(), d));
        credits.insert(account.id.clone(), c);
    }
    // Receivers whose account is gone keep their credits: read those too.
    let gone: Vec<String> = debits
        .iter()
        .flat_map(|(_, markers)| markers.values())
        .filter_map(|marker| marker.get(2..)?.split('|').nth(1).map(String::from))
        .filter(|receiver| !credits.contains_key(receiver))
        .collect();
    for receiver in gone {
        let c: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(credits_key(&receiver))
            .query_async(redis)
            .await
            .with_context(|| format!("reading the credits of {receiver}"))?;
        credits.insert(receiver, c);
    }
    let mut debited: HashMap<&str, (&str, i64)> = HashMap::new();
    let mut settled_unseen = Vec::new();
    for (sender, markers) in &debits {
        for (id, marker) in markers {
            let (kind, rest) = marker.split_at(marker.len().min(2));
            let mut parts = rest.splitn(3, '|');
            let (amount, receiver) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !matches!(kind, "d|" | "s|" | "f|") {
                continue;
            }
            let Ok(amount) = amount.parse::<i64>() else {
                report
                    .anomalies
                    .push(format!("debit of {id} on {sender}: unreadable {marker:?}"));
                continue;
            };
            let credit = credits.get(receiver).and_then(|c| c.get(id));
            let credited = credit.is_some_and(|c| c.starts_with("c|"));
            if kind != "f|" {
                debited.insert(id.as_str(), (receiver, amount));
            }
            match kind {
                "d|" if !credited => {
                    let code = currency_of.get(sender).cloned().unwrap_or_default();
                    *report.in_flight.entry(code).or_default() += amount;
                    report.transfers_in_flight.push((
                        id.clone(),
                        sender.clone(),
                        receiver.to_string(),
                        amount,
                    ));
                }
                "s|" if !credited => settled_unseen.push((id, sender, receiver, amount)),
                "f|" if credited => report.anomalies.push(format!(
                    "{id}: refunded to {sender} and also credited to {receiver}"
                )),
                _ => {}
            }
        }
    }
    let mut credited_unseen = Vec::new();
    for (receiver, markers) in &credits {
        for (id, marker) in markers {
            if marker.starts_with("c|") && !debited.contains_key(id.as_str()) {
                credited_unseen.push((id.as_str(), receiver.as_str(), marker.as_str()));
            }
        }
    }
    // Settled but not credited as read: the receiver was read first; its
    // credit must be there now.
    for (id, sender, receiver, amount) in settled_unseen {
        let now: Option<String> = redis::cmd("HGET")
            .arg(credits_key(receiver))
            .arg(id)
            .query_async(redis)
            .await
            .with_context(|| format!("reading the credits of {receiver} again"))?;
        if now.is_some_and(|c| c.starts_with("c|")) {
            let code = currency_of.get(sender).cloned().unwrap_or_default();
            *report.in_flight.entry(code).or_default() += amount;
            report.transfers_in_flight.push((
                id.clone(),
                sender.clone(),
                receiver.to_string(),
                amount,
            ));
        } else {
            report.anomalies.push(format!(
                "{id}: settled on {sender} but never credited to {receiver}"
            ));
        }
    }
    // Credited but not debited as read: the sender (named by the record)
    // was read first; its debit must be there now.
    for (id, receiver, marker) in credited_unseen {
        let amount = marker[2..]
            .split('|')
            .next()
            .and_then(|a| a.parse::<i64>().ok());
        let record: Option<String> = redis::cmd("GET")
            .arg(keys::transfer(id))
            .query_async(redis)
            .await
            .with_context(|| format!("reading transfer {id}"))?;
        let sender = record
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
            .and_then(|r| r["sender_id"].as_str().map(String::from));
        let debit: Option<String> = match &sender {
            Some(sender) => redis::cmd("HGET")
                .arg(debits_key(sender))
                .arg(id)
                .query_async(redis)
                .await
                .with_context(|| format!("reading the debits of {sender} again"))?,
            None => None,
        };
        match (amount, sender, debit) {
            // Only a sender this audit counted was read "first"; one left
            // out (unreadable) would hide its debit.
            (Some(amount), Some(sender), Some(d))
                if (d.starts_with("d|") || d.starts_with("s|"))
                    && currency_of.contains_key(&sender) =>
            {
                let code = currency_of.get(receiver).cloned().unwrap_or_default();
                *report.in_flight.entry(code).or_default() -= amount;
                report.transfers_in_flight.push((
                    id.to_string(),
                    sender,
                    receiver.to_string(),
                    -amount,
                ));
            }
            _ => report
                .anomalies
                .push(format!("{id}: credited to {receiver} with no debit")),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_share_their_accounts_slot_and_rejections_keep_the_record_shape() {
        assert_eq!(debits_key("alice"), "{account:alice}:debits");
        assert_eq!(credits_key("bob"), "{account:bob}:credits");
        let record = br#"{"transfer_id":"t","status":"completed","version":2}"#;
        assert_eq!(
            String::from_utf8(rejected_record(record, "insufficient \"funds\"")).unwrap(),
            r#"{"transfer_id":"t","status":"rejected","version":2,"reason":"insufficient \"funds\""}"#
        );
    }
}
