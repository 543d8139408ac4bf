// The order history, one order with its payment form, live status, cancel and refund.
import { api } from '../api.js';
import { formatDate, h, replace, whileBusy } from '../dom.js';
import { humanMessage } from '../errors.js';
import { formatCents, toCents } from '../money.js';
import { pager } from './catalog.js';
import { paymentForm } from './payment.js';

export const STATUSES = ['pending', 'paid', 'shipped', 'delivered', 'cancelled', 'expired'];
const PAGE_SIZE = 10;
/** How often an open order is asked for news while something is on its way. */
const POLL_MS = 1000;
/** After this many answers without the news, ask every five seconds. */
const SLOW_POLL_AFTER = 30;
/** The status filter had the focus when it changed the page: give it back. */
let refocusFilter = false;

export function statusBadge(status) {
  const label = status.charAt(0).toUpperCase() + status.slice(1);
  return h('span', { class: `status status-${status}`, 'data-status': status }, label);
}

export function shortId(id) {
  return id.length > 10 ? id.slice(-8) : id;
}

export async function ordersView(ctx) {
  ctx.title('Your orders');
  const status = STATUSES.includes(ctx.query.get('status')) ? ctx.query.get('status') : '';
  const page = Math.max(1, Number.parseInt(ctx.query.get('page') || '1', 10) || 1);
  const select = h(
    'select',
    {
      id: 'status-filter',
      onchange: () => {
        refocusFilter = true;
        ctx.go(select.value ? `#/orders?status=${select.value}` : '#/orders');
      },
    },
    h('option', { value: '' }, 'All orders'),
    STATUSES.map((s) => h('option', { value: s, selected: s === status }, s.charAt(0).toUpperCase() + s.slice(1))),
  );
  const toolbar = h('div', { class: 'toolbar' }, h('div', { class: 'field' }, h('label', { for: 'status-filter' }, 'Show'), select));
  const results = h('div', { 'aria-live': 'polite' }, h('p', { class: 'loading' }, 'Loading your orders…'));
  replace(ctx.main, h('h1', {}, 'Your orders'), toolbar, results);
  if (refocusFilter) select.focus();
  refocusFilter = false;
  const query = new URLSearchParams({ page: String(page), limit: String(PAGE_SIZE) });
  if (status) query.set('status', status);
  const list = await api('GET', `/api/orders?${query}`, { auth: true, signal: ctx.signal });
  if (!list.items.length) {
    replace(results, h('p', {}, status ? `No ${status} orders.` : 'No orders yet. ', h('a', { href: '#/' }, 'Browse the catalog'), '.'));
    return;
  }
  const rows = list.items.map((order) =>
    h(
      'tr',
      { 'data-order-id': order.id },
      h('td', { 'data-label': 'Order' }, h('a', { href: `#/orders/${encodeURIComponent(order.id)}` }, `Order ${shortId(order.id)}`)),
      h('td', { 'data-label': 'Placed' }, formatDate(order.createdAt)),
      h('td', { class: 'num', 'data-label': 'Total' }, formatCents(toCents(order.total))),
      h('td', { 'data-label': 'Status' }, statusBadge(order.status)),
    ),
  );
  replace(
    results,
    h(
      'table',
      { class: 'responsive' },
      h('caption', { class: 'visually-hidden' }, 'Your orders, newest first'),
      h('thead', {}, h('tr', {}, ['Order', 'Placed', 'Total', 'Status'].map((t) => h('th', { scope: 'col', class: t === 'Total' ? 'num' : '' }, t)))),
      h('tbody', {}, rows),
    ),
    pager(page, PAGE_SIZE, list.total, (n) => `#/orders?${new URLSearchParams({ ...(status ? { status } : {}), page: String(n) })}`),
  );
}

async function loadOrder(orderId, signal) {
  const [order, payments] = await Promise.all([
    api('GET', `/api/orders/${encodeURIComponent(orderId)}`, { auth: true, signal }),
    api('GET', `/api/payments?orderId=${encodeURIComponent(orderId)}&limit=100`, { auth: true, signal }),
  ]);
  return { order, payments: payments.items };
}

function paymentsList(payments) {
  if (!payments.length) return h('p', { class: 'muted' }, 'No payment yet.');
  return h(
    'ul',
    { class: 'list-plain', id: 'payments' },
    payments.map((p) =>
      h(
        'li',
        { class: 'panel', 'data-payment-status': p.status },
        statusBadge(p.status),
        ` ${formatCents(toCents(p.amount))} by ${p.card?.brand || 'card'} •••• ${p.card?.last4 || '????'}`,
        p.failureReason ? h('span', { class: 'muted' }, ` (${p.failureReason})`) : null,
        h('span', { class: 'muted' }, ` · ${formatDate(p.updatedAt || p.createdAt)}`),
      ),
    ),
  );
}

/** Something the customer is waiting for: the order to turn paid, or the refund. */
function awaited({ order, payments }) {
  const completed = payments.some((p) => p.status === 'completed');
  if (order.status === 'pending' && completed) return 'Payment accepted. Confirming your order…';
  if (order.status === 'cancelled' && completed) return 'Order cancelled. Refunding your payment…';
  return null;
}

function itemsTable(order) {
  return h(
    'table',
    { class: 'responsive' },
    h('caption', { class: 'visually-hidden' }, 'Items'),
    h('thead', {}, h('tr', {}, ['Product', 'Price', 'Quantity', 'Subtotal'].map((t, i) => h('th', { scope: 'col', class: i ? 'num' : '' }, t)))),
    h(
      'tbody',
      {},
      order.items.map((item) =>
        h(
          'tr',
          {},
          h('td', { 'data-label': 'Product' }, item.name || item.productId),
          h('td', { class: 'num', 'data-label': 'Price' }, formatCents(toCents(item.price))),
          h('td', { class: 'num', 'data-label': 'Quantity' }, String(item.quantity)),
          h('td', { class: 'num', 'data-label': 'Subtotal' }, formatCents(toCents(item.subtotal))),
        ),
      ),
    ),
    h('tfoot', {}, h('tr', {}, h('td', { colspan: '3' }, 'Total'), h('td', { class: 'num', id: 'order-total' }, formatCents(toCents(order.total))))),
  );
}

function cancelControls(order, onCancelled) {
  if (!['pending', 'paid'].includes(order.status)) return null;
  const area = h('div', { class: 'toolbar' });
  const message = h('div', { role: 'alert' });
  const ask = h('button', { class: 'button secondary', type: 'button' }, 'Cancel order');
  ask.addEventListener('click', () => {
    const confirm = h('button', { class: 'button danger', type: 'button' }, 'Yes, cancel this order');
    const keep = h('button', { class: 'button secondary', type: 'button' }, 'Keep the order');
    keep.addEventListener('click', () => {
      replace(area, ask);
      ask.focus();
    });
    confirm.addEventListener('click', async () => {
      try {
        await whileBusy(confirm, 'Cancelling…', () =>
          api('POST', `/api/orders/${encodeURIComponent(order.id)}/cancel`, { auth: true }),
        );
        onCancelled();
      } catch (error) {
        if (error.status === 401) return;
        replace(message, h('p', { class: 'notice notice-error' }, humanMessage(error)));
      }
    });
    replace(
      area,
      h('p', {}, order.status === 'paid' ? 'Cancel and refund this order?' : 'Cancel this order?'),
      confirm,
      keep,
    );
    confirm.focus();
  });
  area.append(ask);
  return h('section', { 'aria-label': 'Cancel' }, area, message);
}

export async function orderView(ctx) {
  const [orderId] = ctx.params;
  ctx.title(`Order ${shortId(orderId)}`);
  replace(ctx.main, h('h1', {}, `Order ${shortId(orderId)}`), h('p', { class: 'loading', role: 'status' }, 'Loading the order…'));
  let state = await loadOrder(orderId, ctx.signal);
  const statusArea = h('p', { id: 'order-status', role: 'status', 'aria-live': 'polite' });
  const waiting = h('p', { id: 'order-waiting', class: 'muted', 'aria-live': 'polite' });
  const body = h('div');
  let pollTimer = null;
  ctx.signal.addEventListener('abort', () => clearTimeout(pollTimer));

  const draw = ({ keepForm = false } = {}) => {
    const { order, payments } = state;
    replace(statusArea, 'Status: ', statusBadge(order.status));
    const note = awaited(state);
    replace(waiting, note ? [h('span', { class: 'spinner', 'aria-hidden': 'true' }), note] : '');
    if (keepForm && body.querySelector('form')) {
      replace(body.querySelector('#payments-area'), paymentsList(payments));
      return;
    }
    const address = order.shippingAddress || {};
    replace(
      body,
      h(
        'div',
        { class: 'split' },
        h(
          'div',
          {},
          itemsTable(order),
          h('h2', {}, 'Shipping to'),
          h('p', {}, [address.street, address.city, address.zipCode].filter(Boolean).join(', ')),
          h('p', { class: 'muted' }, `Placed ${formatDate(order.createdAt)}`),
          order.status === 'pending' && order.expiresAt
            ? h('p', { class: 'muted' }, `Pay before ${formatDate(order.expiresAt)}, or the order expires.`)
            : null,
        ),
        h(
          'div',
          {},
          order.status === 'pending' && !note ? paymentForm(order, { onPaid: refresh, onAttempt: refresh }) : null,
          h('h2', {}, 'Payments'),
          h('div', { id: 'payments-area' }, paymentsList(payments)),
          cancelControls(order, refresh),
        ),
      ),
    );
  };

  /** Ask again; keep asking while the customer waits for news (less often as it lasts). */
  let polls = 0;
  const pollLater = (delay) => (pollTimer = setTimeout(() => refresh(), delay));
  async function refresh({ keepForm = false } = {}) {
    clearTimeout(pollTimer);
    try {
      state = await loadOrder(orderId, ctx.signal);
    } catch (error) {
      if (error.name === 'AbortError' || error.status === 401) return;
      replace(waiting, humanMessage(error));
      pollLater((error.retryAfter ?? 2) * 1000);
      return;
    }
    draw({ keepForm });
    polls += 1;
    if (awaited(state)) pollLater(polls < SLOW_POLL_AFTER ? POLL_MS : 5 * POLL_MS);
  }

  replace(ctx.main, h('h1', {}, `Order ${shortId(orderId)}`), statusArea, waiting, body);
  draw();
  if (awaited(state)) pollLater(POLL_MS);
}
