// The dashboard's pages. Each reads and writes through the API (api.js) with the signed-in key;
// text from the server is only ever set as textContent, never parsed as HTML.

import { ApiError, call, get, query, segment } from "./api.js";
import { categoryBars, timeBars } from "./charts.js";

const $ = (id) => document.getElementById(id);
const RANK = { service: 1, admin: 2, platform: 3 };
const HOUR = 3600 * 1000;
const DAY = 24 * HOUR;

// An element with attributes and children (strings become text nodes).
function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const number = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : "—");

// Minor units of money as text, for display only: integer arithmetic on the digits.
const ZERO_DECIMALS = new Set(["JPY", "KRW", "VND", "CLP", "ISK", "UGX", "XAF", "XOF", "RWF"]);
export function money(minor, currency) {
  if (typeof minor !== "number") return "—";
  const decimals = ZERO_DECIMALS.has(currency) ? 0 : 2;
  const sign = minor < 0 ? "-" : "";
  const digits = String(Math.abs(minor)).padStart(decimals + 1, "0");
  const whole = digits.slice(0, digits.length - decimals);
  const fraction = decimals ? `.${digits.slice(-decimals)}` : "";
  return `${sign}${Number(whole).toLocaleString("en-US")}${fraction} ${currency || ""}`.trim();
}

function when(text) {
  if (!text) return "—";
  return text.replace("T", " ").replace(/:\d\d(\.\d+)?Z$/, "");
}

function rows(table, list, render, emptyText) {
  const body = $(table).tBodies[0];
  if (!list.length) {
    const columns = $(table).tHead.rows[0].cells.length;
    body.replaceChildren(h("tr", {}, h("td", { colspan: columns, class: "empty" }, emptyText)));
    return;
  }
  body.replaceChildren(...list.map(render));
}

function tableError(table, error) {
  const columns = $(table).tHead.rows[0].cells.length;
  $(table).tBodies[0].replaceChildren(h("tr", {}, h("td", { colspan: columns, class: "error" }, error.message)));
}

// Clears a form's messages, or shows an API error next to the field it names (else for the form).
function clearErrors(form) {
  form.querySelectorAll(".error").forEach((node) => (node.textContent = ""));
  form.querySelectorAll("[aria-invalid]").forEach((node) => node.removeAttribute("aria-invalid"));
}

function showError(form, error, fallbackId) {
  const input = error.field ? form.elements.namedItem(error.field) : null;
  if (input && input.id && $(`${input.id}-error`)) {
    $(`${input.id}-error`).textContent = error.message;
    input.setAttribute("aria-invalid", "true");
    input.focus();
  } else {
    $(fallbackId).textContent = error.message;
  }
}

// A whole number typed in `input`, or an error shown next to it.
function wholeNumber(input) {
  const text = input.value.trim();
  if (/^-?\d+$/.test(text)) return Number(text);
  $(`${input.id}-error`).textContent = "Enter a whole number.";
  input.setAttribute("aria-invalid", "true");
  input.focus();
  return null;
}

function statusBadge(status) {
  return h("span", { class: `status status-${status}` }, status);
}

// ---------------------------------------------------------------------------------------- users

const users = {
  me: null,
  cursor: null,
  prefix: "",
  current: null,
  entriesCursor: null,

  init() {
    $("user-search-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.search($("user-search").value.trim(), null);
    });
    $("user-more").addEventListener("click", () => this.search(this.prefix, this.cursor));
    $("entries-more").addEventListener("click", () => this.loadEntries(true));
    $("grant-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.move("grant");
    });
    $("revoke-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.move("revoke");
    });
  },

  reset() {
    this.current = null;
    $("user-results").replaceChildren();
    $("user-detail").hidden = true;
    $("user-none").hidden = false;
    this.loaded = false;
  },

  async open(me) {
    this.me = me;
    if (!this.loaded) {
      this.loaded = true;
      await this.search("", null);
    }
  },

  async search(prefix, cursor) {
    this.prefix = prefix;
    let page;
    try {
      page = await get(`/v1/users${query({ prefix, limit: 20, cursor })}`);
    } catch (error) {
      $("user-results").replaceChildren(h("li", { class: "error" }, error.message));
      return;
    }
    const items = page.users.map((user) =>
      h("li", {},
        h("button", { type: "button", class: "user-row", "data-user": user.user_id, onclick: () => this.show(user.user_id) },
          h("span", { class: "user-main" },
            h("span", { class: "user-id" }, user.user_id),
            h("span", { class: "muted small" }, [user.name, user.email].filter(Boolean).join(" · ") || "no profile")),
          h("span", { class: "user-balance" }, number(user.wallet.balance), " ", h("span", { class: "muted small" }, user.wallet.currency)))));
    if (cursor) $("user-results").append(...items);
    else $("user-results").replaceChildren(...items);
    $("user-results-empty").hidden = !!(cursor || items.length);
    this.cursor = page.next_cursor;
    $("user-more").hidden = !page.next_cursor;
  },

  async show(userId) {
    this.current = userId;
    $("user-message").textContent = "";
    clearErrors($("grant-form"));
    clearErrors($("revoke-form"));
    document.querySelectorAll(".user-row").forEach((row) => {
      if (row.dataset.user === userId) row.setAttribute("aria-current", "true");
      else row.removeAttribute("aria-current");
    });
    $("user-none").hidden = true;
    $("user-detail").hidden = false;
    await Promise.all([this.loadWallet(), this.loadEntries(false), this.loadHolds(), this.loadPayments()]);
  },

  path() {
    return `/v1/users/${segment(this.current)}`;
  },

  async loadWallet() {
    let user;
    try {
      user = await get(this.path());
    } catch (error) {
      $("user-message").textContent = error.message;
      return;
    }
    const wallet = user.wallet;
    $("user-id").textContent = user.user_id;
    $("user-profile").textContent = [user.name, user.email].filter(Boolean).join(" · ") || "No name or e-mail on file";
    $("balance").textContent = number(wallet.balance);
    $("wallet-currency").textContent = wallet.currency;
    $("available").textContent = number(wallet.available);
    $("reserved").textContent = number(wallet.reserved);
    $("wallet-status").replaceWith(Object.assign(statusBadge(wallet.status), { id: "wallet-status" }));
    const rule = wallet.auto_topup;
    const pool = wallet.pool ? ` Draws on pool ${wallet.pool.pool_id} (${number(wallet.pool.available_to_user)} available to this user).` : "";
    $("wallet-rule").textContent = (rule
      ? `Auto top-up ${rule.enabled ? "on" : "off"}: package ${rule.package_id} when available falls below ${number(rule.threshold)}.`
      : "No auto top-up rule.") + pool;
    // Show the balance of the list row too, so the list agrees with the wallet.
    const row = document.querySelector(`.user-row[data-user="${CSS.escape(user.user_id)}"] .user-balance`);
    if (row) row.firstChild.textContent = number(wallet.balance);
  },

  async loadEntries(more) {
    const cursor = more ? this.entriesCursor : null;
    let page;
    try {
      page = await get(`${this.path()}/entries${query({ limit: 15, cursor })}`);
    } catch (error) {
      tableError("entries", error);
      return;
    }
    const render = (entry) =>
      h("tr", {},
        h("td", { class: "nowrap" }, when(entry.created_at)),
        h("td", {}, h("span", { class: `kind kind-${entry.kind}` }, entry.kind)),
        h("td", { class: `num ${entry.amount < 0 ? "neg" : "pos"}` }, `${entry.amount > 0 ? "+" : ""}${number(entry.amount)}`),
        h("td", { class: "num" }, number(entry.balance_after)),
        h("td", {}, [entry.action, entry.description, entry.reference].filter(Boolean).join(" · ") || "—"),
        h("td", { class: "muted nowrap" }, entry.actor));
    if (more) $("entries").tBodies[0].append(...page.entries.map(render));
    else rows("entries", page.entries, render, "No entries yet.");
    this.entriesCursor = page.next_cursor;
    $("entries-more").hidden = !page.next_cursor;
  },

  async loadHolds() {
    try {
      const page = await get(`${this.path()}/reservations`);
      const list = page.reservations || [];
      rows("holds", list, (hold) =>
        h("tr", {},
          h("td", { class: "mono" }, hold.reservation_id),
          h("td", { class: "num" }, number(hold.amount)),
          h("td", {}, when(hold.expires_at))), "No open holds.");
    } catch (error) {
      tableError("holds", error);
    }
  },

  async loadPayments() {
    try {
      const page = await get(`${this.path()}/payments${query({ limit: 10 })}`);
      rows("payments", page.payments, (payment) =>
        h("tr", {},
          h("td", { class: "nowrap" }, when(payment.created_at)),
          h("td", {}, payment.package_id),
          h("td", { class: "num" }, number(payment.credits)),
          h("td", { class: "num nowrap" }, money(payment.amount_minor, payment.price_currency || payment.currency)),
          h("td", {}, statusBadge(payment.status)),
          h("td", { class: "mono" }, payment.reference)), "No payments.");
    } catch (error) {
      tableError("payments", error);
    }
  },

  // Grants or revokes the amount of the form, with its reason.
  async move(kind) {
    const form = $(`${kind}-form`);
    clearErrors(form);
    $("user-message").textContent = "";
    const amount = wholeNumber($(`${kind}-amount`));
    if (amount === null) return;
    const reason = $(`${kind}-reason`).value.trim();
    if (!reason) {
      $(`${kind}-reason-error`).textContent = "Say why: the reason goes to the audit log.";
      $(`${kind}-reason`).setAttribute("aria-invalid", "true");
      $(`${kind}-reason`).focus();
      return;
    }
    const button = $(`${kind}-submit`);
    button.disabled = true;
    try {
      const answer = kind === "grant"
        ? await call("POST", `${this.path()}/credit`, { amount, kind: "grant", reason })
        : await call("POST", `${this.path()}/revoke`, { amount, reason });
      form.reset();
      await Promise.all([this.loadWallet(), this.loadEntries(false)]);
      const balance = answer.balance ?? Number($("balance").textContent.replace(/,/g, ""));
      $("user-message").textContent = `${kind === "grant" ? "Granted" : "Revoked"} ${number(amount)} credits. Balance now ${number(balance)}.`;
    } catch (error) {
      if (error instanceof ApiError) showError(form, error, `${kind}-error`);
      else $(`${kind}-error`).textContent = error.message;
    } finally {
      button.disabled = false;
    }
  },
};

// -------------------------------------------------------------------------------------- billing

const billing = {
  init() {
    $("package-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.savePackage();
    });
    $("action-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.saveAction();
    });
    $("pool-buy-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.buyForPool();
    });
  },

  async open(me) {
    this.admin = RANK[me.role] >= RANK.admin;
    $("billing-readonly").hidden = this.admin;
    const loads = [this.loadPackages(), this.loadActions()];
    if (this.admin) loads.push(this.loadPools());
    await Promise.all(loads);
  },

  editButton(label, onclick) {
    return this.admin ? h("button", { type: "button", class: "link", "aria-label": label, onclick }, "Edit") : "";
  },

  async loadPackages() {
    try {
      const { packages } = await get("/v1/packages");
      rows("packages", packages, (p) =>
        h("tr", {},
          h("td", { class: "mono" }, p.package_id),
          h("td", {}, p.name),
          h("td", { class: "num" }, number(p.credits)),
          h("td", { class: "num nowrap" }, money(p.price_minor, p.price_currency)),
          h("td", {}, p.active ? "yes" : "no"),
          h("td", {}, this.editButton(`Edit package ${p.package_id}`, () => this.editPackage(p)))), "No packages yet.");
    } catch (error) {
      tableError("packages", error);
    }
  },

  editPackage(p) {
    const form = $("package-form");
    clearErrors(form);
    $("package-id").value = p.package_id;
    $("package-name").value = p.name;
    $("package-credits").value = p.credits;
    $("package-price").value = p.price_minor;
    $("package-currency").value = p.price_currency;
    $("package-active").checked = p.active;
    $("package-position").value = p.position ?? 0;
    $("package-form-title").textContent = `Edit package ${p.package_id}`;
    $("package-price").focus();
  },

  async savePackage() {
    const form = $("package-form");
    clearErrors(form);
    const id = $("package-id").value.trim();
    if (!id) {
      $("package-id-error").textContent = "Give the package an id.";
      $("package-id").focus();
      return;
    }
    const credits = wholeNumber($("package-credits"));
    if (credits === null) return;
    const price = wholeNumber($("package-price"));
    if (price === null) return;
    // Checked by the API, whose message shows beside the field.
    const position = wholeNumber($("package-position"));
    if (position === null) return;
    const body = {
      name: $("package-name").value.trim(),
      credits,
      price_minor: price,
      price_currency: $("package-currency").value.trim().toUpperCase(),
      active: $("package-active").checked,
      position,
    };
    try {
      await call("PUT", `/v1/packages/${segment(id)}`, body);
      $("package-error").textContent = "";
      $("package-form-title").textContent = `Saved package ${id}`;
      await this.loadPackages();
    } catch (error) {
      $("package-form-title").textContent = `Edit package ${id}`;
      showError(form, error, "package-error");
    }
  },

  async loadActions() {
    try {
      const { actions } = await get("/v1/actions");
      rows("actions", actions, (a) =>
        h("tr", {},
          h("td", { class: "mono" }, a.action),
          h("td", { class: "num" }, number(a.cost)),
          h("td", {}, a.currency),
          h("td", {}, a.description || "—"),
          h("td", {}, this.editButton(`Edit action ${a.action}`, () => this.editAction(a)))), "No priced actions yet.");
    } catch (error) {
      tableError("actions", error);
    }
  },

  editAction(a) {
    clearErrors($("action-form"));
    $("action-name").value = a.action;
    $("action-cost").value = a.cost;
    $("action-currency").value = a.currency;
    $("action-description").value = a.description || "";
    $("action-cost").focus();
  },

  async saveAction() {
    const form = $("action-form");
    clearErrors(form);
    const name = $("action-name").value.trim();
    if (!name) {
      $("action-name-error").textContent = "Name the action.";
      $("action-name").focus();
      return;
    }
    const cost = wholeNumber($("action-cost"));
    if (cost === null) return;
    const body = { cost };
    const currency = $("action-currency").value.trim().toUpperCase();
    if (currency) body.currency = currency;
    const description = $("action-description").value.trim();
    if (description) body.description = description;
    try {
      await call("PUT", `/v1/actions/${segment(name)}`, body);
      form.reset();
      await this.loadActions();
    } catch (error) {
      // The action's name is the path, not a body field: its problems belong next to it.
      if (error.field === "action") error.field = null;
      showError(form, error, "action-error");
    }
  },

  async loadPools() {
    try {
      const { pools } = await get("/v1/pools");
      rows("pools", pools, (p) =>
        h("tr", {},
          h("td", { class: "mono" }, p.pool_id),
          h("td", {}, p.name || "—"),
          h("td", { class: "num" }, `${number(p.balance)} ${p.currency}`),
          h("td", { class: "num" }, number(Array.isArray(p.members) ? p.members.length : p.members)),
          h("td", { class: "num" }, number(p.drawn_today)),
          h("td", {}, h("button", { type: "button", class: "link", "aria-label": `Buy a package for pool ${p.pool_id}`,
            onclick: () => { $("pool-buy-pool").value = p.pool_id; $("pool-buy-package").focus(); } }, "Buy a package"))), "No credit pools.");
    } catch (error) {
      tableError("pools", error);
    }
  },

  // A checkout of a package for a pool: the gateway's page opens in a new tab, and the pool is
  // credited when it is paid.
  async buyForPool() {
    const form = $("pool-buy-form");
    clearErrors(form);
    const result = $("pool-buy-result");
    result.replaceChildren();
    const body = {
      pool_id: $("pool-buy-pool").value.trim(),
      package_id: $("pool-buy-package").value.trim(),
      email: $("pool-buy-email").value.trim(),
    };
    try {
      const answer = await call("POST", "/v1/payments/initialize", body);
      result.append("Checkout ", h("code", {}, answer.reference), " started: ",
        h("a", { id: "pool-buy-link", href: answer.checkout_url, target: "_blank", rel: "noopener" }, "open the checkout"),
        ". The pool's balance rises when it is paid.");
    } catch (error) {
      showError(form, error, "pool-buy-error");
    }
  },
};

// -------------------------------------------------------------------------------------- reports

// The window of the picker: `hours` whole UTC hours ending at the end of the current hour.
export function reportWindow(hours, now = Date.now()) {
  const to = Math.floor(now / HOUR) * HOUR + HOUR;
  return { from: to - hours * HOUR, to };
}

const iso = (ms) => new Date(ms).toISOString().replace(".000Z", "Z");

const reports = {
  init() {
    $("report-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.load();
    });
  },

  async open(me) {
    this.me = me;
    await this.load();
  },

  async load() {
    const hours = Number($("report-window").value);
    const { from, to } = reportWindow(hours);
    const byHour = hours <= 48;
    const step = byHour ? HOUR : DAY;
    const user = $("report-user").value.trim();
    $("report-user-error").textContent = "";
    $("report-user").removeAttribute("aria-invalid");
    $("report-window-text").textContent = `${when(iso(from))} to ${when(iso(to))} UTC, by ${byHour ? "hour" : "day"}${user ? `, user ${user}` : ", all users"}.`;
    const base = { from: iso(from), to: iso(to), user_id: user };
    const failed = (error) => {
      $("report-user-error").textContent = error.message;
      if (error.field === "user_id" || error.status === 403 || error.status === 404) $("report-user").setAttribute("aria-invalid", "true");
    };
    try {
      const [overTime, byAction] = await Promise.all([
        get(`/v1/reports/usage${query({ ...base, group_by: byHour ? "hour" : "day" })}`),
        get(`/v1/reports/usage${query({ ...base, group_by: "action" })}`),
      ]);
      const credits = new Map(overTime.rows.map((row) => [Date.parse(row.key), row.credits]));
      const points = [];
      for (let t = Math.floor(from / step) * step; t < to; t += step) {
        const date = new Date(t);
        const tick = byHour ? `${String(date.getUTCHours()).padStart(2, "0")}:00` : `${date.getUTCDate()} ${date.toLocaleString("en-US", { month: "short", timeZone: "UTC" })}`;
        points.push({ label: `${when(iso(t))} UTC`, tick, value: credits.get(t) || 0 });
      }
      $("usage-time-total").textContent = `· ${number(overTime.total_credits)} credits`;
      timeBars($("chart-usage-time"), points, { label: `Credits used per ${byHour ? "hour" : "day"}`, format: number });
      categoryBars($("chart-usage-action"), byAction.rows.map((row) => ({ label: row.key ?? "(amount)", value: row.credits, text: `${number(row.credits)} credits · ${number(row.count)}×` })), { label: "Credits used by action", format: number, emptyText: "No usage in this window." });
    } catch (error) {
      failed(error);
      $("chart-usage-time").replaceChildren();
      $("chart-usage-action").replaceChildren();
    }
    if (RANK[this.me.role] < RANK.admin) return;
    try {
      const revenue = await get(`/v1/reports/revenue${query({ from: iso(from), to: iso(to), group_by: "package" })}`);
      categoryBars($("chart-revenue"), revenue.rows.map((row) => ({ label: row.key, value: row.amount_minor, text: `${money(row.amount_minor, row.currency)} · ${number(row.count)} sold` })), { label: "Revenue by package", emptyText: "No sales in this window." });
    } catch (error) {
      $("chart-revenue").replaceChildren(h("p", { class: "error" }, error.message));
    }
  },
};

// ---------------------------------------------------------------------------------------- audit

// A JSON document as short text: an object's members as `name: value`, cut at 240 characters.
function compact(document) {
  if (document === null || document === undefined) return "—";
  const text = typeof document === "object" && !Array.isArray(document)
    ? Object.entries(document).map(([name, value]) => `${name}: ${JSON.stringify(value)}`).join(", ")
    : JSON.stringify(document);
  return text.length > 240 ? `${text.slice(0, 239)}…` : text;
}

const audit = {
  init() {
    $("audit-more").addEventListener("click", () => this.loadRecords(this.cursor));
  },

  async open() {
    await Promise.all([this.loadChain(), this.loadRecords(null)]);
  },

  async loadChain() {
    $("chain-status").className = "status";
    $("chain-status").textContent = "checking";
    $("chain-detail").textContent = "";
    try {
      const chain = await get("/v1/audit/verify");
      $("chain-status").className = `status status-${chain.status}`;
      $("chain-status").textContent = chain.status === "intact" ? "chain intact" : "chain broken";
      $("chain-detail").textContent = chain.status === "intact"
        ? `${number(chain.records)} records verified, head ${chain.last_hash.slice(0, 12)}…, checked ${when(chain.checked_at)} UTC`
        : `${chain.detail}, checked ${when(chain.checked_at)} UTC`;
    } catch (error) {
      $("chain-status").textContent = "unknown";
      $("chain-detail").textContent = error.message;
    }
  },

  async loadRecords(cursor) {
    let page;
    try {
      page = await get(`/v1/audit${query({ limit: 50, cursor })}`);
    } catch (error) {
      tableError("audit", error);
      return;
    }
    const render = (record) =>
      h("tr", {},
        h("td", { class: "num" }, record.seq),
        h("td", { class: "nowrap" }, when(record.at)),
        h("td", { class: "nowrap" }, record.actor),
        h("td", { class: "mono" }, record.action),
        h("td", { class: "mono" }, record.target),
        h("td", { class: "change" },
          record.before ? h("span", { class: "before" }, compact(record.before)) : null,
          record.before ? " → " : null,
          h("span", {}, compact(record.after))),
        h("td", { class: "mono muted", title: record.hash }, `${record.hash.slice(0, 10)}…`));
    if (cursor) $("audit").tBodies[0].append(...page.records.map(render));
    else rows("audit", page.records, render, "No audit records yet.");
    this.cursor = page.next_cursor;
    $("audit-more").hidden = !page.next_cursor;
  },
};

export const pages = { users, billing, reports, audit };
