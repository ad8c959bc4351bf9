//! Routing: the one route table, and matching a request's method and path against it.
//!
//! Every route is one line of the table below: its name, method, path template, who may call it
//! ([`Access`]) and its handler. From that line come the [`Route`] enum, [`ROUTES`] (the `route`
//! metric label and the OpenAPI check), [`Route::access`] and the call of the handler; nothing
//! else lists routes.
//!
//! [`route`] walks the table in order. Each template is cut at compile time around its `{…}`
//! segment; a path matches when it has as many `/` and starts and ends as the template does, the
//! rest being the parameter. The first template that matches names the resource; among the routes
//! of that template the method decides, and none having it is a 405 whose `Allow` lists theirs.
//! Nothing is allocated unless the parameter is percent-encoded.

use std::borrow::Cow;

use http::Method;

use super::call::{Answer, Routed};
use super::problem::Problem;
use super::routes::{
    audit, catalogue, dashboard, entries, health, payment_history, payments, pools, portal,
    reports, reservations, sandbox, stream, tenants, users,
};
use crate::config::Role;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Open, and served on a reserved connection slot too: what orchestrators and Prometheus ask
    /// for.
    Probe,
    /// Open: no key. A webhook carries the gateway's signature, the sandbox page its reference.
    Open,
    /// A key with at least this role.
    Key(Role),
}

/// Declares the route table: one line per route, `Name: "METHOD" "template" access => handler;`,
/// where access is `Probe`, `Open` or a [`Role`] and the handler an `async fn` taking an
/// [`Open`](super::call::Open) (open routes) or a [`Call`](super::call::Call) (keyed routes).
macro_rules! route_table {
    (@access Probe) => { Access::Probe };
    (@access Open) => { Access::Open };
    (@access $role:ident) => { Access::Key(Role::$role) };
    (@invoke Probe, $handler:path, $routed:ident) => { $handler(&$routed.open().await?).await };
    (@invoke Open, $handler:path, $routed:ident) => { $handler(&$routed.open().await?).await };
    (@invoke $role:ident, $handler:path, $routed:ident) => {
        $handler(&$routed.call(Role::$role).await?).await
    };
    ($($route:ident: $method:literal $template:literal $access:ident => $handler:path;)*) => {
        /// Every route, one per (method, path template), in table order.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Route {
            $(#[doc = concat!("`", $method, " ", $template, "`")] $route,)*
            /// No route matched (404), the method was wrong (405) or a path segment was malformed
            /// (400).
            Unmatched,
        }

        /// (route, method, template) for every route, in [`Route`] order: the `route` metric
        /// label and the OpenAPI check.
        pub const ROUTES: &[(Route, &str, &str)] = &[
            $((Route::$route, $method, $template),)*
            (Route::Unmatched, "ANY", "unmatched"),
        ];

        impl Route {
            /// Who may call the route. [`Route::Unmatched`] is never called.
            pub fn access(self) -> Access {
                match self {
                    $(Route::$route => route_table!(@access $access),)*
                    Route::Unmatched => Access::Open,
                }
            }
        }

        /// Calls the route's handler, a keyed one once the key has passed (see [`Routed::call`]).
        pub(super) async fn dispatch(route: Route, routed: Routed<'_>) -> Answer {
            match route {
                $(Route::$route => route_table!(@invoke $access, $handler, routed),)*
                Route::Unmatched => Err(Problem::no_route(routed.parts.uri.path())),
            }
        }
    };
}

// The order matters where templates overlap: the literal `/v1/payments/initialize` comes before
// `/v1/payments/{reference}`, so `GET /v1/payments/initialize` is a 405, not a payment lookup.
route_table! {
    Livez:             "GET"    "/livez"                                    Probe    => health::livez;
    Readyz:            "GET"    "/readyz"                                   Probe    => health::ready;
    Healthz:           "GET"    "/healthz"                                  Probe    => health::ready;
    Metrics:           "GET"    "/metrics"                                  Probe    => health::metrics;
    OpenApi:           "GET"    "/openapi.yaml"                             Open     => health::openapi;
    Me:                "GET"    "/v1/me"                                    Service  => users::me;
    ListUsers:         "GET"    "/v1/users"                                 Service  => users::list_users;
    PutUser:           "PUT"    "/v1/users/{user_id}"                       Service  => users::put_user;
    GetUser:           "GET"    "/v1/users/{user_id}"                       Service  => users::get_user;
    PatchUser:         "PATCH"  "/v1/users/{user_id}"                       Service  => users::patch_user;
    GetWallet:         "GET"    "/v1/users/{user_id}/wallet"                Service  => users::get_wallet;
    WalletStream:      "GET"    "/v1/users/{user_id}/wallet/stream"         Open     => stream::wallet_stream;
    StreamToken:       "POST"   "/v1/users/{user_id}/stream-tokens"         Service  => stream::stream_token;
    PortalSession:     "POST"   "/v1/users/{user_id}/portal-sessions"       Service  => portal::create_session;
    ListEntries:       "GET"    "/v1/users/{user_id}/entries"               Service  => entries::list_entries;
    ListPayments:      "GET"    "/v1/users/{user_id}/payments"              Service  => payment_history::list_payments;
    Credit:            "POST"   "/v1/users/{user_id}/credit"                Service  => users::credit;
    Debit:             "POST"   "/v1/users/{user_id}/debit"                 Service  => users::debit;
    Reserve:           "POST"   "/v1/users/{user_id}/reservations"          Service  => reservations::reserve;
    ListReservations:  "GET"    "/v1/users/{user_id}/reservations"          Service  => reservations::list_reservations;
    Revoke:            "POST"   "/v1/users/{user_id}/revoke"                Admin    => users::revoke;
    PutOverdraft:      "PUT"    "/v1/users/{user_id}/overdraft"             Admin    => users::put_overdraft;
    GetMembership:     "GET"    "/v1/users/{user_id}/pool"                  Service  => pools::get_membership;
    PutMembership:     "PUT"    "/v1/users/{user_id}/pool"                  Admin    => pools::put_membership;
    DeleteMembership:  "DELETE" "/v1/users/{user_id}/pool"                  Admin    => pools::delete_membership;
    BatchDebit:        "POST"   "/v1/debits/batch"                          Service  => users::batch_debit;
    GetReservation:    "GET"    "/v1/reservations/{reservation_id}"         Service  => reservations::get_reservation;
    Capture:           "POST"   "/v1/reservations/{reservation_id}/capture" Service  => reservations::capture;
    Extend:            "POST"   "/v1/reservations/{reservation_id}/extend"  Service  => reservations::extend;
    Release:           "POST"   "/v1/reservations/{reservation_id}/release" Service  => reservations::release;
    ListActions:       "GET"    "/v1/actions"                               Service  => catalogue::list_actions;
    GetAction:         "GET"    "/v1/actions/{action}"                      Service  => catalogue::get_action;
    PutAction:         "PUT"    "/v1/actions/{action}"                      Admin    => catalogue::put_action;
    DeleteAction:      "DELETE" "/v1/actions/{action}"                      Admin    => catalogue::delete_action;
    ListPackages:      "GET"    "/v1/packages"                              Service  => catalogue::list_packages;
    GetPackage:        "GET"    "/v1/packages/{package_id}"                 Service  => catalogue::get_package;
    PutPackage:        "PUT"    "/v1/packages/{package_id}"                 Admin    => catalogue::put_package;
    DeletePackage:     "DELETE" "/v1/packages/{package_id}"                 Admin    => catalogue::delete_package;
    Bootstrap:         "GET"    "/v1/billing/bootstrap/{user_id}"           Service  => catalogue::bootstrap;
    ListPools:         "GET"    "/v1/pools"                                 Admin    => pools::list_pools;
    GetPool:           "GET"    "/v1/pools/{pool_id}"                       Admin    => pools::get_pool;
    PutPool:           "PUT"    "/v1/pools/{pool_id}"                       Admin    => pools::put_pool;
    CreditPool:        "POST"   "/v1/pools/{pool_id}/credit"                Admin    => pools::credit_pool;
    ListPoolMembers:   "GET"    "/v1/pools/{pool_id}/members"               Admin    => pools::list_pool_members;
    ListPoolEntries:   "GET"    "/v1/pools/{pool_id}/entries"               Admin    => pools::list_pool_entries;
    ListPoolPayments:  "GET"    "/v1/pools/{pool_id}/payments"              Admin    => payment_history::list_pool_payments;
    ListTenants:       "GET"    "/v1/tenants"                               Platform => tenants::list_tenants;
    GetTenant:         "GET"    "/v1/tenants/{tenant_id}"                   Platform => tenants::get_tenant;
    PutTenant:         "PUT"    "/v1/tenants/{tenant_id}"                   Platform => tenants::put_tenant;
    InitializePayment: "POST"   "/v1/payments/initialize"                   Service  => payments::initialize;
    GetPayment:        "GET"    "/v1/payments/{reference}"                  Service  => payments::get_payment;
    AbandonPayment:    "POST"   "/v1/payments/{reference}/abandon"          Admin    => payments::abandon_payment;
    Webhook:           "POST"   "/v1/webhooks/{gateway}"                    Open     => payments::webhook;
    DashboardPage:     "GET"    "/dashboard"                                Open     => dashboard::page;
    DashboardFile:     "GET"    "/dashboard/{file}"                         Open     => dashboard::file;
    SandboxPage:       "GET"    "/sandbox/checkout/{reference}"             Open     => sandbox::page;
    SandboxAction:     "POST"   "/sandbox/checkout/{reference}"             Open     => sandbox::action;
    PortalPage:        "GET"    "/portal/{token}"                           Open     => portal::page;
    PortalData:        "GET"    "/portal/{token}/data"                      Open     => portal::data;
    PortalCheckout:    "POST"   "/portal/{token}/checkout"                  Open     => portal::checkout;
    GetAutoTopup:      "GET"    "/v1/users/{user_id}/auto-topup"            Service  => payments::get_auto_topup;
    PutAutoTopup:      "PUT"    "/v1/users/{user_id}/auto-topup"            Admin    => payments::put_auto_topup;
    DeleteAutoTopup:   "DELETE" "/v1/users/{user_id}/auto-topup"            Admin    => payments::delete_auto_topup;
    ListAudit:         "GET"    "/v1/audit"                                 Admin    => audit::list_audit;
    VerifyAudit:       "GET"    "/v1/audit/verify"                          Admin    => audit::verify_audit;
    UsageReport:       "GET"    "/v1/reports/usage"                         Service  => reports::usage;
    RevenueReport:     "GET"    "/v1/reports/revenue"                       Admin    => reports::revenue;
}

/// The route templates, indexed by [`Route::index`].
pub const TEMPLATES: &[&str] = &{
    let mut templates = [""; ROUTES.len()];
    let mut i = 0;
    while i < ROUTES.len() {
        templates[i] = ROUTES[i].2;
        i += 1;
    }
    templates
};

impl Route {
    /// The route's position in [`ROUTES`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why no route was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoute {
    /// No path matched.
    NotFound,
    /// The path matched with other methods.
    MethodNotAllowed(&'static str),
    /// A path segment was not valid percent-encoded UTF-8, or held a control character (raw, or
    /// percent-encoded such as `%00`).
    BadSegment,
}

/// A matched route and its path parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched<'a> {
    /// The route.
    pub route: Route,
    /// The `{…}` parameter, decoded, or empty.
    pub param: Cow<'a, str>,
}

/// A template cut at compile time around its `{…}` parameter, if it has one.
#[derive(Clone, Copy)]
struct Pattern {
    /// The template up to the parameter (all of it without one).
    prefix: &'static str,
    /// The template after the parameter ("" without one).
    suffix: &'static str,
    /// Whether the template has a parameter.
    has_param: bool,
    /// How many `/` the template has, and a path it matches.
    slashes: usize,
    /// The first row of the table with the same template: the resource it is a method of.
    resource: usize,
}

/// The routes a request can match: every row but [`Route::Unmatched`], which is last.
const MATCHABLE: &[(Route, &str, &str)] = match ROUTES.split_last() {
    Some((_, routes)) => routes,
    None => &[],
};

/// The pattern of every matchable row, in table order.
static PATTERNS: [Pattern; MATCHABLE.len()] = {
    let mut patterns = [pattern("/"); MATCHABLE.len()];
    let mut row = 0;
    while row < MATCHABLE.len() {
        patterns[row] = pattern(MATCHABLE[row].2);
        let mut first = 0;
        while !same_text(MATCHABLE[first].2, MATCHABLE[row].2) {
            first += 1;
        }
        patterns[row].resource = first;
        row += 1;
    }
    patterns
};

/// Cuts `/a/{b}/c` into `/a/` and `/c`. A template that is not absolute, or has more than one
/// parameter, or one that is not a whole segment, fails the build.
const fn pattern(template: &'static str) -> Pattern {
    let bytes = template.as_bytes();
    assert!(
        !bytes.is_empty() && bytes[0] == b'/',
        "a template starts with /"
    );
    let (mut open, mut close, mut slashes, mut i) = (0, 0, 0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'/' => slashes += 1,
            b'{' => {
                assert!(
                    open == 0 && bytes[i - 1] == b'/',
                    "one parameter, a whole segment"
                );
                open = i;
            }
            b'}' => {
                assert!(
                    i + 1 == bytes.len() || bytes[i + 1] == b'/',
                    "a whole segment"
                );
                close = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    let (prefix, suffix) = if open == 0 {
        (template, "")
    } else {
        let (prefix, rest) = template.split_at(open);
        (prefix, rest.split_at(close - open).1)
    };
    Pattern {
        prefix,
        suffix,
        has_param: open != 0,
        slashes,
        resource: 0,
    }
}

/// String equality in a constant.
const fn same_text(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

impl Pattern {
    /// The parameter `path` (with `slashes` slashes) gives if it matches; "" without one.
    fn matches<'p>(&self, path: &'p str, slashes: usize) -> Option<&'p str> {
        if slashes != self.slashes {
            return None;
        }
        if !self.has_param {
            return (path == self.prefix).then_some("");
        }
        let end = path.len().checked_sub(self.suffix.len())?;
        if end < self.prefix.len() || !path.starts_with(self.prefix) || !path.ends_with(self.suffix)
        {
            return None;
        }
        // The slashes are all in the prefix and suffix, so the parameter is one segment; it
        // starts after a `/` and ends at one or at the end, both character boundaries.
        path.get(self.prefix.len()..end)
    }
}

/// Finds the route of a request. A path holding a control character is refused before anything
/// else: no identifier may hold one (`A-Z a-z 0-9 . _ : @ + -`), and refusing it here, once, keeps
/// such bytes out of every answer that quotes the path or a parameter (`no route for …`,
/// `payments.gateway is not …`), whatever the route.
pub fn route<'a>(method: &Method, path: &'a str) -> Result<Matched<'a>, NoRoute> {
    // http refuses raw C0 controls and DEL in a request target, but lets UTF-8 through, and with
    // it the C1 controls (U+0080 to U+009F).
    if path.chars().any(char::is_control) {
        return Err(NoRoute::BadSegment);
    }
    let slashes = path.bytes().filter(|&byte| byte == b'/').count();
    // HEAD is GET without a body (hyper drops the body), for health checkers that use it.
    let wanted = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    // The resource (first row of the template) that matched, and the parameter it gave.
    let mut resource: Option<(usize, &str)> = None;
    let mut allowed = 0;
    for (&(route, route_method, _), pattern) in MATCHABLE.iter().zip(&PATTERNS) {
        let param = match resource {
            Some((first, param)) if first == pattern.resource => param,
            Some(_) => continue,
            None => match pattern.matches(path, slashes) {
                Some(param) => {
                    resource = Some((pattern.resource, param));
                    param
                }
                None => continue,
            },
        };
        if route_method == wanted {
            let param = percent_decode(param).ok_or(NoRoute::BadSegment)?;
            return Ok(Matched { route, param });
        }
        allowed |= method_bit(route_method);
    }
    match resource {
        Some(_) => Err(NoRoute::MethodNotAllowed(ALLOW[allowed])),
        None => Err(NoRoute::NotFound),
    }
}

/// The bit of a table method in an `Allow` set.
fn method_bit(method: &str) -> usize {
    match method {
        "GET" => 1,
        "PUT" => 2,
        "POST" => 4,
        "PATCH" => 16,
        _ => 8,
    }
}

/// The `Allow` header of every set of table methods (GET, PUT, PATCH, POST, DELETE), by bits.
const ALLOW: [&str; 32] = [
    "",
    "GET",
    "PUT",
    "GET, PUT",
    "POST",
    "GET, POST",
    "PUT, POST",
    "GET, PUT, POST",
    "DELETE",
    "GET, DELETE",
    "PUT, DELETE",
    "GET, PUT, DELETE",
    "POST, DELETE",
    "GET, POST, DELETE",
    "PUT, POST, DELETE",
    "GET, PUT, POST, DELETE",
    "PATCH",
    "GET, PATCH",
    "PUT, PATCH",
    "GET, PUT, PATCH",
    "PATCH, POST",
    "GET, PATCH, POST",
    "PUT, PATCH, POST",
    "GET, PUT, PATCH, POST",
    "PATCH, DELETE",
    "GET, PATCH, DELETE",
    "PUT, PATCH, DELETE",
    "GET, PUT, PATCH, DELETE",
    "PATCH, POST, DELETE",
    "GET, PATCH, POST, DELETE",
    "PUT, PATCH, POST, DELETE",
    "GET, PUT, PATCH, POST, DELETE",
];

/// Decodes `%XX` escapes; `None` for a bad escape, invalid UTF-8 or a decoded control character.
fn percent_decode(text: &str) -> Option<Cow<'_, str>> {
    if !text.contains('%') {
        return Some(Cow::Borrowed(text));
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let decoded = String::from_utf8(out).ok()?;
    if decoded.chars().any(char::is_control) {
        return None;
    }
    Some(Cow::Owned(decoded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_and_decode() {
        let matched = route(&Method::POST, "/v1/users/alice%40example.com/debit").unwrap();
        assert_eq!(matched.route, Route::Debit);
        assert_eq!(matched.param, "alice@example.com");
        assert_eq!(
            route(&Method::GET, "/v1/users/bob").unwrap().route,
            Route::GetUser
        );
        assert_eq!(
            route(&Method::DELETE, "/v1/actions/gpt").unwrap().route,
            Route::DeleteAction
        );
        assert_eq!(
            route(&Method::GET, "/v1/users/bob/nothing"),
            Err(NoRoute::NotFound)
        );
        assert_eq!(
            route(&Method::GET, "/v1/users/bob/debit"),
            Err(NoRoute::MethodNotAllowed("POST"))
        );
        assert_eq!(
            route(&Method::POST, "/v1/users/%zz/debit"),
            Err(NoRoute::BadSegment)
        );
        assert_eq!(
            route(&Method::POST, "/v1/users/%ff/debit"),
            Err(NoRoute::BadSegment)
        );
        // Control characters, percent-encoded or raw, in a parameter or in a path no route
        // matches, are refused before any answer could quote them.
        for (method, path) in [
            (Method::GET, "/v1/users/%00"),
            (Method::POST, "/v1/users/a%0Ab/debit"),
            (Method::POST, "/v1/webhooks/%7F"),
            (Method::GET, "/v1/users/%C2%85"),
            (Method::GET, "/v1/users/\u{85}"),
            (Method::GET, "/v1/nothing/\u{9f}/here"),
        ] {
            assert_eq!(route(&method, path), Err(NoRoute::BadSegment), "{path:?}");
        }
        assert_eq!(
            route(&Method::GET, "/v1/users/caf%C3%A9").unwrap().param,
            "café"
        );
        assert_eq!(
            route(&Method::GET, "/a/b/c/d/e/f/g"),
            Err(NoRoute::NotFound)
        );
        assert_eq!(route(&Method::GET, "relative"), Err(NoRoute::NotFound));
        assert_eq!(route(&Method::HEAD, "/livez").unwrap().route, Route::Livez);
    }

    #[test]
    fn a_literal_template_comes_before_the_parameter_it_overlaps() {
        assert_eq!(
            route(&Method::GET, "/v1/payments/initialize"),
            Err(NoRoute::MethodNotAllowed("POST"))
        );
        assert_eq!(
            route(&Method::GET, "/v1/payments/pay_1").unwrap().route,
            Route::GetPayment
        );
        assert_eq!(route(&Method::GET, "/v1/users/").unwrap().param, "");
        assert_eq!(
            route(&Method::POST, "/v1/users//debit").unwrap().route,
            Route::Debit
        );
        assert_eq!(route(&Method::GET, "/livez/"), Err(NoRoute::NotFound));
    }

    #[test]
    fn every_resource_answers_405_with_its_methods() {
        let expected = [
            ("/livez", "GET"),
            ("/metrics", "GET"),
            ("/v1/users/u", "GET, PUT, PATCH"),
            ("/v1/users/u/debit", "POST"),
            ("/v1/users/u/overdraft", "PUT"),
            ("/v1/users/u/auto-topup", "GET, PUT, DELETE"),
            ("/v1/actions", "GET"),
            ("/v1/actions/a", "GET, PUT, DELETE"),
            ("/v1/packages/p", "GET, PUT, DELETE"),
            ("/v1/tenants/t", "GET, PUT"),
            ("/v1/pools/p", "GET, PUT"),
            ("/v1/pools/p/credit", "POST"),
            ("/v1/users/u/pool", "GET, PUT, DELETE"),
            ("/v1/payments/initialize", "POST"),
            ("/v1/payments/r", "GET"),
            ("/sandbox/checkout/r", "GET, POST"),
        ];
        for (path, allowed) in expected {
            assert_eq!(
                route(&Method::OPTIONS, path),
                Err(NoRoute::MethodNotAllowed(allowed)),
                "{path}"
            );
        }
    }

    #[test]
    fn access_is_as_the_contract_says() {
        let access = |method, path| route(&method, path).unwrap().route.access();
        assert_eq!(access(Method::GET, "/readyz"), Access::Probe);
        assert_eq!(access(Method::GET, "/openapi.yaml"), Access::Open);
        assert_eq!(access(Method::POST, "/v1/webhooks/stripe"), Access::Open);
        assert_eq!(
            access(Method::POST, "/v1/users/u/debit"),
            Access::Key(Role::Service)
        );
        assert_eq!(
            access(Method::POST, "/v1/users/u/revoke"),
            Access::Key(Role::Admin)
        );
        assert_eq!(
            access(Method::GET, "/v1/tenants"),
            Access::Key(Role::Platform)
        );
        // Usage narrows itself to one user for a service key; revenue is the admin's.
        assert_eq!(
            access(Method::GET, "/v1/reports/usage"),
            Access::Key(Role::Service)
        );
        assert_eq!(
            access(Method::GET, "/v1/reports/revenue"),
            Access::Key(Role::Admin)
        );
    }

    #[test]
    fn the_route_table_is_in_enum_order() {
        for (index, (route, _, _)) in ROUTES.iter().enumerate() {
            assert_eq!(route.index(), index, "{route:?}");
        }
        assert_eq!(TEMPLATES.len(), ROUTES.len());
    }
}
