//! Routing: method and path to a [`Route`] and its one path parameter, without allocating unless
//! the parameter is percent-encoded.

use std::borrow::Cow;

use http::Method;

/// Every route, one per (method, path template).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Route {
    Livez,
    Readyz,
    Healthz,
    Metrics,
    OpenApi,
    PutUser,
    GetUser,
    GetWallet,
    Credit,
    Debit,
    Reserve,
    Revoke,
    PutOverdraft,
    BatchDebit,
    GetReservation,
    Capture,
    Extend,
    Release,
    ListActions,
    GetAction,
    PutAction,
    DeleteAction,
    ListPackages,
    GetPackage,
    PutPackage,
    DeletePackage,
    Bootstrap,
    ListTenants,
    GetTenant,
    PutTenant,
    InitializePayment,
    GetPayment,
    AbandonPayment,
    Webhook,
    SandboxPage,
    SandboxAction,
    GetAutoTopup,
    PutAutoTopup,
    DeleteAutoTopup,
    /// No route matched (404), the method was wrong (405) or a path segment was malformed (400).
    Unmatched,
}

/// (route, method, template) for every route: the `route` metric label and the OpenAPI check.
pub const ROUTES: &[(Route, &str, &str)] = &[
    (Route::Livez, "GET", "/livez"),
    (Route::Readyz, "GET", "/readyz"),
    (Route::Healthz, "GET", "/healthz"),
    (Route::Metrics, "GET", "/metrics"),
    (Route::OpenApi, "GET", "/openapi.yaml"),
    (Route::PutUser, "PUT", "/v1/users/{user_id}"),
    (Route::GetUser, "GET", "/v1/users/{user_id}"),
    (Route::GetWallet, "GET", "/v1/users/{user_id}/wallet"),
    (Route::Credit, "POST", "/v1/users/{user_id}/credit"),
    (Route::Debit, "POST", "/v1/users/{user_id}/debit"),
    (Route::Reserve, "POST", "/v1/users/{user_id}/reservations"),
    (Route::Revoke, "POST", "/v1/users/{user_id}/revoke"),
    (Route::PutOverdraft, "PUT", "/v1/users/{user_id}/overdraft"),
    (Route::BatchDebit, "POST", "/v1/debits/batch"),
    (
        Route::GetReservation,
        "GET",
        "/v1/reservations/{reservation_id}",
    ),
    (
        Route::Capture,
        "POST",
        "/v1/reservations/{reservation_id}/capture",
    ),
    (
        Route::Extend,
        "POST",
        "/v1/reservations/{reservation_id}/extend",
    ),
    (
        Route::Release,
        "POST",
        "/v1/reservations/{reservation_id}/release",
    ),
    (Route::ListActions, "GET", "/v1/actions"),
    (Route::GetAction, "GET", "/v1/actions/{action}"),
    (Route::PutAction, "PUT", "/v1/actions/{action}"),
    (Route::DeleteAction, "DELETE", "/v1/actions/{action}"),
    (Route::ListPackages, "GET", "/v1/packages"),
    (Route::GetPackage, "GET", "/v1/packages/{package_id}"),
    (Route::PutPackage, "PUT", "/v1/packages/{package_id}"),
    (Route::DeletePackage, "DELETE", "/v1/packages/{package_id}"),
    (Route::Bootstrap, "GET", "/v1/billing/bootstrap/{user_id}"),
    (Route::ListTenants, "GET", "/v1/tenants"),
    (Route::GetTenant, "GET", "/v1/tenants/{tenant_id}"),
    (Route::PutTenant, "PUT", "/v1/tenants/{tenant_id}"),
    (Route::InitializePayment, "POST", "/v1/payments/initialize"),
    (Route::GetPayment, "GET", "/v1/payments/{reference}"),
    (
        Route::AbandonPayment,
        "POST",
        "/v1/payments/{reference}/abandon",
    ),
    (Route::Webhook, "POST", "/v1/webhooks/{gateway}"),
    (Route::SandboxPage, "GET", "/sandbox/checkout/{reference}"),
    (
        Route::SandboxAction,
        "POST",
        "/sandbox/checkout/{reference}",
    ),
    (Route::GetAutoTopup, "GET", "/v1/users/{user_id}/auto-topup"),
    (Route::PutAutoTopup, "PUT", "/v1/users/{user_id}/auto-topup"),
    (
        Route::DeleteAutoTopup,
        "DELETE",
        "/v1/users/{user_id}/auto-topup",
    ),
    (Route::Unmatched, "ANY", "unmatched"),
];

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
    let mut segments = [""; 6];
    let mut count = 0;
    for segment in path.strip_prefix('/').ok_or(NoRoute::NotFound)?.split('/') {
        if count == segments.len() {
            return Err(NoRoute::NotFound);
        }
        segments[count] = segment;
        count += 1;
    }
    let segments = &segments[..count];
    let (param, choices): (&str, &[(Method, Route)]) = match segments {
        ["livez"] => ("", &[(Method::GET, Route::Livez)]),
        ["readyz"] => ("", &[(Method::GET, Route::Readyz)]),
        ["healthz"] => ("", &[(Method::GET, Route::Healthz)]),
        ["metrics"] => ("", &[(Method::GET, Route::Metrics)]),
        ["openapi.yaml"] => ("", &[(Method::GET, Route::OpenApi)]),
        ["v1", "users", user] => (
            user,
            &[(Method::PUT, Route::PutUser), (Method::GET, Route::GetUser)],
        ),
        ["v1", "users", user, "wallet"] => (user, &[(Method::GET, Route::GetWallet)]),
        ["v1", "users", user, "credit"] => (user, &[(Method::POST, Route::Credit)]),
        ["v1", "users", user, "debit"] => (user, &[(Method::POST, Route::Debit)]),
        ["v1", "users", user, "reservations"] => (user, &[(Method::POST, Route::Reserve)]),
        ["v1", "users", user, "revoke"] => (user, &[(Method::POST, Route::Revoke)]),
        ["v1", "users", user, "overdraft"] => (user, &[(Method::PUT, Route::PutOverdraft)]),
        ["v1", "users", user, "auto-topup"] => (
            user,
            &[
                (Method::GET, Route::GetAutoTopup),
                (Method::PUT, Route::PutAutoTopup),
                (Method::DELETE, Route::DeleteAutoTopup),
            ],
        ),
        ["v1", "payments", "initialize"] => ("", &[(Method::POST, Route::InitializePayment)]),
        ["v1", "payments", reference] => (reference, &[(Method::GET, Route::GetPayment)]),
        ["v1", "payments", reference, "abandon"] => {
            (reference, &[(Method::POST, Route::AbandonPayment)])
        }
        ["v1", "webhooks", gateway] => (gateway, &[(Method::POST, Route::Webhook)]),
        ["sandbox", "checkout", reference] => (
            reference,
            &[
                (Method::GET, Route::SandboxPage),
                (Method::POST, Route::SandboxAction),
            ],
        ),
        ["v1", "debits", "batch"] => ("", &[(Method::POST, Route::BatchDebit)]),
        ["v1", "reservations", id] => (id, &[(Method::GET, Route::GetReservation)]),
        ["v1", "reservations", id, "capture"] => (id, &[(Method::POST, Route::Capture)]),
        ["v1", "reservations", id, "extend"] => (id, &[(Method::POST, Route::Extend)]),
        ["v1", "reservations", id, "release"] => (id, &[(Method::POST, Route::Release)]),
        ["v1", "actions"] => ("", &[(Method::GET, Route::ListActions)]),
        ["v1", "actions", name] => (
            name,
            &[
                (Method::GET, Route::GetAction),
                (Method::PUT, Route::PutAction),
                (Method::DELETE, Route::DeleteAction),
            ],
        ),
        ["v1", "packages"] => ("", &[(Method::GET, Route::ListPackages)]),
        ["v1", "packages", id] => (
            id,
            &[
                (Method::GET, Route::GetPackage),
                (Method::PUT, Route::PutPackage),
                (Method::DELETE, Route::DeletePackage),
            ],
        ),
        ["v1", "billing", "bootstrap", user] => (user, &[(Method::GET, Route::Bootstrap)]),
        ["v1", "tenants"] => ("", &[(Method::GET, Route::ListTenants)]),
        ["v1", "tenants", id] => (
            id,
            &[
                (Method::GET, Route::GetTenant),
                (Method::PUT, Route::PutTenant),
            ],
        ),
        _ => return Err(NoRoute::NotFound),
    };
    // HEAD is GET without a body (hyper drops the body), for health checkers that use it.
    let wanted = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    let Some(&(_, route)) = choices.iter().find(|(m, _)| m == wanted) else {
        return Err(NoRoute::MethodNotAllowed(allowed(choices)));
    };
    Ok(Matched {
        route,
        param: percent_decode(param).ok_or(NoRoute::BadSegment)?,
    })
}

fn allowed(choices: &[(Method, Route)]) -> &'static str {
    let methods: Vec<&str> = choices.iter().map(|(m, _)| m.as_str()).collect();
    match methods.as_slice() {
        ["GET"] => "GET",
        ["PUT"] => "PUT",
        ["POST"] => "POST",
        ["PUT", "GET"] => "GET, PUT",
        ["GET", "PUT"] => "GET, PUT",
        ["GET", "PUT", "DELETE"] => "GET, PUT, DELETE",
        ["GET", "POST"] => "GET, POST",
        _ => "GET",
    }
}

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
    fn the_route_table_is_in_enum_order() {
        for (index, (route, _, _)) in ROUTES.iter().enumerate() {
            assert_eq!(route.index(), index, "{route:?}");
        }
        assert_eq!(TEMPLATES.len(), ROUTES.len());
    }
}
