// The administrator's page: add and edit products and stock, ship and deliver orders.
import { api } from '../api.js';
import { formatDate, h, replace, whileBusy } from '../dom.js';
import { humanMessage } from '../errors.js';
import { clearErrors, field, formMessage, showError, values } from '../forms.js';
import { formatCents, parsePrice, toAmount, toCents } from '../money.js';
import { pager } from './catalog.js';
import { shortId, statusBadge } from './orders.js';

const PAGE_SIZE = 20;
const NEXT_STATUS = { paid: 'shipped', shipped: 'delivered' };

/** The product fields of a form as the API wants them; a 422-shaped error if a price is not one. */
function productBody(entered) {
  const body = {};
  const problems = {};
  if (entered.name !== undefined) body.name = entered.name;
  if (entered.price !== undefined) {
    const cents = parsePrice(entered.price);
    if (cents === null) problems.price = ['Enter a price such as 12.50.'];
    else body.price = toAmount(cents);
  }
  if (entered.stock !== undefined) {
    const stock = Number(entered.stock);
    if (!Number.isInteger(stock) || stock < 0 || entered.stock === '') problems.stock = ['Enter a whole number, 0 or more.'];
    else body.stock = stock;
  }
  if (entered.id) body.id = entered.id;
  return { body, problems };
}

function invalid(problems) {
  return { status: 422, code: 'VALIDATION_ERROR', message: 'Check the fields.', details: problems };
}

function newProductForm(onAdded) {
  const id = field({ name: 'id', label: 'Id (optional)', hint: 'Left empty, the shop makes one.' });
  const name = field({ name: 'name', label: 'Name', required: true });
  const price = field({ name: 'price', label: 'Price ($)', inputmode: 'decimal', required: true });
  const stock = field({ name: 'stock', label: 'Stock', type: 'number', min: '0', inputmode: 'numeric', required: true });
  const submit = h('button', { class: 'button', type: 'submit' }, 'Add product');
  const form = h(
    'form',
    { class: 'stack panel', novalidate: true, 'aria-labelledby': 'new-product-heading' },
    h('h2', { id: 'new-product-heading' }, 'Add a product'),
    name.element,
    h('div', { class: 'row' }, price.element, stock.element),
    id.element,
    submit,
  );
  onProductSubmit(form, submit, 'Adding…', (body) => api('POST', '/api/products', { body, auth: true }), (product) => {
    form.reset();
    clearErrors(form);
    formMessage(form).append(h('p', { class: 'notice notice-ok' }, `Added ${product.name}.`));
    onAdded(product);
  });
  return form;
}

/** Checks a product form, sends it with `send(body)` while `submit` shows `busyText`, then `done(product)`. */
function onProductSubmit(form, submit, busyText, send, done) {
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (submit.disabled) return;
    clearErrors(form);
    const { body, problems } = productBody(values(form));
    if (Object.keys(problems).length) return showError(form, invalid(problems));
    try {
      done(await whileBusy(submit, busyText, () => send(body)));
    } catch (error) {
      if (error.status !== 401) showError(form, error);
    }
  });
}

/** A visible label, made unique for assistive technology by the product it belongs to. */
function labelOf(text, product) {
  return [text, h('span', { class: 'visually-hidden' }, ` of ${product.name}`)];
}

function productRow(product) {
  const priceText = (toCents(product.price) / 100).toFixed(2);
  const name = field({ name: 'name', label: labelOf('Name', product), value: product.name });
  const price = field({ name: 'price', label: labelOf('Price ($)', product), value: priceText, inputmode: 'decimal' });
  const stock = field({ name: 'stock', label: labelOf('Stock', product), type: 'number', min: '0', value: product.stock });
  const submit = h('button', { class: 'button secondary', type: 'submit' }, 'Save');
  const form = h(
    'form',
    { class: 'panel product-edit', novalidate: true, 'data-product-id': product.id, 'aria-label': `Edit ${product.name}` },
    h('p', { class: 'muted summary' }, `${product.id} · ${formatCents(toCents(product.price))} · ${product.stock} in stock`),
    name.element,
    price.element,
    stock.element,
    submit,
  );
  const send = (body) => api('PATCH', `/api/products/${encodeURIComponent(product.id)}`, { body, auth: true });
  onProductSubmit(form, submit, 'Saving…', send, (saved) => {
    clearErrors(form);
    form.querySelector('.summary').textContent =
      `${saved.id} · ${formatCents(toCents(saved.price))} · ${saved.stock} in stock`;
    formMessage(form).append(h('p', { class: 'notice notice-ok' }, `Saved ${saved.name}.`));
  });
  return h('li', {}, form);
}

function fulfilmentRow(order, onMoved) {
  const next = NEXT_STATUS[order.status];
  const message = h('span', { role: 'alert' });
  const button = h('button', { class: 'button secondary', type: 'button' }, `Mark ${next}`);
  button.addEventListener('click', async () => {
    try {
      await whileBusy(button, 'Saving…', () =>
        api('PATCH', `/api/orders/${encodeURIComponent(order.id)}`, { body: { status: next }, auth: true }),
      );
      onMoved();
    } catch (error) {
      if (error.status !== 401) message.textContent = humanMessage(error);
    }
  });
  return h(
    'tr',
    { 'data-order-id': order.id },
    h('td', { 'data-label': 'Order' }, `Order ${shortId(order.id)}`),
    h('td', { 'data-label': 'Placed' }, formatDate(order.createdAt)),
    h('td', { class: 'num', 'data-label': 'Total' }, formatCents(toCents(order.total))),
    h('td', { 'data-label': 'Status' }, statusBadge(order.status)),
    h('td', {}, button, message),
  );
}

async function drawFulfilment(area, signal) {
  const [paid, shipped] = await Promise.all(
    ['paid', 'shipped'].map((status) => api('GET', `/api/orders?status=${status}&limit=50`, { auth: true, signal })),
  );
  const orders = [...paid.items, ...shipped.items];
  if (!orders.length) return replace(area, h('p', { class: 'muted' }, 'Nothing to ship or deliver.'));
  replace(
    area,
    h(
      'table',
      { class: 'responsive' },
      h('caption', { class: 'visually-hidden' }, 'Orders to ship or deliver'),
      h('thead', {}, h('tr', {}, ['Order', 'Placed', 'Total', 'Status', 'Action'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, orders.map((order) => fulfilmentRow(order, () => drawFulfilment(area, signal)))),
    ),
  );
}

export async function adminView(ctx) {
  ctx.title('Administration');
  const page = Math.max(1, Number.parseInt(ctx.query.get('page') || '1', 10) || 1);
  const productsArea = h('ul', { class: 'list-plain', 'aria-label': 'Products' }, h('li', { class: 'loading' }, 'Loading products…'));
  const fulfilmentArea = h('div', {}, h('p', { class: 'loading' }, 'Loading orders…'));
  const drawProducts = async () => {
    const list = await api('GET', `/api/products?page=${page}&limit=${PAGE_SIZE}`, { signal: ctx.signal });
    replace(productsArea, list.items.map(productRow));
    productsArea.after(pager(page, PAGE_SIZE, list.total, (n) => `#/admin?page=${n}`));
  };
  replace(
    ctx.main,
    h('h1', {}, 'Administration'),
    h(
      'div',
      { class: 'admin-forms' },
      newProductForm((product) => productsArea.prepend(productRow(product))),
      h('section', { 'aria-labelledby': 'orders-heading' }, h('h2', { id: 'orders-heading' }, 'Orders to ship or deliver'), fulfilmentArea),
    ),
    h('section', { 'aria-labelledby': 'products-heading' }, h('h2', { id: 'products-heading' }, 'Products and stock'), productsArea),
  );
  await Promise.all([drawFulfilment(fulfilmentArea, ctx.signal), drawProducts()]);
}
