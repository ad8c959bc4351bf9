//! The checks operations share: free texts, the price of a spend, and what a wallet can spend.

use super::super::event::ActionUse;
use super::super::state::{Tenant, Wallet};
use super::super::types::{
    check_amount, check_id, check_metadata, check_text, Currency, EngineError, Invalid, Missing,
    Shortfall,
};
use super::super::Engine;
use super::Spend;

/// The price of a spend: amount, wallet currency and the catalogue action, if any.
pub(super) struct Price<'a> {
    pub amount: i64,
    pub currency: Currency,
    pub action: Option<ActionUse<'a>>,
}

impl Engine {
    #[inline]
    pub(super) fn check_texts(
        &self,
        description: Option<&str>,
        reference: Option<&str>,
        metadata: Option<&str>,
    ) -> Result<(), EngineError> {
        let limits = &self.options.limits;
        check_text("description", description, limits.max_text_bytes)?;
        check_text("reference", reference, limits.max_text_bytes)?;
        check_metadata(metadata, limits)
    }

    /// Prices a spend: an amount in the given or default currency, or an action × quantity.
    #[inline]
    pub(super) fn price<'a>(
        &self,
        tenant: &Tenant,
        currency: Option<Currency>,
        spend: Spend<'a>,
    ) -> Result<Price<'a>, EngineError> {
        let limits = &self.options.limits;
        match spend {
            Spend::Amount(amount) => {
                check_amount("amount", amount, limits)?;
                Ok(Price {
                    amount,
                    currency: currency.unwrap_or(tenant.default_currency),
                    action: None,
                })
            }
            Spend::Action { name, quantity } => {
                check_id("action", name)?;
                if quantity == 0 || quantity > limits.max_quantity {
                    return Err(EngineError::Invalid(Invalid::new(
                        "quantity",
                        "must be between 1 and limits.max_quantity",
                    )));
                }
                let (unit_cost, action_currency) = {
                    let catalogue = tenant.catalogue.read();
                    let action = catalogue
                        .actions
                        .get(name)
                        .ok_or(EngineError::NotFound(Missing::Action))?;
                    (action.cost, action.currency)
                };
                if currency.is_some_and(|c| c != action_currency) {
                    return Err(EngineError::Invalid(Invalid::new(
                        "currency",
                        "differs from the action's currency",
                    )));
                }
                let quantity_i64 = i64::try_from(quantity).map_err(|_| EngineError::Overflow)?;
                let amount = unit_cost
                    .checked_mul(quantity_i64)
                    .ok_or(EngineError::Overflow)?;
                check_amount("amount", amount, limits)?;
                let action = Some(ActionUse {
                    name,
                    quantity,
                    unit_cost,
                });
                Ok(Price {
                    amount,
                    currency: action_currency,
                    action,
                })
            }
        }
    }
}

/// Turns a checked operation's `None` into [`EngineError::Overflow`].
#[inline]
pub(super) fn checked(value: Option<i64>) -> Result<i64, EngineError> {
    value.ok_or(EngineError::Overflow)
}

/// What `available` becomes after spending `amount`, or the shortfall if it would go below the floor.
#[inline]
pub(super) fn spend_from(wallet: &Wallet, amount: i64) -> Result<i64, EngineError> {
    let available = wallet.available();
    let shortfall = EngineError::InsufficientCredits(Shortfall {
        balance: wallet.balance,
        available,
        required: amount,
        pool_available: None,
    });
    match available.checked_sub(amount) {
        Some(after) if after >= wallet.floor() => Ok(after),
        _ => Err(shortfall),
    }
}
