//! What a notification says: the JSON body sent to the tenant's endpoint, built from the engine's
//! tenant event, and [`Notification`], a notification on its way (what delivery needs and what a
//! clean stop writes down). The body's field names and layout are part of the HTTP contract with
//! tenants: they change only with a new type of notification.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::engine::notify::{NotificationKind, TenantNotification};
use crate::engine::types::Lsn;
use crate::engine::types::PaymentPurpose;
use crate::time::format_rfc3339_ms;

/// The JSON body of a notification.
pub fn body(event: &TenantNotification) -> Value {
    let purpose = |purpose: PaymentPurpose| match purpose {
        PaymentPurpose::Checkout => "checkout",
        PaymentPurpose::AutoTopup => "auto_topup",
    };
    let mut data = json!({ "user_id": event.user, "currency": event.currency.as_str() });
    let extra = match &event.kind {
        NotificationKind::LowBalance {
            available,
            threshold,
        } => json!({ "available": available, "threshold": threshold }),
        NotificationKind::Depleted { available } => json!({ "available": available }),
        NotificationKind::TopupSucceeded {
            reference,
            purpose: p,
            credits,
            balance,
            metadata,
        } => json!({
            "reference": reference,
            "purpose": purpose(*p),
            "credits": credits,
            "balance": balance,
            "metadata": metadata_json(metadata.as_deref()),
        }),
        NotificationKind::TopupFailed {
            reference,
            purpose: p,
            decline,
            metadata,
        } => json!({
            "reference": reference,
            "purpose": purpose(*p),
            "reason": decline.as_str(),
            "metadata": metadata_json(metadata.as_deref()),
        }),
        NotificationKind::AutoTopupDisabled { reason } => json!({ "reason": reason }),
    };
    if let (Some(data), Value::Object(extra)) = (data.as_object_mut(), extra) {
        data.extend(extra);
    }
    json!({
        "id": format!("evt_{}_{}", event.lsn, event.kind.name().replace('.', "_")),
        "type": event.kind.name(),
        "created_at": format_rfc3339_ms(event.time_ms),
        "tenant_id": event.tenant,
        "data": data,
    })
}

/// A payment's metadata as the JSON object it is (the engine checked it is one), or `null`.
fn metadata_json(metadata: Option<&str>) -> Value {
    metadata
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or(Value::Null)
}

/// A notification on its way to a tenant's endpoint: what delivery needs, and what a clean stop
/// writes down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// The tenant.
    pub tenant: String,
    /// The record the notification follows from: it is sent only once that record is durable.
    pub lsn: Lsn,
    /// The notification type, such as `wallet.depleted`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The JSON body, as sent.
    pub body: Value,
}

impl Notification {
    /// The notification of an engine's tenant event.
    pub(super) fn new(event: &TenantNotification) -> Notification {
        Notification {
            tenant: event.tenant.clone(),
            lsn: event.lsn,
            kind: event.kind.name().to_owned(),
            body: body(event),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::types::{Currency, Decline};

    fn notification(kind: NotificationKind) -> TenantNotification {
        TenantNotification {
            tenant: "acme".into(),
            user: "ada".into(),
            currency: Currency::CREDITS,
            kind,
            time_ms: 1_700_000_000_000,
            lsn: 42,
        }
    }

    #[test]
    fn topup_notifications_carry_the_payments_metadata_as_an_object() {
        let succeeded = body(&notification(NotificationKind::TopupSucceeded {
            reference: "cd_1".into(),
            purpose: PaymentPurpose::Checkout,
            credits: 500,
            balance: 700,
            metadata: Some(r#"{"order":"A-17","lines":[1,2]}"#.into()),
        }));
        assert_eq!(
            succeeded["data"]["metadata"],
            json!({"order": "A-17", "lines": [1, 2]})
        );
        assert_eq!(succeeded["data"]["credits"], 500);
        assert_eq!(succeeded["type"], "topup.succeeded");
        let failed = body(&notification(NotificationKind::TopupFailed {
            reference: "cd_2".into(),
            purpose: PaymentPurpose::AutoTopup,
            decline: Decline::Hard,
            metadata: None,
        }));
        let data = failed["data"].as_object().unwrap();
        assert_eq!(data["metadata"], Value::Null, "present, and null");
        assert_eq!(data["reason"], "hard_decline");
        assert_eq!(data["purpose"], "auto_topup");
    }
}
