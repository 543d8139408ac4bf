// The cart, and the checkout that turns it into an order.
import { api, newIdempotencyKey } from '../api.js';
import { cart } from '../cart.js';
import { h, replace, whileBusy } from '../dom.js';
import { clearErrors, field, formMessage, showError, values } from '../forms.js';
import { formatCents, toAmount } from '../money.js';
import { productFromApi } from './catalog.js';

const ORDER_ATTEMPT_KEY = 'shop.orderAttempt';

/** The server's current products of the cart: Map id -> product; `missing` ids are gone. */
async function currentProducts(signal) {
  const products = new Map();
  const missing = [];
  await Promise.all(
    cart.lines().map(async (line) => {
      try {
        const item = await api('GET', `/api/products/${encodeURIComponent(line.productId)}`, { signal });
        products.set(line.productId, productFromApi(item));
      } catch (error) {
        if (error.status !== 404) throw error;
        missing.push(line.productId);
      }
    }),
  );
  return { products, missing };
}

/** Bring the cart to the server's prices; a notice of what changed, or null. */
async function refreshPrices(signal) {
  const { products, missing } = await currentProducts(signal);
  for (const id of missing) cart.remove(id);
  const changed = cart.reprice(products);
  const sentences = changed.map(
    (c) => `The price of ${c.name} changed from ${formatCents(c.from)} to ${formatCents(c.to)}.`,
  );
  if (missing.length) sentences.push(`${missing.length} product(s) are no longer sold and left your cart.`);
  const notice = sentences.length
    ? h('div', { class: 'notice notice-warn', role: 'alert' }, h('p', {}, sentences.join(' ')), h('p', {}, 'Check the new total.'))
    : null;
  return { products, notice };
}

function emptyCart(ctx, title) {
  replace(
    ctx.main,
    h('h1', {}, title),
    h('p', {}, 'Your cart is empty. ', h('a', { href: '#/' }, 'Browse the catalog'), '.'),
  );
}

function linesTable({ editable, products, onChange }) {
  const rows = cart.lines().map((line) => {
    const stock = products?.get(line.productId)?.stock;
    const cells = [
      h('td', { 'data-label': 'Product' }, h('a', { href: `#/products/${encodeURIComponent(line.productId)}` }, line.name)),
      h('td', { class: 'num', 'data-label': 'Price' }, formatCents(line.priceCents)),
    ];
    if (editable) {
      const id = `qty-${line.productId}`;
      const input = h('input', {
        id,
        class: 'qty',
        type: 'number',
        min: '0',
        max: stock ? String(stock) : undefined,
        inputmode: 'numeric',
        value: String(line.quantity),
        onchange: () => {
          const quantity = Number.parseInt(input.value, 10);
          cart.setQuantity(line.productId, Number.isInteger(quantity) && quantity >= 0 ? quantity : line.quantity);
          onChange();
        },
      });
      cells.push(
        h(
          'td',
          { 'data-label': 'Quantity' },
          h('label', { class: 'visually-hidden', for: id }, `Quantity of ${line.name}`),
          input,
          stock !== undefined && line.quantity > stock
            ? h('p', { class: 'field-error' }, stock ? `Only ${stock} left.` : 'Out of stock.')
            : null,
        ),
      );
    } else {
      cells.push(h('td', { class: 'num', 'data-label': 'Quantity' }, String(line.quantity)));
    }
    cells.push(h('td', { class: 'num', 'data-label': 'Subtotal' }, formatCents(line.priceCents * line.quantity)));
    if (editable) {
      cells.push(
        h(
          'td',
          {},
          h(
            'button',
            {
              class: 'button secondary',
              type: 'button',
              'aria-label': `Remove ${line.name}`,
              onclick: () => {
                cart.remove(line.productId);
                onChange();
              },
            },
            'Remove',
          ),
        ),
      );
    }
    return h('tr', { 'data-product-id': line.productId }, cells);
  });
  const headings = ['Product', 'Price', 'Quantity', 'Subtotal', ...(editable ? [''] : [])];
  return h(
    'table',
    { class: 'responsive' },
    h('caption', { class: 'visually-hidden' }, 'Cart contents'),
    h('thead', {}, h('tr', {}, headings.map((t, i) => h('th', { class: i > 0 && i < 4 ? 'num' : '', scope: 'col' }, t)))),
    h('tbody', {}, rows),
    h(
      'tfoot',
      {},
      h(
        'tr',
        {},
        h('td', { colspan: '3' }, 'Total'),
        h('td', { class: 'num', id: 'cart-total' }, formatCents(cart.totalCents())),
        editable ? h('td', {}) : null,
      ),
    ),
  );
}

export async function cartView(ctx) {
  ctx.title('Cart');
  if (!cart.lines().length) return emptyCart(ctx, 'Your cart');
  replace(ctx.main, h('h1', {}, 'Your cart'), h('p', { class: 'loading', role: 'status' }, 'Checking prices and stock…'));
  const { products, notice } = await refreshPrices(ctx.signal);
  const draw = (extra) => {
    if (!cart.lines().length) return emptyCart(ctx, 'Your cart');
    replace(
      ctx.main,
      h('h1', {}, 'Your cart'),
      extra,
      linesTable({ editable: true, products, onChange: () => draw(null) }),
      h('p', { class: 'pager' }, h('a', { class: 'button', href: '#/checkout' }, 'Check out'), h('a', { href: '#/' }, 'Continue shopping')),
    );
  };
  draw(notice);
}

/** One Idempotency-Key per order attempt: the same body (a retry, a reload) reuses it. */
function orderAttemptKey(body) {
  const fingerprint = JSON.stringify(body);
  try {
    const stored = JSON.parse(sessionStorage.getItem(ORDER_ATTEMPT_KEY) || 'null');
    if (stored?.fingerprint === fingerprint) return stored.key;
  } catch {
    // a damaged entry: start a new attempt
  }
  const key = newIdempotencyKey();
  sessionStorage.setItem(ORDER_ATTEMPT_KEY, JSON.stringify({ fingerprint, key }));
  return key;
}

export async function checkoutView(ctx) {
  ctx.title('Checkout');
  if (!cart.lines().length) return emptyCart(ctx, 'Checkout');
  replace(ctx.main, h('h1', {}, 'Checkout'), h('p', { class: 'loading', role: 'status' }, 'Checking prices and stock…'));
  const { notice } = await refreshPrices(ctx.signal);
  const summary = h('section', { 'aria-labelledby': 'summary-heading' });
  const drawSummary = () =>
    replace(summary, h('h2', { id: 'summary-heading' }, 'Your order'), linesTable({ editable: false }), h('p', {}, h('a', { href: '#/cart' }, 'Change the cart')));
  drawSummary();

  const street = field({ name: 'shippingAddress.street', label: 'Street', autocomplete: 'street-address', required: true });
  const city = field({ name: 'shippingAddress.city', label: 'City', autocomplete: 'address-level2', required: true });
  const zip = field({ name: 'shippingAddress.zipCode', label: 'Postcode', autocomplete: 'postal-code', required: true });
  const submit = h('button', { class: 'button', type: 'submit' }, 'Place order');
  const form = h(
    'form',
    { class: 'stack', novalidate: true, 'aria-labelledby': 'address-heading' },
    h('h2', { id: 'address-heading' }, 'Shipping address'),
    street.element,
    h('div', { class: 'row' }, city.element, zip.element),
    submit,
  );
  if (notice) formMessage(form).append(notice);
  let placing = false;
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (placing) return;
    placing = true;
    clearErrors(form);
    const address = values(form);
    const body = {
      items: cart.lines().map((l) => ({ productId: l.productId, quantity: l.quantity, price: toAmount(l.priceCents) })),
      shippingAddress: {
        street: address['shippingAddress.street'],
        city: address['shippingAddress.city'],
        zipCode: address['shippingAddress.zipCode'],
      },
    };
    try {
      const order = await whileBusy(submit, 'Placing your order…', () =>
        api('POST', '/api/orders', { body, auth: true, idempotencyKey: orderAttemptKey(body) }),
      );
      cart.clear();
      sessionStorage.removeItem(ORDER_ATTEMPT_KEY);
      ctx.go(`#/orders/${encodeURIComponent(order.id)}`);
    } catch (error) {
      if (error.status === 401) return; // the session sends them to log in
      showError(form, error);
      if (error.code === 'PRICE_MISMATCH' || error.code === 'INSUFFICIENT_STOCK') {
        const refreshed = await refreshPrices(ctx.signal).catch(() => ({ notice: null }));
        drawSummary();
        if (refreshed.notice) formMessage(form).append(refreshed.notice);
      }
    } finally {
      placing = false;
    }
  });
  replace(ctx.main, h('h1', {}, 'Checkout'), h('div', { class: 'split' }, form, summary));
  street.input.focus();
}

