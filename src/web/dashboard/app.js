// The dashboard's shell: sign in with a key, learn what it may do (`GET /v1/me`), show the pages
// that role may use, and switch pages on the URL's fragment (#users, #billing, #reports, #audit).

import { ApiError, get, key, setKey, setTenant } from "./api.js";
import { pages } from "./pages.js";

const RANK = { service: 1, admin: 2, platform: 3 };
const $ = (id) => document.getElementById(id);
let me = null;

function applyRole(role) {
  const rank = RANK[role] || 0;
  document.querySelectorAll("[data-role]").forEach((node) => {
    node.hidden = rank < RANK[node.dataset.role];
  });
  document.querySelectorAll("[data-role-not]").forEach((node) => {
    node.hidden = rank >= RANK[node.dataset.roleNot];
  });
}

function show(name) {
  document.querySelectorAll(".page").forEach((page) => {
    page.hidden = page.id !== `page-${name}`;
  });
  document.querySelectorAll("#nav a").forEach((link) => {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  });
}

async function route() {
  if (!me) {
    show("signin");
    $("nav").hidden = true;
    $("whoami").hidden = true;
    $("signin-key").focus();
    return;
  }
  let name = location.hash.replace(/^#/, "").split("/")[0] || "users";
  if (!pages[name] || (name === "audit" && RANK[me.role] < RANK.admin)) name = "users";
  show(name);
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · creditd dashboard`;
  await pages[name].open(me);
}

async function signIn(secret) {
  setKey(secret);
  try {
    me = await get("/v1/me");
  } catch (error) {
    setKey(null);
    me = null;
    throw error;
  }
  $("who-name").textContent = me.name;
  $("who-role").textContent = me.role;
  $("who-tenant").textContent = me.tenant;
  $("nav").hidden = false;
  $("whoami").hidden = false;
  applyRole(me.role);
  for (const page of Object.values(pages)) page.reset?.();
  await tenantSwitch();
}

// A platform key may act in any tenant: a list of them, whose choice is sent as X-Tenant.
async function tenantSwitch() {
  const select = $("tenant-select");
  $("tenant-switch").hidden = me.role !== "platform";
  $("who-tenant").hidden = me.role === "platform";
  if (me.role !== "platform") return;
  let tenants = [];
  try {
    tenants = (await get("/v1/tenants")).tenants.map((t) => t.tenant_id);
  } catch {
    tenants = [];
  }
  if (!tenants.includes(me.tenant)) tenants.unshift(me.tenant);
  select.replaceChildren(...tenants.map((id) => {
    const option = document.createElement("option");
    option.value = id;
    option.textContent = id;
    option.selected = id === me.tenant;
    return option;
  }));
}

function start() {
  for (const page of Object.values(pages)) page.init?.();
  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const secret = $("signin-key").value.trim();
    $("signin-error").textContent = "";
    if (!secret) {
      $("signin-error").textContent = "Enter an API key.";
      return;
    }
    try {
      await signIn(secret);
      $("signin-key").value = "";
      await route();
      $("main").focus();
    } catch (error) {
      $("signin-error").textContent =
        error instanceof ApiError && error.status === 401 ? "This key is not known to the server." : error.message;
    }
  });
  $("sign-out").addEventListener("click", () => {
    setKey(null);
    me = null;
    location.hash = "";
    route();
  });
  $("tenant-select").addEventListener("change", async () => {
    setTenant($("tenant-select").value);
    try {
      await signIn(key());
    } catch {
      setTenant(null);
      await signIn(key()).catch(() => {});
    }
    await route();
  });
  window.addEventListener("hashchange", () => route());
  const saved = key();
  if (saved) {
    signIn(saved).then(route, () => route());
  } else {
    route();
  }
}

start();
