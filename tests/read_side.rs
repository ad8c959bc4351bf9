//! The history's read routes (entries, payments, the usage and revenue reports, the audit log)
//! against a real server, all of them through one table ([`ROUTES`]): a row says how to call a
//! route and what it takes, and every check runs on every row.
//!
//! - Tenant isolation: another tenant's key asking for a user of this tenant gets the very 404
//!   a user that exists nowhere gets; a user id both tenants have shows each tenant its own items
//!   only, whichever cursor is sent; a platform key naming the other tenant in `X-Tenant` sees
//!   that tenant's. A tenant-wide list (revenue, audit) shows another tenant none of this one's.
//! - Bad input: malformed and foreign cursors, limits of 0 and 10^9, `from` after `to`, times
//!   that are not RFC 3339 and unknown parameters each get a 4xx `application/problem+json` with
//!   `type`, `title`, `status` and `detail`, naming the parameter in `field` when the route takes
//!   it. A window of ten years is refused by a route with a longest window and answered by one
//!   without. Good queries on the same route answer 200, so that the refusals mean something.
//! - With the history off, every route answers 503 `history-disabled`.
//!
//! A new read route is a new row of [`ROUTES`].

use creditd::client::Client;
use creditd::config::Role;
use http::{header, Method};
use serde_json::Value;

#[path = "common/server.rs"]
mod server;

use server::{key, send_json, Server, ADMIN, GLOBEX, PLATFORM, SERVICE};

/// The admin key of tenant `globex`, added to the test keys here.
const GLOBEX_ADMIN: &str = "globex-admin-secret-0001";
/// The problem types' prefix.
const PROBLEM_TYPE: &str = "https://creditd.dev/problems/";

/// Which of a tenant's keys reads a route.
#[derive(Debug, Clone, Copy)]
enum Reader {
    Service,
    Admin,
}

impl Reader {
    /// The key of tenant `acme`, and the same role's key of tenant `globex`.
    fn secrets(self) -> (&'static str, &'static str) {
        match self {
            Reader::Service => (SERVICE, GLOBEX),
            Reader::Admin => (ADMIN, GLOBEX_ADMIN),
        }
    }
}

/// What another tenant's key gets from a route.
#[derive(Debug, Clone, Copy)]
enum Foreign {
    /// The route names a user (`{user}`): a user only this tenant has is absent there (404,
    /// exactly as a user that exists nowhere), and a user id both have shows each its own.
    User,
    /// The route lists the tenant's own items: none of this tenant's appears.
    Disjoint,
}

/// A read route of the history, as the checks see it.
struct ReadRoute {
    /// The path, perhaps with a query; `{user}` stands for the user id.
    path: &'static str,
    /// Who reads it.
    reader: Reader,
    /// The array of items in its answer.
    list: &'static str,
    /// The prefix of its page cursors, if it pages.
    cursor_prefix: Option<&'static str>,
    /// The query parameters it takes (besides those in `path`).
    params: &'static [&'static str],
    /// The longest `from`–`to` window it answers, in days, if it takes a window and bounds it.
    max_window_days: Option<u32>,
    /// Queries it answers with 200.
    good: &'static [&'static str],
    /// What another tenant's key gets.
    foreign: Foreign,
}

/// Every read route of the history.
const ROUTES: &[ReadRoute] = &[
    ReadRoute {
        path: "/v1/users/{user}/entries",
        reader: Reader::Service,
        list: "entries",
        cursor_prefix: Some("ent_"),
        params: &[
            "limit", "cursor", "kind", "action", "currency", "from", "to",
        ],
        // A filter of a paged list: a long window costs no more than no window.
        max_window_days: None,
        good: &[
            "limit=1",
            "limit=1000",
            "kind=grant",
            "currency=credits",
            "from=2020-01-01T00:00:00Z&to=2020-01-01T00:00:00Z",
            "from=2020-01-01T00:00:00.5%2B01:00",
        ],
        foreign: Foreign::User,
    },
    ReadRoute {
        path: "/v1/users/{user}/payments",
        reader: Reader::Service,
        list: "payments",
        cursor_prefix: Some("pay_"),
        params: &["limit", "cursor", "status"],
        max_window_days: None,
        good: &["limit=1", "limit=1000", "status=succeeded"],
        foreign: Foreign::User,
    },
    ReadRoute {
        path: "/v1/reports/usage?group_by=action&user_id={user}",
        reader: Reader::Service,
        list: "rows",
        cursor_prefix: None,
        params: &["from", "to", "group_by", "user_id", "currency"],
        max_window_days: Some(400),
        good: &[
            "from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z",
            "from=2025-01-01T00:00:00Z&to=2026-02-05T00:00:00Z",
            "currency=credits",
        ],
        foreign: Foreign::User,
    },
    ReadRoute {
        path: "/v1/reports/revenue?group_by=package",
        reader: Reader::Admin,
        list: "rows",
        cursor_prefix: None,
        params: &["from", "to", "group_by"],
        max_window_days: Some(400),
        good: &["from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z"],
        foreign: Foreign::Disjoint,
    },
    ReadRoute {
        path: "/v1/audit",
        reader: Reader::Admin,
        list: "records",
        cursor_prefix: Some(""),
        params: &["limit", "cursor", "actor", "from", "to"],
        max_window_days: None,
        good: &["limit=1", "limit=1000", "actor=acme-admin"],
        foreign: Foreign::Disjoint,
    },
];

/// A bad query: the text (`{prefix}` stands for the route's cursor prefix, `{other}` for another
/// one) and the parameter it is wrong about.
struct BadQuery {
    query: &'static str,
    param: &'static str,
}

const fn bad(query: &'static str, param: &'static str) -> BadQuery {
    BadQuery { query, param }
}

/// Bad queries every route refuses.
const BAD_QUERIES: &[BadQuery] = &[
    bad("cursor=nonsense", "cursor"),
    bad("cursor=", "cursor"),
    bad("cursor={prefix}", "cursor"),
    bad("cursor={prefix}0", "cursor"),
    bad("cursor={prefix}-1", "cursor"),
    bad("cursor={prefix}12abc", "cursor"),
    bad("cursor={prefix}18446744073709551616", "cursor"),
    bad("cursor={other}5", "cursor"),
    bad("limit=0", "limit"),
    bad("limit=1000000000", "limit"),
    bad("limit=4294967297", "limit"),
    bad("limit=-1", "limit"),
    bad("limit=1.5", "limit"),
    bad("limit=ten", "limit"),
    bad("limit=", "limit"),
    bad("from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
    bad("from=yesterday", "from"),
    bad("from=2026-01-01", "from"),
    bad("from=2026-01-01T00:00:00", "from"),
    bad("from=1700000000", "from"),
    bad("to=2026-13-01T00:00:00Z", "to"),
    bad("to=2026-01-01T24:30:00Z", "to"),
    bad("to=2026-02-30T00:00:00Z", "to"),
    bad("colour=blue", "colour"),
    bad("LIMIT=5", "LIMIT"),
    bad("utm_source=mail", "utm_source"),
];

/// Ten years, 2016 to 2026: longer than any bound a route sets.
const TEN_YEARS: &str = "from=2016-01-01T00:00:00Z&to=2026-01-01T00:00:00Z";

impl ReadRoute {
    /// The route's path for `user`, with `query` added.
    fn url(&self, user: &str, query: &str) -> String {
        let path = self.path.replace("{user}", user);
        match (query.is_empty(), path.contains('?')) {
            (true, _) => path,
            (false, true) => format!("{path}&{query}"),
            (false, false) => format!("{path}?{query}"),
        }
    }

    /// `template` with the route's cursor prefix, and another route's.
    fn fill(&self, template: &str) -> String {
        let prefix = self.cursor_prefix.unwrap_or("cur_");
        let other = if prefix == "ent_" { "pay_" } else { "ent_" };
        template
            .replace("{prefix}", prefix)
            .replace("{other}", other)
    }
}

/// Status, content type and JSON body (`null` if not JSON).
async fn get(client: &Client, path: &str) -> (u16, String, Value) {
    let (status, headers, body) = client.send(Method::GET, path, None, None).await.unwrap();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status.as_u16(), content_type, json)
}

/// The items of a 200 answer.
fn items(route: &ReadRoute, path: &str, status: u16, body: &Value) -> Vec<Value> {
    assert_eq!(status, 200, "{path}: {body}");
    body[route.list]
        .as_array()
        .unwrap_or_else(|| panic!("{path}: no {:?} list in {body}", route.list))
        .clone()
}

/// Asserts that an answer is an RFC 9457 problem with a 4xx status, and returns it.
fn assert_problem(path: &str, status: u16, content_type: &str, body: &Value) {
    assert!(
        (400..500).contains(&status),
        "{path}: {status}, not a 4xx: {body}"
    );
    assert_eq!(content_type, "application/problem+json", "{path}: {body}");
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|kind| kind.starts_with(PROBLEM_TYPE)),
        "{path}: type: {body}"
    );
    for member in ["title", "detail"] {
        assert!(
            body[member].as_str().is_some_and(|text| !text.is_empty()),
            "{path}: {member}: {body}"
        );
    }
    assert_eq!(body["status"], status, "{path}: status: {body}");
}

/// A server with tenants `acme` (users `ada` and `kim`) and `globex` (its own `ada`), each `ada`
/// with a credit, a debit and a paid checkout, each tenant with a package its admin set (the
/// amounts differ between the tenants, so that their items do); the keys of both tenants.
async fn populated(history: bool) -> Server {
    let server = Server::start_with(|config| {
        config.history.enabled = history;
        config
            .auth
            .keys
            .push(key("globex-admin", GLOBEX_ADMIN, Role::Admin, "globex"));
    })
    .await;
    let tenants = [
        (SERVICE, ADMIN, 1, 200_000),
        (GLOBEX, GLOBEX_ADMIN, 2, 300_000),
    ];
    for (service, admin, spent, price) in tenants {
        let (service, admin) = (server.client(service), server.client(admin));
        service.put_user("ada", None).await.unwrap();
        service.credit("ada", 100, None, None).await.unwrap();
        service
            .debit("ada", &creditd::client::Debit::amount(spent), None)
            .await
            .unwrap();
        admin
            .put_package("starter", "Starter", 500, price, "NGN")
            .await
            .unwrap();
        let body = r#"{"user_id":"ada","package_id":"starter","email":"ada@example.com"}"#;
        let (status, answer) =
            send_json(&service, Method::POST, "/v1/payments/initialize", body).await;
        assert_eq!(status, 200, "{answer}");
        if history {
            let reference = answer["reference"].as_str().unwrap();
            pay(&server, reference).await;
        }
    }
    server.client(SERVICE).put_user("kim", None).await.unwrap();
    server
}

/// Presses Pay on the sandbox's checkout page of `reference`.
async fn pay(server: &Server, reference: &str) {
    let response = reqwest::Client::new()
        .post(format!("{}/sandbox/checkout/{reference}", server.base))
        .form(&[("action", "pay")])
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert!(status.is_success() || status.is_redirection(), "{status}");
}

#[tokio::test]
async fn another_tenant_sees_nothing_of_this_one() {
    let server = populated(true).await;
    for route in ROUTES {
        let (home_secret, foreign_secret) = route.reader.secrets();
        let (home, foreign) = (server.client(home_secret), server.client(foreign_secret));
        let path = route.url("ada", "");
        let (status, _, body) = get(&home, &path).await;
        let home_items = items(route, &path, status, &body);
        assert!(!home_items.is_empty(), "{path}: acme's ada has items");
        let (status, _, body) = get(&foreign, &path).await;
        let foreign_items = items(route, &path, status, &body);
        for item in &foreign_items {
            assert!(
                !home_items.contains(item),
                "{path}: globex is shown acme's {item}"
            );
        }
        match route.foreign {
            Foreign::Disjoint => continue,
            Foreign::User => {}
        }
        assert!(
            !foreign_items.is_empty(),
            "{path}: globex's own ada has items"
        );
        // A cursor taken from acme's list shows globex nothing of acme's either: a page of
        // globex's own, or (entries, whose cursor must be one of the user's) a 422.
        if route.cursor_prefix.is_some() {
            let (_, _, first) = get(&home, &route.url("ada", "limit=1")).await;
            let cursor = first["next_cursor"]
                .as_str()
                .expect("a next page")
                .to_owned();
            let paged = route.url("ada", &format!("cursor={cursor}"));
            let (status, content_type, body) = get(&foreign, &paged).await;
            if status == 422 {
                assert_problem(&paged, status, &content_type, &body);
                assert_eq!(body["field"], "cursor", "{paged}: {body}");
            } else {
                for item in items(route, &paged, status, &body) {
                    assert!(
                        foreign_items.contains(&item),
                        "{paged}: globex is shown {item}"
                    );
                }
            }
        }
        // A platform key acting in globex sees globex's ada.
        let platform = server.client(PLATFORM).in_tenant("globex").unwrap();
        let (status, _, body) = get(&platform, &path).await;
        assert_eq!(items(route, &path, status, &body), foreign_items, "{path}");
        // A user only acme has is absent for globex, exactly as one that exists nowhere.
        let kim = route.url("kim", "");
        let (status, content_type, body) = get(&foreign, &kim).await;
        assert_problem(&kim, status, &content_type, &body);
        assert_eq!(status, 404, "{kim}: {body}");
        assert_eq!(body["type"], format!("{PROBLEM_TYPE}user-not-found"));
        let nobody = route.url("nobody", "");
        let absent = get(&foreign, &nobody).await;
        assert_eq!((status, content_type, body), absent, "{kim} and {nobody}");
        let (status, _, _) = get(&home, &kim).await;
        assert_eq!(status, 200, "{kim} for acme");
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_queries_get_a_problem_and_good_ones_an_answer() {
    let server = populated(true).await;
    for route in ROUTES {
        let client = server.client(route.reader.secrets().0);
        for good in route.good {
            let path = route.url("ada", &route.fill(good));
            let (status, _, body) = get(&client, &path).await;
            items(route, &path, status, &body);
        }
        for case in BAD_QUERIES {
            let path = route.url("ada", &route.fill(case.query));
            let (status, content_type, body) = get(&client, &path).await;
            assert_problem(&path, status, &content_type, &body);
            if route.params.contains(&case.param) {
                assert_eq!(body["field"], case.param, "{path}: {body}");
            } else {
                assert!(
                    body["detail"]
                        .as_str()
                        .is_some_and(|detail| detail.contains(case.param)),
                    "{path}: the detail names the parameter it does not know: {body}"
                );
            }
        }
        let path = route.url("ada", TEN_YEARS);
        let (status, content_type, body) = get(&client, &path).await;
        let windowed = route.params.contains(&"from");
        match route.max_window_days {
            Some(_) => assert_problem(&path, status, &content_type, &body),
            None if windowed => {
                items(route, &path, status, &body);
            }
            None => assert_problem(&path, status, &content_type, &body),
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn every_read_route_answers_503_when_the_history_is_off() {
    let server = populated(false).await;
    for route in ROUTES {
        let client = server.client(route.reader.secrets().0);
        let path = route.url("ada", "");
        let (status, content_type, body) = get(&client, &path).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(body["type"], format!("{PROBLEM_TYPE}history-disabled"));
    }
    server.stop().await;
}
