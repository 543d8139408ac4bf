// The storefront's entry: hash routes -> views, the header's state, failures of a view.
import { CART_CHANGED, cart } from './cart.js';
import { h, replace } from './dom.js';
import { humanMessage } from './errors.js';
import { session } from './session.js';
import { accountView, loginView, registerView } from './views/account.js';
import { adminView } from './views/admin.js';
import { cartView, checkoutView } from './views/cart.js';
import { catalogView, productView } from './views/catalog.js';
import { orderView, ordersView } from './views/orders.js';

/** [pattern, view, access]: access is 'public', 'user' or 'admin'. */
const ROUTES = [
  [/^\/$/, catalogView, 'public'],
  [/^\/products\/([^/]+)$/, productView, 'public'],
  [/^\/cart$/, cartView, 'public'],
  [/^\/checkout$/, checkoutView, 'user'],
  [/^\/orders$/, ordersView, 'user'],
  [/^\/orders\/([^/]+)$/, orderView, 'user'],
  [/^\/account$/, accountView, 'user'],
  [/^\/login$/, loginView, 'public'],
  [/^\/register$/, registerView, 'public'],
  [/^\/admin$/, adminView, 'admin'],
];
/** Failures worth a quiet retry of the whole view after Retry-After. */
const TRANSIENT = new Set([0, 429, 503, 504]);

const main = document.getElementById('main');
let current = null; // {controller}
let firstRender = true;

function location() {
  const raw = window.location.hash.replace(/^#/, '') || '/';
  const [path, search = ''] = raw.split('?');
  return { path: path || '/', query: new URLSearchParams(search), raw };
}

export function go(hash) {
  if (window.location.hash === hash) render();
  else window.location.hash = hash;
}

/** Send the visitor to log in, and back here afterwards. */
function toLogin(reason) {
  const here = location();
  if (here.path === '/login') return;
  const query = new URLSearchParams({ next: here.raw });
  if (reason) query.set('reason', reason);
  go(`#/login?${query}`);
}

async function render() {
  current?.controller.abort();
  const controller = new AbortController();
  current = { controller };
  const { path, query, raw } = location();
  const match = ROUTES.map(([pattern, view, access]) => ({ found: pattern.exec(path), view, access }))
    .find((route) => route.found);
  markCurrentLink(path);
  const ctx = {
    main,
    query,
    path: raw,
    params: match ? match.found.slice(1).map(decodeURIComponent) : [],
    signal: controller.signal,
    go,
    title: (text) => (document.title = `${text} · The shop`),
    retry: () => render(),
  };
  if (!firstRender) main.focus({ preventScroll: true });
  firstRender = false;
  window.scrollTo(0, 0);
  try {
    if (!match) return notFound(ctx);
    if (match.access !== 'public' && !session.signedIn) return toLogin();
    if (match.access === 'admin' && !session.isAdmin) return forbidden(ctx);
    await match.view(ctx);
  } catch (error) {
    if (error?.name === 'AbortError' || controller.signal.aborted) return;
    failure(ctx, error);
  }
}

/** A view could not load: say why, offer a retry, retry by itself when it is transient. */
function failure(ctx, error) {
  if (error?.status === 401) return toLogin('expired');
  if (error?.status === 404) return notFound(ctx);
  if (error?.status === 403) return forbidden(ctx);
  if (!(error && 'status' in error)) console.error(error); // a bug of ours, not the API
  ctx.title('Unavailable');
  const wait = error?.retryAfter ?? 5;
  const transient = TRANSIENT.has(error?.status);
  const retry = h('button', { class: 'button', type: 'button', onclick: () => ctx.retry() }, 'Try again');
  replace(
    ctx.main,
    h('h1', {}, 'Sorry'),
    h(
      'div',
      { class: 'notice notice-error', role: 'alert' },
      h('p', {}, humanMessage(error)),
      transient ? h('p', {}, `We will try again by ourselves in ${wait} s.`) : null,
      h('div', { class: 'actions' }, retry),
    ),
  );
  if (transient) {
    const timer = setTimeout(() => ctx.retry(), wait * 1000);
    ctx.signal.addEventListener('abort', () => clearTimeout(timer));
  }
}

function notFound(ctx) {
  ctx.title('Not found');
  replace(
    ctx.main,
    h('h1', {}, 'Page not found'),
    h('p', {}, 'There is nothing here. ', h('a', { href: '#/' }, 'Go to the catalog'), '.'),
  );
}

function forbidden(ctx) {
  ctx.title('Not allowed');
  replace(
    ctx.main,
    h('h1', {}, 'Not allowed'),
    h('p', { class: 'notice notice-error' }, 'This page is for the shop’s administrators.'),
  );
}

function markCurrentLink(path) {
  for (const link of document.querySelectorAll('.nav-list a')) {
    const target = link.getAttribute('href').replace(/^#/, '');
    const here = target === '/' ? path === '/' || path.startsWith('/products') : path.startsWith(target);
    if (here) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

function showSessionState() {
  for (const item of document.querySelectorAll('.when-signed-in')) item.hidden = !session.signedIn;
  for (const item of document.querySelectorAll('.when-signed-out')) item.hidden = session.signedIn;
  for (const item of document.querySelectorAll('.when-admin')) item.hidden = !session.isAdmin;
  const account = document.getElementById('account-link');
  account.textContent = session.profile ? `Account (${session.profile.name})` : 'Account';
}

function showCartCount() {
  const count = cart.count();
  const badge = document.getElementById('cart-count');
  badge.textContent = String(count);
  document.getElementById('cart-link').setAttribute('aria-label', `Cart, ${count} item${count === 1 ? '' : 's'}`);
}

async function start() {
  session.onChange((reason) => {
    showSessionState();
    if (reason === 'expired') toLogin('expired');
    if (reason === 'signed-out') go('#/');
  });
  window.addEventListener(CART_CHANGED, showCartCount);
  window.addEventListener('hashchange', render);
  document.getElementById('logout-button').addEventListener('click', () => session.logout());
  document.getElementById('skip-link').addEventListener('click', (event) => {
    event.preventDefault();
    main.focus();
  });
  showCartCount();
  await session.restore();
  showSessionState();
  await render();
}

start();
