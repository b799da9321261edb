//! Accounts: a currency and a balance in integer minor units, in Redis.
//!
//! `account:{id}` is a hash (`currency`, `balance`, `opened_at`); the sorted
//! set `accounts` lists ids by opening time. Balances change only through
//! Lua scripts, so a check and its write are one atomic step.

pub mod audit;
pub mod deposit;
pub mod list;
pub mod open;
pub mod show;

use std::collections::HashMap;
use std::sync::LazyLock;

use anyhow::{bail, Context as _};
use redis::AsyncCommands;
use serde::Serialize;

use crate::exit::refuse;
use crate::money::{Currency, Money, MAX_MINOR_UNITS};
use crate::output::{self, Rendered, Report};
use crate::store::{keys, query_each, Redis, Script};

/// An account as stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Account {
    pub id: String,
    #[serde(serialize_with = "serialize_code")]
    #[schema(value_type = String, example = "USD")]
    pub currency: Currency,
    /// Exact decimal with the currency's digits, printed as a JSON string
    /// (`"12.50"`): an account is only ever serialized for output.
    #[serde(serialize_with = "serialize_money")]
    #[schema(value_type = String, example = "12.50")]
    pub balance: Money,
    pub opened_at: String,
}

fn serialize_code<S: serde::Serializer>(c: &Currency, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(c.code())
}

fn serialize_money<S: serde::Serializer>(m: &Money, s: S) -> Result<S::Ok, S::Error> {
    output::decimal_text(&m.to_decimal(), s)
}

impl Account {
    fn from_hash(id: &str, fields: HashMap<String, String>) -> anyhow::Result<Option<Account>> {
        if fields.is_empty() {
            return Ok(None);
        }
        let field = |name: &str| {
            fields
                .get(name)
                .with_context(|| format!("account {id} has no {name} field"))
        };
        let currency = Currency::parse(field("currency")?)?;
        let text = field("balance")?;
        let minor = parse_balance(text).with_context(|| {
            format!("account {id} has a balance payctl will not touch: {text:?} is not a canonical integer of minor units")
        })?;
        Ok(Some(Account {
            id: id.to_string(),
            currency,
            balance: Money::from_minor(minor, currency),
            opened_at: fields.get("opened_at").cloned().unwrap_or_default(),
        }))
    }

    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.currency.code().to_string(),
            self.balance.to_string(),
            self.opened_at.clone(),
        ]
    }
}

/// A table of accounts.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct AccountList(pub Vec<Account>);

impl Report for AccountList {
    fn render(&self) -> Rendered {
        let mut table = output::table(["account", "currency", "balance", "opened_at"]);
        for account in &self.0 {
            table.add_row(account.row());
        }
        Rendered::Table(table)
    }
}

impl Report for Account {
    fn render(&self) -> Rendered {
        AccountList(vec![self.clone()]).render()
    }
}

/// Reads a stored balance strictly: integer minor units in canonical form
/// (optional `-`, digits, no leading zeros) within [`MAX_MINOR_UNITS`].
/// `100.0`, `+5`, ` 5`, `1e3` and `05` are refused, as the transfer script
/// refuses them.
pub fn parse_balance(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && text != "-0"
        && digits.len() <= 16;
    let value: i64 = text.parse().ok().filter(|_| canonical)?;
    (value.abs() <= MAX_MINOR_UNITS).then_some(value)
}

/// Refuses ids that would make awkward keys or unreadable tables.
pub fn validate_id(id: &str) -> anyhow::Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "_.@:-".contains(c);
    if id.is_empty() || id.len() > 64 || !id.chars().all(ok_char) {
        bail!(
            "invalid account id {}: use 1 to 64 letters, digits or _.@:-",
            output::id_for_message(id)
        );
    }
    Ok(())
}

/// Reads one account.
pub async fn get(redis: &mut Redis, id: &str) -> anyhow::Result<Option<Account>> {
    let fields: HashMap<String, String> = redis
        .hgetall(keys::account(id))
        .await
        .with_context(|| format!("reading account {}", output::id_for_message(id)))?;
    Account::from_hash(id, fields)
}

/// Reads one account that must exist: a missing one is a refusal (exit 1).
pub async fn require(redis: &mut Redis, id: &str) -> anyhow::Result<Account> {
    get(redis, id)
        .await?
        .ok_or_else(|| refuse(format!("unknown account {}", output::id_for_message(id))))
}

/// `HGETALL` of each account.
fn hgetall(ids: &[String]) -> Vec<redis::Cmd> {
    ids.iter()
        .map(|id| {
            let mut command = redis::cmd("HGETALL");
            command.arg(keys::account(id));
            command
        })
        .collect()
}

/// Reads many accounts in one round trip (one per slot's node on a
/// cluster), in the order asked.
pub async fn get_many(redis: &mut Redis, ids: &[String]) -> anyhow::Result<Vec<Option<Account>>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let hashes: Vec<redis::RedisResult<HashMap<String, String>>> = query_each(redis, hgetall(ids))
        .await
        .context("reading accounts")?;
    ids.iter()
        .zip(hashes)
        .map(|(id, fields)| {
            let fields = fields.with_context(|| format!("reading account {id}"))?;
            Account::from_hash(id, fields)
        })
        .collect()
}

static OPEN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- KEYS: account hash, accounts index. ARGV: currency, balance, opened_at, id, score
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'currency', ARGV[1], 'balance', ARGV[2], 'opened_at', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
return 1
"#,
    )
});

/// [`OPEN`] without the index, for a Redis Cluster, where the account and
/// the index live in different slots.
static OPEN_ONE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- KEYS: account hash. ARGV: currency, balance, opened_at
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'currency', ARGV[1], 'balance', ARGV[2], 'opened_at', ARGV[3])
return 1
"#,
    )
});

/// Opens an account; an id already in use is a refusal.
///
/// On a Redis Cluster the index entry is added first (`ZADD NX`), then the
/// account: a crash between the two leaves an index entry without an
/// account, which `list` skips and a second `open` completes.
pub async fn open(
    redis: &mut Redis,
    id: &str,
    currency: Currency,
    balance: Option<Money>,
) -> anyhow::Result<Account> {
    validate_id(id)?;
    let balance = balance.unwrap_or(Money::from_minor(0, currency));
    let now = crate::clock::now_millis();
    let opened_at = crate::clock::rfc3339(now);
    let created: i64 = if redis.is_cluster() {
        let _: i64 = redis::cmd("ZADD")
            .arg(keys::ACCOUNTS)
            .arg("NX")
            .arg(now)
            .arg(id)
            .query_async(redis)
            .await
            .with_context(|| format!("indexing account {id}"))?;
        OPEN_ONE
            .invocation()
            .key(keys::account(id))
            .arg(currency.code())
            .arg(balance.minor_units())
            .arg(&opened_at)
            .invoke_async(redis)
            .await
            .with_context(|| format!("opening account {id}"))?
    } else {
        OPEN.invocation()
            .key(keys::account(id))
            .key(keys::ACCOUNTS)
            .arg(currency.code())
            .arg(balance.minor_units())
            .arg(&opened_at)
            .arg(id)
            .arg(now)
            .invoke_async(redis)
            .await
            .with_context(|| format!("opening account {id}"))?
    };
    if created == 0 {
        return Err(refuse(format!("account {id:?} already exists")));
    }
    Ok(Account {
        id: id.to_string(),
        currency,
        balance,
        opened_at,
    })
}

static DEPOSIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- KEYS: account hash. ARGV: amount (minor units), currency, largest balance
-- Writes only onto a canonical integer balance, so balances stay canonical.
local account = redis.call('HMGET', KEYS[1], 'currency', 'balance')
if not account[1] then return {'unknown account', false} end
if account[1] ~= ARGV[2] then return {'currency mismatch', false} end
local balance = account[2]
if type(balance) ~= 'string' or #balance > 17
   or (balance ~= '0' and not string.match(balance, '^%-?[1-9]%d*$')) then
  return {'the stored balance is not a canonical integer', false}
end
if tonumber(balance) + tonumber(ARGV[1]) > tonumber(ARGV[3]) then return {'balance too large', false} end
return {'ok', redis.call('HINCRBY', KEYS[1], 'balance', ARGV[1])}
"#,
    )
});

/// Adds `amount` (text, in the account's currency) to a balance.
pub async fn deposit(redis: &mut Redis, id: &str, amount: &str) -> anyhow::Result<Account> {
    let account = require(redis, id).await?;
    let amount = Money::parse_amount(amount, account.currency)?;
    let (verdict, balance): (String, Option<i64>) = DEPOSIT
        .invocation()
        .key(keys::account(id))
        .arg(amount.minor_units())
        .arg(account.currency.code())
        .arg(MAX_MINOR_UNITS)
        .invoke_async(redis)
        .await
        .with_context(|| format!("depositing into account {id}"))?;
    match (verdict.as_str(), balance) {
        ("ok", Some(minor)) => Ok(Account {
            balance: Money::from_minor(minor, account.currency),
            ..account
        }),
        (reason, _) => Err(refuse(format!("deposit into {id:?} refused: {reason}"))),
    }
}

/// Every account payctl can read, oldest first. An account another service
/// broke (a balance that is not a canonical integer, a key of another type)
/// is left out with a warning naming it, rather than hiding all the others.
pub async fn list(redis: &mut Redis) -> anyhow::Result<Vec<Account>> {
    let ids: Vec<String> = redis
        .zrange(keys::ACCOUNTS, 0, -1)
        .await
        .context("listing accounts")?;
    let mut accounts = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(1000) {
        let hashes: Vec<redis::RedisResult<HashMap<String, String>>> =
            query_each(redis, hgetall(chunk))
                .await
                .context("reading accounts")?;
        for (id, hash) in chunk.iter().zip(hashes) {
            let read = hash
                .map_err(anyhow::Error::from)
                .and_then(|fields| Account::from_hash(id, fields));
            match read {
                Ok(Some(account)) => accounts.push(account),
                Ok(None) => {}
                Err(e) => tracing::warn!("account {id} left out: {e:#}"),
            }
        }
    }
    Ok(accounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balances_are_read_strictly() {
        assert_eq!(parse_balance("0"), Some(0));
        assert_eq!(parse_balance("1250"), Some(1250));
        assert_eq!(parse_balance("-5"), Some(-5));
        assert_eq!(parse_balance("1000000000000000"), Some(MAX_MINOR_UNITS));
        for bad in [
            "100.0",
            "+5",
            " 5",
            "5 ",
            "1e3",
            "05",
            "-0",
            "",
            "-",
            "0x10",
            "1000000000000001",
            "99999999999999999999",
        ] {
            assert_eq!(parse_balance(bad), None, "{bad:?} should be refused");
        }
    }
}
