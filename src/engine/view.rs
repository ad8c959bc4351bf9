//! Read-only views of the state, copied out under a read lock so callers never hold one.

use super::ops::allowance;
use super::state::{utc_day, Account, Pool, ReservationPhase, Tenant, Wallet};
use super::types::{spendable, ClosedAs, Currency, EngineError, Lsn, Missing};
use super::Engine;

/// A wallet as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalletView {
    /// The wallet's currency.
    pub currency: Currency,
    /// Credits minus debits.
    pub balance: i64,
    /// Held by open reservations.
    pub reserved: i64,
    /// Balance minus reserved.
    pub available: i64,
    /// How far `available` may go below zero.
    pub overdraft_limit: i64,
    /// What a debit may take now: see [`crate::engine::types::spendable`].
    pub spendable: i64,
}

impl WalletView {
    /// A wallet's view from its parts; `spendable` follows from them.
    pub fn new(
        currency: Currency,
        balance: i64,
        reserved: i64,
        overdraft_limit: i64,
    ) -> WalletView {
        let available = balance.saturating_sub(reserved);
        WalletView {
            currency,
            balance,
            reserved,
            available,
            overdraft_limit,
            spendable: spendable(available, overdraft_limit),
        }
    }
}

impl From<&Wallet> for WalletView {
    fn from(wallet: &Wallet) -> WalletView {
        WalletView::new(
            wallet.currency,
            wallet.balance,
            wallet.reserved,
            wallet.overdraft,
        )
    }
}

/// A user, its profile and its wallets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserView {
    /// The user's id.
    pub user_id: String,
    /// E-mail address.
    pub email: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// A JSON document, as text.
    pub metadata: Option<String>,
    /// Every wallet, the default currency first.
    pub wallets: Vec<WalletView>,
    /// Open reservations.
    pub reservations_open: usize,
    /// The LSN of the user's last change.
    pub last_lsn: Lsn,
}

impl UserView {
    fn new(user_id: &str, account: &Account) -> UserView {
        let profile = account.profile();
        let text = |field: Option<&Box<str>>| field.map(|value| value.to_string());
        UserView {
            user_id: user_id.to_owned(),
            email: text(profile.and_then(|p| p.email.as_ref())),
            name: text(profile.and_then(|p| p.name.as_ref())),
            metadata: text(profile.and_then(|p| p.metadata.as_ref())),
            wallets: account.wallets().map(WalletView::from).collect(),
            reservations_open: account.reservations().len(),
            last_lsn: account.last_lsn(),
        }
    }

    /// The wallet in `currency`, or an empty one if the user has none there.
    pub fn wallet(&self, currency: Currency) -> WalletView {
        self.wallets
            .iter()
            .find(|w| w.currency == currency)
            .copied()
            .unwrap_or(WalletView::new(currency, 0, 0, 0))
    }
}

/// Whether a reservation is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationState {
    /// Holding credits until this time (Unix milliseconds).
    Open {
        /// Expiry.
        expires_at_ms: i64,
    },
    /// Closed.
    Closed(ClosedAs),
}

/// A reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationView {
    /// Its id.
    pub reservation_id: Lsn,
    /// Whose.
    pub user_id: String,
    /// In which currency.
    pub currency: Option<Currency>,
    /// How much it holds, or held once closed.
    pub amount: Option<i64>,
    /// Open or closed.
    pub state: ReservationState,
}

/// A catalogue action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionView {
    /// Its name.
    pub action: String,
    /// Credits per unit.
    pub cost: i64,
    /// The wallet currency it charges.
    pub currency: Currency,
    /// Free text.
    pub description: Option<String>,
}

/// A top-up package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageView {
    /// Its id.
    pub package_id: String,
    /// Display name.
    pub name: String,
    /// Credits it buys.
    pub credits: i64,
    /// The wallet currency of those credits.
    pub currency: Currency,
    /// Price in minor units.
    pub price_minor: i64,
    /// Price currency.
    pub price_currency: Currency,
    /// Offered for sale.
    pub active: bool,
    /// Where it is shown among the packages: lowest first, then by id.
    pub position: u32,
}

/// A tenant and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantView {
    /// Its id.
    pub tenant_id: String,
    /// Display name.
    pub name: Option<String>,
    /// The currency of new users' wallets.
    pub default_currency: Currency,
    /// Its currencies with their decimals (its default one alone if it never defined any).
    pub currencies: Vec<crate::engine::types::CurrencySpec>,
    /// Whether it defined its currencies (else they are its default one, with no decimals).
    pub currencies_defined: bool,
    /// How many users it has.
    pub users: usize,
    /// The origins its portal sessions may return to; empty: the server's default.
    pub portal_return_origins: Vec<String>,
}

impl Tenant {
    /// The tenant's settings.
    pub fn view(&self) -> TenantView {
        let catalogue = self.catalogue.read();
        TenantView {
            tenant_id: self.id.to_string(),
            name: catalogue.name.as_ref().map(|name| name.to_string()),
            default_currency: self.default_currency,
            currencies: catalogue.currencies(),
            currencies_defined: !catalogue.currencies.is_empty(),
            users: self.users.len(),
            portal_return_origins: catalogue
                .portal_return_origins
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }

    /// The ids of up to `limit` users that start with `prefix` and sort after `after`, in
    /// byte order: one page of a listing. Each shard is read-locked in turn while its keys are
    /// scanned; only the ids of the page are kept (a bounded heap), so a scan of many users
    /// allocates no more than one page.
    pub fn user_ids(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<String> {
        if limit == 0 {
            return Vec::new();
        }
        let mut page: std::collections::BinaryHeap<compact_str::CompactString> =
            std::collections::BinaryHeap::with_capacity(limit.min(1024));
        for entry in self.users.iter() {
            let id = entry.key();
            if !id.starts_with(prefix) || after.is_some_and(|after| id.as_str() <= after) {
                continue;
            }
            if page.len() < limit {
                page.push(id.clone());
            } else if page.peek().is_some_and(|largest| id < largest) {
                page.pop();
                page.push(id.clone());
            }
        }
        page.into_sorted_vec()
            .into_iter()
            .map(|id| id.to_string())
            .collect()
    }

    /// The currency of new users' wallets.
    pub fn default_currency(&self) -> Currency {
        self.default_currency
    }

    /// Every action in the catalogue, by name.
    pub fn actions(&self) -> Vec<ActionView> {
        let catalogue = self.catalogue.read();
        catalogue
            .actions
            .iter()
            .map(|(name, action)| ActionView {
                action: name.to_string(),
                cost: action.cost,
                currency: action.currency,
                description: action.description.as_ref().map(|d| d.to_string()),
            })
            .collect()
    }

    /// Every package, in display order: by position, then by id.
    pub fn packages(&self) -> Vec<PackageView> {
        let catalogue = self.catalogue.read();
        let mut packages: Vec<PackageView> = catalogue
            .packages
            .iter()
            .map(|(id, package)| PackageView {
                package_id: id.to_string(),
                name: package.name.to_string(),
                credits: package.credits,
                currency: package.currency,
                price_minor: package.price_minor,
                price_currency: package.price_currency,
                active: package.active,
                position: package.position,
            })
            .collect();
        drop(catalogue);
        // Stable, and the map is by id: equal positions stay in id order.
        packages.sort_by_key(|package| package.position);
        packages
    }

    /// A user and its wallets.
    pub fn user(&self, user_id: &str) -> Result<UserView, EngineError> {
        let account = self
            .users
            .get(user_id)
            .ok_or(EngineError::NotFound(Missing::User))?;
        Ok(UserView::new(user_id, &account))
    }

    /// One wallet, without copying the rest of the user.
    pub fn wallet(
        &self,
        user_id: &str,
        currency: Option<Currency>,
    ) -> Result<WalletView, EngineError> {
        let currency = currency.unwrap_or(self.default_currency);
        let account = self
            .users
            .get(user_id)
            .ok_or(EngineError::NotFound(Missing::User))?;
        let wallet = account
            .wallet(currency)
            .copied()
            .unwrap_or(Wallet::empty(currency));
        Ok(WalletView::from(&wallet))
    }

    /// A reservation.
    pub fn reservation(&self, reservation_id: Lsn) -> Result<ReservationView, EngineError> {
        let entry = self
            .reservations
            .get(&reservation_id)
            .ok_or(EngineError::NotFound(Missing::Reservation))?
            .clone();
        let (currency, amount, state) = match entry.state {
            ReservationPhase::Closed {
                how,
                currency,
                amount,
                ..
            } => (Some(currency), Some(amount), ReservationState::Closed(how)),
            ReservationPhase::Open { expires_at_ms } => {
                let account = self
                    .users
                    .get(entry.user.as_str())
                    .ok_or(EngineError::NotFound(Missing::Reservation))?;
                let reservation = account
                    .reservation(reservation_id)
                    .ok_or(EngineError::NotFound(Missing::Reservation))?;
                (
                    Some(reservation.currency),
                    Some(reservation.amount),
                    ReservationState::Open { expires_at_ms },
                )
            }
        };
        Ok(ReservationView {
            reservation_id,
            user_id: entry.user.to_string(),
            currency,
            amount,
            state,
        })
    }

    /// A user's open reservations, oldest first. Those whose time ran out by `now_ms` are left
    /// out: they hold nothing for any decision, and the engine releases them at the next chance.
    pub fn open_reservations(
        &self,
        user_id: &str,
        now_ms: i64,
    ) -> Result<Vec<ReservationView>, EngineError> {
        let account = self
            .users
            .get(user_id)
            .ok_or(EngineError::NotFound(Missing::User))?;
        let mut views: Vec<ReservationView> = account
            .reservations()
            .iter()
            .filter(|reservation| reservation.expires_at_ms > now_ms)
            .map(|reservation| ReservationView {
                reservation_id: reservation.id,
                user_id: user_id.to_owned(),
                currency: Some(reservation.currency),
                amount: Some(reservation.amount),
                state: ReservationState::Open {
                    expires_at_ms: reservation.expires_at_ms,
                },
            })
            .collect();
        drop(account);
        views.sort_by_key(|view| view.reservation_id);
        Ok(views)
    }

    /// How many users the tenant has.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }
}

/// A credit pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolView {
    /// Its id.
    pub pool_id: String,
    /// Display name.
    pub name: Option<String>,
    /// The currency of its credits.
    pub currency: Currency,
    /// Credits in the pool.
    pub balance: i64,
    /// Held by members' open reservations.
    pub reserved: i64,
    /// Balance minus reserved: what members may still draw.
    pub available: i64,
    /// How many users draw on it.
    pub members: usize,
    /// What its members drew (and hold) this UTC day.
    pub drawn_today: i64,
    /// Credits ever added.
    pub credited: i64,
    /// Credits ever paid for members' spends: `balance = credited − paid`.
    pub paid: i64,
}

impl PoolView {
    fn new(id: &str, pool: &Pool, day: i64) -> PoolView {
        PoolView {
            pool_id: id.to_owned(),
            name: pool.name.as_ref().map(|name| name.to_string()),
            currency: pool.currency,
            balance: pool.balance,
            reserved: pool.reserved,
            available: pool.available(),
            members: pool.members.len(),
            drawn_today: pool.drawn_on(day),
            credited: pool.credited,
            paid: pool.paid,
        }
    }
}

/// A member of a credit pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolMemberView {
    /// The user.
    pub user_id: String,
    /// The most it may draw per UTC day; none: no cap.
    pub daily_cap: Option<i64>,
    /// What it drew (and holds) this UTC day.
    pub drawn_today: i64,
}

/// The credit pool a user draws on, as its wallet shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipView {
    /// The pool.
    pub pool_id: String,
    /// The pool's currency: the user draws on it for spends in this currency only.
    pub currency: Currency,
    /// The most the user may draw per UTC day; none: no cap.
    pub daily_cap: Option<i64>,
    /// What the user drew (and holds) this UTC day.
    pub drawn_today: i64,
    /// What the pool may still give the user now: its available credits within the cap.
    pub available_to_user: i64,
}

impl Engine {
    /// The pool `id`.
    pub fn pool(&self, tenant: &Tenant, id: &str) -> Result<PoolView, EngineError> {
        let day = utc_day(self.clock.now_ms());
        let pool = tenant
            .pools
            .get(id)
            .ok_or(EngineError::NotFound(Missing::Pool))?;
        Ok(PoolView::new(id, &pool, day))
    }

    /// Every pool of the tenant, by id.
    pub fn pools(&self, tenant: &Tenant) -> Vec<PoolView> {
        let day = utc_day(self.clock.now_ms());
        let mut pools: Vec<PoolView> = tenant
            .pools
            .iter()
            .map(|entry| PoolView::new(entry.key(), entry.value(), day))
            .collect();
        pools.sort_by(|a, b| a.pool_id.cmp(&b.pool_id));
        pools
    }

    /// The members of the pool `id`, by user id.
    pub fn pool_members(
        &self,
        tenant: &Tenant,
        id: &str,
    ) -> Result<Vec<PoolMemberView>, EngineError> {
        let day = utc_day(self.clock.now_ms());
        let pool = tenant
            .pools
            .get(id)
            .ok_or(EngineError::NotFound(Missing::Pool))?;
        Ok(pool
            .members
            .iter()
            .map(|(user, member)| PoolMemberView {
                user_id: user.to_string(),
                daily_cap: member.daily_cap,
                drawn_today: member.drawn_on(day),
            })
            .collect())
    }

    /// The pool `user` draws on and what it may still give the user, if the user is a member.
    pub fn membership(
        &self,
        tenant: &Tenant,
        user: &str,
    ) -> Result<Option<MembershipView>, EngineError> {
        let now_ms = self.clock.now_ms();
        // Read locks in the order writers take them: the user, then its pool.
        let account = tenant
            .users
            .get(user)
            .ok_or(EngineError::NotFound(Missing::User))?;
        let Some(id) = account.pool() else {
            return Ok(None);
        };
        let Some(pool) = tenant.pools.get(id) else {
            return Ok(None);
        };
        let Some(member) = pool.members.get(user) else {
            return Ok(None);
        };
        let allowance = allowance(&pool, user, Some(&account), now_ms);
        Ok(Some(MembershipView {
            pool_id: id.to_owned(),
            currency: pool.currency,
            daily_cap: member.daily_cap,
            drawn_today: allowance.drawn,
            available_to_user: allowance.available,
        }))
    }
}

impl Engine {
    /// Every tenant's settings, by id.
    pub fn tenant_views(&self) -> Vec<TenantView> {
        self.state
            .tenant_list()
            .iter()
            .map(|tenant| tenant.view())
            .collect()
    }
}

/// The whole state in a comparable, ordered form: for tests that check recovery rebuilds exactly
/// what was there. Includes every user's wallets and reservations, the catalogues, the credit
/// pools, the open and closed reservation index and the finished idempotency keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateImage {
    /// One line per entity, sorted.
    pub lines: Vec<String>,
}

impl Engine {
    /// A comparable image of the whole state (see [`StateImage`]). Locks each shard in turn.
    pub fn state_image(&self) -> StateImage {
        let mut lines = Vec::new();
        for tenant in self.state.tenant_list() {
            let id = &tenant.id;
            let catalogue = tenant.catalogue.read().clone();
            lines.push(format!(
                "tenant {id} name={:?} currency={} actions={:?} packages={:?} origins={:?}",
                catalogue.name,
                catalogue.default_currency,
                catalogue.actions,
                catalogue.packages,
                catalogue.portal_return_origins
            ));
            for entry in tenant.users.iter() {
                let account = entry.value();
                let mut reservations = account.reservations().to_vec();
                reservations.sort_by_key(|reservation| reservation.id);
                let mut wallets: Vec<Wallet> = account.wallets().copied().collect();
                wallets.sort_by_key(|wallet| wallet.currency);
                let method = account.payment_method();
                // The trigger flag lives in memory only; recovery rightly starts without it.
                let rules: Vec<_> = account
                    .rules()
                    .iter()
                    .map(|rule| super::state::TopupRule {
                        triggered: false,
                        ..rule.clone()
                    })
                    .collect();
                lines.push(format!(
                    "user {id}/{} last={} profile={:?} wallets={wallets:?} holds={reservations:?} method={method:?} rules={rules:?} rule_bit={} pool={:?}",
                    entry.key(),
                    account.last_lsn(),
                    account.profile().filter(|p| !p.is_empty()),
                    account.may_have_rule(account.primary.currency),
                    account.pool(),
                ));
            }
            for entry in tenant.pools.iter() {
                lines.push(format!("pool {id}/{} {:?}", entry.key(), entry.value()));
            }
            for entry in tenant.reservations.iter() {
                lines.push(format!(
                    "reservation {id}/{} {:?}",
                    entry.key(),
                    entry.value()
                ));
            }
            for entry in tenant.idempotency.iter() {
                if let super::state::IdempotencyState::Done { lsn, outcome, .. } = entry.state {
                    lines.push(format!(
                        "key {id}/{} fp={:?} lsn={lsn} {outcome:?}",
                        entry.key(),
                        entry.fingerprint
                    ));
                }
            }
        }
        for entry in self.state.payments.iter() {
            lines.push(format!("payment {} {:?}", entry.key(), entry.value()));
        }
        lines.sort();
        StateImage { lines }
    }
}
