//! `GET /v1/audit`: the tenant's audit log, newest first, from the history (admin keys).
//!
//! Every change of configuration and every movement of money by hand is a record of one hash
//! chain across all tenants (see [`crate::history::audit`]); this route lists the records of the
//! caller's tenant. Pages are cut by `seq`: `next_cursor` is the seq of a page's last record, and
//! the next page lists the records before it, so a page is stable while changes go on.
//!
//! Read your writes, as for entries: the handler first waits for the history to apply every
//! record that was durable when the request came.

use serde::Serialize;
use serde_json::value::RawValue;

use super::entries::{
    catch_up, history_disabled, history_error, in_order, page_cursor, page_limit, time,
    DEFAULT_LIMIT,
};
use crate::api::call::{ok, Answer, Call};
use crate::api::problem::Problem;
use crate::api::request::{query_pairs, unknown_parameter};
use crate::history::audit::{hex, Filter, Record};
use crate::time::format_rfc3339_ms;

/// What the query asks for.
struct Query {
    filter: Filter,
    before_seq: Option<u64>,
    limit: u32,
}

#[derive(Serialize)]
struct Listed<'a> {
    seq: u64,
    at: String,
    actor: &'a str,
    action: &'a str,
    target: &'a str,
    before: Option<&'a RawValue>,
    after: Option<&'a RawValue>,
    hash: &'a str,
}

#[derive(Serialize)]
struct Page<'a> {
    records: Vec<Listed<'a>>,
    next_cursor: Option<String>,
}

/// `GET /v1/audit`.
pub async fn list_audit(call: &Call<'_>) -> Answer {
    let query = parse_query(call.query)?;
    let Some(reader) = call.state.history.clone() else {
        return Err(history_disabled());
    };
    catch_up(&reader, call.state.engine.wal().durable_lsn()).await;
    let tenant = call.tenant.id.to_string();
    let limit = query.limit;
    let records = tokio::task::spawn_blocking(move || {
        reader.audit(&tenant, &query.filter, query.before_seq, limit)
    })
    .await
    .map_err(|error| history_error(error.to_string()))?
    .map_err(|error| history_error(error.to_string()))?;
    let listed: Vec<Listed<'_>> = records.iter().map(listed).collect();
    let next_cursor = (records.len() == limit as usize)
        .then(|| records.last().map(|last| last.seq.to_string()))
        .flatten();
    ok(&Page {
        records: listed,
        next_cursor,
    })
}

/// `GET /v1/audit/verify`: the status of the audit chain, checked from its first record to its
/// anchored head as `creditd audit verify` does. The chain is one across all tenants, so the
/// answer is about all of it: `intact` with how many records it holds and the last hash, or
/// `broken` with the first bad record's seq and what is wrong with it. Either is a 200: the
/// check itself succeeded.
pub async fn verify_audit(call: &Call<'_>) -> Answer {
    if let Some((name, _)) = query_pairs(call.query).next() {
        return Err(unknown_parameter(&name));
    }
    let Some(reader) = call.state.history.clone() else {
        return Err(history_disabled());
    };
    catch_up(&reader, call.state.engine.wal().durable_lsn()).await;
    let checked_at = format_rfc3339_ms(call.state.engine.now_ms());
    let verdict = tokio::task::spawn_blocking(move || reader.verify_audit())
        .await
        .map_err(|error| history_error(error.to_string()))?
        .map_err(|error| history_error(error.to_string()))?;
    ok(&match verdict {
        Ok(verified) => serde_json::json!({
            "status": "intact",
            "records": verified.records,
            "last_hash": hex(&verified.last_hash),
            "checked_at": checked_at,
        }),
        Err(broken) => serde_json::json!({
            "status": "broken",
            "broken_at_seq": broken.seq,
            "damage": broken.damage.to_string(),
            "detail": broken.to_string(),
            "checked_at": checked_at,
        }),
    })
}

fn listed(record: &Record) -> Listed<'_> {
    // Stored as JSON creditd wrote; a document that no longer parses (the file was edited by
    // hand) shows as null rather than failing the page. `creditd audit verify` names it.
    Listed {
        seq: record.seq,
        at: format_rfc3339_ms(record.at_ms),
        actor: &record.actor,
        action: &record.action,
        target: &record.target,
        before: document(record.before.as_deref()),
        after: document(record.after.as_deref()),
        hash: &record.hash,
    }
}

fn document(text: Option<&str>) -> Option<&RawValue> {
    text.and_then(|text| serde_json::from_str::<&RawValue>(text).ok())
}

fn parse_query(query: Option<&str>) -> Result<Query, Problem> {
    let mut parsed = Query {
        filter: Filter::default(),
        before_seq: None,
        limit: DEFAULT_LIMIT,
    };
    for (name, value) in query_pairs(query) {
        match name.as_str() {
            "limit" => {
                parsed.limit = page_limit(&value)?;
            }
            "cursor" => {
                parsed.before_seq = Some(page_cursor(&value, "")?);
            }
            "actor" => {
                if value.is_empty() {
                    return Err(Problem::invalid("actor is empty").with("field", "actor"));
                }
                parsed.filter.actor = Some(value);
            }
            "from" => parsed.filter.from_ms = Some(time(&value, "from")?),
            "to" => parsed.filter.to_ms = Some(time(&value, "to")?),
            _ => return Err(unknown_parameter(&name)),
        }
    }
    in_order(parsed.filter.from_ms, parsed.filter.to_ms)?;
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_parsed_or_refused_with_the_field_to_blame() {
        let query = parse_query(Some(
            "limit=2&cursor=9&actor=acme-admin&from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z",
        ))
        .unwrap();
        assert_eq!((query.limit, query.before_seq), (2, Some(9)));
        assert_eq!(query.filter.actor.as_deref(), Some("acme-admin"));
        assert!(query.filter.from_ms < query.filter.to_ms);
        assert_eq!(parse_query(None).unwrap().limit, DEFAULT_LIMIT);
        for (bad, field) in [
            ("limit=0", Some("limit")),
            ("limit=1001", Some("limit")),
            ("cursor=0", Some("cursor")),
            ("cursor=ent_4", Some("cursor")),
            ("cursor=99999999999999999999", Some("cursor")),
            ("actor=", Some("actor")),
            ("from=yesterday", Some("from")),
            (
                "from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
                Some("from"),
            ),
            ("kind=grant", None),
        ] {
            let problem = parse_query(Some(bad)).err().expect(bad);
            let body = problem.body();
            assert_eq!(body["status"], 422, "{bad}");
            assert_eq!(body["field"].as_str(), field, "{bad}");
        }
    }
}
